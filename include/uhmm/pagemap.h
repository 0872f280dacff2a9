/* SPDX-License-Identifier: MIT */
/*
 * uhmm/pagemap.h - device memory registry: the user-space dev_pagemap.
 *
 * A device describes its memory as one or more ranges of "device physical"
 * addresses (taken from a resource tree, like the kernel's iomem, with
 * uhmm_request_free_region()), a type, ops and an owner cookie, and registers
 * it with uhmm_memremap_pages(). uhmm then keeps a page struct for every device
 * page: a refcount, the owning pagemap and a driver data pointer. Any thread
 * finds the page of a device pfn with uhmm_pfn_to_page().
 *
 * Kernel counterpart: struct dev_pagemap, memremap_pages(), memunmap_pages(),
 * get_dev_pagemap(), request_free_mem_region(), zone_device_page_init().
 *
 *	static struct uhmm_dev_range r;
 *	static struct uhmm_pagemap pgmap = {
 *		.type = UHMM_PAGEMAP_PRIVATE, .ops = &my_ops, .owner = &my_dev,
 *		.nr_range = 1, .ranges = &r,
 *	};
 *	uint64_t start;
 *	uhmm_request_free_region(NULL, 256 << 20, 1 << 21, &start);
 *	r.start = start; r.end = start + (256 << 20);
 *	uhmm_memremap_pages(&pgmap);
 *	struct uhmm_page *pages[16];
 *	uhmm_pagemap_alloc_pages(&pgmap, 16, 0, pages);	// refcount 1 each
 *	...
 *	uhmm_page_put(pages[0]);	// 0: ops->page_free, page back to the pool
 *	uhmm_memunmap_pages(&pgmap);	// waits for every reference to go
 *	uhmm_release_region(NULL, start);
 */
#ifndef UHMM_PAGEMAP_H
#define UHMM_PAGEMAP_H

#include <stdbool.h>
#include <stdint.h>
#include <uhmm/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_mm;
struct uhmm_resource;		/* opaque resource tree */

/* ---------------------------------------------------------------------- */
/* Device address space (resource tree)                                   */

/*
 * The global device address space spans [UHMM_DEVADDR_MIN, UHMM_DEVADDR_MAX),
 * so device pfns never collide with small integers. Passing NULL as the tree
 * selects this global tree; drivers may also create private trees.
 */
#define UHMM_DEVADDR_MIN (1ULL << 40)
#define UHMM_DEVADDR_MAX (1ULL << 52)

/**
 * uhmm_resource_create() - create a resource tree spanning [start, end)
 * Return: 0, -EINVAL (empty, reversed or unaligned span, NULL out), -ENOMEM.
 */
UHMM_API int uhmm_resource_create(uint64_t start, uint64_t end,
				  struct uhmm_resource **out);
/** uhmm_resource_destroy() - free a tree and every request left in it; NULL ok. */
UHMM_API void uhmm_resource_destroy(struct uhmm_resource *res);

/**
 * uhmm_request_region() - claim [start, start + size) in @res (NULL: global)
 * Context: any thread.
 * Return: 0; -EINVAL size 0, not page aligned, or outside the tree;
 *   -EBUSY overlaps a claimed region; -ENOMEM.
 */
UHMM_API int uhmm_request_region(struct uhmm_resource *res, uint64_t start,
				 uint64_t size);
/**
 * uhmm_request_free_region() - claim a free range of @size aligned to @align
 * @align: power of two >= page size, or 0 for page alignment
 * @start: out, the start of the claimed range (lowest fit)
 * Return: 0; -EINVAL bad size/align; -ENOSPC no free range fits; -ENOMEM.
 */
UHMM_API int uhmm_request_free_region(struct uhmm_resource *res, uint64_t size,
				      uint64_t align, uint64_t *start);
/**
 * uhmm_release_region() - release the region claimed at exactly @start
 * Return: 0; -ENOENT no region starts there.
 */
