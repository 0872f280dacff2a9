/* SPDX-License-Identifier: MIT */
/* t_util.h - shared helpers for uhmm's Check-based unit tests. */
#ifndef T_UTIL_H
#define T_UTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define T_PAGE 4096UL

/*
 * Run the test cases (NULL-terminated) as one suite in fork mode: every test
 * runs in its own process with a timeout (default 30 s per test, scaled by
 * CK_TIMEOUT_MULTIPLIER). Prints a summary line that tests/run.sh parses.
 * Returns the process exit status: 0 all passed, 1 otherwise.
 */
int t_run_suite(const char *name, TCase *tc, ...);

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
/* Monotonic time in nanoseconds. */
uint64_t t_now_ns(void);
/* Number of resident pages of [p, p+len) via mincore(). */
size_t t_resident_pages(const void *p, size_t len);

#endif
