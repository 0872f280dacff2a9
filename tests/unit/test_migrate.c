// SPDX-License-Identifier: MIT
/* Unit tests for include/uhmm/migrate.h, driven by a tiny driver defined
 * here (a PRIVATE pagemap whose memory is a host pool): setup/pages/finalize
 * in both directions, skipped destinations, CPU fault-back, device eviction,
 * pagemap teardown with mapped pages, and device-exclusive access. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include <uhmm/migrate.h>
#include <uhmm/mirror.h>
#include <uhmm/mm.h>
#include "t_util.h"

#define NP 16
#define LEN (NP * T_PAGE)
#define ADDR(p, i) ((uint64_t)(uintptr_t)((uint8_t *)(p) + (size_t)(i) * T_PAGE))

/* ---------------------------------------------------------------------- */
/* the test driver                                                          */

struct drv {
	struct uhmm_pagemap pgmap;	/* first: DRV() casts back */
	struct uhmm_dev_range range;
	void *pool;
	uint64_t npages;
	atomic_int frees;		/* page_free calls */
	atomic_int to_ram;		/* migrate_to_ram calls */
	atomic_int to_ram_skip;		/* leave dst empty in migrate_to_ram */
	atomic_int to_ram_fail;		/* as many next calls leave dst empty */
	void (*to_ram_hook)(void);	/* run once by the next migrate_to_ram */
	void (*to_ram_done_hook)(void);	/* run once after its finalize */
	_Atomic uint64_t span_min, span_max;	/* fault->end - fault->addr seen */
	bool managed;			/* pool from uhmm_mm_alloc() of mm */
};

#define DRV(pgmap) ((struct drv *)(void *)(pgmap))

static struct uhmm_mm *mm;
static struct drv *drv;
static uint8_t *mem;			/* NP managed anonymous pages */

static void drv_page_free(struct uhmm_page *pg)
{
	atomic_fetch_add(&DRV(pg->pgmap)->frees, 1);
}

/* Page 0 of a device -> system migration: copy it into its system buffer. */
static void copy_page_back(struct uhmm_migrate *m)
{
	struct uhmm_page *pg;
	void *to;

	if (!(m->src[0] & UHMM_MIGRATE_PFN_MIGRATE))
		return;
	pg = uhmm_pfn_to_page(uhmm_migrate_pfn_to_pfn(m->src[0]));
	to = uhmm_migrate_dst_buf(m, 0);
	if (pg && to) {
		memcpy(to, uhmm_page_to_virt(pg), T_PAGE);
		m->dst[0] = UHMM_MIGRATE_PFN_SYSTEM;
	}
}

static int drv_migrate_to_ram(struct uhmm_fault *f)
{
	struct drv *d = DRV(f->page->pgmap);
	uint64_t src[1], dst[1];
	struct uhmm_migrate m = {
		.mm = f->mm, .start = f->addr, .end = f->addr + T_PAGE,
		.src = src, .dst = dst, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.pgmap_owner = d, .fault_page = f->page,
	};
	int err;

	atomic_fetch_add(&d->to_ram, 1);
	if (f->end - f->addr > atomic_load(&d->span_max))
		atomic_store(&d->span_max, f->end - f->addr);
	if (!atomic_load(&d->span_min) || f->end - f->addr < atomic_load(&d->span_min))
		atomic_store(&d->span_min, f->end - f->addr);
	if (d->to_ram_hook) {
		void (*hook)(void) = d->to_ram_hook;

		d->to_ram_hook = NULL;
		hook();
	}
	err = uhmm_migrate_setup(&m);
	if (err)
		return err;
	if ((src[0] & UHMM_MIGRATE_PFN_MIGRATE) && !atomic_load(&d->to_ram_skip) &&
	    atomic_fetch_sub(&d->to_ram_fail, 1) <= 0)
		copy_page_back(&m);
	uhmm_migrate_pages(&m);
	err = uhmm_migrate_finalize(&m);
	if (d->to_ram_done_hook) {
		void (*hook)(void) = d->to_ram_done_hook;

		d->to_ram_done_hook = NULL;
		hook();
	}
	return err < 0 ? err : 0;
}

static const struct uhmm_pagemap_ops drv_ops = {
	.page_free = drv_page_free,
	.migrate_to_ram = drv_migrate_to_ram,
};

/* @managed: the pool is managed by mm (pages can move straight in). */
static struct drv *drv_create_pool(uint64_t npages, bool managed)
{
	struct drv *d = calloc(1, sizeof(*d));
	uint64_t start;

	ck_assert_ptr_nonnull(d);
	d->npages = npages;
	d->managed = managed;
	if (managed)
		ck_assert_int_eq(uhmm_mm_alloc(mm, npages * T_PAGE, 0, &d->pool), 0);
	else
		d->pool = t_map_anon(npages * T_PAGE);
	ck_assert_int_eq(uhmm_request_free_region(NULL, npages * T_PAGE, 0, &start), 0);
	d->range = (struct uhmm_dev_range){ start, start + npages * T_PAGE };
	d->pgmap = (struct uhmm_pagemap){
		.type = UHMM_PAGEMAP_PRIVATE, .ops = &drv_ops, .owner = d,
		.nr_range = 1, .ranges = &d->range, .base = d->pool,
	};
	ck_assert_int_eq(uhmm_memremap_pages(&d->pgmap), 0);
	return d;
}

static struct drv *drv_create(uint64_t npages)
{
	return drv_create_pool(npages, false);
}

static void drv_destroy(struct drv *d)
{
	if (!d)
		return;
	if (d->pgmap.priv)
		uhmm_memunmap_pages(&d->pgmap);
	uhmm_release_region(NULL, d->range.start);
	if (d->managed)
		uhmm_mm_free(mm, d->pool, d->npages * T_PAGE);
	else
		munmap(d->pool, d->npages * T_PAGE);
	free(d);
}

/* The fault handler drops its page reference after waking the faulting
 * thread: give asynchronous page_free calls a moment. */
static int wait_frees(struct drv *d, int want)
{
	for (int i = 0; i < 1000 && atomic_load(&d->frees) < want; i++)
		usleep(1000);
	return atomic_load(&d->frees);
}

static uint64_t first_pfn(struct drv *d)
{
	return d->range.start >> 12;
}

/*
 * Migrate [addr, addr + n pages) to the driver. skip(i) true leaves dst[i]
 * empty. Returns finalize's count; *cpages gets setup's, *src0 (if given)
 * page 0's source buffer.
 */
