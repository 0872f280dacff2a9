/* SPDX-License-Identifier: MIT */
/*
 * internal.h - structs and prototypes shared between uhmm's source files.
 * Nothing here is exported: every symbol is hidden (-fvisibility=hidden).
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uhmm/common.h>

#define UHMM_HIDDEN __attribute__((visibility("hidden")))

#ifndef container_of
#define container_of(ptr, type, member)                                      \
	((type *)((char *)(ptr) - offsetof(type, member)))
#endif

#define UHMM_ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))
#define UHMM_ALIGN_UP(x, a) UHMM_ALIGN_DOWN((x) + (a) - 1, (a))
#define UHMM_IS_ALIGNED(x, a) (((x) & ((__typeof__(x))(a) - 1)) == 0)
#define UHMM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define UHMM_MAX(a, b) ((a) > (b) ? (a) : (b))
#define UHMM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t uhmm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* An address or pfn interval [start, end); arrays of them are kept sorted and disjoint. */
struct uhmm_span {
	uint64_t start;
	uint64_t end;				/* exclusive */
};

/*
 * Index of the first of @nr sorted, disjoint spans whose end is above @addr
 * (@nr if none): the only span that can contain @addr or overlap an interval
 * starting at @addr. Span i is at (char *)@spans + i * @stride, so arrays of
 * structs that begin with a struct uhmm_span are searched in place.
 */
static inline size_t uhmm_span_search(const void *spans, size_t nr,
				      size_t stride, uint64_t addr)
{
	size_t lo = 0, hi = nr;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct uhmm_span *s =
			(const void *)((const char *)spans + mid * stride);

		if (s->end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* log.c */
UHMM_HIDDEN void uhmm_log(enum uhmm_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
UHMM_HIDDEN bool uhmm_warn_once(bool cond, bool *done, const char *file,
				int line, const char *expr);

/*
 * calloc() for large per-page tables (entry tables, page structs): 2 MiB
 * aligned and THP-backed when 2 MiB or more. With THP in "madvise" mode a
 * plain calloc'd table takes a TLB miss every few pages, which on a
 * shadow-paging VM costs a migration of 1 GiB a third of its bandwidth.
 * Freed with free().
 */
UHMM_HIDDEN void *uhmm_calloc_huge(size_t n, size_t size);

/*
 * Private anonymous memory of @len bytes with protection @prot at an
 * @align-aligned address (a power of two, at least a page), not populated;
 * MADV_HUGEPAGE if @huge. Freed with munmap(p, len). NULL if mmap fails.
 */
UHMM_HIDDEN void *uhmm_map_aligned(size_t len, size_t align, int prot, bool huge);

/*
 * One idle scratch block kept for reuse, lock-free (a migration's control
 * block, the sim's per-migration arrays). Large blocks come from mmap, so
 * a malloc/free per migration pays page faults and page clearing each time.
 * uhmm_block_get() takes the idle block if it holds @size bytes (zeroed if
 * @zero), else allocates; uhmm_block_put() keeps the larger of the idle
 * block and @p and frees the other. @bc NULL: plain allocation.
 */
struct uhmm_block_cache {
	_Atomic(void *) idle;
};
UHMM_HIDDEN void *uhmm_block_get(struct uhmm_block_cache *bc, size_t size, bool zero);
UHMM_HIDDEN void uhmm_block_put(struct uhmm_block_cache *bc, void *p);
UHMM_HIDDEN void uhmm_block_cache_fini(struct uhmm_block_cache *bc);

/* Logs once per call site and evaluates to cond. Never replaces an argument check. */
#define UHMM_WARN_ON(cond)                                                   \
	({                                                                   \
		static bool uhmm_warned_;                                    \
		uhmm_warn_once(!!(cond), &uhmm_warned_, __FILE__, __LINE__,  \
			       #cond);                                       \
	})

#ifdef UHMM_DEBUG
#include <assert.h>
#define uhmm_assert(x) assert(x)
#else
#define uhmm_assert(x) ((void)0)
#endif

/* Debug builds could check lock ownership; release builds compile it away. */
#define uhmm_lockdep_assert_held(lock) ((void)(lock))

#endif