UHMM_API int uhmm_release_region(struct uhmm_resource *res, uint64_t start);

/* ---------------------------------------------------------------------- */
/* Pagemaps                                                                */

enum uhmm_pagemap_type {
	UHMM_PAGEMAP_PRIVATE = 1,  /* CPU cannot address it; CPU access migrates back */
	UHMM_PAGEMAP_COHERENT = 2, /* CPU-addressable (base), still migratable */
	UHMM_PAGEMAP_GENERIC = 3,  /* mappable memory, used by dax devices */
	UHMM_PAGEMAP_P2P = 4,      /* peer-accessible memory */
};

/* pagemap flags */
#define UHMM_PGMAP_ALTMAP (1U << 0) /* keep page structs inside the host backing */

/* A range of device physical addresses, [start, end), page aligned. */
struct uhmm_dev_range {
	uint64_t start;
	uint64_t end;
};

struct uhmm_pagemap;
struct uhmm_pagemap_priv;

/* page flags (uhmm_page.flags), read-only for drivers */
#define UHMM_PAGE_ALLOCATED (1U << 0) /* handed out by uhmm_pagemap_alloc_pages */

/*
 * One device page. Lives from uhmm_memremap_pages() to the end of
 * uhmm_memunmap_pages(). A free page has refcount 0. A page pointer may be
 * used while the caller holds a reference on the page or on its pagemap
 * (or otherwise knows the pagemap is not being torn down).
 */
struct uhmm_page {
	long refcount;			/* references, 0 = free; use uhmm_page_get/put */
	struct uhmm_pagemap *pgmap;	/* owner, constant */
	void *zone_device_data;		/* driver's, uhmm never touches it */
	unsigned int flags;		/* UHMM_PAGE_* */
	uint32_t run;			/* internal: index of the page's range */
};

/*
 * A CPU fault on a device-private page, handed to ops->migrate_to_ram().
 * Defined here because the pagemap ops refer to it; filled by the mm.
 */
struct uhmm_fault {
	struct uhmm_mm *mm;
	uint64_t addr;			/* page-aligned faulting address */
	struct uhmm_page *page;		/* the device page, referenced */
	unsigned int flags;		/* UHMM_FAULT_WRITE */
	int tid;			/* faulting thread, 0 when unknown */
	/*
	 * End of the range wanted back: addr + one page for a CPU access;
	 * further when uhmm brings device pages back in bulk (eviction,
	 * fork, unmanage), where [addr, end) are device pages of this
	 * pagemap in one managed range. A hint: the driver may migrate them
	 * with this fault's migration instead of one fault each.
	 */
	uint64_t end;
};
#define UHMM_FAULT_WRITE (1U << 0)

struct uhmm_pagemap_ops {
	/*
	 * page_free - a page's refcount dropped to 0. Called by the thread
	 * that dropped the last reference, with no uhmm lock held; must not
	 * block for long. Afterwards a page from uhmm_pagemap_alloc_pages()
	 * returns to the pagemap's free pool. Required for PRIVATE and
	 * COHERENT.
	 */
	void (*page_free)(struct uhmm_page *page);
	/*
	 * migrate_to_ram - the CPU touched a device-private page of this
	 * pagemap. Called on a uhmm fault-handler thread or on a thread
	 * inside uhmm_range_fault(), with fault->page referenced. Must bring
	 * at least fault->page back to system memory (uhmm_migrate_*() with
	 * fault_page set). Must not munmap/mremap/madvise managed memory.
	 * Return 0, or a negative errno: the faulting thread then gets SIGBUS.
	 * Returning 0 with fault->page still in place is a SIGBUS too, unless
	 * the driver's setup found the page held by another migration: the
	 * access then simply faults again. Required for PRIVATE.
	 */
	int (*migrate_to_ram)(struct uhmm_fault *fault);
	/* cleanup - teardown: every reference is gone. Optional. */
	void (*cleanup)(struct uhmm_pagemap *pgmap);
};

