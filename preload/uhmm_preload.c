// SPDX-License-Identifier: MIT
/*
 * uhmm_preload.c - libuhmm-preload.so: LD_PRELOAD interposition of mprotect,
 * munmap, madvise and mremap, so that an unmodified program's mapping changes
 * reach uhmm's interval notifiers *before* they take effect (PROTECTION,
 * UNMAP, CLEAR; see uhmm_mprotect() and friends in include/uhmm/mm.h).
 *
 * It links against libuhmm.so.0, so it shares the list of open mms with a
 * program (or a library in it) that uses libuhmm.so. Calls made by libuhmm
 * itself, and calls while no mm is open, go straight to libc.
 *
 * Trace mode, for tests and demos: with UHMM_PRELOAD_TRACE=<file> set, the
 * constructor opens an mm, registers one notifier over the whole user address
 * space and appends one line per invalidation to <file>:
 *	<event> <start hex> <end hex> <perms of start at callback time>
 * e.g. "2 7f..000 7f..000 rw-p" for an mprotect(PROT_READ) delivered before
 * the change. The destructor closes the mm (one RELEASE line).
 *
 * Limits: glibc's own internal munmap/madvise (malloc trimming) bypass PLT
 * and are not seen; a notifier callback must not itself call these functions
 * on a thread that uhmm's handler uses (the rule of include/uhmm/mirror.h).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uhmm/mm.h>
#include <uhmm/mirror.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT int mprotect(void *addr, size_t len, int prot);
EXPORT int munmap(void *addr, size_t len);
EXPORT int madvise(void *addr, size_t len, int advice);
EXPORT void *mremap(void *old_addr, size_t old_len, size_t new_len, int flags, ...);

/* Depth of calls already inside a wrapper (or inside dlsym): pass through. */
static __thread int in_wrap;

/* Direct system calls: usable before dlsym resolved anything, and by
 * libuhmm's own calls (re-entry), which must not be forwarded again. */
static int sys_mprotect(void *a, size_t l, int p)
{
	return (int)syscall(SYS_mprotect, a, l, p);
}

static int sys_munmap(void *a, size_t l)
{
	return (int)syscall(SYS_munmap, a, l);
}

static int sys_madvise(void *a, size_t l, int adv)
{
	return (int)syscall(SYS_madvise, a, l, adv);
}

static void *sys_mremap(void *o, size_t ol, size_t nl, int f, void *n)
{
	return (void *)syscall(SYS_mremap, o, ol, nl, f, n);
}

/* A uhmm_* return value (0 or -errno) as a libc return value. */
static int ret_libc(int rc)
{
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	return 0;
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
	int rc;

	if (in_wrap)
		return sys_mprotect(addr, len, prot);
	in_wrap++;
	rc = uhmm_mprotect(addr, len, prot);
	in_wrap--;
	return ret_libc(rc);
}

EXPORT int munmap(void *addr, size_t len)
{
	int rc;

	if (in_wrap)
		return sys_munmap(addr, len);
	in_wrap++;
	rc = uhmm_munmap(addr, len);
	in_wrap--;
	return ret_libc(rc);
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
	int rc;

	if (in_wrap)
		return sys_madvise(addr, len, advice);
	in_wrap++;
	rc = uhmm_madvise(addr, len, advice);
	in_wrap--;
	return ret_libc(rc);
}

EXPORT void *mremap(void *old_addr, size_t old_len, size_t new_len, int flags, ...)
{
	void *fixed = NULL, *out = MAP_FAILED;
	int rc;

	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;

		va_start(ap, flags);
		fixed = va_arg(ap, void *);
		va_end(ap);
	}
	if (in_wrap)
		return sys_mremap(old_addr, old_len, new_len, flags, fixed);
	in_wrap++;
	rc = uhmm_mremap(old_addr, old_len, new_len, flags, fixed, &out);
	in_wrap--;
	if (rc < 0) {
		errno = -rc;
		return MAP_FAILED;
	}
	return out;
}

/* ---------------------------------------------------------------------- */
/* trace mode                                                              */

static struct uhmm_mm *trace_mm;
static struct uhmm_interval_notifier trace_sub;
static int trace_fd = -1;

/* Permissions of the mapping holding @addr, from /proc/self/maps ("----"
 * when unmapped). Runs in the callback, before the change. */
static void perms_of(uint64_t addr, char out[5])
{
	static __thread char buf[65536];
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	ssize_t n = 0, r;

	memcpy(out, "----", 5);
	if (fd < 0)
		return;
	while (n < (ssize_t)sizeof(buf) - 1 &&
	       (r = read(fd, buf + n, sizeof(buf) - 1 - (size_t)n)) > 0)
		n += r;
	close(fd);
	buf[n] = 0;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		unsigned long s, e;
		char p[5];

		if (sscanf(line, "%lx-%lx %4s", &s, &e, p) == 3 && s <= addr && addr < e) {
			memcpy(out, p, 5);
			return;
		}
		line = nl ? nl + 1 : NULL;
	}
}

static bool trace_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	char line[128], perms[5];
	int n;

	uhmm_interval_set_seq(sub, cur_seq);
	perms_of(range->start, perms);
	n = snprintf(line, sizeof(line), "%d %llx %llx %s\n", (int)range->event,
		     (unsigned long long)range->start,
		     (unsigned long long)range->end, perms);
	if (n > 0 && write(trace_fd, line, (size_t)n) < 0)
		return true;
	return true;
}

static const struct uhmm_interval_notifier_ops trace_ops = {
	.invalidate = trace_invalidate,
};

__attribute__((constructor)) static void preload_init(void)
{
	const char *path = getenv("UHMM_PRELOAD_TRACE");

	if (!path || !*path)
		return;
	trace_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (trace_fd < 0)
		return;
	in_wrap++;
	if (uhmm_mm_open(&trace_mm, NULL) == 0 &&
	    uhmm_interval_notifier_insert(&trace_sub, trace_mm, UHMM_PAGE_SIZE,
					  (1ULL << 47) - 2 * UHMM_PAGE_SIZE,
					  &trace_ops)) {
		uhmm_mm_close(trace_mm);
		trace_mm = NULL;
	}
	in_wrap--;
}

__attribute__((destructor)) static void preload_fini(void)
{
	if (trace_mm) {
		in_wrap++;
		uhmm_mm_close(trace_mm);	/* RELEASE, then stop the handler */
		trace_mm = NULL;
		in_wrap--;
	}
	if (trace_fd >= 0)
		close(trace_fd);
	trace_fd = -1;
}
