// SPDX-License-Identifier: MIT
/* Unit tests for pagemaps: uhmm_memremap_pages/memunmap_pages, pfn lookups,
 * page and pagemap references, the device page allocator, hidden helpers. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm/pagemap.h>
#include "pagemap_internal.h"
#include "t_util.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define PFN(a) ((a) >> 12)
#define DEV0 (UHMM_DEVADDR_MIN + GiB)	/* device addresses used by the tests */

static atomic_int n_page_free;
static struct uhmm_page *_Atomic last_freed;
static atomic_int n_cleanup;
static atomic_int free_at_cleanup;	/* n_page_free seen by cleanup */
static int owner;

static void t_page_free(struct uhmm_page *page)
{
	atomic_fetch_add(&n_page_free, 1);
	atomic_store(&last_freed, page);
}

static int t_migrate_to_ram(struct uhmm_fault *f)
{
	return 0;
}

static void t_cleanup(struct uhmm_pagemap *pgmap)
{
	atomic_store(&free_at_cleanup, atomic_load(&n_page_free));
	atomic_fetch_add(&n_cleanup, 1);
}

static const struct uhmm_pagemap_ops ops = {
	.page_free = t_page_free,
	.migrate_to_ram = t_migrate_to_ram,
	.cleanup = t_cleanup,
};

static struct uhmm_pagemap pm;		/* most tests' pagemap */
static struct uhmm_dev_range rg[4];

static void setup(void)
{
	atomic_store(&n_page_free, 0);
	atomic_store(&n_cleanup, 0);
	atomic_store(&last_freed, NULL);
	memset(&pm, 0, sizeof(pm));
	memset(rg, 0, sizeof(rg));
}

static void teardown(void)
{
	uhmm_pagemap_set_evict_hook(NULL);
}

/*
 * A pagemap of @type over @nr ranges of @r with host backing @base: PRIVATE
 * and COHERENT get the test ops, PRIVATE an owner too.
 */
static void t_pgmap(struct uhmm_pagemap *p, enum uhmm_pagemap_type type,
		    struct uhmm_dev_range *r, unsigned nr, void *base)
{
	memset(p, 0, sizeof(*p));
	p->type = type;
	if (type == UHMM_PAGEMAP_PRIVATE || type == UHMM_PAGEMAP_COHERENT)
		p->ops = &ops;
	if (type == UHMM_PAGEMAP_PRIVATE)
		p->owner = &owner;
	p->nr_range = nr;
	p->ranges = r;
	p->base = base;
}

/* A PRIVATE pagemap over @nr ranges of rg[] (no host backing). */
static void t_private(struct uhmm_pagemap *p, struct uhmm_dev_range *r, unsigned nr)
{
	t_pgmap(p, UHMM_PAGEMAP_PRIVATE, r, nr, NULL);
}

/* One PRIVATE range of @npages at DEV0, registered. */
static void t_private_simple(uint64_t npages)
{
	rg[0].start = DEV0;
	rg[0].end = DEV0 + npages * T_PAGE;
	t_private(&pm, rg, 1);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
}

static struct uhmm_page *t_alloc1(struct uhmm_pagemap *p)
{
	struct uhmm_page *page = NULL;

	ck_assert_int_eq(uhmm_pagemap_alloc_pages(p, 1, 0, &page), 0);
	ck_assert_ptr_nonnull(page);
	return page;
}

/* t_private_simple(@npages), then one page allocated from it. */
static struct uhmm_page *t_private_alloc1(uint64_t npages)
{
	t_private_simple(npages);
	return t_alloc1(&pm);
}

static void t_sleep_ms(unsigned ms)
{
	usleep(ms * 1000);
}

/* ---- uhmm_memremap_pages ---- */

/* A PRIVATE pagemap gets one free page struct per page, owned by it. */
START_TEST(memremap_private_creates_free_page_structs)
{
	t_private_simple(16);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), 16);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 16);
	ck_assert_ptr_nonnull(pm.priv);
	ck_assert_uint_eq(pm.altmap.alloc, 0);
	for (uint64_t i = 0; i < 16; i++) {
		struct uhmm_page *page = uhmm_pfn_to_page(PFN(DEV0) + i);

		ck_assert_ptr_nonnull(page);
		ck_assert_int_eq(page->refcount, 0);
		ck_assert_ptr_eq(page->pgmap, &pm);
		ck_assert_ptr_null(page->zone_device_data);
		ck_assert_uint_eq(page->flags, 0);
	}
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* COHERENT, GENERIC and P2P register with a base; GENERIC and P2P need no ops. */
START_TEST(memremap_each_type_with_base)
{
	enum uhmm_pagemap_type types[] = { UHMM_PAGEMAP_COHERENT, UHMM_PAGEMAP_GENERIC,
					   UHMM_PAGEMAP_P2P };
	void *base = t_map_anon(8 * T_PAGE);

	for (unsigned i = 0; i < 3; i++) {
		rg[0].start = DEV0;
		rg[0].end = DEV0 + 8 * T_PAGE;
		t_pgmap(&pm, types[i], rg, 1, base);
		ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
		ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), 8);
		ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	}
	munmap(base, 8 * T_PAGE);
}
END_TEST

/* NULL, unknown types (0, 5) and unknown flag bits are -EINVAL. */
START_TEST(memremap_bad_type_or_flags_is_einval)
{
	ck_assert_int_eq(uhmm_memremap_pages(NULL), -EINVAL);
	rg[0].start = DEV0;
	rg[0].end = DEV0 + T_PAGE;
	t_private(&pm, rg, 1);
	pm.type = 0;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.type = 5;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.type = UHMM_PAGEMAP_PRIVATE;
	pm.flags = 1U << 1;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.flags = 1U << 31;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	ck_assert_ptr_null(pm.priv);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
}
END_TEST

/* PRIVATE without ops, page_free, migrate_to_ram or owner is -EINVAL. */
START_TEST(memremap_private_requirements_are_einval)
{
	struct uhmm_pagemap_ops no_free = { .migrate_to_ram = t_migrate_to_ram };
	struct uhmm_pagemap_ops no_migrate = { .page_free = t_page_free };

	rg[0].start = DEV0;
	rg[0].end = DEV0 + T_PAGE;
	t_private(&pm, rg, 1);
	pm.ops = NULL;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.ops = &no_free;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.ops = &no_migrate;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.ops = &ops;
	pm.owner = NULL;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.owner = &owner;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* COHERENT needs page_free and base; GENERIC and P2P need base. */
START_TEST(memremap_backed_types_requirements_are_einval)
{
	struct uhmm_pagemap_ops no_free = { .migrate_to_ram = t_migrate_to_ram };
	void *base = t_map_anon(T_PAGE);

	rg[0].start = DEV0;
	rg[0].end = DEV0 + T_PAGE;
	t_private(&pm, rg, 1);
	pm.type = UHMM_PAGEMAP_COHERENT;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);	/* no base */
	pm.base = base;
	pm.ops = &no_free;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.ops = NULL;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.base = NULL;
	pm.type = UHMM_PAGEMAP_GENERIC;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.type = UHMM_PAGEMAP_P2P;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.base = (char *)base + 8;					/* unaligned */
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	munmap(base, T_PAGE);
}
END_TEST

