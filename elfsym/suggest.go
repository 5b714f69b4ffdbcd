package elfsym

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// similar returns up to n "module:name" suggestions for an unknown name:
// the names a few typing mistakes away (edit distance) first, nearest
// first, then the names that contain its last component.
func (t *Table) similar(name string, n int) []string {
	sub := name
	if i := strings.LastIndexAny(sub, "./"); i >= 0 && i+1 < len(sub) {
		sub = sub[i+1:]
	}
	limit := 1 + len(name)/5 // 1 for short names, 2 from 5 bytes, ...
	type cand struct {
		name string
		rank int // edit distance, or limit+1 for a substring match
	}
	var cands []cand
	seen := map[string]bool{}
	for _, s := range t.syms {
		rank := -1
		if d := len(s.Name) - len(name); d >= -limit && d <= limit {
			if e := EditDistance(name, s.Name, limit); e <= limit {
				rank = e
			}
		}
		if rank < 0 && strings.Contains(s.Name, sub) {
			rank = limit + 1
		}
		key := s.Module.Name() + ":" + s.Name
		if rank < 0 || seen[key] {
			continue
		}
		seen[key] = true
		cands = append(cands, cand{key, rank})
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].rank < cands[j].rank })
	var out []string
	for i := 0; i < len(cands) && i < n; i++ {
		out = append(out, cands[i].name)
	}
	return out
}

// EditDistance is the Levenshtein distance of a and b (bytes), a swap of
// two neighbours counting as one edit; any distance above limit is
// reported as limit+1. It ranks suggestions for mistyped names.
func EditDistance(a, b string, limit int) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		best := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
			best = min(best, cur[j])
		}
		if best > limit {
			return limit + 1
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return min(prev[len(b)], limit+1)
}

// ErrOnlyInlined is matched (besides ErrUnknownSymbol) by a lookup of a
// function that has no out-of-line copy: the compiler inlined it into
// every caller, and only those copies run.
var ErrOnlyInlined = errors.New("function exists only inlined into its callers")

// OnlyInlinedError names where a function without an out-of-line copy was
// inlined.
type OnlyInlinedError struct {
	Name  string
	Sites []InlineSite
}

func (e *OnlyInlinedError) Error() string {
	var callers []string
	for _, s := range e.Sites {
		if !slices.Contains(callers, s.Caller) {
			callers = append(callers, s.Caller)
		}
	}
	more := ""
	if len(callers) > 10 {
		more = fmt.Sprintf(" and %d more", len(callers)-10)
		callers = callers[:10]
	}
	return fmt.Sprintf("elfsym: %q has no out-of-line copy: it was inlined into %s%s; patch those callers instead",
		e.Name, strings.Join(callers, ", "), more)
}

// Is matches ErrOnlyInlined and ErrUnknownSymbol (there is no symbol).
func (e *OnlyInlinedError) Is(target error) bool {
	return target == ErrOnlyInlined || target == ErrUnknownSymbol
}

// onlyInlined returns the inline sites of a name no symbol has, in the
// modules mod names ("" for every module); nil when it was never inlined
// either (or the inline records cannot be read).
func (t *Table) onlyInlined(name, mod string) []InlineSite {
	var sites []InlineSite
	for _, m := range t.Modules {
		if mod != "" && !m.matches(mod) {
			continue
		}
		m.inlineOnce.Do(func() { m.inlines, m.inlineErr = m.loadInlines() })
		if m.inlineErr == nil {
			sites = append(sites, m.inlines[name]...)
		}
	}
	return sites
}
