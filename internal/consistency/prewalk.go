package consistency

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"

	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// Walks is a walk of every goroutine made before the stop, while the target
// runs, kept so that the walk in the stop need not be made again where its
// inputs have not changed.
//
// A walk is a pure function of its inputs: the registers the g saved (pc,
// sp, frame pointer, link register), its stack's bounds, the bytes of every
// read it made of the target's memory, and the binary's tables (which do not
// change). Walks records those inputs per goroutine. In the stop, TakeAfter
// re-reads the g descriptors and every recorded read, in one batch; a
// goroutine whose inputs are all equal has, exactly, the walk recorded (the
// same reads at the same addresses return the same bytes, so the walk takes
// the same steps). Any other goroutine — changed, new, or whose recorded
// reads failed or cannot be re-read — is walked again in the stop. The
// inputs read before the stop need not be consistent with each other (the
// target was running): only their equality with what the stopped target
// holds matters.
//
// With many goroutines, Prewalk also maps in the target a native check
// (nativeCheck): in the stop, the target compares every g and every
// recorded word itself, and only what changed is read back. Close unmaps
// it.
type Walks struct {
	byG    map[uint64]*walkRecord
	native *nativeCheck
	// Reused and Rewalked count, for the last TakeAfter given these Walks,
	// the goroutines whose recorded walk was reused and those walked again;
	// Native, those of the reused whose inputs the target compared itself.
	Reused, Rewalked, Native int
	// NativeErr is why the last TakeAfter could not use the native check
	// (it then read every input back), or nil.
	NativeErr error
	// regions are those PrewalkFor checked every walk against; clean[i]
	// is set, for the last TakeAfter, when its task i has a walk reused
	// unchanged that had no blocker (CheckAfter).
	regions []Region
	clean   []bool
}

// PrewalkFor is Prewalk that also checks every walk against regions
// before the stop, so that CheckAfter need not look at a walk reused
// unchanged in it again.
func (src Source) PrewalkFor(regions []Region) (*Walks, error) {
	w, err := src.Prewalk()
	if w == nil || err != nil {
		return w, err
	}
	w.regions = slices.Clone(regions)
	for _, rec := range w.byG {
		rec.clean = len(checkTask(nil, &Task{Stack: rec.stack}, regions)) == 0
	}
	if nc := w.native; nc != nil && nc.pre != nil {
		nc.preClean = make([]bool, len(nc.preGroup))
		for j, k := range nc.preGroup {
			nc.preClean[j] = nc.groups[k].walk.clean
		}
	}
	return w, nil
}

// Close removes what Prewalk mapped in the target, if anything. The Walks
// still serve TakeAfter, which then reads every input back.
func (w *Walks) Close() error {
	if w == nil {
		return nil
	}
	err := w.native.close()
	w.native = nil
	return err
}

// runNative runs the native check in the stopped target, if there is one,
// and returns which of its groups are unchanged (nil: none known).
func (w *Walks) runNative(p *tracee.Process) []bool {
	if w == nil || w.native == nil {
		return nil
	}
	same, err := w.native.run(p)
	w.NativeErr = err
	return same
}

// walkRecord is one goroutine's walk and its inputs: the bytes of the
// spans of memory that cover its reads (reads a few words apart are
// re-read as one span), and the reads as parts of them.
type walkRecord struct {
	in    walkInputs
	spans []recordedRead
	reads []readInSpan
	stack unwind.Stack
	clean bool // no blocker in the regions of PrewalkFor
}

// readInSpan is one recorded read: bytes [off, off+n) of spans[span].
type readInSpan struct {
	span, off, n int
}

// spanGap is the widest gap between two reads re-read as one span: a walk
// reads a word or two per frame, frames a few dozen bytes apart.
const spanGap = 512

// newWalkRecord groups a walk's reads into spans.
func newWalkRecord(in walkInputs, reads []recordedRead, stack unwind.Stack) *walkRecord {
	rec := &walkRecord{in: in, stack: stack}
	sorted := slices.Clone(reads)
	slices.SortFunc(sorted, func(a, b recordedRead) int { return cmp.Compare(a.addr, b.addr) })
	for _, r := range sorted {
		end := r.addr + uint64(len(r.data))
		if n := len(rec.spans); n > 0 {
			last := &rec.spans[n-1]
			if lend := last.addr + uint64(len(last.data)); r.addr <= lend+spanGap {
				if end > lend {
					last.data = append(last.data, make([]byte, end-lend)...)
				}
				continue
			}
		}
		rec.spans = append(rec.spans, recordedRead{addr: r.addr, data: make([]byte, len(r.data))})
	}
	for _, r := range reads {
		k, _ := slices.BinarySearchFunc(rec.spans, r.addr, func(s recordedRead, a uint64) int {
			return cmp.Compare(s.addr+uint64(len(s.data)), a+1)
		})
		rec.reads = append(rec.reads, readInSpan{span: k, off: int(r.addr - rec.spans[k].addr), n: len(r.data)})
	}
	// Each read's bytes. Two reads of the same address that saw
	// different bytes (the target ran meanwhile) leave no one value to
	// compare with: such a walk is not kept (nil).
	filled := make([][]bool, len(rec.spans))
	for i, s := range rec.spans {
		filled[i] = make([]bool, len(s.data))
	}
	for i, r := range rec.reads {
		for b := 0; b < r.n; b++ {
			at := &rec.spans[r.span].data[r.off+b]
			if filled[r.span][r.off+b] && *at != reads[i].data[b] {
				return nil
			}
			*at, filled[r.span][r.off+b] = reads[i].data[b], true
		}
	}
	return rec
}