/* nr_range 0, NULL ranges, unaligned, empty, reversed or self-overlapping ranges: -EINVAL. */
START_TEST(memremap_bad_ranges_are_einval)
{
	t_private(&pm, rg, 0);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	t_private(&pm, NULL, 1);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	t_private(&pm, rg, 1);
	rg[0] = (struct uhmm_dev_range){ DEV0 + 8, DEV0 + T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + T_PAGE + 8 };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[0] = (struct uhmm_dev_range){ DEV0 + T_PAGE, DEV0 };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	/* second range overlaps the first, in either order */
	t_private(&pm, rg, 2);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + 3 * T_PAGE, DEV0 + 8 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[1] = (struct uhmm_dev_range){ DEV0 - 2 * T_PAGE, DEV0 + T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[1] = rg[0];
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	/* a bad third range after two good ones */
	t_private(&pm, rg, 3);
	rg[1] = (struct uhmm_dev_range){ DEV0 + 8 * T_PAGE, DEV0 + 9 * T_PAGE };
	rg[2] = (struct uhmm_dev_range){ DEV0 + 20 * T_PAGE, DEV0 + 19 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	ck_assert_ptr_null(pm.priv);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
}
END_TEST

/* Any overlap with a registered pagemap is -EBUSY and registers nothing; adjacency is fine. */
START_TEST(memremap_overlap_with_registered_is_ebusy)
{
	struct uhmm_pagemap b;
	struct uhmm_dev_range br[2];

	t_private_simple(16);					/* [DEV0, DEV0 + 16 pages) */
	t_private(&b, br, 1);
	br[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 16 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	br[0] = (struct uhmm_dev_range){ DEV0 - T_PAGE, DEV0 + T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	br[0] = (struct uhmm_dev_range){ DEV0 + 15 * T_PAGE, DEV0 + 17 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	br[0] = (struct uhmm_dev_range){ DEV0 + 4 * T_PAGE, DEV0 + 5 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	br[0] = (struct uhmm_dev_range){ DEV0 - GiB, DEV0 + GiB };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	/* only the second range of a multi-range pagemap overlaps */
	t_private(&b, br, 2);
	br[0] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + T_PAGE };
	br[1] = (struct uhmm_dev_range){ DEV0 + 8 * T_PAGE, DEV0 + 9 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), -EBUSY);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0 + GiB)));
	ck_assert_ptr_null(b.priv);
	/* adjacent on both sides is allowed */
	br[0] = (struct uhmm_dev_range){ DEV0 - T_PAGE, DEV0 };
	br[1] = (struct uhmm_dev_range){ DEV0 + 16 * T_PAGE, DEV0 + 17 * T_PAGE };
	ck_assert_int_eq(uhmm_memremap_pages(&b), 0);
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) - 1)->pgmap, &b);
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0))->pgmap, &pm);
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) + 16)->pgmap, &b);
	ck_assert_int_eq(uhmm_memunmap_pages(&b), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* Registering a registered pagemap again is -EBUSY; after unmap it registers again. */
START_TEST(memremap_registered_pgmap_is_ebusy_until_unmapped)
{
	t_private_simple(4);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EBUSY);
	rg[0] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + T_PAGE };	/* even elsewhere */
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EBUSY);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 4);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* ALTMAP: page structs live in base after the reserve; alloc reports their pages. */
START_TEST(memremap_altmap_places_page_structs_in_base)
{
	const uint64_t n = 1024, reserve = 2;
	const uint64_t memmap = (n * sizeof(struct uhmm_page) + T_PAGE - 1) / T_PAGE;
	char *base = t_map_anon(n * T_PAGE);
	struct uhmm_page *first;

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + n * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_COHERENT, rg, 1, base);
	pm.flags = UHMM_PGMAP_ALTMAP;
	pm.altmap.reserve = reserve;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_uint_eq(pm.altmap.alloc, memmap);
	ck_assert_uint_eq(memmap, 8);
	first = uhmm_pfn_to_page(PFN(DEV0));
	ck_assert_ptr_eq(first, (struct uhmm_page *)(base + reserve * T_PAGE));
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) + n - 1), first + n - 1);
	ck_assert_ptr_eq(first[n - 1].pgmap, &pm);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), (int64_t)n);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), (int64_t)(n - reserve - memmap));
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	munmap(base, n * T_PAGE);
}
END_TEST

/* ALTMAP without base, or with range 0 too small for reserve + page structs, is -EINVAL. */
START_TEST(memremap_altmap_without_base_or_too_small_is_einval)
{
	/* 2 ranges of 128 pages: 256 structs = 2 pages of memmap, all in range 0 */
	char *base = t_map_anon(2 * 128 * T_PAGE);

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 128 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + 128 * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_PRIVATE, rg, 2, NULL);
	pm.flags = UHMM_PGMAP_ALTMAP;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);		/* no base */
	pm.base = base;
	pm.altmap.reserve = 127;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);		/* 127 + 2 > 128 */
	pm.altmap.reserve = 129;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	pm.altmap.reserve = UINT64_MAX;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	/* range 0 of a single page cannot hold the structs of range 1 */
	rg[0].end = DEV0 + T_PAGE;
	pm.altmap.reserve = 0;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EINVAL);
	rg[0].end = DEV0 + 128 * T_PAGE;
	pm.altmap.reserve = 126;					/* exactly fits */
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_uint_eq(pm.altmap.alloc, 2);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 128);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	munmap(base, 2 * 128 * T_PAGE);
}
END_TEST

/* A failed ALTMAP registration (overlap) does not write into base. */
START_TEST(memremap_failed_altmap_leaves_base_untouched)
{
	const size_t len = 64 * T_PAGE;
	char *base = t_map_anon(len);
	struct uhmm_pagemap a;
	struct uhmm_dev_range ar = { DEV0, DEV0 + T_PAGE };

	t_private(&a, &ar, 1);
	ck_assert_int_eq(uhmm_memremap_pages(&a), 0);
	t_fill_pattern(base, len, 7);
	rg[0] = (struct uhmm_dev_range){ DEV0 - 32 * T_PAGE, DEV0 + 32 * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_GENERIC, rg, 1, base);
	pm.flags = UHMM_PGMAP_ALTMAP;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EBUSY);
	ck_assert_int_eq(t_check_pattern(base, len, 7), -1);
	ck_assert_int_eq(uhmm_memunmap_pages(&a), 0);
	munmap(base, len);
}
END_TEST

/* Ranges given out of address order keep the caller's order for page indices. */
START_TEST(memremap_keeps_caller_range_order)
{
	rg[0] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + 4 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0, DEV0 + 2 * T_PAGE };
	t_private(&pm, rg, 2);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 0), uhmm_pfn_to_page(PFN(DEV0 + GiB)));
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 4), uhmm_pfn_to_page(PFN(DEV0)));
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 5), uhmm_pfn_to_page(PFN(DEV0) + 1));
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

static void *remap_fn(void *p)
{
	return (void *)(intptr_t)uhmm_memremap_pages(p);
}

/* Threads registering overlapping pagemaps at once: exactly one wins each round. */
START_TEST(memremap_concurrent_overlapping_one_wins)
{
	static struct uhmm_pagemap p[4];
	static struct uhmm_dev_range r[4];

	for (int round = 0; round < 20; round++) {
		pthread_t th[4];
		void *rc[4];
		int wins = 0, winner = -1;

		for (int t = 0; t < 4; t++) {
			/* all four contain page 3 of DEV0 */
			r[t] = (struct uhmm_dev_range){ DEV0 + (uint64_t)t * T_PAGE,
							DEV0 + (uint64_t)(t + 4) * T_PAGE };
			t_private(&p[t], &r[t], 1);
		}
		t_threads_start(th, 4, remap_fn, p, sizeof(p[0]));
		t_threads_join(th, 4, rc);
		for (int t = 0; t < 4; t++) {
			if ((intptr_t)rc[t] == 0) {
				wins++;
				winner = t;
			} else {
				ck_assert_int_eq((int)(intptr_t)rc[t], -EBUSY);
			}
		}
		ck_assert_int_eq(wins, 1);
		ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) + 3)->pgmap, &p[winner]);
		ck_assert_int_eq(uhmm_memunmap_pages(&p[winner]), 0);
	}
}
END_TEST

