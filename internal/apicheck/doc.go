// Package apicheck holds the test that keeps the module's public API free of
// types users cannot name: no exported identifier of a package outside
// internal/ may mention, in its signature, its exported fields or its
// methods, a type declared under internal/.
package apicheck