// walkInputs are the g fields a walk from the g depends on.
type walkInputs struct {
	PC, SP, BP, LR, StackLo, StackHi uint64
}

func inputsOf(g goruntime.G) walkInputs {
	return walkInputs{PC: g.PC, SP: g.SP, BP: g.BP, LR: g.LR, StackLo: g.StackLo, StackHi: g.StackHi}
}

type recordedRead struct {
	addr uint64
	data []byte
}

// recorder passes reads through to mem and records what they returned; a
// read that failed makes the record unusable (failed).
type recorder struct {
	mem    io.ReaderAt
	reads  []recordedRead
	failed bool
}

func (r *recorder) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.mem.ReadAt(b, off)
	if err != nil || n != len(b) {
		r.failed = true
		return n, err
	}
	r.reads = append(r.reads, recordedRead{addr: uint64(off), data: bytes.Clone(b)})
	return n, nil
}

// Prewalk walks every goroutine of a running Go target from its g,
// recording each walk's inputs, for TakeAfter to reuse in the stop. It reads
// the target without stopping it: what it reads may be torn, which costs
// only reuse (a goroutine whose inputs differ in the stop is walked again),
// never correctness. It returns nil for a target that is not a Go program.
func (src Source) Prewalk() (*Walks, error) {
	if src.Go == nil {
		return nil, nil
	}
	mem := parallelReader{src.Proc}
	addrs, err := src.Go.AllGs(mem)
	if err != nil {
		return nil, fmt.Errorf("consistency: goroutines before the stop: %w", err)
	}
	raw, err := src.Go.ReadGBytes(mem, addrs)
	if err != nil {
		return nil, fmt.Errorf("consistency: goroutines before the stop: %w", err)
	}
	gs := make([]goruntime.G, len(addrs))
	for i, a := range addrs {
		gs[i] = src.Go.DecodeG(a, raw[i])
	}
	walk := make([]goruntime.G, 0, len(gs))
	for _, g := range gs {
		if g.Live() && g.Status != goruntime.Running && g.Status != goruntime.CopyStack &&
			g.SP >= g.StackLo && g.SP < g.StackHi {
			walk = append(walk, g)
		}
	}
	stacks, recs, err := src.walkGs(walk, true)
	if err != nil {
		return nil, err
	}
	w := &Walks{byG: make(map[uint64]*walkRecord, len(walk))}
	for i, g := range walk {
		if recs[i] == nil || recs[i].failed || len(stacks[i].Callbacks) > 0 {
			continue // walked again in the stop
		}
		if rec := newWalkRecord(inputsOf(g), recs[i].reads, stacks[i]); rec != nil {
			w.byG[g.Addr] = rec
		}
	}
	// Without it, every input is read back in the stop: not an error.
	w.native, _ = src.prepareNative(src.Unwinder.Arch.Target, addrs, raw, gs, w.byG)
	if w.native != nil {
		threads, _ := src.Proc.CountThreads() // a guess: the stop counts them
		w.native.prebuild(threads)
	}
	if len(walk) >= parallelGs*16 {
		// What the stop allocates for many goroutines would likely start
		// a collection of our heap in it (marking steals CPU and stalls
		// allocation): collect now, while the target runs.
		runtime.GC()
	}
	return w, nil
}

// Reads returns the addresses the walk recorded for the goroutine whose g is
// at g reads, in the order it read them (nil when none is kept): what
// decides, with the g's saved registers, whether it is walked again.
func (w *Walks) Reads(g uint64) []uint64 {
	rec := w.byG[g]
	if rec == nil {
		return nil
	}
	out := make([]uint64, len(rec.reads))
	for i, r := range rec.reads {
		out[i] = rec.spans[r.span].addr + uint64(r.off)
	}
	return out
}