/* ---- uhmm_memunmap_pages ---- */

/* Unmap unregisters everything, calls cleanup once and clears priv. */
START_TEST(memunmap_unregisters_and_cleans_up_once)
{
	struct uhmm_pagemap *out;

	t_private_simple(8);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
	ck_assert_ptr_null(pm.priv);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), -ENOENT);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), -EINVAL);
	ck_assert_int_eq(atomic_load(&n_page_free), 0);
}
END_TEST

/* NULL, never-registered and already-unmapped pagemaps are -EINVAL. */
START_TEST(memunmap_unregistered_is_einval)
{
	struct uhmm_pagemap other;

	ck_assert_int_eq(uhmm_memunmap_pages(NULL), -EINVAL);
	t_private(&other, rg, 1);
	ck_assert_int_eq(uhmm_memunmap_pages(&other), -EINVAL);
	t_private_simple(2);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), -EINVAL);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

struct delayed_put {
	struct uhmm_page *page;		/* page to put, or NULL */
	struct uhmm_pagemap *pgmap;	/* pagemap ref to put, or NULL */
	unsigned ms;
};

static void *delayed_put_fn(void *p)
{
	struct delayed_put *d = p;

	t_sleep_ms(d->ms);
	if (d->page)
		uhmm_page_put(d->page);
	if (d->pgmap)
		uhmm_put_dev_pagemap(d->pgmap);
	return NULL;
}

/* Teardown waits for the last page reference, which runs page_free before cleanup. */
START_TEST(memunmap_waits_for_page_refs)
{
	struct delayed_put d = { .ms = 150 };
	pthread_t th;
	uint64_t t0;

	d.page = t_private_alloc1(8);
	ck_assert_int_eq(pthread_create(&th, NULL, delayed_put_fn, &d), 0);
	t0 = t_now_ns();
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_uint_ge(t_now_ns() - t0, 100 * 1000000ULL);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
	ck_assert_int_eq(atomic_load(&free_at_cleanup), 1);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

/* Teardown waits for uhmm_get_dev_pagemap references too. */
START_TEST(memunmap_waits_for_pagemap_refs)
{
	struct delayed_put d = { .ms = 150 };
	struct uhmm_pagemap *out = NULL;
	pthread_t th;
	uint64_t t0;

	t_private_simple(8);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), 0);
	d.pgmap = out;
	ck_assert_int_eq(pthread_create(&th, NULL, delayed_put_fn, &d), 0);
	t0 = t_now_ns();
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_uint_ge(t_now_ns() - t0, 100 * 1000000ULL);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

static void *unmap_fn(void *p)
{
	return (void *)(intptr_t)uhmm_memunmap_pages(p);
}

/* While teardown waits: gets are -ENXIO, allocs fail, lookups and page refs still work. */
START_TEST(memunmap_dying_pagemap_refuses_new_refs)
{
	struct uhmm_pagemap *out = NULL;
	struct uhmm_page *page, *other;
	pthread_t th;
	void *rc;

	page = t_private_alloc1(8);
	ck_assert_int_eq(pthread_create(&th, NULL, unmap_fn, &pm), 0);
	while (!uhmm_pagemap_is_dying(&pm))
		t_sleep_ms(1);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), -ENXIO);
	ck_assert_ptr_null(out);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, &other), -EINVAL);
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) + 1), page + 1);
	ck_assert_int_eq(uhmm_page_get(page), 0);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	t_sleep_ms(20);
	ck_assert_int_eq(atomic_load(&n_cleanup), 0);		/* still waiting */
	ck_assert_int_eq(uhmm_page_put(page), 0);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
}
END_TEST

#define CHURN_THREADS 4
#define CHURN_PAGES 64

struct churn {
	atomic_ulong ok;
	uint64_t enxio, errors;
	struct uhmm_page *held;		/* released when the pagemap is seen dying */
	unsigned seed;
};

static void *churn_fn(void *p)
{
	struct churn *c = p;

	for (uint64_t i = 0;; i++) {
		uint64_t pfn = PFN(DEV0) + (i * 7 + c->seed) % CHURN_PAGES;
		struct uhmm_pagemap *out = NULL;
		int r = uhmm_get_dev_pagemap(pfn, &out);

		if (r == 0) {
			atomic_fetch_add_explicit(&c->ok, 1, memory_order_relaxed);
			if (out != &pm || (c->held && (uhmm_page_get(c->held) ||
						      uhmm_page_put(c->held))))
				c->errors++;
			if (uhmm_pfn_to_page(pfn)->pgmap != &pm)
				c->errors++;
			if (uhmm_put_dev_pagemap(out))
				c->errors++;
		} else if (r == -ENXIO) {
			c->enxio++;
			if (c->held && uhmm_page_put(c->held))
				c->errors++;
			c->held = NULL;
		} else if (r == -ENOENT) {
			break;
		} else {
			c->errors++;
			break;
		}
	}
	return NULL;
}

/* Threads getting and putting during teardown: teardown waits, then completes cleanly. */
START_TEST(memunmap_concurrent_get_put_during_teardown)
{
	static struct churn c[CHURN_THREADS];
	pthread_t th[CHURN_THREADS];

	t_private_simple(CHURN_PAGES);
	for (int t = 0; t < CHURN_THREADS; t++) {
		c[t].held = t_alloc1(&pm);
		c[t].seed = (unsigned)t * 13;
	}
	t_threads_start(th, CHURN_THREADS, churn_fn, c, sizeof(c[0]));
	for (int t = 0; t < CHURN_THREADS; t++)
		while (!atomic_load(&c[t].ok))
			sched_yield();
	t_sleep_ms(20);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	t_threads_join(th, CHURN_THREADS, NULL);
	for (int t = 0; t < CHURN_THREADS; t++) {
		ck_assert_uint_eq(c[t].errors, 0);
		ck_assert_uint_gt(c[t].enxio, 0);
		ck_assert_ptr_null(c[t].held);	/* each saw the pagemap dying */
	}
	ck_assert_int_eq(atomic_load(&n_page_free), CHURN_THREADS);
	ck_assert_int_eq(atomic_load(&free_at_cleanup), CHURN_THREADS);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

/* Two threads unmapping the same pagemap: one tears it down, the other gets -EINVAL. */
START_TEST(memunmap_concurrent_callers_one_wins)
{
	struct uhmm_page *page;
	pthread_t a, b;
	void *ra, *rb;

	page = t_private_alloc1(4);
	ck_assert_int_eq(pthread_create(&a, NULL, unmap_fn, &pm), 0);
	ck_assert_int_eq(pthread_create(&b, NULL, unmap_fn, &pm), 0);
	t_sleep_ms(50);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	pthread_join(a, &ra);
	pthread_join(b, &rb);
	ck_assert_int_eq((int)(intptr_t)ra + (int)(intptr_t)rb, -EINVAL);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

static void free_pgmap_cleanup(struct uhmm_pagemap *pgmap)
{
	atomic_fetch_add(&n_cleanup, 1);
	free(pgmap);
}

/* cleanup may free the pagemap struct: teardown does not touch it afterwards (ASan). */
START_TEST(memunmap_cleanup_may_free_pgmap)
{
	static const struct uhmm_pagemap_ops fops = {
		.page_free = t_page_free,
		.migrate_to_ram = t_migrate_to_ram,
		.cleanup = free_pgmap_cleanup,
	};
	struct uhmm_pagemap *p = calloc(1, sizeof(*p));

	ck_assert_ptr_nonnull(p);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	t_private(p, rg, 1);
	p->ops = &fops;
	ck_assert_int_eq(uhmm_memremap_pages(p), 0);
	uhmm_page_put(t_alloc1(p));
	ck_assert_int_eq(uhmm_memunmap_pages(p), 0);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

/* ---- uhmm_memunmap_pages_timeout ---- */

/* Live page ref: -EBUSY, stays registered and dying; after the put a retry succeeds. */
START_TEST(memunmap_timeout_busy_then_success)
{
	struct uhmm_pagemap *out;
	struct uhmm_page *page, *other;
	uint64_t t0;

	page = t_private_alloc1(8);
	t0 = t_now_ns();
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 50), -EBUSY);
	ck_assert_uint_ge(t_now_ns() - t0, 40 * 1000000ULL);
	/* twice: the base reference must be dropped only once */
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 10), -EBUSY);
	ck_assert_int_eq(atomic_load(&n_cleanup), 0);
	ck_assert_ptr_nonnull(pm.priv);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), 8);
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0)), page);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), -ENXIO);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, &other), -EINVAL);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), -EBUSY);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 1000), 0);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EINVAL);
}
END_TEST

