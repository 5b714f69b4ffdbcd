package trampoline

import (
	"encoding/binary"
	"testing"
)

// lookup is the stub's search, in Go: probe from key&mask to the key or an
// empty slot.
func lookup(b []byte, key uint64) (id uint64, listed bool) {
	mask := binary.LittleEndian.Uint64(b)
	for off, n := key&mask, uint64(0); n <= mask/TableSlotSize; off, n = (off+TableSlotSize)&mask, n+1 {
		k := binary.LittleEndian.Uint64(b[TableHeaderSize+off:])
		if k == key {
			return binary.LittleEndian.Uint64(b[TableHeaderSize+off+8:]), true
		}
		if k == 0 {
			return 0, false
		}
	}
	return 0, false
}

// FuzzParseTable: a universe table read from a target is either refused or
// parsed into exactly what the dispatch stubs see (every listed key found
// by their probe, with its ID); it never panics or loops.
func FuzzParseTable(f *testing.F) {
	seeds := [][]TableEntry{
		nil,
		{{0xc000001000, 1}},
		{{0xc000001000, 1}, {0xc000002000, 2}, {0xc000003000, 3}, {0xc000001010, 4}, {0x7f0000000040, 5}},
	}
	for i, e := range seeds {
		b, err := BuildTable(e, TableCapacity(len(e)), i%2 == 0)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(make([]byte, TableHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, sel, err := ParseTable(b)
		if err != nil {
			return
		}
		if want := binary.LittleEndian.Uint64(b[16:]) != 0; sel != want {
			t.Fatalf("Sel %v, header says %v", sel, want)
		}
		for _, e := range entries {
			id, ok := lookup(b, e.Key)
			if !ok || id != e.ID {
				t.Fatalf("ParseTable lists key %#x (id %d), the stub finds %v (id %d)", e.Key, e.ID, ok, id)
			}
		}
		// Rebuilt at its own capacity, the table parses to the same set.
		capacity := int((binary.LittleEndian.Uint64(b)/TableSlotSize + 1))
		rb, err := BuildTable(entries, capacity, sel)
		if err != nil {
			t.Fatalf("a parsed table does not rebuild: %v", err)
		}
		again, sel2, err := ParseTable(rb)
		if err != nil || sel2 != sel || len(again) != len(entries) {
			t.Fatalf("round trip: %v %v %d entries, want %d", err, sel2, len(again), len(entries))
		}
		for _, e := range again {
			if id, ok := lookup(b, e.Key); !ok || id != e.ID {
				t.Fatalf("round trip changed key %#x", e.Key)
			}
		}
	})
}

// FuzzBuildTable: any set of distinct non-zero keys builds into a table
// that parses back to the same entries, each found by the stub's probe.
func FuzzBuildTable(f *testing.F) {
	f.Add([]byte{0, 0x10, 0, 0, 0, 0xc0, 0, 0, 0, 0x20, 0, 0, 0, 0xc0, 0, 0}, uint8(0), true)
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8}, uint8(3), false)
	f.Fuzz(func(t *testing.T, keys []byte, extra uint8, sel bool) {
		var entries []TableEntry
		seen := map[uint64]bool{}
		for i := 0; i+8 <= len(keys); i += 8 {
			k := binary.LittleEndian.Uint64(keys[i:])
			if k == 0 || seen[k] {
				continue
			}
			seen[k] = true
			entries = append(entries, TableEntry{Key: k, ID: uint64(i)})
		}
		capacity := TableCapacity(len(entries)) << (extra % 4)
		b, err := BuildTable(entries, capacity, sel)
		if err != nil {
			t.Fatal(err)
		}
		got, gsel, err := ParseTable(b)
		if err != nil || gsel != sel || len(got) != len(entries) {
			t.Fatalf("ParseTable(BuildTable) = %d entries, %v, %v; want %d", len(got), gsel, err, len(entries))
		}
		for _, e := range entries {
			if id, ok := lookup(b, e.Key); !ok || id != e.ID {
				t.Fatalf("key %#x not found by the stub's probe", e.Key)
			}
		}
	})
}
