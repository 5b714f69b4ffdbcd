//go:build linux

package patch

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// The record of a patch lives in the target, at the start of the patch
// memory the patch mapped there, so that any later tool can find it by
// scanning the target's anonymous executable mappings:
//
//	0   magic "HOTPATCH"
//	8   u32 format version (1)
//	12  u32 state (see State*)
//	16  u32 length of the JSON record
//	20  u32 CRC-32 (IEEE) of the JSON record
//	24  u64 size of the mapping
//	32  JSON record (type Record)
//	... thunks, at thunkOffset
const (
	recordMagic    = "HOTPATCH"
	recordVersion  = 1
	recordHdrSize  = 32
	stateOffset    = 12
	pageSize       = 4096
	thunkSlotAlign = 16
)

// States of a record, stored as the u32 at offset 12.
const (
	statePrepared uint32 = 1 // memory and thunks written, no jump yet
	stateApplied  uint32 = 2 // jumps written
	stateReverted uint32 = 3 // original bytes restored
	// Gradual transitions: every entry jumps to its dispatch stub.
	stateTransition uint32 = 4 // applying: the table lists the tasks still on the old code
	stateReverting  uint32 = 5 // reverting: the table lists the tasks still on the new code
	// Superseded: another patch replaced this one in one pause (its
	// entries now hold that patch's jumps, or their original bytes); the
	// memory is unmapped next.
	stateSuperseded uint32 = 6
)

func stateName(s uint32) State {
	switch s {
	case statePrepared:
		return StatePrepared
	case stateApplied:
		return StateApplied
	case stateReverted:
		return StateReverted
	case stateTransition:
		return StateTransition
	case stateReverting:
		return StateReverting
	case stateSuperseded:
		return StateSuperseded
	}
	return State(fmt.Sprintf("state(%d)", s))
}

// Bytes is a byte slice that marshals as hex.
type Bytes []byte

// MarshalJSON encodes b as a hex string.
func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(b)) }

// UnmarshalJSON decodes a hex string.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*b = d
	return err
}

// Function is one replaced function of a patch.
type Function struct {
	// Old and New are the symbol names; OldAddr and NewAddr their entries.
	Old     string `json:"old"`
	OldAddr uint64 `json:"old_addr"`
	OldSize uint64 `json:"old_size"`
	New     string `json:"new"`
	NewAddr uint64 `json:"new_addr"`
	NewSize uint64 `json:"new_size"`
	// Module is the path of the object that defines Old, and BuildID its
	// GNU build ID.
	Module  string `json:"module"`
	BuildID string `json:"build_id,omitempty"`
	// PatchAddr is where the jump is written (OldAddr, or after endbr64).
	PatchAddr uint64 `json:"patch_addr"`
	// Original is the bytes the jump replaced; Jump is what was written.
	Original Bytes `json:"original"`
	Jump     Bytes `json:"jump"`
	// ThunkAddr is the relocated original ("call the original").
	ThunkAddr uint64 `json:"thunk_addr"`
	// InlinedInto lists the callers that hold inlined copies of Old, which
	// this patch does not change (applied with AllowInlined).
	InlinedInto []string `json:"inlined_into"`
	// StubAddr and StubSize locate the function's dispatch stub, and
	// StubJump is the bytes at PatchAddr that jump to it. Every switch of
	// a set of several functions goes through the stubs (one function's
	// switch is one write of its entry), and so does every gradual one.
	StubAddr uint64 `json:"stub_addr,omitempty"`
	StubSize uint64 `json:"stub_size,omitempty"`
	StubJump Bytes  `json:"stub_jump,omitempty"`
	// Superseded, in a patch that superseded another, is what that patch
	// left at PatchAddr (its jump): until this patch's own jump is
	// written there, the entry belongs to the other patch's record.
	Superseded Bytes `json:"superseded,omitempty"`
}

// Record describes a patch as the target holds it.
type Record struct {
	ID        string     `json:"id"`
	Created   time.Time  `json:"created"`
	Functions []Function `json:"functions"`
	// State is StateApplied, StatePrepared (inert: no jump written),
	// StatePartial (some jumps written: a patcher died mid-write),
	// StateReverted, StateSuperseded (another patch replaced it; its
	// memory is left to unmap, as a reverted one's), or StateTransition or
	// StateReverting (a gradual transition with Pending tasks). It is
	// derived from the code bytes when the record is read.
	State State `json:"state"`
	// Region and RegionSize locate the patch memory in the target.
	Region     uint64 `json:"region"`
	RegionSize uint64 `json:"region_size"`
	// Table is the universe control word (the address of the active
	// table; the two tables follow it), TableCapacity their slots; TaskKey
	// is how the stubs know a task ("g" or "thread").
	Table         uint64 `json:"table,omitempty"`
	TableCapacity int    `json:"table_capacity,omitempty"`
	TaskKey       string `json:"task_key,omitempty"`
	// Lib is the patch library loaded for this patch (ApplyOptions.Lib).
	Lib *LibRef `json:"lib,omitempty"`
	// Pending counts the tasks a transition still waits for, and
	// PendingTasks lists them (read from the table).
	Pending      int           `json:"pending"`
	PendingTasks []PendingTask `json:"pending_tasks"`
	// Supersedes is the ID of the patch this one replaced in the same
	// pause (ApplyOptions.Supersede).
	Supersedes string `json:"supersedes,omitempty"`
}

