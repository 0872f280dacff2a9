// SPDX-License-Identifier: MIT
/* pagemap_alloc.c - the device page allocator: each pagemap's pool of free
 * pages, a two-level bitmap. Internal API in pagemap_internal.h; the public
 * uhmm_pagemap_alloc_pages() (pagemap.c) calls it under the pagemap's lock. */
#include <stdatomic.h>
#include <stdlib.h>
#include "pagemap_internal.h"

#define POOL_NONE UINT64_MAX

int uhmm_page_pool_init(struct uhmm_page_pool *pool, struct uhmm_page *pages,
			const uint64_t *first, unsigned int nr_range)
{
	uint64_t nr_pages = first[nr_range];

	pool->pages = pages;
	pool->first = first;
	pool->nr_range = nr_range;
	atomic_init(&pool->nr_free, 0);
	pool->nr_words = (nr_pages + 63) / 64;
	pool->nr_sum = (pool->nr_words + 63) / 64;
	pool->sum_hint = 0;
	pool->bm = calloc(pool->nr_words + pool->nr_sum, sizeof(uint64_t));
	if (!pool->bm)
		return -ENOMEM;
	pool->bm_sum = pool->bm + pool->nr_words;
	return 0;
}

void uhmm_page_pool_fini(struct uhmm_page_pool *pool)
{
	free(pool->bm);
	pool->bm = pool->bm_sum = NULL;
}

void uhmm_page_pool_fill(struct uhmm_page_pool *pool, uint64_t lo, uint64_t hi)
{
	uint64_t i = lo;

	while (i < hi) {
		if (i % 64 == 0 && hi - i >= 64) {
			pool->bm[i / 64] = ~0ULL;
			i += 64;
		} else {
			pool->bm[i / 64] |= 1ULL << (i % 64);
			i++;
		}
	}
	for (size_t w = 0; w < pool->nr_words; w++)
		if (pool->bm[w])
			pool->bm_sum[w / 64] |= 1ULL << (w % 64);
	pool->sum_hint = 0;
	atomic_store(&pool->nr_free, hi - lo);
}

void uhmm_page_pool_release(struct uhmm_page_pool *pool, uint64_t idx)
{
	size_t w = idx / 64;

	pool->bm[w] |= 1ULL << (idx % 64);
	pool->bm_sum[w / 64] |= 1ULL << (w % 64);
	if (w / 64 < pool->sum_hint)
		pool->sum_hint = w / 64;
	atomic_fetch_add(&pool->nr_free, 1);
}

/* Lowest free page, or POOL_NONE. O(1) while the hint word has free pages. */
static uint64_t pool_first(struct uhmm_page_pool *pool)
{
	for (size_t s = pool->sum_hint; s < pool->nr_sum; s++) {
		if (pool->bm_sum[s]) {
			size_t w = s * 64 + (size_t)__builtin_ctzll(pool->bm_sum[s]);

			pool->sum_hint = s;
			return (uint64_t)w * 64 + (uint64_t)__builtin_ctzll(pool->bm[w]);
		}
	}
	pool->sum_hint = pool->nr_sum;
	return POOL_NONE;
}

/* First used page in [i, end), or end. */
static uint64_t pool_next_used(const uint64_t *bm, uint64_t i, uint64_t end)
{
	while (i < end) {
		uint64_t w = ~bm[i / 64] & (~0ULL << (i % 64));

		if (w) {
			uint64_t r = (i & ~63ULL) + (uint64_t)__builtin_ctzll(w);

			return r < end ? r : end;
		}
		i = (i | 63) + 1;
	}
	return end;
}

/* First free page in [i, end), or end; whole used words skipped by the summary. */
static uint64_t pool_next_free(const struct uhmm_page_pool *pool, uint64_t i, uint64_t end)
{
	while (i < end) {
		uint64_t w = pool->bm[i / 64] & (~0ULL << (i % 64)), wi, sm;
		size_t s;

		if (w) {
			uint64_t r = (i & ~63ULL) + (uint64_t)__builtin_ctzll(w);

			return r < end ? r : end;
		}
		wi = i / 64 + 1;		/* the next word with a free page */
		s = wi / 64;
		if (s >= pool->nr_sum)
			return end;
		sm = pool->bm_sum[s] & (~0ULL << (wi % 64));
		while (!sm) {
			if (++s >= pool->nr_sum)
				return end;
			sm = pool->bm_sum[s];
		}
		i = ((uint64_t)s * 64 + (uint64_t)__builtin_ctzll(sm)) * 64;
	}
	return end;
}

/* Hand out pages [s, s + n), all free: bits cleared a word at a time. */
static void pool_take_run(struct uhmm_page_pool *pool, uint64_t s, uint64_t n,
			  struct uhmm_page **out)
{
	for (uint64_t i = s; i < s + n;) {
		uint64_t w = i / 64, lo = i % 64, cnt = UHMM_MIN(64 - lo, s + n - i);
		uint64_t mask = (cnt == 64 ? ~0ULL : ((1ULL << cnt) - 1)) << lo;

		pool->bm[w] &= ~mask;
		if (!pool->bm[w])
			pool->bm_sum[w / 64] &= ~(1ULL << (w % 64));
		i += cnt;
	}
	for (uint64_t k = 0; k < n; k++) {
		struct uhmm_page *page = &pool->pages[s + k];

		__atomic_store_n(&page->flags, UHMM_PAGE_ALLOCATED, __ATOMIC_RELAXED);
		__atomic_store_n(&page->refcount, 1, __ATOMIC_RELEASE);
		out[k] = page;
	}
}

static void pool_take(struct uhmm_page_pool *pool, uint64_t idx,
		      struct uhmm_page **out)
{
	pool_take_run(pool, idx, 1, out);
}

static int pool_alloc_contig(struct uhmm_page_pool *pool, uint64_t n,
			     struct uhmm_page **out)
{
	for (unsigned r = 0; r < pool->nr_range; r++) {
		uint64_t i = pool->first[r], hi = pool->first[r + 1];

		/* Lowest run of n free pages inside range r. */
		while (hi - i >= n) {
			uint64_t s = pool_next_free(pool, i, hi), e;

			if (hi - s < n)
				break;
			e = pool_next_used(pool->bm, s, s + n);
			if (e == s + n) {
				pool_take_run(pool, s, n, out);
				return 0;
			}
			i = e;
		}
	}
	return -ENOSPC;
}

int uhmm_page_pool_alloc(struct uhmm_page_pool *pool, uint64_t n,
			 unsigned int flags, struct uhmm_page **out)
{
	if (n > atomic_load_explicit(&pool->nr_free, memory_order_relaxed))
		return -ENOSPC;
	if ((flags & UHMM_ALLOC_CONTIG) && n > 1) {
		int ret = pool_alloc_contig(pool, n, out);

		if (ret)
			return ret;
	} else {
		/* nr_free >= n: each search finds a page. */
		for (uint64_t k = 0; k < n; k++)
			pool_take(pool, pool_first(pool), &out[k]);
	}
	atomic_fetch_sub(&pool->nr_free, n);
	return 0;
}
