//go:build linux

package patch

import "encoding/json"

// The JSON of every type a script reads has one shape: a list with nothing
// in it is [], never null and never left out.

// MarshalJSON encodes r with its empty lists as [].
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	p := plain(r)
	p.Functions = orEmpty(p.Functions)
	p.Forced = orEmpty(p.Forced)
	return json.Marshal(p)
}

// MarshalJSON encodes f with its empty lists as [].
func (f Function) MarshalJSON() ([]byte, error) {
	type plain Function
	p := plain(f)
	p.InlinedInto = orEmpty(p.InlinedInto)
	return json.Marshal(p)
}

// MarshalJSON encodes r with its empty lists as [].
func (r Record) MarshalJSON() ([]byte, error) {
	type plain Record
	p := plain(r)
	p.Functions = orEmpty(p.Functions)
	p.PendingTasks = orEmpty(p.PendingTasks)
	return json.Marshal(p)
}

// MarshalJSON encodes p with its empty lists as [].
func (p Progress) MarshalJSON() ([]byte, error) {
	type plain Progress
	q := plain(p)
	q.Oldest = orEmpty(q.Oldest)
	return json.Marshal(q)
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