/* A held uhmm_get_dev_pagemap reference also makes a timed teardown -EBUSY. */
START_TEST(memunmap_timeout_busy_on_pagemap_ref)
{
	struct uhmm_pagemap *out = NULL;

	t_private_simple(8);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + 3, &out), 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 20), -EBUSY);
	ck_assert_int_eq(uhmm_put_dev_pagemap(out), 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* With nothing referenced, a zero timeout is enough. */
START_TEST(memunmap_timeout_zero_when_idle_succeeds)
{
	t_private_simple(8);
	uhmm_page_put(t_alloc1(&pm));
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

/* A blocking unmap finishes a pagemap that a timed unmap left dying. */
START_TEST(memunmap_after_timeout_finishes)
{
	struct delayed_put d = { .ms = 50 };
	pthread_t th;

	d.page = t_private_alloc1(8);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EBUSY);
	ck_assert_int_eq(pthread_create(&th, NULL, delayed_put_fn, &d), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&n_cleanup), 1);
}
END_TEST

/* NULL and unregistered pagemaps are -EINVAL. */
START_TEST(memunmap_timeout_unregistered_is_einval)
{
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(NULL, 10), -EINVAL);
	t_private(&pm, rg, 1);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 10), -EINVAL);
}
END_TEST

/* ---- uhmm_pfn_to_page ---- */

/* Every pfn of a 1 GiB pagemap (262144 pages) finds its own page struct. */
START_TEST(pfn_to_page_every_pfn_of_1gib)
{
	const uint64_t n = GiB / T_PAGE;
	struct uhmm_page *first;

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + GiB };
	t_private(&pm, rg, 1);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), (int64_t)n);
	first = uhmm_pfn_to_page(PFN(DEV0));
	ck_assert_ptr_nonnull(first);
	for (uint64_t i = 0; i < n; i++) {
		struct uhmm_page *page = uhmm_pfn_to_page(PFN(DEV0) + i);

		if (page != first + i || page->pgmap != &pm)
			ck_abort_msg("pfn index %llu: wrong page", (unsigned long long)i);
	}
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0) - 1));
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0) + n));
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* A multi-range pagemap: pfns in the ranges resolve, pfns in the gaps do not. */
START_TEST(pfn_to_page_gaps_are_null)
{
	struct uhmm_pagemap *out;

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + 16 * T_PAGE, DEV0 + 20 * T_PAGE };
	rg[2] = (struct uhmm_dev_range){ DEV0 + 21 * T_PAGE, DEV0 + 22 * T_PAGE };
	t_private(&pm, rg, 3);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	for (uint64_t i = 0; i < 24; i++) {
		bool in = i < 4 || (i >= 16 && i < 20) || i == 21;
		struct uhmm_page *page = uhmm_pfn_to_page(PFN(DEV0) + i);

		ck_assert_int_eq(page != NULL, in);
		ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + i, &out), in ? 0 : -ENOENT);
		if (in) {
			ck_assert_ptr_eq(page->pgmap, &pm);
			ck_assert_uint_eq(uhmm_page_to_pfn(page), PFN(DEV0) + i);
			ck_assert_int_eq(uhmm_put_dev_pagemap(out), 0);
		}
	}
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* Interleaved pagemaps resolve to their own owner. */
START_TEST(pfn_to_page_picks_the_right_pagemap)
{
	static struct uhmm_pagemap p[8];
	static struct uhmm_dev_range r[8][2];

	for (int i = 0; i < 8; i++) {
		/* pagemap i owns pages 2i and 2i+17 of a 32-page window */
		r[i][0] = (struct uhmm_dev_range){ DEV0 + 2 * i * T_PAGE, DEV0 + (2 * i + 1) * T_PAGE };
		r[i][1] = (struct uhmm_dev_range){ DEV0 + (2 * i + 17) * T_PAGE,
						   DEV0 + (2 * i + 18) * T_PAGE };
		t_private(&p[i], r[i], 2);
		ck_assert_int_eq(uhmm_memremap_pages(&p[i]), 0);
	}
	for (uint64_t pg = 0; pg < 34; pg++) {
		struct uhmm_page *page = uhmm_pfn_to_page(PFN(DEV0) + pg);

		if (pg < 16 && pg % 2 == 0)
			ck_assert_ptr_eq(page->pgmap, &p[pg / 2]);
		else if (pg >= 17 && pg < 33 && pg % 2 == 1)
			ck_assert_ptr_eq(page->pgmap, &p[(pg - 17) / 2]);
		else
			ck_assert_ptr_null(page);
	}
	for (int i = 0; i < 8; i += 2)
		ck_assert_int_eq(uhmm_memunmap_pages(&p[i]), 0);
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
	ck_assert_ptr_eq(uhmm_pfn_to_page(PFN(DEV0) + 2)->pgmap, &p[1]);
	for (int i = 1; i < 8; i += 2)
		ck_assert_int_eq(uhmm_memunmap_pages(&p[i]), 0);
}
END_TEST

/* Nothing registered: every pfn is NULL. */
START_TEST(pfn_to_page_unregistered_is_null)
{
	ck_assert_ptr_null(uhmm_pfn_to_page(0));
	ck_assert_ptr_null(uhmm_pfn_to_page(PFN(DEV0)));
	ck_assert_ptr_null(uhmm_pfn_to_page(UINT64_MAX));
}
END_TEST

struct reader {
	atomic_bool *stop;
	atomic_ulong lookups;
	uint64_t errors, pinned;
};

static void *reader_fn(void *p)
{
	struct reader *r = p;
	struct uhmm_page *first = uhmm_pfn_to_page(PFN(DEV0));

	while (!atomic_load_explicit(r->stop, memory_order_relaxed)) {
		for (uint64_t i = 0; i < 64; i++) {
			struct uhmm_pagemap *out;

			if (uhmm_pfn_to_page(PFN(DEV0) + i) != first + i)
				r->errors++;
			if (uhmm_get_dev_pagemap(PFN(DEV0) + i, &out) || out != &pm ||
			    uhmm_put_dev_pagemap(out))
				r->errors++;
			/* a churned pagemap's pfn: absent, dying, or pinned and consistent */
			int ret = uhmm_get_dev_pagemap(PFN(DEV0 + GiB) + i, &out);

			if (ret == 0) {
				struct uhmm_page *pg = uhmm_pfn_to_page(PFN(DEV0 + GiB) + i);

				if (!pg || pg->pgmap != out ||
				    uhmm_page_to_pfn(pg) != PFN(DEV0 + GiB) + i)
					r->errors++;
				uhmm_put_dev_pagemap(out);
				r->pinned++;
			} else if (ret != -ENOENT && ret != -ENXIO) {
				r->errors++;
			}
			atomic_fetch_add_explicit(&r->lookups, 1, memory_order_relaxed);
		}
	}
	return NULL;
}

