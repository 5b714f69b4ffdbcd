package elfsym

import (
	"strings"
	"testing"
)

func FuzzParseMappings(f *testing.F) {
	f.Add("55d1c4a00000-55d1c4a02000 r-xp 00002000 fd:01 1234567                    /usr/bin/cat\n")
	f.Add("400000-401000 r-xp 00001000 08:02 42   /tmp/old bin (deleted)\n7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n")
	f.Add("7ffd5c9f4000-7ffd5c9f6000 r-xp 00000000 00:00 0                          [vdso]\n")
	f.Fuzz(func(t *testing.T, text string) {
		ms, err := ParseMappings(strings.NewReader(text))
		if err != nil {
			if !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error does not name the line: %v", err)
			}
			return
		}
		for _, m := range ms {
			if m.End < m.Start || len(m.Perms) != 4 || !strings.Contains(m.Dev, ":") {
				t.Fatalf("bad mapping %+v from %q", m, text)
			}
		}
	})
}
