/* SPDX-License-Identifier: MIT */
/*
 * pagemap_internal.h - what the pagemap offers the rest of uhmm (migrate,
 * sim, dax): the teardown eviction hook and page iteration helpers; and the
 * device page allocator (pagemap_alloc.c) that pagemap.c builds on.
 * Nothing here is exported.
 */
#ifndef UHMM_PAGEMAP_INTERNAL_H
#define UHMM_PAGEMAP_INTERNAL_H

#include <uhmm/pagemap.h>
#include "internal.h"

/*
 * Called by uhmm_memunmap_pages() (and each _timeout() attempt) for PRIVATE
 * and COHERENT pagemaps, after the pagemap is marked dying (gets and allocs
 * fail) and before waiting for references to drain: it should move every
 * page still holding CPU data back to system memory, so that the pages'
 * references go away. Called with no uhmm lock held, on the thread calling
 * memunmap; may block. Return 0 or a negative errno (logged, teardown still
 * waits for the references).
 */
typedef int (*uhmm_pagemap_evict_fn)(struct uhmm_pagemap *pgmap);

/* Install (NULL: remove) the eviction hook; one hook per process. Any thread. */
UHMM_HIDDEN void uhmm_pagemap_set_evict_hook(uhmm_pagemap_evict_fn fn);

/*
 * The @idx-th page of a registered pagemap, counting across its ranges in
 * range order (page 0 is ranges[0].start), or NULL if @idx >= nr_pages or
 * @pgmap is not registered. No reference taken. Walk every page with
 * idx = 0 .. uhmm_pagemap_nr_pages() - 1.
 */
UHMM_HIDDEN struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap,
						uint64_t idx);

/*
 * uhmm_pfn_to_page() that also tells how far the range goes: pfns
 * [pfn, pfn + *left) are pages [page, page + *left), their host memory
 * (if any) contiguous too. For loops over contiguous pfns.
 */
UHMM_HIDDEN struct uhmm_page *uhmm_pfn_to_page_run(uint64_t pfn, uint64_t *left);

/* Inverse of uhmm_pagemap_page(): the page's index in its pagemap. */
UHMM_HIDDEN uint64_t uhmm_page_index(const struct uhmm_page *page);

/*
 * True once uhmm_memunmap_pages() has started on @pgmap (no new gets or
 * allocations), and for NULL or unregistered pagemaps.
 */
UHMM_HIDDEN bool uhmm_pagemap_is_dying(struct uhmm_pagemap *pgmap);

/* ---------------------------------------------------------------------- */
/* Device page allocator (pagemap_alloc.c)                                */

/*
 * The free pages of one pagemap: a two-level bitmap, one bit per page
 * (set = free), that finds the lowest free page in O(1) and a contiguous
 * run inside one range by scanning words. It lives in the pagemap's private
 * state, and the pagemap's lock protects all of it; nr_free is also read
 * without the lock.
 */
struct uhmm_page_pool {
	struct uhmm_page *pages;		/* the pagemap's page structs */
	const uint64_t *first;			/* first page index per range; [nr_range] = nr_pages */
	unsigned int nr_range;
	_Atomic uint64_t nr_free;
	uint64_t *bm;				/* one bit per page, set = free */
	uint64_t *bm_sum;			/* bit w set iff bm[w] != 0 */
	size_t nr_words;			/* of bm */
	size_t nr_sum;				/* of bm_sum */
	size_t sum_hint;			/* bm_sum words below it are all 0 */
};

/*
 * Set up an empty pool (no page free yet) over @pages, whose ranges start at
 * the indices in @first (@nr_range + 1 entries; both arrays must outlive the
 * pool). Return: 0 or -ENOMEM.
 */
UHMM_HIDDEN int uhmm_page_pool_init(struct uhmm_page_pool *pool,
				    struct uhmm_page *pages,
				    const uint64_t *first, unsigned int nr_range);
/* Free what init allocated; a zeroed pool is fine too. */
UHMM_HIDDEN void uhmm_page_pool_fini(struct uhmm_page_pool *pool);
/* Mark pages [@lo, @hi) free; once, before the pool is used. */
UHMM_HIDDEN void uhmm_page_pool_fill(struct uhmm_page_pool *pool, uint64_t lo,
				     uint64_t hi);

/*
 * Take @n pages, lowest first (UHMM_ALLOC_CONTIG: the lowest run of @n
 * consecutive pages inside one range), mark each UHMM_PAGE_ALLOCATED with
 * refcount 1 and store them in @out. Context: the pagemap's lock held.
 * Return: 0, or -ENOSPC (fewer than @n free, or no such run): nothing taken.
 */
UHMM_HIDDEN int uhmm_page_pool_alloc(struct uhmm_page_pool *pool, uint64_t n,
				     unsigned int flags, struct uhmm_page **out);
/*
 * Internal page flag: the page's host memory (pgmap->base) is known to hold
 * data, because uhmm moved or copied the page's contents there. Cleared
 * when uhmm moves the contents out and on allocation. Unset only means
 * unknown: ask the kernel (mincore). Lets a one-page fault-back copy from
 * device memory without a syscall to check that the copy cannot fault.
 */
#define UHMM_PAGE_HOST_PRESENT (1U << 1)

/*
 * Not a locked read-modify-write (in a profile of migrations the locked one
 * took 59% of finalize's samples): a page's flags have one writer at a
 * time. They change on allocation and on the last put, and in between only
 * here, by the one migration that holds the page (through its CPU entry,
 * or as its destination).
 */
static inline void pm_page_set_present(struct uhmm_page *pg, bool present)
{
	unsigned int f = __atomic_load_n(&pg->flags, __ATOMIC_RELAXED);
	unsigned int nf = present ? f | UHMM_PAGE_HOST_PRESENT : f & ~UHMM_PAGE_HOST_PRESENT;

	if (nf != f)
		__atomic_store_n(&pg->flags, nf, __ATOMIC_RELAXED);
}

static inline bool pm_page_present(const struct uhmm_page *pg)
{
	return __atomic_load_n(&pg->flags, __ATOMIC_RELAXED) & UHMM_PAGE_HOST_PRESENT;
}

/* Give page @idx back to the pool. Context: the pagemap's lock held. */
UHMM_HIDDEN void uhmm_page_pool_release(struct uhmm_page_pool *pool,
					uint64_t idx);

#endif