/* Lookups from other threads stay correct while pagemaps come and go (ASan/TSan). */
START_TEST(pfn_to_page_concurrent_with_registration)
{
	atomic_bool stop = false;
	struct reader rd[2] = { { .stop = &stop }, { .stop = &stop } };
	struct uhmm_dev_range cr[3];
	struct uhmm_pagemap churn;
	pthread_t th[2];

	t_private_simple(64);
	t_threads_start(th, 2, reader_fn, rd, sizeof(rd[0]));
	while (!atomic_load(&rd[0].lookups) || !atomic_load(&rd[1].lookups))
		sched_yield();
	for (unsigned i = 0; i < 150; i++) {
		unsigned nr = i % 3 + 1;

		for (unsigned k = 0; k < nr; k++)
			cr[k] = (struct uhmm_dev_range){ DEV0 + GiB + k * 32 * T_PAGE,
							 DEV0 + GiB + (k * 32 + 16 + i % 16) * T_PAGE };
		t_private(&churn, cr, nr);
		ck_assert_int_eq(uhmm_memremap_pages(&churn), 0);
		ck_assert_int_eq(uhmm_memunmap_pages(&churn), 0);
	}
	atomic_store(&stop, true);
	t_threads_join(th, 2, NULL);
	for (int t = 0; t < 2; t++) {
		ck_assert_uint_eq(rd[t].errors, 0);
		ck_assert_uint_gt(atomic_load(&rd[t].lookups), 0);
	}
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* ---- uhmm_page_to_pfn ---- */

/* page -> pfn -> page round-trips for every page of a multi-range pagemap. */
START_TEST(page_to_pfn_round_trips_across_ranges)
{
	rg[0] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + 8 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0, DEV0 + 3 * T_PAGE };
	rg[2] = (struct uhmm_dev_range){ DEV0 + 2 * GiB, DEV0 + 2 * GiB + 5 * T_PAGE };
	t_private(&pm, rg, 3);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	for (uint64_t i = 0; i < 16; i++) {
		struct uhmm_page *page = uhmm_pagemap_page(&pm, i);
		uint64_t pfn = uhmm_page_to_pfn(page);

		ck_assert_ptr_eq(uhmm_pfn_to_page(pfn), page);
		ck_assert_uint_eq(uhmm_page_index(page), i);
	}
	ck_assert_uint_eq(uhmm_page_to_pfn(uhmm_pagemap_page(&pm, 8)), PFN(DEV0));
	ck_assert_uint_eq(uhmm_page_to_pfn(uhmm_pagemap_page(&pm, 15)), PFN(DEV0 + 2 * GiB) + 4);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* NULL has no pfn: 0 (never a device pfn). */
START_TEST(page_to_pfn_null_is_zero)
{
	ck_assert_uint_eq(uhmm_page_to_pfn(NULL), 0);
}
END_TEST

/* ---- uhmm_page_to_virt ---- */

/* Host-backed pages map to base + index * page size, ranges back to back. */
START_TEST(page_to_virt_follows_base_in_range_order)
{
	char *base = t_map_anon(12 * T_PAGE);

	rg[0] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + 4 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0, DEV0 + 8 * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_COHERENT, rg, 2, base);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_ptr_eq(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0 + GiB))), base);
	ck_assert_ptr_eq(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0 + GiB) + 3)), base + 3 * T_PAGE);
	ck_assert_ptr_eq(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0))), base + 4 * T_PAGE);
	ck_assert_ptr_eq(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0) + 7)), base + 11 * T_PAGE);
	memset(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0) + 1)), 0xab, T_PAGE);
	ck_assert_uint_eq((unsigned char)base[5 * T_PAGE + 100], 0xab);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	munmap(base, 12 * T_PAGE);
}
END_TEST

/* Pages without host backing (PRIVATE, no base) and NULL have no address. */
START_TEST(page_to_virt_without_base_is_null)
{
	t_private_simple(4);
	ck_assert_ptr_null(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0))));
	ck_assert_ptr_null(uhmm_page_to_virt(NULL));
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* A PRIVATE pagemap may have host backing; its pages then have addresses. */
START_TEST(page_to_virt_private_with_base)
{
	char *base = t_map_anon(4 * T_PAGE);

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	t_private(&pm, rg, 1);
	pm.base = base;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_ptr_eq(uhmm_page_to_virt(uhmm_pfn_to_page(PFN(DEV0) + 2)), base + 2 * T_PAGE);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	munmap(base, 4 * T_PAGE);
}
END_TEST

/* ---- uhmm_get_dev_pagemap ---- */

/* A get returns the owning pagemap and keeps teardown from finishing. */
START_TEST(get_dev_pagemap_returns_owner_and_pins)
{
	struct uhmm_pagemap *out = NULL, *out2 = NULL;

	t_private_simple(8);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + 7, &out), 0);
	ck_assert_ptr_eq(out, &pm);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out2), 0);
	ck_assert_int_eq(uhmm_put_dev_pagemap(out2), 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 10), -EBUSY);
	ck_assert_int_eq(uhmm_put_dev_pagemap(out), 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* No pagemap at the pfn (never registered, just outside, unmapped): -ENOENT. */
START_TEST(get_dev_pagemap_no_pagemap_is_enoent)
{
	struct uhmm_pagemap *out = NULL;

	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), -ENOENT);
	t_private_simple(8);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + 8, &out), -ENOENT);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) - 1, &out), -ENOENT);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), &out), -ENOENT);
	ck_assert_ptr_null(out);
}
END_TEST

/* A dying pagemap gives -ENXIO. */
START_TEST(get_dev_pagemap_dying_is_enxio)
{
	struct uhmm_pagemap *out = NULL;
	struct uhmm_page *page;

	page = t_private_alloc1(8);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EBUSY);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + 5, &out), -ENXIO);
	ck_assert_ptr_null(out);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* A NULL out pointer is -EINVAL. */
START_TEST(get_dev_pagemap_null_out_is_einval)
{
	t_private_simple(8);
	ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0), NULL), -EINVAL);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);	/* nothing was taken */
}
END_TEST

/* ---- uhmm_put_dev_pagemap ---- */

/* Puts match gets one for one; one more put is -EINVAL. */
START_TEST(put_dev_pagemap_without_get_is_einval)
{
	struct uhmm_pagemap *out;

	t_private_simple(8);
	ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), -EINVAL);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(uhmm_get_dev_pagemap(PFN(DEV0) + i, &out), 0);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), 0);
	ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), -EINVAL);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* NULL and unregistered pagemaps are -EINVAL. */
START_TEST(put_dev_pagemap_unregistered_is_einval)
{
	ck_assert_int_eq(uhmm_put_dev_pagemap(NULL), -EINVAL);
	t_private(&pm, rg, 1);
	ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), -EINVAL);
	t_private_simple(2);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), -EINVAL);
}
END_TEST

static void *get_many_fn(void *p)
{
	struct uhmm_pagemap *out;
	long bad = 0;

	for (int i = 0; i < 100; i++)
		if (uhmm_get_dev_pagemap(PFN(DEV0) + (uint64_t)i % 8, &out) || out != p)
			bad++;
	return (void *)bad;
}

/* References taken on other threads can be dropped on this one. */
START_TEST(put_dev_pagemap_other_thread_refs)
{
	t_private_simple(8);
	t_threads_run(4, get_many_fn, &pm, 0);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EBUSY);
	for (int i = 0; i < 400; i++)
		ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), 0);
	ck_assert_int_eq(uhmm_put_dev_pagemap(&pm), -EINVAL);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* ---- uhmm_page_get ---- */

/* A get on a referenced page adds one reference. */
START_TEST(page_get_adds_a_reference)
{
	struct uhmm_page *page;

	page = t_private_alloc1(4);
	ck_assert_int_eq(uhmm_page_get(page), 0);
	ck_assert_int_eq(page->refcount, 2);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 0);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* A free page (refcount 0) and NULL are -EINVAL; the count stays 0. */