static int drv_to_dev_at(struct drv *d, void *addr, uint64_t n, uint64_t skip_mask,
			 uint64_t *cpages, uint8_t **src0)
{
	uint64_t *src = calloc(n, 8), *dst = calloc(n, 8);
	struct uhmm_page **pg = calloc(n, sizeof(*pg));
	struct uhmm_migrate m = {
		.mm = mm, .start = (uint64_t)(uintptr_t)addr,
		.end = (uint64_t)(uintptr_t)addr + n * T_PAGE, .src = src, .dst = dst,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = d,
	};
	int done;

	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	if (cpages)
		*cpages = m.cpages;
	if (src0)
		*src0 = uhmm_migrate_src_buf(&m, 0);
	for (uint64_t i = 0; i < n; i++) {
		void *from;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || (i < 64 && (skip_mask >> i & 1)))
			continue;
		ck_assert_int_eq(uhmm_pagemap_alloc_pages(&d->pgmap, 1, 0, &pg[i]), 0);
		from = uhmm_migrate_src_buf(&m, i);
		if (from)
			memcpy(uhmm_page_to_virt(pg[i]), from, T_PAGE);
		else
			memset(uhmm_page_to_virt(pg[i]), 0, T_PAGE);
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg[i]));
	}
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	done = uhmm_migrate_finalize(&m);
	for (uint64_t i = 0; i < n; i++)
		if (pg[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(pg[i]);
	free(src);
	free(dst);
	free(pg);
	return done;
}

static int drv_to_dev(struct drv *d, void *addr, uint64_t n, uint64_t skip_mask,
		      uint64_t *cpages)
{
	return drv_to_dev_at(d, addr, n, skip_mask, cpages, NULL);
}

/* Device -> system for the driver's pages of the range, page i only if bit
 * i of @want is set (i < 64); returns finalize's count. */
static int drv_to_sys_some(struct drv *d, void *addr, uint64_t n, uint64_t want)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = (uint64_t)(uintptr_t)addr,
		.end = (uint64_t)(uintptr_t)addr + n * T_PAGE, .src = src, .dst = dst,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE, .pgmap_owner = d,
	};

	ck_assert_uint_le(n, NP);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	for (uint64_t i = 0; i < n; i++) {
		void *to = uhmm_migrate_dst_buf(&m, i);

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || (i < 64 && !(want >> i & 1)))
			continue;
		ck_assert_ptr_nonnull(to);
		ck_assert(src[i] & UHMM_MIGRATE_PFN_DEVICE);
		memcpy(to, uhmm_page_to_virt(uhmm_pfn_to_page(uhmm_migrate_pfn_to_pfn(src[i]))),
		       T_PAGE);
		dst[i] = UHMM_MIGRATE_PFN_SYSTEM;
	}
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	return uhmm_migrate_finalize(&m);
}

static uint8_t *map_managed(size_t len)
{
	uint8_t *p = t_map_anon(len);

	ck_assert_int_eq(uhmm_mm_manage(mm, p, len), 0);
	return p;
}

static void setup(void)
{
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	mem = map_managed(LEN);
	drv = drv_create(64);
}

static void teardown(void)
{
	drv_destroy(drv);
	drv = NULL;
	uhmm_mm_close(mm);
	mm = NULL;
	munmap(mem, LEN);
}

/* ---------------------------------------------------------------------- */
/* uhmm_migrate_setup                                                       */

/* Every documented bad argument is -EINVAL. */
START_TEST(setup_bad_args_einval)
{
	uint64_t src[NP], dst[NP];
	uint8_t *plain = t_map_anon(LEN);
	struct uhmm_page fake = { .refcount = 1 };
	struct uhmm_migrate ok = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};
	struct uhmm_migrate m;

	ck_assert_int_eq(uhmm_migrate_setup(NULL), -EINVAL);
	m = ok; m.mm = NULL;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.src = NULL;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.dst = NULL;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.end = m.start;			/* npages 0 */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.end = m.start - T_PAGE;		/* reversed */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.start += 1;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.end -= 1;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.flags = 0;
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.flags |= 1U << 7;			/* unknown flag */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.start = ADDR(plain, 0); m.end = ADDR(plain, NP);	/* unmanaged */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.end = ADDR(mem, NP + 1);		/* runs past managed memory */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m = ok; m.fault_page = &fake;			/* not a device page */
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	munmap(plain, LEN);
	/* nothing was left isolated: the memory still works */
	t_fill_pattern(mem, LEN, 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 1), -1);
}
END_TEST

/* System pages are collected writable with data; a MIGRATE invalidation
 * carrying pgmap_owner is sent; leaving dst empty restores them. */
START_TEST(setup_collects_system_pages)
{
	uint64_t src[NP], dst[NP];
	struct t_rec *r = t_rec_new();
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};

	t_rec_insert(r, mm, mem, LEN);
	t_fill_pattern(mem, LEN, 2);
	memset(src, 0xff, sizeof(src));
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.npages, NP);
	ck_assert_uint_eq(m.cpages, NP);
	ck_assert(t_rec_has(r, UHMM_EVENT_MIGRATE, drv));
	for (int i = 0; i < NP; i++) {
		ck_assert_uint_eq(src[i], UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_VALID |
					  UHMM_MIGRATE_PFN_WRITE);
		ck_assert_uint_eq(dst[i], 0);
		ck_assert_ptr_nonnull(uhmm_migrate_src_buf(&m, (uint64_t)i));
		ck_assert_int_eq(t_check_pattern(uhmm_migrate_src_buf(&m, (uint64_t)i), T_PAGE,
						 2 + (uint64_t)i * T_PAGE / 8), -1);
	}
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 2), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), 0);
	t_rec_free(r);
}
END_TEST

/* Never-touched pages are collected without VALID (no data to copy). */
START_TEST(setup_untouched_pages_have_no_data)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};

	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, NP);
	for (int i = 0; i < NP; i++) {
		ck_assert_uint_eq(src[i] & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_VALID),
				  UHMM_MIGRATE_PFN_MIGRATE);
		ck_assert_ptr_null(uhmm_migrate_src_buf(&m, (uint64_t)i));
	}
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_first_nonzero(mem, LEN), -1);
}
END_TEST

/* memfd (shared) memory, read-only memory and other owners' device pages
 * are not collected. */
