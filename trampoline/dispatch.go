package trampoline

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// TaskKey says how a dispatch stub identifies the calling task.
type TaskKey int

const (
	// KeyG: the goroutine, by its g pointer (R14 in Go's internal ABI on
	// amd64, R28 on arm64).
	KeyG TaskKey = iota + 1
	// KeyThread: the thread, by its thread pointer (the TCB self-pointer
	// at fs:0 on amd64, TPIDR_EL0 on arm64).
	KeyThread
)

// Universe tables. A table lists the tasks of one universe (the "listed"
// tasks); every other task, including tasks created later, is in the other.
// It is an open-addressing hash set with linear probing: a 32-byte header —
// the probe mask (byte offset of the last slot, relative to the first), the
// number of keys, and Sel, which says where unlisted tasks go (1: the new
// code, listed ones the old; 0: the old code, listed ones the new) — then a
// power-of-two number of 16-byte slots {key, id}; key 0 marks an empty slot.
// A key's first slot is key & mask.
//
// Stubs do not point at a table but at a control word holding the address
// of the active one. The patcher writes the inactive table of a pair, then
// the control word: every universe switch is a single aligned 8-byte write,
// so a patcher killed at any point leaves one consistent table active.
const (
	TableHeaderSize = 32
	TableSlotSize   = 16
)

// TableEntry is one listed task: Key as the stub sees it, ID for people (a
// goroutine or thread ID).
type TableEntry struct {
	Key uint64
	ID  uint64
}

// TableCapacity is the number of slots a table for n keys uses: a power of
// two at least twice n (and at least 4), so probes stay short.
func TableCapacity(n int) int {
	c := max(4, 2*n)
	return 1 << bits.Len(uint(c-1))
}

// TableSize is the byte size of a table with capacity slots.
func TableSize(capacity int) int { return TableHeaderSize + capacity*TableSlotSize }

// BuildTable lays out entries in a table of the given capacity (a power of
// two, at least twice len(entries): see TableCapacity). Keys must be non-zero
// and distinct. unlistedNew is the header's Sel.
func BuildTable(entries []TableEntry, capacity int, unlistedNew bool) ([]byte, error) {
	hdr, slots, err := LayoutTable(entries, capacity, unlistedNew)
	if err != nil {
		return nil, err
	}
	b := make([]byte, TableSize(capacity))
	copy(b, hdr)
	for _, sl := range slots {
		copy(b[sl.Off:], sl.Data[:])
	}
	return b, nil
}

// TableSlot is a used slot of a table: its byte offset from the table's
// start, and its key and ID.
type TableSlot struct {
	Off  int
	Data [TableSlotSize]byte
}

// LayoutTable is BuildTable without the empty slots, which for a big table
// are megabytes of zeros: the header, and the used slots in entries'
// order.
func LayoutTable(entries []TableEntry, capacity int, unlistedNew bool) (hdr []byte, slots []TableSlot, err error) {
	if capacity < 1 || capacity&(capacity-1) != 0 {
		return nil, nil, fmt.Errorf("trampoline: table capacity %d is not a power of two", capacity)
	}
	if 2*len(entries) > capacity {
		return nil, nil, fmt.Errorf("trampoline: %d keys do not fit a table of %d slots (at most half full)", len(entries), capacity)
	}
	hdr = make([]byte, TableHeaderSize)
	putHeader(hdr, capacity, len(entries), unlistedNew)
	mask := uint64(capacity-1) * TableSlotSize
	used := make(map[uint64]uint64, len(entries)) // slot offset → key
	slots = make([]TableSlot, 0, len(entries))
	for _, e := range entries {
		if e.Key == 0 {
			return nil, nil, fmt.Errorf("trampoline: a task key is 0")
		}
		off := e.Key & mask
		for ; used[off] != 0; off = (off + TableSlotSize) & mask {
			if used[off] == e.Key {
				return nil, nil, fmt.Errorf("trampoline: task key %#x listed twice", e.Key)
			}
		}
		used[off] = e.Key
		sl := TableSlot{Off: TableHeaderSize + int(off)}
		binary.LittleEndian.PutUint64(sl.Data[:], e.Key)
		binary.LittleEndian.PutUint64(sl.Data[8:], e.ID)
		slots = append(slots, sl)
	}
	return hdr, slots, nil
}

