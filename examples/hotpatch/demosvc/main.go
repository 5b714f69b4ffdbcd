// demosvc is the service `hotpatch demo` patches: a small HTTP greeter that
// shipped with a typo. main.greeting has the bug; main.greetingFixed is the
// fix, compiled into the same binary, that the demo switches to live.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
)

//go:noinline
func greeting(name string) string { return "Helo, " + name + "!" }

//go:noinline
func greetingFixed(name string) string { return "Hello, " + name + "!" }

// keep the fix in the binary even though nothing calls it yet.
var fixes = []func(string) string{greetingFixed}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	if flag.NArg() > 0 { // never in the demo: keeps the fixes reachable
		for _, f := range fixes {
			fmt.Println(f(flag.Arg(0)))
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, greeting(r.URL.Query().Get("name")))
	})
	fmt.Printf("ready pid=%d addr=%s\n", os.Getpid(), ln.Addr())
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