START_TEST(setup_skips_shared_readonly_and_foreign)
{
	uint64_t src[4], dst[4];
	int fd = memfd_create("mig", MFD_CLOEXEC);
	uint8_t *p;
	struct uhmm_migrate m = {
		.mm = mm, .src = src, .dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
		.pgmap_owner = drv,
	};

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 4 * T_PAGE), 0);
	p = mmap(NULL, 4 * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, 4 * T_PAGE), 0);
	t_fill_pattern(p, 4 * T_PAGE, 3);
	m.start = ADDR(p, 0);
	m.end = ADDR(p, 4);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_check_pattern(p, 4 * T_PAGE, 3), -1);

	/* read-only */
	t_fill_pattern(mem, LEN, 4);
	ck_assert_int_eq(uhmm_mprotect(mem, 4 * T_PAGE, PROT_READ), 0);
	m.start = ADDR(mem, 0);
	m.end = ADDR(mem, 4);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 4), -1);

	/* device pages of drv, selected by another owner */
	ck_assert_int_eq(drv_to_dev(drv, mem + 4 * T_PAGE, 4, 0, NULL), 4);
	m.start = ADDR(mem, 4);
	m.end = ADDR(mem, 8);
	m.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE | UHMM_MIGRATE_SELECT_SYSTEM;
	m.pgmap_owner = &m;
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(atomic_load(&drv->to_ram), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 4), -1);
	munmap(p, 4 * T_PAGE);
	close(fd);
}
END_TEST

struct writer {
	volatile uint8_t *p;
	atomic_int done;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	w->p[100] = 0xAB;
	atomic_store(&w->done, 1);
	return NULL;
}

/* A CPU write to an isolated page waits for finalize and then lands on the
 * migrated data (nothing torn, nothing lost). */
START_TEST(setup_isolates_cpu_writer_waits)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_page *pg[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};
	struct writer w = { .p = mem + 3 * T_PAGE };
	pthread_t th;

	t_fill_pattern(mem, LEN, 5);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, writer_main, &w), 0);
	usleep(50000);
	ck_assert_int_eq(atomic_load(&w.done), 0);	/* blocked on the isolated page */
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&drv->pgmap, NP, 0, pg), 0);
	for (int i = 0; i < NP; i++) {
		memcpy(uhmm_page_to_virt(pg[i]), uhmm_migrate_src_buf(&m, (uint64_t)i), T_PAGE);
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg[i]));
	}
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), NP);
	pthread_join(th, NULL);
	ck_assert_uint_eq(mem[3 * T_PAGE + 100], 0xAB);
	mem[3 * T_PAGE + 100] = 0;
	{
		uint8_t ref[T_PAGE];

		t_fill_pattern(ref, T_PAGE, 5 + 3 * T_PAGE / 8);
		ref[100] = 0;
		ck_assert_int_eq(memcmp(mem + 3 * T_PAGE, ref, T_PAGE), 0);
	}
	ck_assert_int_eq(t_check_pattern(mem, 3 * T_PAGE, 5), -1);
	ck_assert_int_eq(t_check_pattern(mem + 4 * T_PAGE, LEN - 4 * T_PAGE,
					 5 + 4 * T_PAGE / 8), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_migrate_src_buf / uhmm_migrate_dst_buf                              */

/* Out-of-range index, NULL, and no setup give NULL. */
START_TEST(bufs_bad_args_null)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};

	ck_assert_ptr_null(uhmm_migrate_src_buf(NULL, 0));
	ck_assert_ptr_null(uhmm_migrate_dst_buf(NULL, 0));
	ck_assert_ptr_null(uhmm_migrate_src_buf(&m, 0));	/* not set up */
	ck_assert_ptr_null(uhmm_migrate_dst_buf(&m, 0));
	mem[0] = 1;
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_ptr_nonnull(uhmm_migrate_src_buf(&m, 0));
	ck_assert_ptr_null(uhmm_migrate_src_buf(&m, NP));
	ck_assert_ptr_null(uhmm_migrate_dst_buf(&m, NP));
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_uint_eq(mem[0], 1);
}
END_TEST

/* Device sources have a dst buffer and no src buffer. */
START_TEST(bufs_device_source_has_dst_buf)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE, .pgmap_owner = drv,
	};

	t_fill_pattern(mem, LEN, 6);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, NP);
	for (int i = 0; i < NP; i++) {
		ck_assert(src[i] & UHMM_MIGRATE_PFN_DEVICE);
		ck_assert(src[i] & UHMM_MIGRATE_PFN_WRITE);
		ck_assert_ptr_nonnull(uhmm_pfn_to_page(uhmm_migrate_pfn_to_pfn(src[i])));
		ck_assert_ptr_null(uhmm_migrate_src_buf(&m, (uint64_t)i));
		ck_assert_ptr_nonnull(uhmm_migrate_dst_buf(&m, (uint64_t)i));
	}
	/* no dst: pages stay on the device */
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(atomic_load(&drv->frees), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 6), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_migrate_pages                                                       */

/* NULL or a migrate that was not set up is -EINVAL. */
START_TEST(pages_bad_args_einval)
{
	struct uhmm_migrate m = { 0 };

	ck_assert_int_eq(uhmm_migrate_pages(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_pages(&m), -EINVAL);
}
END_TEST

/* A dst device pfn with no page is -EINVAL; that entry stays in RAM. */
START_TEST(pages_unknown_device_pfn_dropped)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_page *pg;
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, 2), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};

	t_fill_pattern(mem, LEN, 7);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&drv->pgmap, 1, 0, &pg), 0);
	memcpy(uhmm_page_to_virt(pg), uhmm_migrate_src_buf(&m, 0), T_PAGE);
	dst[0] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg));
	dst[1] = uhmm_migrate_pfn(1);		/* no such device page */
	ck_assert_int_eq(uhmm_migrate_pages(&m), -EINVAL);
	ck_assert(src[0] & UHMM_MIGRATE_PFN_MIGRATE);
	ck_assert(!(src[1] & UHMM_MIGRATE_PFN_MIGRATE));
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), 1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_migrate_finalize                                                    */

/* NULL, not set up, or a second finalize is -EINVAL. */
START_TEST(finalize_bad_args_einval)
{
	uint64_t src[NP], dst[NP];
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = drv,
	};

	ck_assert_int_eq(uhmm_migrate_finalize(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), -EINVAL);
}
END_TEST

