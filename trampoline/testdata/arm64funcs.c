/* Functions whose arm64 code exercises the relocator: globals through
 * ADRP, loops that branch back to (or near) the entry, tail calls, switches
 * with jump tables, floating-point constants, calls in the prologue. Built
 * by TestARM64CompilerOutput with several flag sets (-O0, -O2,
 * -fpatchable-function-entry, -mcmodel=tiny for ADR and LDR literal,
 * -mbranch-protection=standard for BTI/PAC). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long counter;
static long table[16] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};
double scale = 1.5;

__attribute__((noinline)) long gcd(long a, long b) { return b == 0 ? a : gcd(b, a % b); }
__attribute__((noinline)) long count_down(long n) {
	while (n > 0)
		n -= 3;
	return n;
}
__attribute__((noinline)) long bump(long x) { counter += x; return counter; }
__attribute__((noinline)) long lookup(long i) { return table[i & 15] * 10 + i; }
__attribute__((noinline)) double fscale(double x) { return x * scale + 0.25; }
__attribute__((noinline)) float fconst(float x) { return x * 3.1415926f - 2.718f; }
__attribute__((noinline)) long tail(long x) { return x > 100 ? bump(x) : lookup(x); }
__attribute__((noinline)) long sw(int k, long v) {
	switch (k) {
	case 0: return v + 1;
	case 1: return v * 3;
	case 2: return v - 7;
	case 3: return v << 2;
	case 4: return v ^ 0x55;
	case 5: return -v;
	case 6: return v / 3;
	default: return 0;
	}
}
__attribute__((noinline)) long bits(unsigned long x) {
	long n = 0;
	if (x & (1ul << 40))
		n += 100;
	if (!(x & 4))
		n += 10;
	return n + __builtin_popcountl(x);
}
__attribute__((noinline)) long sum_to(long n) {
	long s = 0;
	for (long i = 0; i <= n; i++)
		s += i * i ^ (s >> 3);
	return s;
}
__attribute__((noinline)) long callfirst(long x) { return bump(x) + lookup(x) + gcd(x, 12); }
__attribute__((noinline)) int atomic_add(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
__attribute__((noinline)) void msg(const char *s) { puts(s); }
__attribute__((noinline)) long big_frame(long x) {
	volatile char buf[8192];
	memset((char *)buf, (int)x, sizeof buf);
	return buf[100] + buf[8000];
}

int main(int argc, char **argv) {
	int a = argc;
	long x = argc > 1 ? strtol(argv[1], 0, 0) : 5;
	printf("%ld %ld %ld %ld %f %f %ld %ld %ld %ld %ld %d %ld\n", gcd(x, 30), count_down(x), tail(x), sw(argc, x),
	       fscale(x), fconst(x), bits(x), sum_to(x), callfirst(x), lookup(x), bump(1), atomic_add(&a, 2), big_frame(x));
	msg("ok");
	return 0;
}