// LibRef is the patch library a patch was applied from.
type LibRef struct {
	Path string `json:"path"` // as given to Apply (absolute, symlinks resolved)
	// Record is the address of the library's record in the target (see
	// libRecord), Handle its dlopen handle and Name its memfd's name.
	Record uint64 `json:"record"`
	Handle uint64 `json:"handle"`
	Name   string `json:"name"`
}

// PendingTask is a task a transition waits for.
type PendingTask struct {
	Kind TaskKind `json:"kind"` // TaskGoroutine or TaskThread
	ID   uint64   `json:"id"`
	Key  uint64   `json:"key"`
}

func encodeRecord(r *Record, state uint32) ([]byte, error) {
	js, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	b := make([]byte, recordHdrSize+len(js))
	copy(b, recordMagic)
	binary.LittleEndian.PutUint32(b[8:], recordVersion)
	binary.LittleEndian.PutUint32(b[12:], state)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(js)))
	binary.LittleEndian.PutUint32(b[20:], crc32.ChecksumIEEE(js))
	binary.LittleEndian.PutUint64(b[24:], r.RegionSize)
	copy(b[recordHdrSize:], js)
	return b, nil
}

// readRecord reads the record at the start of a mapping; ok is false when
// the mapping is not patch memory. A mapping whose start cannot be read may
// be patch memory: that is an error (ok is true), never "not ours".
func readRecord(mem readerAt, m elfsym.Mapping) (rec *Record, state uint32, ok bool, err error) {
	hdr := make([]byte, recordHdrSize)
	if _, err := mem.ReadAt(hdr, int64(m.Start)); err != nil {
		return nil, 0, true, fmt.Errorf("executable memory at %#x, which may hold a patch record, cannot be read: %w", m.Start, err)
	}
	if string(hdr[:8]) != recordMagic {
		return nil, 0, false, nil
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != recordVersion {
		return nil, 0, true, fmt.Errorf("patch memory at %#x has record format %d, this tool reads %d: use the matching hotpatch version", m.Start, v, recordVersion)
	}
	state = binary.LittleEndian.Uint32(hdr[12:])
	n := binary.LittleEndian.Uint32(hdr[16:])
	if uint64(n) > m.End-m.Start-recordHdrSize {
		return nil, 0, true, fmt.Errorf("patch memory at %#x: record length %d exceeds the mapping", m.Start, n)
	}
	js := make([]byte, n)
	if _, err := mem.ReadAt(js, int64(m.Start)+recordHdrSize); err != nil {
		return nil, 0, true, fmt.Errorf("patch memory at %#x: %w", m.Start, err)
	}
	if crc32.ChecksumIEEE(js) != binary.LittleEndian.Uint32(hdr[20:]) {
		return nil, 0, true, fmt.Errorf("patch memory at %#x: record checksum mismatch (corrupted)", m.Start)
	}
	rec = new(Record)
	if err := json.Unmarshal(js, rec); err != nil {
		return nil, 0, true, fmt.Errorf("patch memory at %#x: %w", m.Start, err)
	}
	return rec, state, true, nil
}

type readerAt interface {
	ReadAt(p []byte, off int64) (int, error)
}

// everSwitched reads the state word of a patch's record: a patch still
// "prepared" was never jumped to. A header that cannot be read, or is not
// a record any more, is an error: it is never taken for "prepared".
func everSwitched(mem readerAt, rec *Record) (bool, error) {
	hdr := make([]byte, recordHdrSize)
	if _, err := mem.ReadAt(hdr, int64(rec.Region)); err != nil {
		return false, fmt.Errorf("the record header of patch %s at %#x cannot be read: %w", rec.ID, rec.Region, err)
	}
	if string(hdr[:8]) != recordMagic {
		return false, fmt.Errorf("%w: no patch record at %#x any more (patch %s)", ErrCodeChanged, rec.Region, rec.ID)
	}
	return binary.LittleEndian.Uint32(hdr[stateOffset:]) != statePrepared, nil
}