/* All pages to the device; CPU reads fault each back through migrate_to_ram. */
START_TEST(finalize_to_device_then_cpu_faults_back)
{
	uint64_t cp = 0;

	t_fill_pattern(mem, LEN, 8);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, &cp), NP);
	ck_assert_uint_eq(cp, NP);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&drv->pgmap), 64 - NP);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 8), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP);
	ck_assert_int_eq(wait_frees(drv, NP), NP);
	ck_assert_int_eq(uhmm_pagemap_nr_free(&drv->pgmap), 64);
}
END_TEST

/* Half the destinations left empty: those pages stay in RAM. */
START_TEST(finalize_partial_dst)
{
	t_fill_pattern(mem, LEN, 9);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0x5555, NULL), NP / 2);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 9), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP / 2);
}
END_TEST

/*
 * Device -> system driven by the driver, for the pages whose bit is set in
 * @want: those come back (device pages freed), the others stay on the
 * device until the CPU reads them. @split: a plain mprotect splits the
 * mapping under uhmm's range record first (page 5 read-only).
 */
static void device_to_system(uint64_t seed, uint64_t want, bool split)
{
	int n = __builtin_popcountll(want & ((1ULL << NP) - 1));

	t_fill_pattern(mem, LEN, seed);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	if (split)
		ck_assert_int_eq(mprotect(mem + 5 * T_PAGE, T_PAGE, PROT_READ), 0);
	ck_assert_int_eq(drv_to_sys_some(drv, mem, NP, want), n);
	ck_assert_int_eq(atomic_load(&drv->frees), n);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), n);
	ck_assert_int_eq(t_check_pattern(mem, LEN, seed), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP - n);
	if (split)
		ck_assert_int_eq(mprotect(mem + 5 * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE), 0);
}

/* All pages back, device pages freed. */
START_TEST(finalize_device_to_system)
{
	device_to_system(10, ~0ULL, false);
}
END_TEST

/* Pages without a destination split the copy back into runs. */
START_TEST(finalize_device_to_system_some)
{
	device_to_system(20, ~((1ULL << 3) | (1ULL << 9)), false);
}
END_TEST

/* Across a mapping split: the pages on either side and the one in the
 * middle all come back. */
START_TEST(finalize_device_to_system_across_split)
{
	device_to_system(21, ~0ULL, true);
}
END_TEST

/* CPU write on a device page: data = device copy + the write. */
START_TEST(finalize_cpu_write_after_migration)
{
	t_fill_pattern(mem, LEN, 11);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	((volatile uint8_t *)mem)[7 * T_PAGE + 9] ^= 0x5a;
	((volatile uint8_t *)mem)[7 * T_PAGE + 9] ^= 0x5a;
	ck_assert_int_eq(atomic_load(&drv->to_ram), 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 11), -1);
}
END_TEST

static sigjmp_buf bus_jmp;

static void on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(bus_jmp, 1);
}

/* migrate_to_ram that leaves dst empty: the faulting thread gets SIGBUS and
 * the page stays on the device (it comes back once the driver cooperates). */
START_TEST(finalize_to_ram_dst_empty_sigbus)
{
	struct sigaction sa = { .sa_handler = on_sigbus }, old;
	volatile int got = 0;

	t_fill_pattern(mem, T_PAGE, 18);
	ck_assert_int_eq(drv_to_dev(drv, mem, 1, 0, NULL), 1);
	atomic_store(&drv->to_ram_skip, 1);
	ck_assert_int_eq(sigaction(SIGBUS, &sa, &old), 0);
	if (sigsetjmp(bus_jmp, 1) == 0)
		(void)*(volatile uint8_t *)mem;
	else
		got = 1;
	sigaction(SIGBUS, &old, NULL);
	ck_assert_int_eq(got, 1);
	ck_assert_int_ge(atomic_load(&drv->to_ram), 1);
	ck_assert_int_eq(atomic_load(&drv->frees), 0);
	atomic_store(&drv->to_ram_skip, 0);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 18), -1);
}
END_TEST

/* A migration of page @i of mem from drv's memory back to the system. */
static struct uhmm_migrate one_page_back(int i, uint64_t *src, uint64_t *dst)
{
	return (struct uhmm_migrate){
		.mm = mm, .start = ADDR(mem, i), .end = ADDR(mem, i + 1), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE, .pgmap_owner = drv,
	};
}

/*
 * Another migration holds the faulting page while migrate_to_ram runs (the
 * driver's setup finds it busy), then gives it back to the device before the
 * fault path looks: the driver did nothing wrong, so the access faults again
 * and the second migrate_to_ram brings the page back (no SIGBUS).
 */
static pthread_t holder;
static atomic_int holder_state;		/* 1: page held, 2: let it go */

static void *hold_page0(void *arg)
{
	uint64_t src[1], dst[1];
	struct uhmm_migrate m = one_page_back(0, src, dst);

	(void)arg;
	if (uhmm_migrate_setup(&m) || !(src[0] & UHMM_MIGRATE_PFN_MIGRATE)) {
		atomic_store(&holder_state, -1);
		return NULL;
	}
	atomic_store(&holder_state, 1);
	while (atomic_load(&holder_state) != 2)
		usleep(100);
	uhmm_migrate_pages(&m);		/* dst[0] == 0: the page stays */
	uhmm_migrate_finalize(&m);
	return NULL;
}

static void start_holder(void)
{
	ck_assert_int_eq(pthread_create(&holder, NULL, hold_page0, NULL), 0);
	while (atomic_load(&holder_state) == 0)
		usleep(100);
}

static void release_holder(void)
{
	if (atomic_load(&holder_state) == 1)
		atomic_store(&holder_state, 2);
	pthread_join(holder, NULL);
}

/* The faulting thread runs migrate_to_ram itself (in-thread mode): with a
 * handler thread, the holder's finalize would wait for the fault's batch. */
static void setup_inthread(void)
{
	UHMM_OPTS(mm_opts, o, .flags = UHMM_MM_INTHREAD);

	ck_assert_int_eq(uhmm_mm_open(&mm, &o), 0);
	mem = map_managed(LEN);
	drv = drv_create(64);
}

