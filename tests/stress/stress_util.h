/* SPDX-License-Identifier: MIT */
/*
 * stress_util.h - shared pieces of the stress drivers (stress.c, stress_dax.c):
 * seeded RNG, page content derived from (page, version), error tally.
 */
#ifndef UHMM_STRESS_UTIL_H
#define UHMM_STRESS_UTIL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ST_PAGE 4096UL
#define ST_WORDS (ST_PAGE / 8)

/* splitmix64: small, seedable, good enough to pick operations. */
struct st_rng {
	uint64_t s;
};

static inline uint64_t st_next(struct st_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. */
static inline uint64_t st_below(struct st_rng *r, uint64_t n)
{
	return st_next(r) % n;
}

/* [lo, hi] inclusive. */
static inline uint64_t st_range(struct st_rng *r, uint64_t lo, uint64_t hi)
{
	return lo + st_below(r, hi - lo + 1);
}

static inline uint64_t st_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/*
 * Content of page @page at version @ver: word 0 is the tag (page << 40 | ver)
 * so a wrong page or a stale version can be named; version 0 is all zeros.
 */
static inline uint64_t st_tag(uint64_t page, uint64_t ver)
{
	return (page << 40) | (ver & ((1ULL << 40) - 1));
}

static inline uint64_t st_word(uint64_t tag, uint64_t k)
{
	return k ? (tag * 0x9e3779b97f4a7c15ULL) ^ (k * 0xd6e8feb86659fd93ULL) : tag;
}

static inline void st_fill(void *dst, uint64_t page, uint64_t ver)
{
	uint64_t *w = dst, tag = st_tag(page, ver);

	if (!ver) {
		memset(dst, 0, ST_PAGE);
		return;
	}
	for (uint64_t k = 0; k < ST_WORDS; k++)
		w[k] = st_word(tag, k);
}

/* Index of the first bad word, or -1 when @src holds (page, ver). */
static inline long st_check(const void *src, uint64_t page, uint64_t ver)
{
	const uint64_t *w = src;
	uint64_t tag = st_tag(page, ver);

	for (uint64_t k = 0; k < ST_WORDS; k++) {
		uint64_t want = ver ? st_word(tag, k) : 0;

		if (w[k] != want)
			return (long)k;
	}
	return -1;
}

/* Describe what a page holds instead: "(page P version V)" or "junk". */
static inline void st_describe(const void *src, char *buf, size_t len)
{
	const uint64_t *w = src;
	uint64_t tag = w[0];
	long bad = -1;

	for (uint64_t k = 0; k < ST_WORDS; k++)
		if (w[k] != (tag ? st_word(tag, k) : 0)) {
			bad = (long)k;
			break;
		}
	if (bad < 0 && !tag)
		snprintf(buf, len, "zeros");
	else if (bad < 0)
		snprintf(buf, len, "page %llu version %llu",
			 (unsigned long long)(tag >> 40),
			 (unsigned long long)(tag & ((1ULL << 40) - 1)));
	else
		snprintf(buf, len, "tag %#llx, inconsistent from word %ld",
			 (unsigned long long)tag, bad);
}

/* Per-operation tally: calls, successes and errnos seen. */
#define ST_MAX_ERRNO 140
struct st_tally {
	const char *name;
	_Atomic uint64_t calls;
	_Atomic uint64_t ok;
	_Atomic uint64_t err[ST_MAX_ERRNO];
};

static inline void st_count(struct st_tally *t, int rc)
{
	atomic_fetch_add_explicit(&t->calls, 1, memory_order_relaxed);
	if (rc >= 0)
		atomic_fetch_add_explicit(&t->ok, 1, memory_order_relaxed);
	else if (-rc < ST_MAX_ERRNO)
		atomic_fetch_add_explicit(&t->err[-rc], 1, memory_order_relaxed);
}

static inline void st_print_tally(FILE *f, struct st_tally *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!atomic_load(&t[i].calls))
			continue;
		fprintf(f, "  %-18s %10llu calls %10llu ok", t[i].name,
			(unsigned long long)atomic_load(&t[i].calls),
			(unsigned long long)atomic_load(&t[i].ok));
		for (int e = 1; e < ST_MAX_ERRNO; e++)
			if (atomic_load(&t[i].err[e]))
				fprintf(f, "  %s:%llu", strerrorname_np(e) ? strerrorname_np(e) : "?",
					(unsigned long long)atomic_load(&t[i].err[e]));
		fputc('\n', f);
	}
}

#endif