START_TEST(page_get_free_page_is_einval)
{
	struct uhmm_page *page;

	t_private_simple(4);
	page = uhmm_pfn_to_page(PFN(DEV0) + 1);
	ck_assert_int_eq(uhmm_page_get(page), -EINVAL);
	ck_assert_int_eq(page->refcount, 0);
	ck_assert_int_eq(uhmm_page_get(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* ---- uhmm_page_put ---- */

/* The last put calls page_free once and returns the page to the pool. */
START_TEST(page_put_last_ref_frees_once)
{
	struct uhmm_page *page;

	page = t_private_alloc1(4);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 3);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
	ck_assert_ptr_eq(atomic_load(&last_freed), page);
	ck_assert_int_eq(page->refcount, 0);
	ck_assert_uint_eq(page->flags & UHMM_PAGE_ALLOCATED, 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 4);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
}
END_TEST

/* A put without a get is -EINVAL: no page_free, no negative refcount, pool unchanged. */
START_TEST(page_put_without_get_is_einval)
{
	struct uhmm_page *page;

	t_private_simple(4);
	page = uhmm_pfn_to_page(PFN(DEV0));
	ck_assert_int_eq(uhmm_page_put(page), -EINVAL);
	ck_assert_int_eq(page->refcount, 0);
	page = t_alloc1(&pm);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(uhmm_page_put(page), -EINVAL);
	ck_assert_int_eq(page->refcount, 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 4);
	ck_assert_int_eq(uhmm_page_put(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

static void *get_put_page_fn(void *p)
{
	long bad = 0;

	for (int i = 0; i < 20000; i++)
		if (uhmm_page_get(p) || uhmm_page_put(p))
			bad++;
	return (void *)bad;
}

/* Concurrent get/put on one page: page_free runs exactly once, at the final put. */
START_TEST(page_put_concurrent_frees_exactly_once)
{
	struct uhmm_page *page = t_private_alloc1(4);

	t_threads_run(4, get_put_page_fn, page, 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 0);
	ck_assert_int_eq(page->refcount, 1);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(atomic_load(&n_page_free), 1);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* A pagemap without ops (GENERIC) frees pages straight back to the pool. */
START_TEST(page_put_without_page_free_op)
{
	char *base = t_map_anon(4 * T_PAGE);
	struct uhmm_page *page;

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_GENERIC, rg, 1, base);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	page = t_alloc1(&pm);
	ck_assert_int_eq(uhmm_page_put(page), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 4);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
	munmap(base, 4 * T_PAGE);
}
END_TEST

/* ---- uhmm_pagemap_alloc_pages ---- */

/* n distinct pages, each refcount 1 and ALLOCATED; the pool shrinks by n. */
START_TEST(alloc_pages_returns_distinct_referenced_pages)
{
	struct uhmm_page *p[8];

	t_private_simple(16);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 8, 0, p), 0);
	for (int i = 0; i < 8; i++) {
		ck_assert_int_eq(p[i]->refcount, 1);
		ck_assert_uint_eq(p[i]->flags & UHMM_PAGE_ALLOCATED, UHMM_PAGE_ALLOCATED);
		ck_assert_ptr_eq(p[i]->pgmap, &pm);
		for (int j = 0; j < i; j++)
			ck_assert_ptr_ne(p[i], p[j]);
	}
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 8);
	for (int i = 0; i < 8; i++)
		ck_assert_int_eq(uhmm_page_put(p[i]), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 16);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* Asking for more than is free is -ENOSPC and allocates nothing. */
START_TEST(alloc_pages_exhaustion_is_enospc)
{
	struct uhmm_page *p[16], *q[4] = { 0 };

	t_private_simple(16);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 17, 0, p), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 13, 0, p), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 4, 0, q), -ENOSPC);
	ck_assert_ptr_null(q[0]);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 3);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 3, 0, q), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, p + 13), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, UINT64_MAX, 0, p), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 0);
	ck_assert_int_eq(uhmm_page_put(q[1]), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, q + 1), 0);
}
END_TEST

/* CONTIG pages are consecutive pfns inside one range: the one that fits. */
START_TEST(alloc_pages_contig_is_contiguous_within_a_range)
{
	struct uhmm_page *p[12];

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 8 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + GiB, DEV0 + GiB + 16 * T_PAGE };
	t_private(&pm, rg, 2);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 12, UHMM_ALLOC_CONTIG, p), 0);
	for (int i = 0; i < 12; i++)
		ck_assert_uint_eq(uhmm_page_to_pfn(p[i]), PFN(DEV0 + GiB) + (uint64_t)i);
	/* 4 left in range 1 and 8 in range 0: 9 contiguous do not fit, 8 do */
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 9, UHMM_ALLOC_CONTIG, p), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 12);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 8, UHMM_ALLOC_CONTIG, p), 0);
	for (int i = 0; i < 8; i++)
		ck_assert_uint_eq(uhmm_page_to_pfn(p[i]), PFN(DEV0) + (uint64_t)i);
}
END_TEST

/* A fragmented pool has enough pages but no run: CONTIG is -ENOSPC, plain works. */
START_TEST(alloc_pages_contig_fragmented_is_enospc)
{
	struct uhmm_page *p[16];

	t_private_simple(16);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 16, 0, p), 0);
	for (int i = 0; i < 16; i += 2)
		ck_assert_int_eq(uhmm_page_put(p[i]), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 8);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 2, UHMM_ALLOC_CONTIG, p), -ENOSPC);
	ck_assert_int_eq(uhmm_page_put(p[5]), 0);	/* pages 4, 5, 6 now free */
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 3, UHMM_ALLOC_CONTIG, p), 0);
	ck_assert_uint_eq(uhmm_page_to_pfn(p[0]), PFN(DEV0) + 4);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 6, 0, p), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 0);
}
END_TEST

/*
 * A large pool: the search skips used words by the summary bitmap (64 words
 * a summary word) and hands out runs that cross word and summary boundaries.
 */
START_TEST(alloc_pages_contig_large_pool_finds_lowest_run)
{
	enum { N = 10000, LOW = 5000 };
	struct uhmm_page **p = calloc(N, sizeof(*p)), **q = calloc(N, sizeof(*q));

	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_nonnull(q);
	t_private_simple(N);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, LOW, 0, p), 0);
	/* free page 100 and the 70 pages 130..199 (across words 2 and 3) */
	ck_assert_int_eq(uhmm_page_put(p[100]), 0);
	for (int i = 130; i < 200; i++)
		ck_assert_int_eq(uhmm_page_put(p[i]), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 71, UHMM_ALLOC_CONTIG, q), 0);
	for (int i = 0; i < 71; i++)
		ck_assert_uint_eq(uhmm_page_to_pfn(q[i]), PFN(DEV0) + LOW + (uint64_t)i);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 70, UHMM_ALLOC_CONTIG, q + 71), 0);
	for (int i = 0; i < 70; i++)
		ck_assert_uint_eq(uhmm_page_to_pfn(q[71 + i]), PFN(DEV0) + 130 + (uint64_t)i);
	/* a run across the first summary word's end (page 4096 * 1 + ...) */
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, N - LOW - 71, UHMM_ALLOC_CONTIG,
						  q + 141), 0);
	ck_assert_uint_eq(uhmm_page_to_pfn(q[141]), PFN(DEV0) + LOW + 71);
	ck_assert_uint_eq(uhmm_page_to_pfn(q[141 + N - LOW - 72]), PFN(DEV0) + N - 1);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 1);	/* page 100 */
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 2, UHMM_ALLOC_CONTIG, q), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, UHMM_ALLOC_CONTIG, q), 0);
	ck_assert_uint_eq(uhmm_page_to_pfn(q[0]), PFN(DEV0) + 100);
	free(p);
	free(q);
}
END_TEST

