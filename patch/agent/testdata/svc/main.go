// Command svc is the agent tests' service: greeting has the bug ("Helo"),
// greetingCompiled is a fix compiled in (for the CLI's --replace, the pause
// it takes is compared with the plugin path's).
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
	"github.com/hotpatch-dev/hotpatch/patch/agent/testdata/svc/greet"
)

//go:noinline
func greeting(name string, wait time.Duration) string {
	time.Sleep(wait)
	return "Helo, " + name + "!"
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
	http.HandleFunc("/greet", func(w http.ResponseWriter, r *http.Request) {
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		fmt.Fprintln(w, greeting(r.URL.Query().Get("name"), wait))
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