START_TEST(finalize_to_ram_page_held_elsewhere_retries)
{
#if defined(__SANITIZE_THREAD__)
	/* In-thread mode runs the driver inside the SIGBUS handler, which
	 * ThreadSanitizer reports as signal-unsafe whatever it does (why
	 * test_inthread is not a TSan test either). */
	t_skip("in-thread mode; runs in the plain and ASan builds");
	return;
#endif
	t_fill_pattern(mem, T_PAGE, 19);
	ck_assert_int_eq(drv_to_dev(drv, mem, 1, 0, NULL), 1);
	atomic_store(&holder_state, 0);
	drv->to_ram_hook = start_holder;
	drv->to_ram_done_hook = release_holder;
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 19), -1);
	ck_assert_int_eq(atomic_load(&holder_state), 2);
	ck_assert_int_eq(atomic_load(&drv->to_ram), 2);
	ck_assert_int_eq(wait_frees(drv, 1), 1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_migrate_device_range                                                */

/* Evicting the whole pagemap brings every page back with its data. */
START_TEST(device_range_evicts_all)
{
	t_fill_pattern(mem, LEN, 12);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 64), NP);
	ck_assert_int_eq(wait_frees(drv, NP), NP);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 12), -1);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 64), 0);
}
END_TEST

/*
 * fault->end: one page for a CPU access; for an eviction, the run of this
 * pagemap's device pages that follows (a driver that takes one page per
 * call still gets every page back, one call each).
 */
START_TEST(device_range_fault_end_names_the_run)
{
	t_fill_pattern(mem, LEN, 22);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	(void)*(volatile uint8_t *)(mem + 2 * T_PAGE);		/* a CPU access */
	ck_assert_uint_eq(atomic_load(&drv->span_max), T_PAGE);
	ck_assert_uint_eq(atomic_load(&drv->span_min), T_PAGE);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 64), NP - 1);
	ck_assert_uint_eq(atomic_load(&drv->span_max), (NP - 3) * T_PAGE);	/* pages 3-15 */
	ck_assert_uint_eq(atomic_load(&drv->span_min), T_PAGE);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 22), -1);
}
END_TEST

/* Only pages inside the pfn range are evicted. */
START_TEST(device_range_partial)
{
	int n;

	t_fill_pattern(mem, LEN, 13);
	ck_assert_int_eq(drv_to_dev(drv, mem, 4, 0, NULL), 4);
	n = uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv) + 63, 1);
	ck_assert_int_ge(n, 0);
	ck_assert_int_le(n, 1);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 64), 4 - n);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 13), -1);
	ck_assert_int_eq(atomic_load(&drv->to_ram), 4);
}
END_TEST

/* A page whose migrate_to_ram fails is skipped, the walk goes on, and the
 * page is tried again: every page comes back. */
START_TEST(device_range_retries_a_failing_page)
{
	t_fill_pattern(mem, LEN, 19);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	atomic_store(&drv->to_ram_fail, 2);	/* pages 0 and 1 fail once */
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 64), NP);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP + 2);
	ck_assert_int_eq(wait_frees(drv, NP), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 19), -1);
}
END_TEST

/* Bad arguments are -EINVAL. */
START_TEST(device_range_bad_args_einval)
{
	struct uhmm_pagemap unreg = { 0 };

	ck_assert_int_eq(uhmm_migrate_device_range(NULL, first_pfn(drv), 1), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, first_pfn(drv), 0), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_device_range(&drv->pgmap, ~0ULL, 2), -EINVAL);
	ck_assert_int_eq(uhmm_migrate_device_range(&unreg, 0, 1), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_memunmap_pages with pages mapped                                    */

/* Tearing down the pagemap brings the data back to RAM. */
START_TEST(memunmap_with_mapped_pages_keeps_data)
{
	t_fill_pattern(mem, LEN, 14);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	ck_assert_int_eq(uhmm_memunmap_pages(&drv->pgmap), 0);
	ck_assert_int_eq(atomic_load(&drv->frees), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 14), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* fork                                                                     */

/* A child forked with pages on the device reads the parent's data. */
START_TEST(fork_child_reads_device_data)
{
	pid_t pid;
	int st;

	t_fill_pattern(mem, LEN, 15);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		long bad = t_check_pattern(mem, LEN, 15);

		memset(mem, 0, LEN);
		_exit(bad == -1 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 15), -1);
	/* the parent can migrate again after the fork */
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 15), -1);
}
END_TEST

/* A page whose migrate_to_ram fails at fork time does not stop the others
 * coming back, and is tried again: the child reads every page's data. */
START_TEST(fork_child_reads_data_despite_failing_migrate_to_ram)
{
	pid_t pid;
	int st;

	t_fill_pattern(mem, LEN, 16);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	atomic_store(&drv->to_ram_fail, 3);	/* pages 0, 1, 2 fail once */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(t_check_pattern(mem, LEN, 16) == -1 ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_le(atomic_load(&drv->to_ram_fail), 0);
	ck_assert_int_eq(atomic_load(&drv->to_ram), NP + 3);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 16), -1);
}
END_TEST

/*
 * Another thread's migration back to RAM that starts while a fork is being
 * prepared: had it set up (page 5 a hole, its entry MIGRATING) during the
 * fork's bring-back, the bring-back would skip page 5 and the child would
 * read zeros. It must wait for the fork instead. The bring-back of page 0
 * starts the thread and gives its setup 300 ms.
 */
static atomic_int late_setup_done;

static void *late_to_sys(void *arg)
{
	uint64_t src[1], dst[1];
	struct uhmm_migrate m = one_page_back(5, src, dst);

	(void)arg;
	if (uhmm_migrate_setup(&m))
		return NULL;
	atomic_store(&late_setup_done, 1);
	usleep(300000);		/* in flight across the fork, if not held back */
	copy_page_back(&m);
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return NULL;
}

static pthread_t late_thread;

static void start_late_to_sys(void)
{
	ck_assert_int_eq(pthread_create(&late_thread, NULL, late_to_sys, NULL), 0);
	for (int i = 0; i < 300 && !atomic_load(&late_setup_done); i++)
		usleep(1000);
}

