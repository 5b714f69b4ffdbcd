package elfsym

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// ReadMappings reads and parses /proc/PID/maps.
func ReadMappings(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, fmt.Errorf("elfsym: %w", err)
	}
	defer f.Close()
	ms, err := ParseMappings(f)
	if err != nil {
		return nil, fmt.Errorf("%w (pid %d)", err, pid)
	}
	return ms, nil
}

const deletedSuffix = " (deleted)"

// ParseMappings parses the text of a maps file. Errors name the line.
func ParseMappings(r io.Reader) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMapping(line)
		if err != nil {
			return nil, fmt.Errorf("elfsym: maps line %d %q: %w", n, line, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("elfsym: maps after line %d: %w", n, err)
	}
	return out, nil
}

// parseMapping parses "START-END PERMS OFFSET DEV INODE [PATH]".
func parseMapping(line string) (Mapping, error) {
	var m Mapping
	rest := line
	field := func(what string) (string, error) {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return "", fmt.Errorf("missing %s", what)
		}
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			i = len(rest)
		}
		f := rest[:i]
		rest = rest[i:]
		return f, nil
	}
	rng, err := field("address range")
	if err != nil {
		return m, err
	}
	lo, hi, ok := strings.Cut(rng, "-")
	if !ok {
		return m, fmt.Errorf("address range %q has no '-'", rng)
	}
	if m.Start, err = strconv.ParseUint(lo, 16, 64); err != nil {
		return m, fmt.Errorf("start address: %w", err)
	}
	if m.End, err = strconv.ParseUint(hi, 16, 64); err != nil {
		return m, fmt.Errorf("end address: %w", err)
	}
	if m.End < m.Start {
		return m, fmt.Errorf("end %#x below start %#x", m.End, m.Start)
	}
	if m.Perms, err = field("permissions"); err != nil {
		return m, err
	}
	if len(m.Perms) != 4 {
		return m, fmt.Errorf("permissions %q are not 4 characters", m.Perms)
	}
	off, err := field("offset")
	if err != nil {
		return m, err
	}
	if m.Offset, err = strconv.ParseUint(off, 16, 64); err != nil {
		return m, fmt.Errorf("offset: %w", err)
	}
	if m.Dev, err = field("device"); err != nil {
		return m, err
	}
	if !strings.Contains(m.Dev, ":") {
		return m, fmt.Errorf("device %q is not MAJOR:MINOR", m.Dev)
	}
	ino, err := field("inode")
	if err != nil {
		return m, err
	}
	if m.Inode, err = strconv.ParseUint(ino, 10, 64); err != nil {
		return m, fmt.Errorf("inode: %w", err)
	}
	// The path is everything after the padding; it may contain spaces.
	p := strings.TrimLeft(rest, " \t")
	if strings.HasSuffix(p, deletedSuffix) && m.Inode != 0 {
		p = strings.TrimSuffix(p, deletedSuffix)
		m.Deleted = true
	}
	m.Path = p
	return m, nil
}

func (m Mapping) exec() bool { return len(m.Perms) > 2 && m.Perms[2] == 'x' }