/* Ranges that happen to be physically adjacent still do not form one CONTIG run. */
START_TEST(alloc_pages_contig_never_spans_ranges)
{
	struct uhmm_page *p[6];

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + 4 * T_PAGE, DEV0 + 8 * T_PAGE };
	t_private(&pm, rg, 2);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 6, UHMM_ALLOC_CONTIG, p), -ENOSPC);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 4, UHMM_ALLOC_CONTIG, p), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 4, UHMM_ALLOC_CONTIG, p), 0);
	ck_assert_uint_eq(uhmm_page_to_pfn(p[0]), PFN(DEV0) + 4);
}
END_TEST

/* The lowest free page is reused first. */
START_TEST(alloc_pages_reuses_lowest_free_page)
{
	struct uhmm_page *p[4], *q;

	t_private_simple(64);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 4, 0, p), 0);
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(uhmm_page_to_pfn(p[i]), PFN(DEV0) + (uint64_t)i);
	ck_assert_int_eq(uhmm_page_put(p[2]), 0);
	ck_assert_int_eq(uhmm_page_put(p[1]), 0);
	q = t_alloc1(&pm);
	ck_assert_ptr_eq(q, p[1]);
	q = t_alloc1(&pm);
	ck_assert_ptr_eq(q, p[2]);
	q = t_alloc1(&pm);
	ck_assert_uint_eq(uhmm_page_to_pfn(q), PFN(DEV0) + 4);
}
END_TEST

/* NULL pagemap or array, n 0, unknown flags, unregistered or dying pagemap: -EINVAL. */
START_TEST(alloc_pages_bad_args_is_einval)
{
	struct uhmm_page *p[2], *held;

	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, p), -EINVAL);	/* unregistered */
	t_private_simple(8);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(NULL, 1, 0, p), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 0, 0, p), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 1U << 1, p), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 8);
	held = t_alloc1(&pm);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EBUSY);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, p), -EINVAL);
	ck_assert_int_eq(uhmm_page_put(held), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* With ALTMAP, the reserve and the page-struct pages are never handed out. */
START_TEST(alloc_pages_skips_altmap_pages)
{
	const uint64_t n = 512, reserve = 3;
	char *base = t_map_anon(n * T_PAGE);
	struct uhmm_page **p = calloc(n, sizeof(*p));
	uint64_t unusable, got;

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + n * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_GENERIC, rg, 1, base);
	pm.flags = UHMM_PGMAP_ALTMAP;
	pm.altmap.reserve = reserve;
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	unusable = reserve + pm.altmap.alloc;
	ck_assert_uint_eq(pm.altmap.alloc, 4);
	got = (uint64_t)uhmm_pagemap_nr_free(&pm);
	ck_assert_uint_eq(got, n - unusable);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, got, 0, p), 0);
	for (uint64_t i = 0; i < got; i++)
		ck_assert_uint_ge(uhmm_page_to_pfn(p[i]) - PFN(DEV0), unusable);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 1, 0, p), -ENOSPC);
	for (uint64_t i = 0; i < got; i++)
		ck_assert_int_eq(uhmm_page_put(p[i]), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, unusable + 1, UHMM_ALLOC_CONTIG, p), 0);
	ck_assert_uint_eq(uhmm_page_to_pfn(p[0]) - PFN(DEV0), unusable);
	for (uint64_t i = 0; i < unusable + 1; i++)
		ck_assert_int_eq(uhmm_page_put(p[i]), 0);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	free(p);
	munmap(base, n * T_PAGE);
}
END_TEST

#define ALLOC_THREADS 4
#define ALLOC_PAGES 256

static atomic_int page_owner[ALLOC_PAGES];

static void *alloc_churn_fn(void *p)
{
	long me = *(const long *)p, bad = 0;
	struct uhmm_page *pages[8];

	for (int it = 0; it < 3000; it++) {
		uint64_t n = (uint64_t)(it % 8) + 1;
		unsigned flags = it % 3 ? 0 : UHMM_ALLOC_CONTIG;

		if (uhmm_pagemap_alloc_pages(&pm, n, flags, pages))
			continue;	/* -ENOSPC under contention is fine */
		for (uint64_t i = 0; i < n; i++) {
			int expect = 0;
			uint64_t idx = uhmm_page_index(pages[i]);

			if (!atomic_compare_exchange_strong(&page_owner[idx], &expect, (int)me))
				bad++;
		}
		for (uint64_t i = 0; i < n; i++) {
			atomic_store(&page_owner[uhmm_page_index(pages[i])], 0);
			if (uhmm_page_put(pages[i]))
				bad++;
		}
	}
	return (void *)bad;
}

/* Threads allocating and freeing concurrently never share a page. */
START_TEST(alloc_pages_concurrent_threads_disjoint)
{
	static const long ids[ALLOC_THREADS] = { 1, 2, 3, 4 };	/* page_owner marks */

	t_private_simple(ALLOC_PAGES / 8);	/* small pool: lots of contention */
	t_threads_run(ALLOC_THREADS, alloc_churn_fn, (void *)ids, sizeof(ids[0]));
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), ALLOC_PAGES / 8);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), 0);
}
END_TEST

/* ---- uhmm_pagemap_nr_pages / uhmm_pagemap_nr_free ---- */

/* nr_pages counts every range; NULL and unregistered pagemaps are -EINVAL. */
START_TEST(nr_pages_counts_all_ranges)
{
	ck_assert_int_eq(uhmm_pagemap_nr_pages(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), -EINVAL);
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 3 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + MiB, DEV0 + 2 * MiB };
	t_private(&pm, rg, 2);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), 3 + 256);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(&pm), -EINVAL);
}
END_TEST

/* nr_free follows allocations and frees; NULL and unregistered are -EINVAL. */
START_TEST(nr_free_tracks_the_pool)
{
	struct uhmm_page *p[5];

	ck_assert_int_eq(uhmm_pagemap_nr_free(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), -EINVAL);
	t_private_simple(10);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 10);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 5, 0, p), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 5);
	ck_assert_int_eq(uhmm_page_get(p[0]), 0);
	ck_assert_int_eq(uhmm_page_put(p[0]), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 5);
	for (int i = 0; i < 5; i++)
		uhmm_page_put(p[i]);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), 10);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&pm), -EINVAL);
}
END_TEST

/* ---- hidden helpers: uhmm_pagemap_page, uhmm_pagemap_is_dying, evict hook ---- */

/* uhmm_pagemap_page indexes across ranges; out of range or unregistered is NULL. */
START_TEST(pagemap_page_indexes_across_ranges)
{
	ck_assert_ptr_null(uhmm_pagemap_page(&pm, 0));
	ck_assert_ptr_null(uhmm_pagemap_page(NULL, 0));
	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 2 * T_PAGE };
	rg[1] = (struct uhmm_dev_range){ DEV0 + MiB, DEV0 + MiB + 3 * T_PAGE };
	t_private(&pm, rg, 2);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 1), uhmm_pfn_to_page(PFN(DEV0) + 1));
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 2), uhmm_pfn_to_page(PFN(DEV0 + MiB)));
	ck_assert_ptr_eq(uhmm_pagemap_page(&pm, 4), uhmm_pfn_to_page(PFN(DEV0 + MiB) + 2));
	ck_assert_ptr_null(uhmm_pagemap_page(&pm, 5));
	ck_assert_ptr_null(uhmm_pagemap_page(&pm, UINT64_MAX));
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