/*
 * Accounting of page structs kept in the device memory (UHMM_PGMAP_ALTMAP):
 * the page structs of every range are written into @base at page
 * @reserve of range 0, taking @alloc pages. Neither the reserved pages nor
 * those are ever handed out by uhmm_pagemap_alloc_pages().
 */
struct uhmm_altmap {
	uint64_t reserve;	/* in: pages at the start of range 0 kept free */
	uint64_t alloc;		/* out: pages consumed by page structs */
};

/*
 * The caller owns and embeds this struct (container_of gets back to the
 * driver's struct); it must stay valid from uhmm_memremap_pages() until
 * uhmm_memunmap_pages() returns. Fields above priv are set by the caller.
 */
struct uhmm_pagemap {
	enum uhmm_pagemap_type type;
	unsigned int flags;			/* UHMM_PGMAP_* */
	const struct uhmm_pagemap_ops *ops;
	void *owner;				/* identity for migrate/range_fault */
	unsigned int nr_range;			/* >= 1 */
	const struct uhmm_dev_range *ranges;	/* nr_range entries, copied */
	/*
	 * Host backing: the CPU-addressable memory behind the ranges, laid out
	 * back to back in range order, page aligned. Required for COHERENT,
	 * GENERIC and P2P, optional for PRIVATE (a device whose memory is host
	 * RAM). Must stay mapped until uhmm_memunmap_pages() returns.
	 */
	void *base;
	struct uhmm_altmap altmap;
	struct uhmm_pagemap_priv *priv;		/* uhmm's: zero it, then do not touch */
};

/**
 * uhmm_memremap_pages() - register device memory and create its page structs
 * @pgmap: filled-in pagemap (see struct uhmm_pagemap)
 *
 * Copies the ranges, creates one free page struct per page (all in the
 * free pool except ALTMAP pages) and publishes the ranges, after which
 * uhmm_pfn_to_page() finds them from any thread. Page indices (as used by
 * the allocator and the host backing) follow the caller's range order.
 * Nothing is written to @pgmap or @base unless registration succeeds.
 * Context: any thread; may block (briefly, for concurrent lookups).
 * Return: 0, or
 *   -EINVAL  NULL, unknown type or flag, nr_range 0, empty/unaligned/
 *            overlapping ranges, missing ops/owner/base for the type,
 *            unaligned base, altmap without base or too small;
 *   -EBUSY   a range overlaps a registered pagemap (live or dying), or
 *            @pgmap is registered;
 *   -ENOMEM  (also for more than 2^36 pages).
 */
UHMM_API int uhmm_memremap_pages(struct uhmm_pagemap *pgmap);

/**
 * uhmm_memunmap_pages() - kill, drain and tear down a pagemap
 *
 * New uhmm_get_dev_pagemap() calls fail (-ENXIO) and allocations fail from
 * the start. Device-private pages still holding CPU data are first migrated
 * back to system memory (no data is lost). Then waits until every page and
 * pagemap reference is dropped, unpublishes the ranges (lookups return
 * NULL/-ENOENT), clears @pgmap->priv, calls ops->cleanup and frees the page
 * structs. ops->cleanup is the last access to @pgmap and its base: it may
 * free them. A concurrent call on the same pagemap waits for this one, then
 * returns -EINVAL (or retries if this one timed out).
 * Context: any thread except a uhmm fault-handler thread; must not be called
 * from ops callbacks of the same pagemap; blocks.
 * Return: 0; -EINVAL NULL or not registered (including a second call).
 */
UHMM_API int uhmm_memunmap_pages(struct uhmm_pagemap *pgmap);
/**
 * uhmm_memunmap_pages_timeout() - as uhmm_memunmap_pages(), bounded
 * @timeout_ms: how long to wait for references to drain
 *
 * Return: 0; -EINVAL; -EBUSY references remain after @timeout_ms (or
 *   another thread's teardown of @pgmap is still running): the pagemap
 *   stays killed (gets and allocations fail) and registered; call
 *   uhmm_memunmap_pages() or this again to finish.
 */
