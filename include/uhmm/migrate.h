/* SPDX-License-Identifier: MIT */
/*
 * uhmm/migrate.h - move pages of a process between system memory and device
 * memory, and give a device exclusive access to pages.
 *
 * Three steps, as in the kernel's migrate_vma_*():
 *   uhmm_migrate_setup()    collect the pages of [start, end) matching the
 *                           selection, isolate them (CPU accesses wait), send
 *                           a MIGRATE invalidation carrying pgmap_owner, fill
 *                           src[];
 *   (driver)                for each src[i] with UHMM_MIGRATE_PFN_MIGRATE:
 *                           allocate a destination, copy, set dst[i];
 *   uhmm_migrate_pages() + uhmm_migrate_finalize()
 *                           switch the CPU view, restore what did not move,
 *                           wake the CPU threads that waited.
 *
 *	uint64_t src[n], dst[n];
 *	struct uhmm_migrate m = { .mm = mm, .start = a, .end = a + n * 4096,
 *		.src = src, .dst = dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
 *		.pgmap_owner = dev };
 *	uhmm_migrate_setup(&m);
 *	for (i = 0; i < m.npages; i++) {
 *		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE)) continue;
 *		uhmm_pagemap_alloc_pages(&dev->pgmap, 1, 0, &pg);
 *		if (src[i] & UHMM_MIGRATE_PFN_VALID)
 *			memcpy(dev_mem(pg), uhmm_migrate_src_buf(&m, i), 4096);
 *		else
 *			memset(dev_mem(pg), 0, 4096);	// never touched
 *		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg));
 *	}
 *	uhmm_migrate_pages(&m);
 *	uhmm_migrate_finalize(&m);
 *
 * A driver whose device memory is host memory managed by the same mm can
 * name its destinations first and have each page moved straight in:
 *
 *	uhmm_pagemap_alloc_pages(&dev->pgmap, n, UHMM_ALLOC_CONTIG, pg);
 *	for (i = 0; i < n; i++)
 *		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg[i])) |
 *			 UHMM_MIGRATE_PFN_MOVE;
 *	m.flags = UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_DST_PREFILLED;
 *	uhmm_migrate_setup(&m);		// moves the data into pg[i] (or stages it)
 *	uhmm_migrate_pages(&m);
 *	uhmm_migrate_finalize(&m);
 *	// then put pg[i] where !(src[i] & UHMM_MIGRATE_PFN_MIGRATE)
 *
 * System RAM -> device: the CPU page is moved out of the process with
 * UFFDIO_MOVE (no copy, no TLB storm); its data is at uhmm_migrate_src_buf()
 * until finalize. A later CPU access of any kind (including a syscall reading
 * the buffer) faults to uhmm, which calls the pagemap's migrate_to_ram().
 * Device -> system: the driver writes the data to uhmm_migrate_dst_buf() and
 * sets dst[i] = UHMM_MIGRATE_PFN_SYSTEM; finalize installs it atomically.
 * Drivers whose device memory is host memory set UHMM_MIGRATE_PFN_MOVE in
 * dst[] instead of copying: uhmm moves the pages itself.
 * Only private anonymous memory migrates (shared memory and read-only or
 * forked-and-shared pages are skipped, src[i] = 0, like pinned pages in the
 * kernel). COHERENT pagemaps hold data the same way as PRIVATE ones: a CPU
 * access migrates the page back (uhmm cannot map device memory into the
 * middle of an application mapping).
 *
 * Kernel counterpart: migrate_vma_setup/pages/finalize, migrate_device_range,
 * make_device_exclusive.
 */
#ifndef UHMM_MIGRATE_H
#define UHMM_MIGRATE_H

#include <stdint.h>
#include <uhmm/common.h>
#include <uhmm/pagemap.h>

