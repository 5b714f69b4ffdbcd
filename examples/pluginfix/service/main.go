// Command service is the worked example of fixing a Go service live with
// a Go plugin (README, "Fixing a Go service with a plugin"): an HTTP
// service that greets, with a typo in greeting, and the hotpatch agent.
//
//	GET /greet?name=Ada          → Helo, Ada!   (the bug)
//	GET /greet?name=Ada&wait=2s  → the same, after a slow upstream
//
// It prints "listening on ADDR" once it serves.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
)

// greeting has the bug: "Helo". //go:noinline keeps it one function that
// a patch replaces everywhere.
//
//go:noinline
func greeting(name string, wait time.Duration) string {
	time.Sleep(wait) // the slow upstream
	return "Helo, " + name + "!"
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	a, err := agent.Start(agent.Options{})
	if err != nil {
		log.Printf("no live fixes: %v", err) // the service runs anyway
	} else {
		defer a.Close()
	}
	http.HandleFunc("/greet", func(w http.ResponseWriter, r *http.Request) {
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		fmt.Fprintln(w, greeting(r.URL.Query().Get("name"), wait))
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, nil))
}