UHMM_API int uhmm_memunmap_pages_timeout(struct uhmm_pagemap *pgmap,
					 unsigned int timeout_ms);

/**
 * uhmm_pfn_to_page() - page struct of device pfn, or NULL; no reference taken.
 * Context: any thread; lock-free, O(log nr of registered ranges). Works for
 * dying pagemaps until their teardown completes.
 */
UHMM_API struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn);
/** uhmm_page_to_pfn() - device pfn of @page; 0 for NULL. O(1). */
UHMM_API uint64_t uhmm_page_to_pfn(const struct uhmm_page *page);
/**
 * uhmm_page_to_virt() - host address of @page's memory: base plus the page's
 * index times the page size; NULL for NULL or a pagemap without base.
 */
UHMM_API void *uhmm_page_to_virt(const struct uhmm_page *page);

/**
 * uhmm_get_dev_pagemap() - find the live pagemap of @pfn and reference it
 * Context: any thread; lock-free, scales across threads.
 * Return: 0 and *out set; -ENOENT no pagemap; -ENXIO pagemap is dying;
 *   -EINVAL NULL @out.
 */
UHMM_API int uhmm_get_dev_pagemap(uint64_t pfn, struct uhmm_pagemap **out);
/**
 * uhmm_put_dev_pagemap() - drop a reference taken by uhmm_get_dev_pagemap(),
 * on any thread. Return: 0; -EINVAL NULL, not registered, or no reference
 * held (a put without a reference must not race with the pagemap's teardown).
 */
UHMM_API int uhmm_put_dev_pagemap(struct uhmm_pagemap *pgmap);

/**
 * uhmm_page_get() - take a reference on a page that already has one
 * Return: 0; -EINVAL NULL or a free page (refcount 0).
 */
UHMM_API int uhmm_page_get(struct uhmm_page *page);
/**
 * uhmm_page_put() - drop a reference; at 0 calls ops->page_free and frees
 *
 * The thread dropping the last reference calls ops->page_free(page) (if
 * set), then returns the page to the free pool (if it came from
 * uhmm_pagemap_alloc_pages()) and drops the page's pagemap reference.
 * Return: 0; -EINVAL NULL or refcount already 0 (put without get).
 */
UHMM_API int uhmm_page_put(struct uhmm_page *page);

/* alloc flags */
#define UHMM_ALLOC_CONTIG (1U << 0) /* all pages physically contiguous */

/**
 * uhmm_pagemap_alloc_pages() - take @n free pages from the pagemap's pool
 * @pages: out, @n page pointers, each with refcount 1 and UHMM_PAGE_ALLOCATED
 *
 * Lowest free pages first. With UHMM_ALLOC_CONTIG, @pages[i] is the i-th
 * page of a run of consecutive pfns inside one range. Each page holds a
 * pagemap reference until its refcount drops to 0.
 * Context: any thread; thread-safe.
 * Return: 0; -EINVAL bad args/flags, dying pagemap; -ENOSPC not enough free
 *   pages (nothing allocated).
 */
UHMM_API int uhmm_pagemap_alloc_pages(struct uhmm_pagemap *pgmap, uint64_t n,
				      unsigned int flags,
				      struct uhmm_page **pages);
/** uhmm_pagemap_nr_free() - pages in the free pool (>= 0; never counts the
 * ALTMAP reserve and page-struct pages) or -EINVAL (NULL or unregistered). */
UHMM_API int64_t uhmm_pagemap_nr_free(struct uhmm_pagemap *pgmap);
/** uhmm_pagemap_nr_pages() - total pages of all ranges, or -EINVAL. */
UHMM_API int64_t uhmm_pagemap_nr_pages(struct uhmm_pagemap *pgmap);

#ifdef __cplusplus
}
#endif
#endif