#ifdef __cplusplus
extern "C" {
#endif

/* src[] / dst[] entries */
#define UHMM_MIGRATE_PFN_VALID (1ULL << 0)	/* a page (data) exists */
#define UHMM_MIGRATE_PFN_MIGRATE (1ULL << 1)	/* src: selected, migrating */
#define UHMM_MIGRATE_PFN_WRITE (1ULL << 3)	/* writable */
#define UHMM_MIGRATE_PFN_DEVICE (1ULL << 4)	/* pfn is a device pfn */
/*
 * dst: uhmm transfers the data itself, between the process and the device
 * page's host memory (uhmm_page_to_virt), so the driver copies nothing. When
 * that memory is managed by the same mm (uhmm_mm_alloc), pages move with
 * UFFDIO_MOVE, in runs, without a copy; otherwise uhmm copies once.
 * For a system source: dst = uhmm_migrate_pfn(pfn) | UHMM_MIGRATE_PFN_MOVE.
 * For a device source: dst = UHMM_MIGRATE_PFN_SYSTEM | UHMM_MIGRATE_PFN_MOVE.
 */
#define UHMM_MIGRATE_PFN_MOVE (1ULL << 5)
#define UHMM_MIGRATE_PFN_SHIFT 8
/* dst: destination is system memory (data in uhmm_migrate_dst_buf) */
#define UHMM_MIGRATE_PFN_SYSTEM UHMM_MIGRATE_PFN_VALID

/* dst entry for a device page */
static inline uint64_t uhmm_migrate_pfn(uint64_t dev_pfn)
{
	return (dev_pfn << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID |
	       UHMM_MIGRATE_PFN_DEVICE;
}

static inline uint64_t uhmm_migrate_pfn_to_pfn(uint64_t e)
{
	return e >> UHMM_MIGRATE_PFN_SHIFT;
}

/* selection flags */
#define UHMM_MIGRATE_SELECT_SYSTEM (1U << 0)
#define UHMM_MIGRATE_SELECT_DEVICE_PRIVATE (1U << 1)	/* of pgmap_owner */
#define UHMM_MIGRATE_SELECT_DEVICE_COHERENT (1U << 2)	/* of pgmap_owner */
/*
 * dst[] is filled before uhmm_migrate_setup(), which then leaves it as it
 * is: for each page that may be collected from system memory, the device
 * page to move it into (uhmm_migrate_pfn(pfn) | UHMM_MIGRATE_PFN_MOVE), or 0
 * (that page is not collected). If every given page's host memory is
 * managed by the same mm and empty, setup isolates each system page by
 * moving it straight into its destination: one UFFDIO_MOVE instead of two,
 * no staging area. Otherwise setup stages the pages as usual and finalize
 * moves them. Either way uhmm_migrate_src_buf() gives the data, and the
 * driver may still change or clear dst[i] before uhmm_migrate_pages().
 * The driver must keep every page it named until finalize returns (a page
 * that does not migrate goes back to the process from there), and puts
 * the pages whose src[i] has no UHMM_MIGRATE_PFN_MIGRATE afterwards.
 */
#define UHMM_MIGRATE_DST_PREFILLED (1U << 8)

/* Caller-owned; valid from setup until finalize returns. */
struct uhmm_migrate {
	struct uhmm_mm *mm;
	uint64_t start;			/* page aligned */
	uint64_t end;			/* exclusive */
	uint64_t *src;			/* (end - start) / page entries */
	uint64_t *dst;			/* same size; driver fills */
	uint64_t npages;		/* out: pages in the range */
	uint64_t cpages;		/* out: pages collected (src MIGRATE) */
	unsigned int flags;		/* UHMM_MIGRATE_SELECT_*, _DST_PREFILLED */
	void *pgmap_owner;		/* owner of device pages to select */
	struct uhmm_page *fault_page;	/* in migrate_to_ram: fault->page */
	void *priv;			/* uhmm's */
};

/**
 * uhmm_migrate_setup() - collect and isolate the pages to migrate
 * Context: any thread; in ops->migrate_to_ram too. May block.
 * Return: 0 (cpages may be 0), or -EINVAL bad args, unknown flags, range not
 *   inside managed memory, fault_page not a device page; -ENOMEM.
 */
UHMM_API int uhmm_migrate_setup(struct uhmm_migrate *m);
/** uhmm_migrate_src_buf() - data of system source page @i (valid until finalize), or NULL. */
UHMM_API void *uhmm_migrate_src_buf(const struct uhmm_migrate *m, uint64_t i);
/** uhmm_migrate_dst_buf() - where to write system destination page @i, or NULL. */
UHMM_API void *uhmm_migrate_dst_buf(const struct uhmm_migrate *m, uint64_t i);
/**
 * uhmm_migrate_pages() - check dst[]; clear MIGRATE in src[] where no
 * destination was given. Return: 0; -EINVAL (bad migrate, or a dst device
 * pfn with no page: that entry is dropped).
 */
UHMM_API int uhmm_migrate_pages(struct uhmm_migrate *m);
/**
 * uhmm_migrate_finalize() - switch the CPU view for migrated pages, restore
 * the others, wake waiting CPU threads, release everything setup took.
 * Return: number of pages migrated (>= 0), or -EINVAL.
 */
UHMM_API int uhmm_migrate_finalize(struct uhmm_migrate *m);

/**
 * uhmm_migrate_device_range() - evict device pages [pfn, pfn + npages) of
 * @pgmap back to system memory wherever a process maps them (through the
 * pagemap's migrate_to_ram). Return: pages evicted (>= 0), or -EINVAL.
 */
UHMM_API int uhmm_migrate_device_range(struct uhmm_pagemap *pgmap, uint64_t pfn,
				       uint64_t npages);

/**
 * uhmm_make_device_exclusive() - give a device sole access to pages
 * @pages: out, per page the address where the device reads and writes it
 *
 * Faults the pages in writable, sends an EXCLUSIVE invalidation tagged with
 * @owner and takes the pages away from the CPU. The first CPU access to one
 * of them sends a CLEAR invalidation (owner NULL), after which the device
 * must stop using pages[i]; the page comes back with the device's changes.
 * Return: 0; -EINVAL bad args or unmanaged/non-anonymous memory; -EFAULT
 *   unmapped or not writable; -EBUSY a page is on a device or migrating.
 */
UHMM_API int uhmm_make_device_exclusive(struct uhmm_mm *mm, uint64_t start,
					uint64_t npages, void *owner,
					void **pages);

#ifdef __cplusplus
}
#endif
#endif
