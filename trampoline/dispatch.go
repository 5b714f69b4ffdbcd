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

// Universe table layout. The table lists the tasks of one universe (the
// "listed" one); every other task, including tasks created later, is in the
// other. It is an open-addressing hash set with linear probing: a header of
// two words — the probe mask (byte offset of the last slot, relative to the
// first) and the number of keys — then a power-of-two number of 16-byte
// slots {key, id}; key 0 marks an empty slot. A key's first slot is
// key & mask. Tables are written only while the target is stopped.
const (
	TableHeaderSize = 16
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
// and distinct.
func BuildTable(entries []TableEntry, capacity int) ([]byte, error) {
	if capacity < 1 || capacity&(capacity-1) != 0 {
		return nil, fmt.Errorf("trampoline: table capacity %d is not a power of two", capacity)
	}
	if 2*len(entries) > capacity {
		return nil, fmt.Errorf("trampoline: %d keys do not fit a table of %d slots (at most half full)", len(entries), capacity)
	}
	b := make([]byte, TableSize(capacity))
	mask := uint64(capacity-1) * TableSlotSize
	binary.LittleEndian.PutUint64(b[0:], mask)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(entries)))
	for _, e := range entries {
		if e.Key == 0 {
			return nil, fmt.Errorf("trampoline: a task key is 0")
		}
		for off := e.Key & mask; ; off = (off + TableSlotSize) & mask {
			slot := b[TableHeaderSize+off:]
			k := binary.LittleEndian.Uint64(slot)
			if k == e.Key {
				return nil, fmt.Errorf("trampoline: task key %#x listed twice", e.Key)
			}
			if k == 0 {
				binary.LittleEndian.PutUint64(slot, e.Key)
				binary.LittleEndian.PutUint64(slot[8:], e.ID)
				break
			}
		}
	}
	return b, nil
}

// ParseTable returns the entries of a table (in slot order).
func ParseTable(b []byte) ([]TableEntry, error) {
	if len(b) < TableHeaderSize {
		return nil, fmt.Errorf("trampoline: universe table of %d bytes is truncated", len(b))
	}
	mask := binary.LittleEndian.Uint64(b)
	n := binary.LittleEndian.Uint64(b[8:])
	if mask%TableSlotSize != 0 || TableHeaderSize+mask+TableSlotSize > uint64(len(b)) {
		return nil, fmt.Errorf("trampoline: universe table mask %#x does not fit its %d bytes", mask, len(b))
	}
	var out []TableEntry
	for off := uint64(0); off <= mask; off += TableSlotSize {
		slot := b[TableHeaderSize+off:]
		if k := binary.LittleEndian.Uint64(slot); k != 0 {
			out = append(out, TableEntry{Key: k, ID: binary.LittleEndian.Uint64(slot[8:])})
		}
	}
	if uint64(len(out)) != n {
		return nil, fmt.Errorf("trampoline: universe table says %d keys but holds %d", n, len(out))
	}
	return out, nil
}

// Stub is a dispatch stub: code that a patched function's entry jumps to
// during a transition. It looks the calling task up in the universe table
// and jumps through one of two 8-byte targets stored in the stub itself:
// Listed for tasks in the table, Unlisted for every other task.
type Stub struct {
	Addr uint64
	Code []byte
	// ListedOff and UnlistedOff are the offsets in Code of the two
	// targets; rewriting them (target stopped) switches what each universe
	// runs.
	ListedOff, UnlistedOff int
}

// Dispatcher builds dispatch stubs. AMD64 implements it.
type Dispatcher interface {
	// Stub builds the stub placed at addr, looking tasks up by key in the
	// table at table, jumping to listed or unlisted.
	Stub(key TaskKey, addr, table, listed, unlisted uint64) (*Stub, error)
	// MaxStubSize bounds len(Stub.Code).
	MaxStubSize() int
}
