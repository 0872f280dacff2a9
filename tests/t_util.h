/* SPDX-License-Identifier: MIT */
/* t_util.h - shared helpers for uhmm's Check-based unit tests. */
#ifndef T_UTIL_H
#define T_UTIL_H

#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uhmm/mirror.h>

#define T_PAGE 4096UL

/*
 * Run the test cases (NULL-terminated) as one suite in fork mode: every test
 * runs in its own process with a timeout (default 30 s per test, scaled by
 * CK_TIMEOUT_MULTIPLIER). Prints a summary line that tests/run.sh parses.
 * Returns the process exit status: 0 all passed, 1 otherwise.
 */
int t_run_suite(const char *name, TCase *tc, ...);

/*
 * Create the test case @name with the checked fixture @setup/@teardown (both
 * may be NULL) and add @tests, a NULL-terminated array of START_TEST names,
 * in order. T_TCASE takes the tests as arguments.
 */
TCase *t_tcase(const char *name, SFun setup, SFun teardown,
	       const TTest *const *tests);
#define T_TCASE(name, setup, teardown, ...)                                  \
	t_tcase(name, setup, teardown, (const TTest *const[]){ __VA_ARGS__, NULL })

/*
 * Mark the current test skipped (a missing kernel feature, no huge pages):
 * prints "SKIP: <reason>" which run.sh counts; the caller then returns.
 */
#define t_skip(...)                                                          \
	do {                                                                 \
		printf("SKIP: %s: ", __func__);                              \
		printf(__VA_ARGS__);                                         \
		printf("\n");                                                \
		fflush(stdout);                                              \
	} while (0)

/* mmap an anonymous private read-write area of @len bytes; aborts the test on failure. */
void *t_map_anon(size_t len);
/* Fill @len bytes with a pattern derived from @seed; t_check_pattern returns the first bad offset or -1. */
void t_fill_pattern(void *p, size_t len, uint64_t seed);
long t_check_pattern(const void *p, size_t len, uint64_t seed);
/* Offset of the first non-zero byte of @p, or -1 (one assertion, not one per byte:
 * each passing ck_assert sends a message to the runner). */
long t_first_nonzero(const void *p, size_t len);
/* Monotonic time in nanoseconds. */
uint64_t t_now_ns(void);
/* Number of resident pages of [p, p+len) via mincore(). */
size_t t_resident_pages(const void *p, size_t len);

/*
 * A recording interval notifier, the tests' device stand-in: every
 * invalidation is logged under its lock (the first T_REC_MAX in log[]) and
 * acknowledged with uhmm_interval_set_seq(). An optional hook runs inside the
 * callback, after logging, without the lock.
 */
#define T_REC_MAX 64
struct t_rec {
	struct uhmm_interval_notifier n;
	pthread_mutex_t lock;		/* protects count and log */
	int count;			/* callbacks so far */
	struct {
		enum uhmm_event ev;
		uint64_t start, end, new_start;
		unsigned int flags;
		unsigned long seq;
		void *owner;
	} log[T_REC_MAX];
	void (*hook)(struct t_rec *r, const struct uhmm_notifier_range *range);
	void *arg;			/* for the hook */
	int hook_ret;
};
extern const struct uhmm_interval_notifier_ops t_rec_ops;

/* A zeroed, not yet inserted recorder; free() it when never inserted. */
struct t_rec *t_rec_new(void);
/* Insert @r over [@p, @p + @len) of @mm; aborts the test on failure. */
void t_rec_insert(struct t_rec *r, struct uhmm_mm *mm, const void *p, size_t len);
/* Remove @r (must succeed) and free it. */
void t_rec_free(struct t_rec *r);
int t_rec_count(struct t_rec *r);
/*
 * Events read by the handler thread are delivered asynchronously: wait up to
 * 5 s for @n callbacks, then a little longer to catch extra ones.
 */
int t_rec_wait(struct t_rec *r, int n);
/* Did @r log an @ev invalidation carrying @owner? */
bool t_rec_has(struct t_rec *r, enum uhmm_event ev, void *owner);

/*
 * Map @len bytes (a multiple of 2 MiB) of private hugetlb memory, reserving
 * that many more 2 MiB pages in /proc/sys/vm/nr_hugepages first. Returns
 * NULL when either step fails, with the reservation undone and *@why set to
 * a reason for t_skip(). t_hugetlb_unmap() unmaps and gives the pages back.
 */
void *t_hugetlb_map(size_t len, const char **why);
void t_hugetlb_unmap(void *p, size_t len);

/*
 * Start @n threads running @fn; thread i gets (char *)@arg + i * @stride
 * (@stride 0: all get @arg). Aborts the test if one cannot be created.
 */
void t_threads_start(pthread_t *th, unsigned n, void *(*fn)(void *), void *arg,
		     size_t stride);
/* Join @n threads; with @rets, store each one's return value there. */
void t_threads_join(pthread_t *th, unsigned n, void **rets);
/* Start, as above, and join @n (<= T_MAX_THREADS) threads; each must return NULL. */
#define T_MAX_THREADS 64
void t_threads_run(unsigned n, void *(*fn)(void *), void *arg, size_t stride);

#endif