START_TEST(fork_holds_back_a_migration_to_ram_started_meanwhile)
{
	pid_t pid;
	int st;

	t_fill_pattern(mem, LEN, 17);
	ck_assert_int_eq(drv_to_dev(drv, mem, NP, 0, NULL), NP);
	atomic_store(&late_setup_done, 0);
	drv->to_ram_hook = start_late_to_sys;	/* run by page 0's bring-back */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(t_check_pattern(mem, LEN, 17) == -1 ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_int_eq(pthread_join(late_thread, NULL), 0);
	ck_assert_int_eq(atomic_load(&late_setup_done), 1);	/* set up after the fork */
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 17), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_make_device_exclusive                                               */

/* Exclusive pages: EXCLUSIVE event with owner, device changes survive the
 * CPU access, which sends CLEAR (owner NULL). */
START_TEST(exclusive_device_changes_visible)
{
	void *pages[4] = { 0 };
	struct t_rec *r = t_rec_new();

	t_rec_insert(r, mm, mem, LEN);
	t_fill_pattern(mem, LEN, 16);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 4, drv, pages), 0);
	ck_assert(t_rec_has(r, UHMM_EVENT_EXCLUSIVE, drv));
	for (int i = 0; i < 4; i++) {
		ck_assert_ptr_nonnull(pages[i]);
		ck_assert_int_eq(t_check_pattern(pages[i], T_PAGE, 16 + (uint64_t)i * T_PAGE / 8), -1);
		t_fill_pattern(pages[i], T_PAGE, 100 + (uint64_t)i);
	}
	ck_assert(!t_rec_has(r, UHMM_EVENT_CLEAR, NULL));
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(t_check_pattern(mem + i * T_PAGE, T_PAGE, 100 + (uint64_t)i), -1);
	ck_assert(t_rec_has(r, UHMM_EVENT_CLEAR, NULL));
	ck_assert_int_eq(t_check_pattern(mem + 4 * T_PAGE, LEN - 4 * T_PAGE,
					 16 + 4 * T_PAGE / 8), -1);
	t_rec_free(r);
}
END_TEST

/* Documented errors: bad args -EINVAL, unmapped/read-only -EFAULT. */
START_TEST(exclusive_errors)
{
	void *pages[2];
	uint8_t *hole = t_map_anon(T_PAGE);

	munmap(hole, T_PAGE);
	ck_assert_int_eq(uhmm_make_device_exclusive(NULL, ADDR(mem, 0), 1, drv, pages), -EINVAL);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 1, drv, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 0, drv, pages), -EINVAL);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0) + 1, 1, drv, pages), -EINVAL);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(hole, 0), 1, drv, pages), -EFAULT);
	ck_assert_int_eq(uhmm_mprotect(mem, T_PAGE, PROT_READ), 0);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 1, drv, pages), -EFAULT);
}
END_TEST

/* munmap of exclusive pages and mm close with exclusive pages: no crash. */
START_TEST(exclusive_then_unmap_and_close)
{
	void *pages[4];

	t_fill_pattern(mem, LEN, 17);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 4, drv, pages), 0);
	ck_assert_int_eq(uhmm_munmap(mem, 2 * T_PAGE), 0);
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, LEN - 2 * T_PAGE,
					 17 + 2 * T_PAGE / 8), -1);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 4), 2, drv, pages), 0);
	drv_destroy(drv);
	drv = NULL;
	uhmm_mm_close(mm);
	mm = NULL;
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, LEN - 2 * T_PAGE,
					 17 + 2 * T_PAGE / 8), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* UHMM_MIGRATE_DST_PREFILLED                                               */

/*
 * A migration to @d with dst[] given before setup: pg[i] for every page
 * (contiguous), dst[i] = 0 where bit i of @none is set. Returns setup's
 * result; the caller goes on with pages/finalize.
 */
static int prefilled_setup(struct uhmm_migrate *m, struct drv *d, uint64_t *src,
			   uint64_t *dst, struct uhmm_page **pg, uint64_t none, uint64_t dflags)
{
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&d->pgmap, NP, UHMM_ALLOC_CONTIG, pg), 0);
	for (int i = 0; i < NP; i++)
		dst[i] = none >> i & 1 ? 0 : uhmm_migrate_pfn(uhmm_page_to_pfn(pg[i])) | dflags;
	*m = (struct uhmm_migrate){
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .pgmap_owner = d,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_DST_PREFILLED,
	};
	return uhmm_migrate_setup(m);
}

