//go:build cgo

package execmem

import (
	"fmt"
	"sync"
)

// Sample is a function compiled into this package, for tests to relocate,
// patch and call.
type Sample struct {
	Name string
	Addr uintptr // entry
	Size int     // from the symbol table
	// Next is the address of the next function symbol; the bytes in
	// [Addr+Size, Next) are the padding after the function.
	Next uintptr
}

// Code returns the function's bytes as they are now.
func (s Sample) Code() []byte { return Read(s.Addr, s.Size) }

// Padding returns the bytes between the end of the function and the next
// function symbol.
func (s Sample) Padding() []byte {
	return Read(s.Addr+uintptr(s.Size), int(s.Next-s.Addr-uintptr(s.Size)))
}

var samples = sync.OnceValues(loadSamples)

// Samples returns the sample functions: hand-written prologues named hp_*
// (see the assembly in samples_$GOARCH.go) and gcc -O2 functions named
// hp_c_*. Sizes
// come from an end label after each function (test binaries are stripped).
func Samples() ([]Sample, error) { return samples() }

// Lookup returns the sample called name.
func Lookup(name string) (Sample, error) {
	all, err := Samples()
	if err != nil {
		return Sample{}, err
	}
	for _, s := range all {
		if s.Name == name {
			return s, nil
		}
	}
	return Sample{}, fmt.Errorf("execmem: no sample %q", name)
}

func loadSamples() ([]Sample, error) {
	var out []Sample
	for i := range sampleCount() {
		name, addr, end := sampleAt(i)
		s := Sample{Name: name, Addr: addr}
		if end <= s.Addr || end-s.Addr > 4096 {
			return nil, fmt.Errorf("execmem: sample %s: end label %#x does not follow its entry %#x", s.Name, end, s.Addr)
		}
		s.Size = int(end - s.Addr)
		out = append(out, s)
	}
	// The padding runs to the next sample, or to 16-byte alignment.
	for i := range out {
		end := out[i].Addr + uintptr(out[i].Size)
		next := end + 64
		for _, o := range out {
			if o.Addr >= end && o.Addr < next {
				next = o.Addr
			}
		}
		if next == end+64 {
			next = (end + 15) &^ 15
		}
		out[i].Next = next
	}
	return out, nil
}
