// arm64goprog is cross-compiled with GOARCH=arm64 by
// TestARM64CompilerOutput, which plans a patch of every function in it
// (its own and the runtime's): small and large frames, recursion, closures,
// methods, defers and goroutines.
package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

//go:noinline
func fib(n int) int {
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

//go:noinline
func bigFrame(x int) int {
	var buf [20000]byte
	for i := range buf {
		buf[i] = byte(i * x)
	}
	return int(buf[123]) + int(buf[19999])
}

type acc struct{ n int }

//go:noinline
func (a *acc) add(x int) { a.n += x }

//go:noinline
func constant(x int) int { return x*0x123456789abcdef + 0x7766554433221100 }

func main() {
	var a acc
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			a.add(fib(10 + i))
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Println(a.n, bigFrame(len(os.Args)), constant(3), strings.Repeat("x", 3))
}