static void put_unmigrated(const uint64_t *src, struct uhmm_page **pg)
{
	for (int i = 0; i < NP; i++)
		if (pg[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(pg[i]);
}

/* The data of page i is device page @pg's (seed: t_fill_pattern's of mem). */
static void dev_holds(struct uhmm_page *pg, int i, uint64_t seed)
{
	ck_assert_int_eq(t_check_pattern(uhmm_page_to_virt(pg), T_PAGE,
					 seed + (uint64_t)i * T_PAGE / 8), -1);
}

/*
 * With a pool managed by the same mm, setup moves each page straight into
 * its destination: the source buffer is the device page itself. Pages
 * without a destination are not collected; holes migrate as zeros; dst[]
 * is left as given; the CPU gets the data back on a fault.
 */
START_TEST(prefilled_moves_pages_straight_in)
{
	struct drv *d = drv_create_pool(NP, true);
	uint64_t src[NP], dst[NP], given[NP];
	struct uhmm_page *pg[NP];
	struct uhmm_migrate m;

	t_fill_pattern(mem, LEN, 31);
	ck_assert_int_eq(madvise(mem + 3 * T_PAGE, T_PAGE, MADV_DONTNEED), 0);	/* a hole */
	ck_assert_int_eq(prefilled_setup(&m, d, src, dst, pg, 1U << 5, UHMM_MIGRATE_PFN_MOVE), 0);
	memcpy(given, dst, sizeof(given));
	ck_assert_uint_eq(m.cpages, NP - 1);
	ck_assert_uint_eq(src[5], 0);
	ck_assert_uint_eq(src[3] & UHMM_MIGRATE_PFN_VALID, 0);
	ck_assert_ptr_null(uhmm_migrate_src_buf(&m, 3));
	for (int i = 0; i < NP; i++) {
		if (i == 3 || i == 5)
			continue;
		ck_assert_uint_eq(src[i], UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_VALID |
					  UHMM_MIGRATE_PFN_WRITE);
		ck_assert_ptr_eq(uhmm_migrate_src_buf(&m, (uint64_t)i), uhmm_page_to_virt(pg[i]));
		dev_holds(pg[i], i, 31);
	}
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_mem_eq(dst, given, sizeof(given));
	ck_assert_int_eq(uhmm_migrate_finalize(&m), NP - 1);
	ck_assert_int_eq(t_first_nonzero(uhmm_page_to_virt(pg[3]), T_PAGE), -1);
	dev_holds(pg[7], 7, 31);
	put_unmigrated(src, pg);
	ck_assert_int_eq(atomic_load(&d->to_ram), 0);
	/* page 5 stayed: no fault; the others come back with their data */
	ck_assert_int_eq(t_check_pattern(mem + 5 * T_PAGE, T_PAGE, 31 + 5 * T_PAGE / 8), -1);
	ck_assert_int_eq(atomic_load(&d->to_ram), 0);
	ck_assert_int_eq(t_first_nonzero(mem + 3 * T_PAGE, T_PAGE), -1);
	ck_assert_int_eq(t_check_pattern(mem + 9 * T_PAGE, T_PAGE, 31 + 9 * T_PAGE / 8), -1);
	ck_assert_int_ge(atomic_load(&d->to_ram), 2);
	ck_assert_int_eq(uhmm_migrate_device_range(&d->pgmap, first_pfn(d), NP), NP - 3);
	ck_assert_int_eq(t_check_pattern(mem, 3 * T_PAGE, 31), -1);
	ck_assert_int_eq(t_check_pattern(mem + 6 * T_PAGE, 3 * T_PAGE, 31 + 6 * T_PAGE / 8), -1);
	drv_destroy(d);
}
END_TEST

/*
 * The driver may still change its mind after setup: a page whose dst is
 * cleared goes back to the process from the device page it was moved into;
 * a page given another destination moves there.
 */
START_TEST(prefilled_dst_changed_after_setup)
{
	struct drv *d = drv_create_pool(2 * NP, true);
	uint64_t src[NP], dst[NP];
	struct uhmm_page *pg[NP], *other;
	struct uhmm_migrate m;

	t_fill_pattern(mem, LEN, 41);
	ck_assert_int_eq(prefilled_setup(&m, d, src, dst, pg, 0, UHMM_MIGRATE_PFN_MOVE), 0);
	ck_assert_uint_eq(m.cpages, NP);
	ck_assert_int_eq(uhmm_pagemap_alloc_pages(&d->pgmap, 1, 0, &other), 0);
	dst[2] = 0;
	dst[4] = uhmm_migrate_pfn(uhmm_page_to_pfn(other)) | UHMM_MIGRATE_PFN_MOVE;
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_uint_eq(src[2] & UHMM_MIGRATE_PFN_MIGRATE, 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), NP - 1);
	dev_holds(other, 4, 41);
	uhmm_page_put(pg[4]);		/* named, but not used */
	pg[4] = NULL;
	put_unmigrated(src, pg);
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, T_PAGE, 41 + 2 * T_PAGE / 8), -1);
	ck_assert_int_eq(atomic_load(&d->to_ram), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 41), -1);
	ck_assert_int_eq(atomic_load(&d->to_ram), NP - 1);
	drv_destroy(d);
}
END_TEST

/* Migrate @n pages from @p to @d (copied from the source buffers, which
 * stay in the staging area until finalize empties it), then evict them
 * back: the address of the staging area the migration used. */
static uint8_t *stage_of(struct drv *d, uint8_t *p, uint64_t n)
{
	uint64_t cpages;
	uint8_t *at;

	ck_assert_int_eq(drv_to_dev_at(d, p, n, 0, &cpages, &at), (int)n);
	ck_assert_uint_eq(cpages, n);
	ck_assert_ptr_nonnull(at);
	ck_assert_int_eq(uhmm_migrate_device_range(&d->pgmap, first_pfn(d), d->npages), (int)n);
	return at;
}

/* Mapped, and none of its @n pages present. */
static bool mapped_and_empty(uint8_t *p, uint64_t n)
{
	unsigned char *vec = calloc(n, 1);
	bool ok = mincore(p, n * T_PAGE, vec) == 0;

	for (uint64_t i = 0; ok && i < n; i++)
		ok = !(vec[i] & 1);
	free(vec);
	return ok;
}

/*
 * A staging area outlives its migration, emptied, whatever its size, and
 * serves the next one that fits; of two idle areas the larger is kept.
 */
START_TEST(staging_area_kept_emptied_and_reused)
{
	uint64_t n = 2048;
	struct drv *d = drv_create(n);
	uint8_t *big = map_managed(n * T_PAGE), *s1, *s3;
	unsigned char v;

	t_fill_pattern(big, n * T_PAGE, 51);
	s1 = stage_of(d, big, 1024);
	ck_assert(mapped_and_empty(s1, 1024));
	ck_assert_ptr_eq(stage_of(d, big, 512), s1);	/* fits: reused */
	ck_assert(mapped_and_empty(s1, 1024));
	s3 = stage_of(d, big, 2048);			/* does not */
	ck_assert_ptr_ne(s3, s1);
	ck_assert(mapped_and_empty(s3, 2048));
	ck_assert_int_eq(mincore(s1, T_PAGE, &v), -1);	/* the smaller one went */
	ck_assert_int_eq(errno, ENOMEM);
	ck_assert_ptr_eq(stage_of(d, big, 1024), s3);	/* its first half emptied */
	ck_assert(mapped_and_empty(s3, 2048));
	ck_assert_ptr_eq(stage_of(d, big, 2048), s3);	/* and all of it usable */
	ck_assert(mapped_and_empty(s3, 2048));
	ck_assert_int_eq(t_check_pattern(big, n * T_PAGE, 51), -1);
	uhmm_mm_unmanage(mm, big, n * T_PAGE);
	munmap(big, n * T_PAGE);
	drv_destroy(d);
}
END_TEST

/*
 * A system source whose dst[] names system memory with MOVE is no migration,
 * also when the driver skips uhmm_migrate_pages(): finalize gives the pages
 * back untouched. Run after a migration straight in, whose arrays (reused,
 * not all cleared) held device addresses: none of them may be taken for
 * this migration's destinations.
 */