/* is_dying: false while live, true once teardown starts, true when unregistered. */
START_TEST(pagemap_is_dying_follows_teardown)
{
	struct uhmm_page *page;

	ck_assert(uhmm_pagemap_is_dying(NULL));
	ck_assert(uhmm_pagemap_is_dying(&pm));
	t_private_simple(4);
	ck_assert(!uhmm_pagemap_is_dying(&pm));
	page = t_alloc1(&pm);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 0), -EBUSY);
	ck_assert(uhmm_pagemap_is_dying(&pm));
	uhmm_page_put(page);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert(uhmm_pagemap_is_dying(&pm));
}
END_TEST

static atomic_int n_evict;
static struct uhmm_page *evict_held[4];
static bool evict_saw_dying;

/* Simulates migration back to RAM: drops the references the "CPU data" held. */
static int t_evict(struct uhmm_pagemap *pgmap)
{
	atomic_fetch_add(&n_evict, 1);
	evict_saw_dying = uhmm_pagemap_is_dying(pgmap);
	for (uint64_t i = 0; i < (uint64_t)uhmm_pagemap_nr_pages(pgmap); i++) {
		struct uhmm_page *page = uhmm_pagemap_page(pgmap, i);

		if (page->refcount > 0)
			uhmm_page_put(page);
	}
	return 0;
}

/* The evict hook runs for PRIVATE after gets stop; its puts let teardown finish. */
START_TEST(evict_hook_runs_for_private_and_drains)
{
	t_private_simple(8);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&pm, 4, 0, evict_held), 0);
	uhmm_pagemap_set_evict_hook(t_evict);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 2000), 0);
	ck_assert_int_eq(atomic_load(&n_evict), 1);
	ck_assert(evict_saw_dying);
	ck_assert_int_eq(atomic_load(&n_page_free), 4);
}
END_TEST

/* The evict hook is not called for GENERIC (or P2P) pagemaps. */
START_TEST(evict_hook_skips_generic)
{
	char *base = t_map_anon(4 * T_PAGE);

	rg[0] = (struct uhmm_dev_range){ DEV0, DEV0 + 4 * T_PAGE };
	t_pgmap(&pm, UHMM_PAGEMAP_GENERIC, rg, 1, base);
	ck_assert_int_eq(uhmm_memremap_pages(&pm), 0);
	uhmm_pagemap_set_evict_hook(t_evict);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
	ck_assert_int_eq(atomic_load(&n_evict), 0);
	munmap(base, 4 * T_PAGE);
}
END_TEST

static int t_evict_fails(struct uhmm_pagemap *pgmap)
{
	atomic_fetch_add(&n_evict, 1);
	return -EIO;
}

/* A failing evict hook is only logged: teardown still waits, and each attempt re-evicts. */
START_TEST(evict_hook_failure_still_waits)
{
	struct uhmm_page *page;

	page = t_private_alloc1(4);
	uhmm_pagemap_set_evict_hook(t_evict_fails);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 10), -EBUSY);
	ck_assert_int_eq(uhmm_memunmap_pages_timeout(&pm, 10), -EBUSY);
	ck_assert_int_eq(atomic_load(&n_evict), 2);
	uhmm_page_put(page);
	ck_assert_int_eq(uhmm_memunmap_pages(&pm), 0);
}
END_TEST

int main(void)
{
	TCase *remap = T_TCASE("memremap_pages", setup, teardown,
			       memremap_private_creates_free_page_structs,
			       memremap_each_type_with_base, memremap_bad_type_or_flags_is_einval,
			       memremap_private_requirements_are_einval,
			       memremap_backed_types_requirements_are_einval,
			       memremap_bad_ranges_are_einval,
			       memremap_overlap_with_registered_is_ebusy,
			       memremap_registered_pgmap_is_ebusy_until_unmapped,
			       memremap_altmap_places_page_structs_in_base,
			       memremap_altmap_without_base_or_too_small_is_einval,
			       memremap_failed_altmap_leaves_base_untouched,
			       memremap_keeps_caller_range_order,
			       memremap_concurrent_overlapping_one_wins);
	TCase *unmap = T_TCASE("memunmap_pages", setup, teardown,
			       memunmap_unregisters_and_cleans_up_once,
			       memunmap_unregistered_is_einval, memunmap_waits_for_page_refs,
			       memunmap_waits_for_pagemap_refs,
			       memunmap_dying_pagemap_refuses_new_refs,
			       memunmap_concurrent_get_put_during_teardown,
			       memunmap_concurrent_callers_one_wins,
			       memunmap_cleanup_may_free_pgmap);
	TCase *unmap_to = T_TCASE("memunmap_pages_timeout", setup, teardown,
				  memunmap_timeout_busy_then_success,
				  memunmap_timeout_busy_on_pagemap_ref,
				  memunmap_timeout_zero_when_idle_succeeds,
				  memunmap_after_timeout_finishes,
				  memunmap_timeout_unregistered_is_einval);
	TCase *p2p = T_TCASE("pfn_to_page", setup, teardown, pfn_to_page_every_pfn_of_1gib,
			     pfn_to_page_gaps_are_null, pfn_to_page_picks_the_right_pagemap,
			     pfn_to_page_unregistered_is_null,
			     pfn_to_page_concurrent_with_registration);
	TCase *p2pfn = T_TCASE("page_to_pfn", setup, teardown,
			       page_to_pfn_round_trips_across_ranges, page_to_pfn_null_is_zero);
	TCase *p2v = T_TCASE("page_to_virt", setup, teardown,
			     page_to_virt_follows_base_in_range_order,
			     page_to_virt_without_base_is_null, page_to_virt_private_with_base);
	TCase *getpm = T_TCASE("get_dev_pagemap", setup, teardown,
			       get_dev_pagemap_returns_owner_and_pins,
			       get_dev_pagemap_no_pagemap_is_enoent, get_dev_pagemap_dying_is_enxio,
			       get_dev_pagemap_null_out_is_einval);
	TCase *putpm = T_TCASE("put_dev_pagemap", setup, teardown,
			       put_dev_pagemap_without_get_is_einval,
			       put_dev_pagemap_unregistered_is_einval,
			       put_dev_pagemap_other_thread_refs);
	TCase *pget = T_TCASE("page_get", setup, teardown, page_get_adds_a_reference,
			      page_get_free_page_is_einval);
	TCase *pput = T_TCASE("page_put", setup, teardown, page_put_last_ref_frees_once,
			      page_put_without_get_is_einval,
			      page_put_concurrent_frees_exactly_once,
			      page_put_without_page_free_op);
	TCase *alloc = T_TCASE("pagemap_alloc_pages", setup, teardown,
			       alloc_pages_returns_distinct_referenced_pages,
			       alloc_pages_exhaustion_is_enospc,
			       alloc_pages_contig_is_contiguous_within_a_range,
			       alloc_pages_contig_fragmented_is_enospc,
			       alloc_pages_contig_never_spans_ranges,
			       alloc_pages_contig_large_pool_finds_lowest_run,
			       alloc_pages_reuses_lowest_free_page, alloc_pages_bad_args_is_einval,
			       alloc_pages_skips_altmap_pages,
			       alloc_pages_concurrent_threads_disjoint);
	TCase *nrp = T_TCASE("pagemap_nr_pages", setup, teardown, nr_pages_counts_all_ranges);
	TCase *nrf = T_TCASE("pagemap_nr_free", setup, teardown, nr_free_tracks_the_pool);
	TCase *hidden = T_TCASE("internal_helpers", setup, teardown,
				pagemap_page_indexes_across_ranges,
				pagemap_is_dying_follows_teardown,
				evict_hook_runs_for_private_and_drains, evict_hook_skips_generic,
				evict_hook_failure_still_waits);

	return t_run_suite("pagemap", remap, unmap, unmap_to, p2p, p2pfn, p2v, getpm,
			   putpm, pget, pput, alloc, nrp, nrf, hidden, NULL);
}