// reuse sets, for each of walk's goroutines, its recorded walk (set(i, …),
// ok[i]) when its inputs in the stopped target equal the recorded ones: proven by
// the native check (known[i]), or by re-reading every other recorded read
// in one batch.
func (w *Walks) reuse(src Source, walk []*goruntime.G, known []*gRecord, set func(int, *walkRecord)) (ok []bool) {
	ok = make([]bool, len(walk))
	if w == nil {
		return ok
	}
	w.Native = 0
	cands := make([]*walkRecord, len(walk))
	n, size := 0, 0
	for i, g := range walk {
		if known != nil && known[i] != nil {
			if rec := known[i].walk; rec != nil {
				set(i, rec)
				ok[i] = true
				w.Native++
			}
			continue
		}
		if rec := w.byG[g.Addr]; rec != nil && rec.in == inputsOf(*g) {
			cands[i] = rec
			n += len(rec.spans)
			for _, sp := range rec.spans {
				size += len(sp.data)
			}
		}
	}
	addrs, bufs := make([]uint64, 0, n), make([][]byte, 0, n)
	arena := make([]byte, size)
	for _, rec := range cands {
		if rec == nil {
			continue
		}
		for _, sp := range rec.spans {
			addrs = append(addrs, sp.addr)
			bufs, arena = append(bufs, arena[:len(sp.data):len(sp.data)]), arena[len(sp.data):]
		}
	}
	if err := readMany(src.Proc, addrs, bufs); err != nil {
		// Nothing re-read, nothing reused: every goroutine is walked again.
		return ok
	}
	k := 0
	for i, rec := range cands {
		if rec == nil {
			continue
		}
		if rec.same(bufs[k : k+len(rec.spans)]) {
			set(i, rec)
			ok[i] = true
		}
		k += len(rec.spans)
	}
	return ok
}

// same reports whether every read of the walk finds its bytes in now, the
// spans read again.
func (rec *walkRecord) same(now [][]byte) bool {
	for _, r := range rec.reads {
		if !bytes.Equal(rec.spans[r.span].data[r.off:r.off+r.n], now[r.span][r.off:r.off+r.n]) {
			return false
		}
	}
	return true
}

// walkGs walks each goroutine of walk from its g (every one's saved sp
// within its stack), the live part of every stack read beforehand in one
// batch, the walks spread over the machine's cores. With record, it also
// returns each walk's recorded inputs.
func (src Source) walkGs(walk []goruntime.G, record bool) ([]unwind.Stack, []*recorder, error) {
	p, u := src.Proc, src.Unwinder
	addrs := make([]uint64, len(walk))
	bufs := make([][]byte, len(walk))
	total := uint64(0)
	for _, g := range walk {
		total += min(g.StackHi-g.SP, stackPrefetch)
	}
	arena := make([]byte, total)
	for i, g := range walk {
		addrs[i] = g.SP
		n := min(g.StackHi-g.SP, stackPrefetch)
		bufs[i], arena = arena[:n:n], arena[n:]
	}
	if err := readMany(p, addrs, bufs); err != nil {
		return nil, nil, fmt.Errorf("consistency: goroutine stacks: %w", err)
	}
	stacks := make([]unwind.Stack, len(walk))
	var recs []*recorder
	if record {
		recs = make([]*recorder, len(walk))
	}
	parallel(len(walk), parallelGs, func(i int) {
		g := walk[i]
		regs := make([]uint64, u.Arch.RAReg+1)
		regs[u.Arch.RAReg], regs[u.Arch.SPReg], regs[u.Arch.FPReg] = g.PC, g.SP, g.BP
		if u.Arch.LinkRegister && u.Arch.LRReg < len(regs) {
			regs[u.Arch.LRReg] = g.LR
		}
		var mem io.ReaderAt = &prefetched{base: p, addr: addrs[i], buf: bufs[i], hi: g.StackHi}
		if record {
			recs[i] = &recorder{mem: mem}
			mem = recs[i]
		}
		stacks[i] = u.Unwind(mem, regs)
	})
	return stacks, recs, nil
}

// parallelGs is the fewest goroutine walks worth handing to another core.
const parallelGs = 64

// parallel calls f(0) … f(n-1), spread over the machine's cores, each
// given at least least calls.
func parallel(n, least int, f func(int)) {
	workers := min(runtime.GOMAXPROCS(0), n/least)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				f(i)
			}
		}()
	}
	wg.Wait()
}

// readMany reads bufs[i] from addrs[i] as ReadMany does, the regions split
// over the machine's cores: the kernel's cost is per page pinned, and two
// threads pin pages of the (stopped) target side by side.
func readMany(p manyReader, addrs []uint64, bufs [][]byte) error {
	const perWorker = 1024
	workers := min(runtime.GOMAXPROCS(0), len(addrs)/perWorker)
	if workers <= 1 {
		return p.ReadMany(addrs, bufs)
	}
	errs := make([]error, workers)
	chunk := (len(addrs) + workers - 1) / workers
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := w*chunk, min((w+1)*chunk, len(addrs))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = p.ReadMany(addrs[lo:hi], bufs[lo:hi])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

type manyReader interface {
	io.ReaderAt
	ReadMany(addrs []uint64, bufs [][]byte) error
}

// parallelReader is a process's memory whose ReadMany spreads over cores
// (for goruntime's batched reads of every g).
type parallelReader struct{ manyReader }

func (r parallelReader) ReadMany(addrs []uint64, bufs [][]byte) error {
	return readMany(r.manyReader, addrs, bufs)
}