START_TEST(prefilled_then_system_dst_without_pages_moves_nothing)
{
	struct drv *d = drv_create_pool(NP, true);
	uint64_t src[NP], dst[NP];
	struct uhmm_page *pg[NP];
	struct uhmm_migrate m;
	int to_ram;

	t_fill_pattern(mem, LEN, 43);
	ck_assert_int_eq(prefilled_setup(&m, d, src, dst, pg, 0, UHMM_MIGRATE_PFN_MOVE), 0);
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), NP);
	ck_assert_int_eq(uhmm_migrate_device_range(&d->pgmap, first_pfn(d), NP), NP);
	to_ram = atomic_load(&d->to_ram);
	t_fill_pattern(mem, LEN, 44);
	m = (struct uhmm_migrate){
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = d,
	};
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, NP);
	for (int i = 0; i < NP; i++)
		dst[i] = UHMM_MIGRATE_PFN_SYSTEM | UHMM_MIGRATE_PFN_MOVE;
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 44), -1);
	ck_assert_int_eq(atomic_load(&d->to_ram), to_ram);	/* nothing on the device */
	drv_destroy(d);
}
END_TEST

/*
 * Where a move straight in cannot work, setup stages the pages as usual and
 * finalize places them: a destination whose memory already holds data, a
 * pool not managed by the mm, or a dst[] without UHMM_MIGRATE_PFN_MOVE
 * (the driver copies from the source buffer itself).
 */
START_TEST(prefilled_falls_back_to_staging)
{
	struct drv *dm = drv_create_pool(NP, true), *du = drv_create_pool(NP, false);
	struct drv *cases[3] = { dm, du, dm };
	uint64_t src[NP], dst[NP];
	struct uhmm_page *pg[NP];
	struct uhmm_migrate m;

	for (int k = 0; k < 3; k++) {
		struct drv *d = cases[k];
		uint64_t seed = 51 + (uint64_t)k;

		t_fill_pattern(mem, LEN, seed);
		if (k == 0) {	/* page 6's destination holds data */
			ck_assert_int_eq(uhmm_pagemap_alloc_pages(&d->pgmap, NP,
								  UHMM_ALLOC_CONTIG, pg), 0);
			memset(uhmm_page_to_virt(pg[6]), 0x77, T_PAGE);
			for (int i = 0; i < NP; i++)
				uhmm_page_put(pg[i]);
		}
		ck_assert_int_eq(prefilled_setup(&m, d, src, dst, pg, 0,
						 k == 2 ? 0 : UHMM_MIGRATE_PFN_MOVE), 0);
		ck_assert_uint_eq(m.cpages, NP);
		for (int i = 0; i < NP; i++) {
			void *from = uhmm_migrate_src_buf(&m, (uint64_t)i);

			ck_assert_ptr_nonnull(from);
			ck_assert_ptr_ne(from, uhmm_page_to_virt(pg[i]));
			if (k == 2)
				memcpy(uhmm_page_to_virt(pg[i]), from, T_PAGE);
		}
		ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
		ck_assert_int_eq(uhmm_migrate_finalize(&m), NP);
		for (int i = 0; i < NP; i++)
			dev_holds(pg[i], i, seed);
		ck_assert_int_eq(t_check_pattern(mem, LEN, seed), -1);
		ck_assert_int_eq(atomic_load(&d->to_ram), (k == 2 ? 2 : 1) * NP);
	}
	drv_destroy(du);
	drv_destroy(dm);
}
END_TEST

/* The flag alone selects nothing: -EINVAL, like no flags. */
START_TEST(prefilled_bad_args_einval)
{
	uint64_t src[NP], dst[NP] = { 0 };
	struct uhmm_migrate m = {
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP), .src = src,
		.dst = dst, .flags = UHMM_MIGRATE_DST_PREFILLED, .pgmap_owner = drv,
	};

	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	m.flags = UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_DST_PREFILLED | (1U << 9);
	ck_assert_int_eq(uhmm_migrate_setup(&m), -EINVAL);
	/* no destination at all: nothing is collected, nothing changes */
	m.flags = UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_DST_PREFILLED;
	t_fill_pattern(mem, LEN, 61);
	ck_assert_int_eq(uhmm_migrate_setup(&m), 0);
	ck_assert_uint_eq(m.cpages, 0);
	ck_assert_int_eq(uhmm_migrate_pages(&m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&m), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 61), -1);
}
END_TEST

int main(void)
{
	TCase *tsetup = T_TCASE("migrate_setup", setup, teardown, setup_bad_args_einval,
				setup_collects_system_pages, setup_untouched_pages_have_no_data,
				setup_skips_shared_readonly_and_foreign,
				setup_isolates_cpu_writer_waits, staging_area_kept_emptied_and_reused);
	TCase *tbufs = T_TCASE("migrate_src_dst_buf", setup, teardown, bufs_bad_args_null,
			       bufs_device_source_has_dst_buf);
	TCase *tpages = T_TCASE("migrate_pages", setup, teardown, pages_bad_args_einval,
				pages_unknown_device_pfn_dropped);
	TCase *tfin = T_TCASE("migrate_finalize", setup, teardown, finalize_bad_args_einval,
			      finalize_to_device_then_cpu_faults_back, finalize_partial_dst,
			      finalize_device_to_system, finalize_device_to_system_some,
			      finalize_device_to_system_across_split, finalize_cpu_write_after_migration,
			      finalize_to_ram_dst_empty_sigbus);
	TCase *tfin2 = T_TCASE("migrate_finalize_inthread", setup_inthread, teardown,
			       finalize_to_ram_page_held_elsewhere_retries);
	TCase *trange = T_TCASE("migrate_device_range", setup, teardown, device_range_evicts_all,
				device_range_fault_end_names_the_run,
				device_range_partial, device_range_retries_a_failing_page,
				device_range_bad_args_einval);
	TCase *tunmap = T_TCASE("memunmap_pages", setup, teardown,
				memunmap_with_mapped_pages_keeps_data);
	TCase *tfork = T_TCASE("fork", setup, teardown, fork_child_reads_device_data,
			       fork_child_reads_data_despite_failing_migrate_to_ram,
			       fork_holds_back_a_migration_to_ram_started_meanwhile);
	TCase *texcl = T_TCASE("make_device_exclusive", setup, teardown,
			       exclusive_device_changes_visible, exclusive_errors,
			       exclusive_then_unmap_and_close);

	TCase *tpre = T_TCASE("migrate_dst_prefilled", setup, teardown,
			      prefilled_moves_pages_straight_in, prefilled_dst_changed_after_setup,
			      prefilled_then_system_dst_without_pages_moves_nothing,
			      prefilled_falls_back_to_staging, prefilled_bad_args_einval);

	return t_run_suite("migrate", tsetup, tbufs, tpages, tfin, tfin2, trange, tunmap, tfork,
			   texcl, tpre, NULL);
}
