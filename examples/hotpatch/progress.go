package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// progress reports the pauses of a gradual transition: as JSON lines on
// stdout when streaming; else on stderr, as one live status line on a
// terminal, or off a terminal as a line at most every second (and every
// event that is not a routine pause).
type progress struct {
	stdout, stderr io.Writer
	streaming, tty bool
	timeout        time.Duration
	start, last    time.Time
	moved          int
	now            func() time.Time
}

// progressEvery is the least time between two routine lines off a
// terminal.
const progressEvery = time.Second

func newProgress(stdout, stderr io.Writer, streaming bool, timeout time.Duration) *progress {
	p := &progress{stdout: stdout, stderr: stderr, streaming: streaming, timeout: timeout, now: time.Now}
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	p.start = p.now()
	return p
}

func (p *progress) report(ev patch.Progress) {
	if p.streaming {
		writeLine(p.stdout, ev)
		return
	}
	p.moved += ev.Moved
	now := p.now()
	line := fmt.Sprintf("%s %s %s/%s: %d task(s) pending, %d moved so far (pause %d us)", ev.ID, ev.Event,
		now.Sub(p.start).Round(100*time.Millisecond), p.timeout, ev.Pending, p.moved, ev.PauseMicros)
	if len(ev.Oldest) > 0 {
		line += ", oldest " + ev.Oldest[0].Task
		if in := ev.Oldest[0].In; in != "" {
			line += " in " + in
		} else if len(ev.Oldest[0].Stack) > 0 {
			line += " at " + ev.Oldest[0].Stack[0]
		}
	}
	routine := ev.Event == patch.EventProgress || ev.Event == patch.EventRetry
	if p.tty && routine {
		fmt.Fprintf(p.stderr, "\r\033[K%s", line)
		return
	}
	if routine && now.Sub(p.last) < progressEvery {
		return
	}
	p.last = now
	if p.tty {
		fmt.Fprint(p.stderr, "\r\033[K")
	}
	fmt.Fprintln(p.stderr, line)
	if ev.Event == patch.EventTransition || ev.Event == patch.EventReverting || ev.Event == patch.EventTimeout {
		for _, o := range ev.Oldest {
			fmt.Fprintf(p.stderr, "  %s\n", o.Task)
			for i, f := range o.Stack {
				fmt.Fprintf(p.stderr, "      #%-2d %s\n", i, f)
			}
		}
	}
}