// putHeader writes a table's header: its mask, its count of entries and
// its Sel.
func putHeader(b []byte, capacity, n int, unlistedNew bool) {
	binary.LittleEndian.PutUint64(b[0:], uint64(capacity-1)*TableSlotSize)
	binary.LittleEndian.PutUint64(b[8:], uint64(n))
	if unlistedNew {
		binary.LittleEndian.PutUint64(b[16:], 1)
	}
}

// ParseTable returns the entries of a table (in slot order) and its Sel. A
// table is refused unless it is what BuildTable lays out and the stubs can
// search: a power-of-two number of slots that fits b, at most half of them
// used (so every probe ends at an empty slot), distinct keys, each
// reachable by the stubs' probe from its first slot, as many as the header
// counts. Anything else would list tasks the stubs do not see as listed.
func ParseTable(b []byte) (entries []TableEntry, unlistedNew bool, err error) {
	if len(b) < TableHeaderSize {
		return nil, false, fmt.Errorf("trampoline: universe table of %d bytes is truncated", len(b))
	}
	unlistedNew = binary.LittleEndian.Uint64(b[16:]) != 0
	mask := binary.LittleEndian.Uint64(b)
	n := binary.LittleEndian.Uint64(b[8:])
	slots := mask/TableSlotSize + 1
	if mask%TableSlotSize != 0 || slots&(slots-1) != 0 || slots > uint64(len(b)-TableHeaderSize)/TableSlotSize {
		return nil, false, fmt.Errorf("trampoline: universe table mask %#x is not a power-of-two number of slots within its %d bytes", mask, len(b))
	}
	if n > slots/2 {
		// A full table would make a stub probe forever for an unlisted task.
		return nil, false, fmt.Errorf("trampoline: universe table says %d keys in %d slots (at most half full)", n, slots)
	}
	var out []TableEntry
	for off := uint64(0); off <= mask; off += TableSlotSize {
		slot := b[TableHeaderSize+off:]
		k := binary.LittleEndian.Uint64(slot)
		if k == 0 {
			continue
		}
		if found := probe(b, mask, k); found != off {
			return nil, false, fmt.Errorf("trampoline: universe table key %#x in slot %d is not where the stubs' probe finds it (slot %d): the table is corrupt", k, off/TableSlotSize, int64(found)/TableSlotSize)
		}
		out = append(out, TableEntry{Key: k, ID: binary.LittleEndian.Uint64(slot[8:])})
	}
	if uint64(len(out)) != n {
		return nil, false, fmt.Errorf("trampoline: universe table says %d keys but holds %d", n, len(out))
	}
	return out, unlistedNew, nil
}

// probe returns the offset of the slot the stubs' linear probe stops at for
// key (the key's, or an empty one), ^0 when it visits every slot.
func probe(b []byte, mask, key uint64) uint64 {
	off := key & mask
	for range mask/TableSlotSize + 1 {
		k := binary.LittleEndian.Uint64(b[TableHeaderSize+off:])
		if k == key || k == 0 {
			return off
		}
		off = (off + TableSlotSize) & mask
	}
	return ^uint64(0)
}

// Stub is a dispatch stub: code that a patched function's entry jumps to
// while its patch set is switched. It loads the active table from the
// control word, looks the calling task up, and jumps to the old code (the
// relocated original) or the new one as the table's Sel says.
type Stub struct {
	Addr uint64
	Code []byte
}

// Dispatcher builds dispatch stubs. AMD64 implements it.
type Dispatcher interface {
	// Stub builds the stub placed at addr, keyed by key, whose active
	// table's address is the word at ctl; old and new are the two codes.
	Stub(key TaskKey, addr, ctl, old, new uint64) (*Stub, error)
	// MaxStubSize bounds len(Stub.Code).
	MaxStubSize() int
}
