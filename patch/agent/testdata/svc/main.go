// Command svc is the agent tests' service: greeting has the bug ("Helo"),
// greetingCompiled is a fix compiled in (for the CLI's --replace, the pause
// it takes is compared with the plugin path's). GET /greet?name=N&hold
// parks the request inside greeting until GET /release; GET /held counts
// the requests parked so.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
	"github.com/hotpatch-dev/hotpatch/patch/agent/testdata/svc/greet"
)

//go:noinline
func greeting(name string, wait time.Duration) string {
	pause(wait)
	return "Helo, " + name + "!"
}

// held counts the requests parked in greeting until the next /release
// (a request with ?hold): the tests' slow request, whose end the test
// decides instead of racing a timer.
var held struct {
	sync.Mutex
	n       int
	release chan struct{}
}

// pause sleeps for wait or, when wait is negative, until /release.
func pause(wait time.Duration) {
	if wait >= 0 {
		time.Sleep(wait)
		return
	}
	held.Lock()
	held.n++
	c := held.release
	held.Unlock()
	<-c
	held.Lock()
	held.n--
	held.Unlock()
}

//go:noinline
func greetingCompiled(name string, wait time.Duration) string {
	time.Sleep(wait)
	return "Hello, " + name + "! (compiled in)"
}

var fixes = []func(string, time.Duration) string{greetingCompiled}

func main() {
	if len(os.Args) > 99 {
		fmt.Println(fixes[0]("", 0))
	}
	a, err := agent.Start(agent.Options{})
	if err != nil {
		log.Printf("no live fixes: %v", err)
	} else {
		defer a.Close()
	}
	held.release = make(chan struct{})
	http.HandleFunc("/greet", func(w http.ResponseWriter, r *http.Request) {
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		if r.URL.Query().Has("hold") {
			wait = -1
		}
		fmt.Fprintln(w, greeting(r.URL.Query().Get("name"), wait))
	})
	http.HandleFunc("/held", func(w http.ResponseWriter, r *http.Request) {
		held.Lock()
		defer held.Unlock()
		fmt.Fprintln(w, held.n)
	})
	http.HandleFunc("/release", func(w http.ResponseWriter, r *http.Request) {
		held.Lock()
		defer held.Unlock()
		close(held.release)
		held.release = make(chan struct{})
		fmt.Fprintln(w, "released")
	})
	http.HandleFunc("/shout", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, greet.Shout(r.URL.Query().Get("name")))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, nil))
}
