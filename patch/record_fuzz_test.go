//go:build linux

package patch

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// FuzzReadRecord: whatever a target's executable mapping holds, readRecord
// says "not ours" only without the magic, and otherwise returns a record
// or an error; it never panics, and never allocates past the mapping.
func FuzzReadRecord(f *testing.F) {
	rec := &Record{ID: "hp-0123abcd", Created: time.Unix(1700000000, 0).UTC(), State: "applied",
		Region: 0x7f0000000000, RegionSize: pageSize, Table: 0x7f0000000800, TableCapacity: 4, TaskKey: "g",
		Functions: []Function{{Old: "main.work", OldAddr: 0x401000, OldSize: 64, New: "main.work2", NewAddr: 0x7f0000000100,
			Module: "/bin/x", PatchAddr: 0x401000, Original: Bytes{0x55, 0x48}, Jump: Bytes{0xe9, 1, 2, 3, 4}, ThunkAddr: 0x7f0000000200}}}
	for _, st := range []uint32{statePrepared, stateApplied, stateTransition} {
		b, err := encodeRecord(rec, st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint32(pageSize))
	}
	f.Add([]byte("HOTPATCH\x01\x00\x00\x00"), uint32(pageSize))
	f.Fuzz(func(t *testing.T, b []byte, size uint32) {
		const start = 0x10000
		m := elfsym.Mapping{Start: start, End: start + uint64(size)}
		mem := fakeMem{base: start, b: b, cause: tracee.ErrExited}
		r, _, ok, err := readRecord(mem, m)
		magic := len(b) >= 8 && string(b[:8]) == recordMagic
		switch {
		case len(b) < recordHdrSize:
			if !ok || !errors.Is(err, tracee.ErrExited) {
				t.Fatalf("unreadable header: ok=%v err=%v", ok, err)
			}
		case !magic:
			if ok || err != nil || r != nil {
				t.Fatalf("no magic, yet ok=%v err=%v", ok, err)
			}
		case !ok:
			t.Fatal("a mapping with the magic was called not ours")
		case err == nil && r == nil:
			t.Fatal("no record and no error")
		case err == nil:
			if n := binary.LittleEndian.Uint32(b[16:]); uint64(n)+recordHdrSize > uint64(size) {
				t.Fatalf("a record of %d bytes read from a mapping of %d", n, size)
			}
		}
	})
}

// FuzzParseLibRecord: whatever a target's read-write mapping holds,
// parseLibRecord takes it for a library's record only with the magic, the
// size and a name of ours, never panics, and reads its strings within
// their fields.
func FuzzParseLibRecord(f *testing.F) {
	img := make([]byte, libRecSize)
	copy(img, libRecordImage("hp-0123abcd", "/opt/fix/libfix.so", memfdName("hp-0123abcd", "/opt/fix/libfix.so")))
	f.Add(img)
	f.Add([]byte(libRecMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		lr, ok := parseLibRecord(0x10000, b)
		if !ok {
			return
		}
		if len(b) < libRecSize || string(b[:8]) != libRecMagic {
			t.Fatal("taken for a record without the magic or the size")
		}
		if len(lr.id) > libOffName-libOffID || len(lr.name) > libOffPath-libOffName || len(lr.path) > libOffOpen-libOffPath || lr.fd < -1 {
			t.Fatalf("fields past their room: %+v", lr)
		}
	})
}
