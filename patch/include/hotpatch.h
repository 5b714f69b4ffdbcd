/*
 * hotpatch.h — declarations for a patch shared object loaded by
 * `hotpatch apply --lib fix.so --replace OLD=NEW`.
 *
 * HOTPATCH_PIN("<build-id hex>"); declares the GNU build ID of the binary or
 * library the patch was built for (the module that holds OLD). Repeat it to
 * pin several builds. `hotpatch apply` refuses the patch when the module
 * holding OLD has another build ID, and refuses a patch without any pin
 * unless --unpinned is given. Find a build ID with
 * `readelf -n BINARY | grep 'Build ID'` or `file BINARY`.
 *
 * Underneath, each pin is a NUL-terminated string in the section
 * ".hotpatch.pin" of the shared object, read from the file before it is
 * loaded.
 */
#ifndef HOTPATCH_H
#define HOTPATCH_H

#define HOTPATCH_CAT_(a, b) a##b
#define HOTPATCH_CAT(a, b) HOTPATCH_CAT_(a, b)

#define HOTPATCH_PIN(build_id)                                                    \
	__attribute__((used, section(".hotpatch.pin"), aligned(1))) static const char \
	HOTPATCH_CAT(hotpatch_pin_, __COUNTER__)[] = build_id

#endif
