// SPDX-License-Identifier: MIT
/* migrate.c - page migration between system and device memory, device
 * eviction and device-exclusive access. API in include/uhmm/migrate.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm/migrate.h>
#include "mm_internal.h"
#include "pagemap_internal.h"

/* State of one migration, pointed to by its MIGRATING entries. */
struct mig_ctl {
	struct uhmm_migrate *m;
	uint8_t *stage;			/* system sources, moved out (managed) */
	uint64_t *held;			/* or, direct: the dst page memory holding them */
	uint64_t stage_pages;		/* size of the staging area */
	uint8_t *dstbuf;		/* system destinations, on demand */
	uint64_t dstbuf_pages;
	struct uhmm_page **devpage;	/* device sources (entry's reference) */
	struct uhmm_page **dstpage;	/* device destinations, looked up once */
	uint64_t *dstpfn;		/* the pfn each was looked up for */
	uint64_t *dsthost;		/* and its host memory (0: none) */
	struct uhmm_page **put;		/* references finalize drops (2n) */
	bool *placed;			/* data already where it belongs */
	bool write_ok;			/* vma writable */
	/* the last device pfn run looked up: pfns [run_pfn, run_pfn + run_left) */
	uint64_t run_pfn, run_left, run_host;
	struct uhmm_page *run_page;
} __attribute__((aligned(8)));

#define PG UHMM_PAGE_SIZE
#define VA(m, i) ((m)->start + (i) * PG)
/* pages one move, copy or mincore call takes at most (one page table's) */
#define RUN_MAX 512

static bool page_present(const void *addr)
{
	unsigned char v = 0;

	return mincore((void *)addr, PG, &v) == 0 && (v & 1);
}


static bool type_selected(const struct uhmm_migrate *m, const struct uhmm_page *pg)
{
	if (pg->pgmap->owner != m->pgmap_owner)
		return false;
	if (pg->pgmap->type == UHMM_PAGEMAP_PRIVATE)
		return m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	if (pg->pgmap->type == UHMM_PAGEMAP_COHERENT)
		return m->flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT;
	return false;
}

#define SELECT_ALL                                                           \
	(UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |   \
	 UHMM_MIGRATE_SELECT_DEVICE_COHERENT)

/*
 * Staging areas are managed memory (UFFDIO_MOVE needs a destination
 * registered with our userfaultfd). One idle area per mm is kept: mapping
 * and registering one per migration costs more than the moves.
 */
#define STAGE_MIN_PAGES 512

static uint8_t *stage_get(struct uhmm_mm *mm, uint64_t n, uint64_t *pages)
{
	void *p = NULL;

	mm_lock(mm);
	if (mm->stage_cache && mm->stage_cache_pages >= n) {
		p = mm->stage_cache;
		*pages = mm->stage_cache_pages;
		mm->stage_cache = NULL;
	}
	mm_unlock(mm);
	if (p)
		return p;
	*pages = UHMM_ALIGN_UP(UHMM_MAX(n, (uint64_t)STAGE_MIN_PAGES), (uint64_t)STAGE_MIN_PAGES);
	/* 2 MiB-aligned: a whole THP of the process moves in as one PMD */
	if (uhmm_mm_alloc(mm, *pages * PG, UHMM_ALLOC_HUGE, &p))
		return NULL;
	return p;
}

static void stage_drop(struct uhmm_mm *mm, uint8_t *p, uint64_t pages)
{
	uhmm_mm_unmanage(mm, p, pages * PG);
	munmap(p, pages * PG);
}

/* Whether any page of the area is present (mincore, RUN_MAX pages a call);
 * true when it cannot tell. */
static bool stage_dirty(uint8_t *p, uint64_t pages)
{
	unsigned char vec[RUN_MAX];

	for (uint64_t off = 0; off < pages; off += RUN_MAX) {
		uint64_t n = UHMM_MIN((uint64_t)RUN_MAX, pages - off);

		if (mincore(p + off * PG, n * PG, vec))
			return true;
		for (uint64_t i = 0; i < n; i++)
			if (vec[i] & 1)
				return true;
	}
	return false;
}

/* Empty the area (a move needs empty slots) and cache it, or drop it. Only
 * its first @used pages can hold data (a migration of @used pages used
 * it). The cache keeps the larger of two idle areas. */
static void stage_put(struct uhmm_mm *mm, uint8_t *p, uint64_t pages, uint64_t used)
{
	used = UHMM_MIN(used, pages);
	if (stage_dirty(p, used)) {
		/* unregistered, DONTNEED sends no event to the handler */
		if (uhmm_uffd_unregister(mm, (uint64_t)(uintptr_t)p, used * PG)) {
			stage_drop(mm, p, pages);
			return;
		}
		madvise(p, used * PG, MADV_DONTNEED);
		/* MISSING only: a move needs no more, and unregistering a WP
		 * range rewrites every PTE (a third of the emptying's time) */
		if (uhmm_uffd_register(mm, (uint64_t)(uintptr_t)p, used * PG, false)) {
			stage_drop(mm, p, pages);
			return;
		}
	}
	mm_lock(mm);
	if (!mm->stage_cache || mm->stage_cache_pages < pages) {
		void *old = mm->stage_cache;
		uint64_t old_pages = mm->stage_cache_pages;

		mm->stage_cache = p;
		mm->stage_cache_pages = pages;
		p = old;
		pages = old_pages;
	}
	mm_unlock(mm);
	if (p)
		stage_drop(mm, p, pages);
}

/* Destination buffers are plain memory; reusing one saves a page fault per page. */
static uint8_t *dstbuf_get(struct uhmm_mm *mm, uint64_t n, uint64_t *pages)
{
	void *p = NULL;

	mm_lock(mm);
	if (mm->dst_cache && mm->dst_cache_pages >= n) {
		p = mm->dst_cache;
		*pages = mm->dst_cache_pages;
		mm->dst_cache = NULL;
	}
	mm_unlock(mm);
	if (p)
		return p;
	*pages = UHMM_MAX(n, (uint64_t)STAGE_MIN_PAGES);
	p = mmap(NULL, *pages * PG, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void dstbuf_put(struct uhmm_mm *mm, uint8_t *p, uint64_t pages)
{
	mm_lock(mm);
	if (!mm->dst_cache && pages == STAGE_MIN_PAGES) {
		mm->dst_cache = p;
		mm->dst_cache_pages = pages;
		p = NULL;
	}
	mm_unlock(mm);
	if (p)
		munmap(p, pages * PG);
}

void uhmm_migrate_mm_fini(struct uhmm_mm *mm)
{
	void *p, *d;

	mm_lock(mm);
	p = mm->stage_cache;
	mm->stage_cache = NULL;
	d = mm->dst_cache;
	mm->dst_cache = NULL;
	mm_unlock(mm);
	if (p)
		stage_drop(mm, p, mm->stage_cache_pages);
	if (d)
		munmap(d, mm->dst_cache_pages * PG);
	uhmm_block_cache_fini(&mm->ctl_cache);
}

static void ctl_free(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t n)
{
	if (c->stage)
		stage_put(mm, c->stage, c->stage_pages, n);
	if (c->dstbuf)
		dstbuf_put(mm, c->dstbuf, c->dstbuf_pages);
	uhmm_block_put(mm ? &mm->ctl_cache : NULL, c);	/* the arrays are in the block */
}

/* Everything a migration needs, allocated up front: past setup nothing can
 * fail for want of memory (a lost reference or a page left behind). */
static struct mig_ctl *ctl_alloc(struct uhmm_mm *mm, uint64_t n, bool direct)
{
	/*
	 * One block: devpage, dstpage, held, then dstpfn, dsthost and put (2n),
	 * then placed. Only what is read before it is written starts zeroed:
	 * dstpfn and dsthost are read only where dstpage is set, put is
	 * filled before it is read.
	 */
	uint64_t zwords = 2 + direct, words = zwords + 4;
	struct mig_ctl *c;
	uint64_t *a;

	if (n > (SIZE_MAX - sizeof(*c)) / (words * 8 + 1))
		return NULL;
	c = uhmm_block_get(&mm->ctl_cache, sizeof(*c) + n * (words * 8 + 1), false);
	if (!c)
		return NULL;
	memset(c, 0, sizeof(*c) + n * zwords * 8);
	a = (uint64_t *)(c + 1);
	c->devpage = (struct uhmm_page **)a;
	c->dstpage = (struct uhmm_page **)(a + n);
	c->held = direct ? a + 2 * n : NULL;
	c->dstpfn = a + zwords * n;
	c->dsthost = a + (zwords + 1) * n;
	c->put = (struct uhmm_page **)(a + (zwords + 2) * n);
	c->placed = (bool *)(a + words * n);
	memset(c->placed, 0, n);
	return c;
}

static uint64_t host_addr(struct uhmm_page *pg)
{
	return pg ? (uint64_t)(uintptr_t)uhmm_page_to_virt(pg) : 0;
}

/* Where setup put the data of system source i (0: nowhere). */
static uint64_t stage_at(const struct mig_ctl *c, uint64_t i)
{
	if (c->held)
		return c->held[i];
	return c->stage ? (uint64_t)(uintptr_t)c->stage + i * PG : 0;
}

/* Pages from @i on (up to @j, at most RUN_MAX) whose staging memory follows on
 * from page i's; 0 if page i has none. */
static uint64_t stage_run(const struct mig_ctl *c, uint64_t i, uint64_t j)
{
	uint64_t a = stage_at(c, i), k = 1, lim = UHMM_MIN(j - i, RUN_MAX);

	if (!a)
		return 0;
	if (!c->held)
		return lim;	/* the staging area is one block */
	while (k < lim && c->held[i + k] == a + k * PG)
		k++;
	return k;
}

/*
 * Device page of dst[i] (a device pfn), looked up once: finalize reuses what
 * uhmm_migrate_pages() found. Contiguous destinations need no table lookup.
 */
static struct uhmm_page *dst_page_lookup(struct mig_ctl *c, uint64_t i, uint64_t pfn)
{
	uint64_t k = pfn - c->run_pfn;

	if (!c->run_page || pfn < c->run_pfn || k >= c->run_left) {
		/* a new run (the driver holds its pages: they stay valid) */
		c->run_page = uhmm_pfn_to_page_run(pfn, &c->run_left);
		c->run_pfn = pfn;
		c->run_host = host_addr(c->run_page);
		k = 0;
	}
	c->dstpage[i] = c->run_page ? c->run_page + k : NULL;
	c->dstpfn[i] = pfn;
	c->dsthost[i] = c->dstpage[i] && c->run_host ? c->run_host + k * PG : 0;
	return c->dstpage[i];
}

/* (inline: called for every page, three times in a migration to a device) */
static inline __attribute__((always_inline)) struct uhmm_page *
dst_page(const struct uhmm_migrate *m, struct mig_ctl *c, uint64_t i)
{
	uint64_t pfn = uhmm_migrate_pfn_to_pfn(m->dst[i]), k = pfn - c->run_pfn;

	if (c->dstpage[i] && c->dstpfn[i] == pfn)
		return c->dstpage[i];
	if (c->run_page && c->run_host && pfn >= c->run_pfn && k < c->run_left) {
		/* the next page of the current run */
		c->dstpage[i] = c->run_page + k;
		c->dstpfn[i] = pfn;
		c->dsthost[i] = c->run_host + k * PG;
		return c->dstpage[i];
	}
	return dst_page_lookup(c, i, pfn);
}

/*
 * UHMM_MIGRATE_DST_PREFILLED: can system sources move straight into their
 * destinations? Each given dst[i] must be a device page to move into whose
 * host memory is managed by this mm and empty (a move into a present page
 * fails). Fills c->held; false (and no c->held) means: stage as usual.
 */
static bool direct_setup(struct uhmm_mm *mm, struct uhmm_migrate *m, struct mig_ctl *c,
			 uint64_t n)
{
	const uint64_t want = UHMM_MIGRATE_PFN_VALID | UHMM_MIGRATE_PFN_DEVICE |
			      UHMM_MIGRATE_PFN_MOVE;
	bool ok = true;

	c->run_page = NULL;	/* runs are looked up again by each call */
	for (uint64_t i = 0; i < n && ok; i++) {
		if (!m->dst[i])
			continue;
		ok = (m->dst[i] & want) == want && dst_page(m, c, i) &&
		     (c->held[i] = c->dsthost[i]);
	}
	/* run by run (contiguous host memory): managed here, and empty */
	for (uint64_t i = 0, j; i < n && ok; i = j) {
		uint64_t a = stage_at(c, i), k = stage_run(c, i, n);
		unsigned char vec[RUN_MAX];
		struct mm_vma *v;

		j = i + UHMM_MAX(k, 1);
		if (!k)
			continue;
		mm_lock(mm);
		v = uhmm_vma_find(mm, a);
		ok = v && v->allocated && v->end >= a + k * PG;
		mm_unlock(mm);
		if (ok && mincore((void *)(uintptr_t)a, k * PG, vec) == 0)
			for (uint64_t q = 0; q < k && ok; q++)
				ok = !(vec[q] & 1);
		else
			ok = false;
	}
	if (!ok)
		c->held = NULL;
	return ok;
}

/*
 * The CPU entry of address @a if it is still @c's MIGRATING entry, else
 * NULL (mm->lock held). *vp: the range of the previous call, or NULL; it is
 * looked up again when @a is outside it.
 */
static inline __attribute__((always_inline)) uint64_t *
ours_ent(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t a, struct mm_vma **vp)
{
	uint64_t *pe;

	if (!*vp || a < (*vp)->start || a >= (*vp)->end)
		*vp = uhmm_vma_find(mm, a);
	pe = *vp ? uhmm_vma_ent(*vp, a, false) : NULL;
	return pe && ENT_STATE(*pe) == ENT_MIGRATING && ENT_PTR(*pe) == c ? pe : NULL;
}

/*
 * Whether finalize migrates page i, from src[i] and dst[i] as the driver left
 * them: without uhmm_migrate_pages(), dst[] is unchecked, so a system source
 * needs a real device page and a device source system memory; a move that
 * could not be made is no migration.
 */
static inline bool fin_migrates(const struct mig_ctl *c, uint64_t i)
{
	uint64_t s = c->m->src[i], d = c->m->dst[i];
	bool migrate = (s & UHMM_MIGRATE_PFN_MIGRATE) && (d & UHMM_MIGRATE_PFN_VALID);

	if (migrate && !c->devpage[i])
		migrate = (d & UHMM_MIGRATE_PFN_DEVICE) && c->dstpage[i];
	else if (migrate)
		migrate = !(d & UHMM_MIGRATE_PFN_DEVICE);
	if (migrate && (d & UHMM_MIGRATE_PFN_MOVE) && !c->placed[i])
		migrate = false;
	return migrate;
}

/* Device page i comes back to the process by a copy from c->dstbuf. */
static bool copies_back(const struct mig_ctl *c, uint64_t i)
{
	return c->devpage[i] && fin_migrates(c, i) && !c->placed[i] &&
	       !(c->m->dst[i] & UHMM_MIGRATE_PFN_MOVE) && c->dstbuf;
}

/* System page i stays: it goes back to the process from where setup put it. */
static bool stays_staged(const struct mig_ctl *c, uint64_t i)
{
	return !c->devpage[i] && (c->m->src[i] & UHMM_MIGRATE_PFN_VALID) &&
	       stage_at(c, i) && !fin_migrates(c, i);
}

/*
 * The end of the run of pages from i (at most RUN_MAX) that @same accepts, still
 * this migration's and in range @v; with @from, their data also follows on
 * from page i's at @from. One system call then places the whole run: one
 * per page cost most of a migration (mm->lock held).
 */
static uint64_t run_end(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t i, struct mm_vma *v,
			bool (*same)(const struct mig_ctl *, uint64_t), uint64_t from)
{
	uint64_t j = i + 1;

	while (j < c->m->npages && j - i < RUN_MAX && same(c, j) &&
	       (!from || stage_at(c, j) == from + (j - i) * PG)) {
		struct mm_vma *w = v;

		if (!ours_ent(mm, c, VA(c->m, j), &w) || w != v)
			break;
		j++;
	}
	return j;
}

/*
 * Give page i back to the process with the run that follows it (@same; its
 * data at @from on, contiguous) in one UFFDIO_COPY (@copy) or UFFDIO_MOVE.
 * A run that fails before placing anything may cross a mapping split that
 * uhmm's range record does not show (plain mprotect): page i alone then,
 * and page by page from there on (*runs cleared). Returns 0 once page i is
 * placed, *to then the end of the pages placed; else the error.
 */
static int place_back(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t i, struct mm_vma *v,
		      bool (*same)(const struct mig_ctl *, uint64_t), uint64_t from, bool copy,
		      bool *runs, uint64_t *to)
{
	uint64_t j = *runs ? run_end(mm, c, i, v, same, copy ? 0 : from) : i + 1, got = 0;
	int rc;

	for (;;) {
		rc = copy ? uhmm_uffd_copy(mm, VA(c->m, i), (void *)(uintptr_t)from,
					   (j - i) * PG, false, &got)
			  : uhmm_uffd_move(mm, VA(c->m, i), from, (j - i) * PG, &got);
		if (!rc || rc == -EAGAIN || got || j == i + 1)
			break;
		*runs = false;
		j = i + 1;
	}
	if (got < PG)
		return rc ? rc : -EIO;
	*to = i + got / PG;
	return 0;
}

/* Page i's CPU entry is still this migration's (mm->lock held). */
static bool still_ours(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t i)
{
	struct mm_vma *v = NULL;

	return ours_ent(mm, c, VA(c->m, i), &v) != NULL;
}

/*
 * Give page @a back to the CPU if its entry is still @c's (mm->lock held).
 * Once let go (here, or by a DONTNEED applied meanwhile), the entry may be
 * another migration's, MIGRATING or already DEVICE: clearing that one would
 * drop a device page without its reference put (a teardown waiting for it
 * never returns) and the data with it.
 */
static bool let_go_if_ours(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t a)
{
	struct mm_vma *v = NULL;

	if (!ours_ent(mm, c, a, &v))
		return false;
	uhmm_ent_set(mm, v, a, 0);
	return true;
}

/* How many pages from @i on (up to @j) still have @c's entry (mm->lock held). */
static uint64_t ours_prefix(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t i, uint64_t j)
{
	struct mm_vma *v = NULL;
	uint64_t *pe = ours_ent(mm, c, VA(c->m, i), &v), k = i, want;

	if (!pe)
		return 0;
	/* the rest of the run inside the same range: walk its table */
	j = UHMM_MIN(j, i + (v->end - VA(c->m, i)) / PG);
	want = *pe;
	while (k < j && pe[k - i] == want)
		k++;
	return k - i;
}

/*
 * A page shared with a forked child cannot be moved (-EBUSY). Release it,
 * break the sharing with a write fault (served by the kernel, the page is
 * present), take it again and retry once. True if it moved. Taken again on
 * setup's terms: while it was let go, a DONTNEED may have been applied
 * whose zap is still to come (uhmm_madvise's drop, or a plain one's REMOVE
 * read: struct mm_zap); moved before that zap, the page would carry the
 * dropped data to the device, and it would come back on the next fault.
 */
static bool retry_unshared(struct uhmm_mm *mm, struct mig_ctl *c,
			   struct uhmm_migrate *m, uint64_t i, int rc)
{
	uint64_t a = VA(m, i), moved = 0, *pe;
	struct mm_vma *v;
	bool ok = false, ours;

	if (rc != -EBUSY)
		return false;
	mm_lock(mm);
	ours = let_go_if_ours(mm, c, a);
	mm_unlock(mm);
	if (!ours)
		return false;
	uhmm_uffd_wake(mm, a, PG);
	if (uhmm_uffd_populate(mm, a, PG, true))
		return false;
	mm_lock(mm);
	v = uhmm_vma_find(mm, a);
	pe = v ? uhmm_vma_ent(v, a, true) : NULL;
	if (pe && !*pe && !uhmm_mm_drop_pending_locked(mm, a)) {
		uhmm_ent_set(mm, v, a, ENT_MAKE(c, ENT_MIGRATING, 0));
		ok = uhmm_uffd_move(mm, stage_at(c, i), a, PG, &moved) == 0 && moved == PG;
		if (!ok)
			uhmm_ent_set(mm, v, a, 0);
	}
	mm_unlock(mm);
	return ok;
}

int uhmm_migrate_setup(struct uhmm_migrate *m)
{
	struct uhmm_mm *mm;
	struct mig_ctl *c;
	struct mm_vma *v;
	struct vma_info vi;
	uint64_t n, *ents, taken = 0;
	bool sys_ok, prefilled;
	int err;

	if (!m || !m->mm || !m->src || !m->dst || m->start >= m->end ||
	    !UHMM_IS_ALIGNED(m->start, PG) || !UHMM_IS_ALIGNED(m->end, PG) ||
	    !(m->flags & SELECT_ALL) || (m->flags & ~(SELECT_ALL | UHMM_MIGRATE_DST_PREFILLED)))
		return -EINVAL;
	mm = m->mm;
	n = (m->end - m->start) / PG;
	/* a MADV_DONTNEED that returned before this call is applied first, so
	 * its pages are collected as holes (the kernel zaps before returning) */
	uhmm_mm_removes_settle(mm);
	/* COHERENT pages fault back like PRIVATE ones (see migrate.h) */
	if (m->fault_page && (!m->fault_page->pgmap ||
			      (m->fault_page->pgmap->type != UHMM_PAGEMAP_PRIVATE &&
			       m->fault_page->pgmap->type != UHMM_PAGEMAP_COHERENT)))
		return -EINVAL;
	/* The kernel's view matters only for system pages (writability);
	 * device pages are known from the managed range alone. */
	vi.prot = 0;
	if (m->flags & UHMM_MIGRATE_SELECT_SYSTEM) {
		err = uhmm_vma_query(mm, m->start, &vi);
		if (err || vi.start > m->start || vi.end < m->end)
			return -EINVAL;
	}
	c = ctl_alloc(mm, n, (m->flags & UHMM_MIGRATE_DST_PREFILLED) &&
			 (m->flags & UHMM_MIGRATE_SELECT_SYSTEM));
	if (!c)
		return -ENOMEM;
	c->m = m;
	c->write_ok = vi.prot & PROT_WRITE;
	/*
	 * System pages need the range's entry table and a staging area: get
	 * both before any page is taken, so that running short of memory
	 * fails the whole call (-ENOMEM) instead of silently migrating less.
	 */
	err = 0;
	if (m->flags & UHMM_MIGRATE_SELECT_SYSTEM) {
		mm_lock(mm);
		v = uhmm_vma_find(mm, m->start);
		if (v && v->kind == VMA_ANON && !uhmm_vma_ent(v, m->start, true))
			err = -ENOMEM;
		mm_unlock(mm);
		if (!err && !(c->held && direct_setup(mm, m, c, n)) &&
		    !(c->stage = stage_get(mm, n, &c->stage_pages)))
			err = -ENOMEM;
		if (err) {
			ctl_free(mm, c, n);
			return err;
		}
	}
	memset(m->src, 0, n * sizeof(*m->src));
	if (!(m->flags & UHMM_MIGRATE_DST_PREFILLED))
		memset(m->dst, 0, n * sizeof(*m->dst));
	m->npages = n;
	m->cpages = 0;
	m->priv = c;
	uhmm_mm_migration_begin(mm);

	mm_lock(mm);
	v = uhmm_vma_find(mm, m->start);
	if (!v || v->end < m->end || v->kind == VMA_INTERNAL) {
		mm_unlock(mm);
		uhmm_mm_migration_end(mm);
		ctl_free(mm, c, n);
		m->priv = NULL;
		return -EINVAL;
	}
	prefilled = m->flags & UHMM_MIGRATE_DST_PREFILLED;
	/* UFFDIO_MOVE needs a writable private anonymous source. */
	sys_ok = (m->flags & UHMM_MIGRATE_SELECT_SYSTEM) && v->kind == VMA_ANON &&
		 c->write_ok && (mm->features & UHMM_FEAT_MOVE) && (c->stage || c->held);
	/* the range is inside v: one table, counted once at the end */
	ents = uhmm_vma_ent(v, m->start, false);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t e = ents ? ents[i] : 0;

		if (ENT_STATE(e) == ENT_DEVICE) {
			struct uhmm_page *pg = ENT_PTR(e);

			if (!type_selected(m, pg))
				continue;
			c->devpage[i] = pg;	/* the entry's reference moves here */
			m->src[i] = (uhmm_page_to_pfn(pg) << UHMM_MIGRATE_PFN_SHIFT) |
				    UHMM_MIGRATE_PFN_VALID | UHMM_MIGRATE_PFN_MIGRATE |
				    UHMM_MIGRATE_PFN_DEVICE |
				    (e & ENT_WRITE ? UHMM_MIGRATE_PFN_WRITE : 0);
			ents[i] = ENT_MAKE(c, ENT_MIGRATING, 0);	/* still non-zero */
		} else if (ENT_STATE(e) == ENT_MIGRATING) {
			if (uhmm_wake_defer.active && VA(m, i) == uhmm_wake_defer.fault_addr)
				uhmm_wake_defer.fault_busy = true;
		} else if (!e && sys_ok && (!prefilled || m->dst[i]) &&
			   !uhmm_mm_drop_pending_locked(mm, VA(m, i))) {
			if (!ents && !(ents = uhmm_vma_ent(v, m->start, true)))
				continue;
			m->src[i] = UHMM_MIGRATE_PFN_MIGRATE;
			ents[i] = ENT_MAKE(c, ENT_MIGRATING, 0);
			taken++;
		}
	}
	v->nents += taken;
	mm->nr_ents += taken;
	mm_unlock(mm);

	uhmm_invalidate_start(mm, UHMM_EVENT_MIGRATE, m->start, m->end,
			      m->pgmap_owner, 0);
	/* Take the system pages away from the CPU, run by run. */
	for (uint64_t i = 0; i < n;) {
		uint64_t j = i, moved = 0;
		int rc = 0;

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) ||
		    (m->src[i] & UHMM_MIGRATE_PFN_DEVICE)) {
			i++;
			continue;
		}
		/* (a run is at most RUN_MAX pages: look no further) */
		while (j < n && j < i + RUN_MAX && (m->src[j] & UHMM_MIGRATE_PFN_MIGRATE) &&
		       !(m->src[j] & UHMM_MIGRATE_PFN_DEVICE))
			j++;
		j = i + UHMM_MAX(stage_run(c, i, j), 1);	/* one move: contiguous at both ends */
		/*
		 * Move only what is still ours, under mm->lock: a REMOVE applied
		 * since the pages were taken clears their entries, and a CPU
		 * fault may then have filled one and written it; moving that
		 * page would lose the write (finalize gives back only its own).
		 */
		mm_lock(mm);
		j = i + ours_prefix(mm, c, i, j);
		if (j == i) {
			mm_unlock(mm);
			m->src[i++] = 0;	/* let go by a REMOVE or an unmap */
			continue;
		}
		if (stage_at(c, i))
			rc = uhmm_uffd_move(mm, stage_at(c, i), VA(m, i), (j - i) * PG, &moved);
		else
			rc = -ENOMEM;
		mm_unlock(mm);
		if (rc) {
			uint64_t bad = i + moved / PG;

			if (!retry_unshared(mm, c, m, bad, rc)) {
				/* cannot move (pinned, shared): it stays in RAM;
				 * the entry only if still ours (retry_unshared let
				 * it go for a while: another migration may own it) */
				mm_lock(mm);
				let_go_if_ours(mm, c, VA(m, bad));
				mm_unlock(mm);
				m->src[bad] = 0;
				uhmm_uffd_wake(mm, VA(m, bad), PG);
			}
			i = bad + 1;
			continue;
		}
		i = j;
	}
	uhmm_invalidate_end(mm);
	/* Which sources hold data (the rest were holes: zero pages), by runs
	 * of contiguous staging memory. */
	for (uint64_t off = 0, k; off < n; off += UHMM_MAX(k, 1)) {
		uint64_t a = stage_at(c, off), w = c->write_ok ? UHMM_MIGRATE_PFN_WRITE : 0;
		unsigned char vec[RUN_MAX];

		k = stage_run(c, off, n);
		if (k && mincore((void *)(uintptr_t)a, k * PG, vec))
			memset(vec, 1, k);	/* cannot tell: none is a hole */
		for (uint64_t i = off; i < off + k; i++)
			if ((m->src[i] & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_DEVICE)) ==
			    UHMM_MIGRATE_PFN_MIGRATE)
				m->src[i] |= w | (vec[i - off] & 1 ? UHMM_MIGRATE_PFN_VALID : 0);
	}
	for (uint64_t i = 0; i < n; i++)
		m->cpages += !!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	return 0;
}

void *uhmm_migrate_src_buf(const struct uhmm_migrate *m, uint64_t i)
{
	const struct mig_ctl *c = m ? m->priv : NULL;

	if (!c || i >= m->npages ||
	    (m->src[i] & (UHMM_MIGRATE_PFN_VALID | UHMM_MIGRATE_PFN_DEVICE)) !=
		    UHMM_MIGRATE_PFN_VALID)
		return NULL;
	return (void *)(uintptr_t)stage_at(c, i);
}

void *uhmm_migrate_dst_buf(const struct uhmm_migrate *m, uint64_t i)
{
	struct mig_ctl *c = m ? m->priv : NULL;

	if (!c || i >= m->npages)
		return NULL;
	if (!c->dstbuf)		/* only drivers that copy themselves need it */
		c->dstbuf = dstbuf_get(m->mm, m->npages, &c->dstbuf_pages);
	return c->dstbuf ? c->dstbuf + i * PG : NULL;
}

int uhmm_migrate_pages(struct uhmm_migrate *m)
{
	int ret = 0;

	if (!m || !m->priv)
		return -EINVAL;
	((struct mig_ctl *)m->priv)->run_page = NULL;
	for (uint64_t i = 0; i < m->npages; i++) {
		uint64_t d = m->dst[i];

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if (!(d & UHMM_MIGRATE_PFN_VALID)) {
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			continue;
		}
		if ((d & UHMM_MIGRATE_PFN_DEVICE) &&
		    (!dst_page(m, m->priv, i) ||
		     (m->src[i] & UHMM_MIGRATE_PFN_DEVICE))) {
			/* unknown page, or device to device (not supported) */
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			ret = -EINVAL;
		}
		if (!(d & UHMM_MIGRATE_PFN_DEVICE) &&
		    !(m->src[i] & UHMM_MIGRATE_PFN_DEVICE))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;	/* system to system */
	}
	return ret;
}

/*
 * Where page i's data goes (*to) and comes from (*from) when the driver asked
 * uhmm to move it; 0 if it did not. A zero-filled system source has *from 0.
 */
static inline __attribute__((always_inline)) bool
move_wanted(const struct uhmm_migrate *m, const struct mig_ctl *c, uint64_t i, uint64_t *to,
	    uint64_t *from)
{
	uint64_t s = m->src[i], d = m->dst[i];

	if (!(s & UHMM_MIGRATE_PFN_MIGRATE) || (d & (UHMM_MIGRATE_PFN_VALID |
		UHMM_MIGRATE_PFN_MOVE)) != (UHMM_MIGRATE_PFN_VALID | UHMM_MIGRATE_PFN_MOVE))
		return false;
	if (c->devpage[i]) {
		*to = VA(m, i);
		*from = host_addr(c->devpage[i]);
	} else {
		*to = c->dstpage[i] ? c->dsthost[i] : 0;
		*from = s & UHMM_MIGRATE_PFN_VALID ? stage_at(c, i) : 0;
	}
	return true;
}

/* One page the batch could not move: copy it (or zero it). 0, -EAGAIN (the
 * gate holder must let go first), or another error (the page stays put). */
static int place_one(struct uhmm_mm *mm, uint64_t to, uint64_t from, bool to_process)
{
	if (to_process)
		return from ? uhmm_uffd_copy(mm, to, (void *)(uintptr_t)from, PG, false, NULL)
			    : -EFAULT;
	if (from)
		memcpy((void *)(uintptr_t)to, (void *)(uintptr_t)from, PG);
	else
		memset((void *)(uintptr_t)to, 0, PG);
	return 0;
}

/* Fill what a move from holes left empty in [to, to + len) of the process. */
static void fill_holes(struct uhmm_mm *mm, uint64_t to, uint64_t len)
{
	unsigned char vec[RUN_MAX];
	uint64_t done;

	uhmm_lockdep_assert_held(&mm->lock);
	for (uint64_t off = 0; off < len; off += RUN_MAX * PG) {
		uint64_t n = UHMM_MIN(RUN_MAX, (len - off) / PG);

		if (mincore((void *)(uintptr_t)(to + off), n * PG, vec))
			return;
		for (uint64_t k = 0; k < n; k++)
			if (!(vec[k] & 1))
				uhmm_uffd_fill(mm, to + off + k * PG, PG, true, &done);
	}
}

/*
 * Short runs into the process are copied from device memory that is present:
 * a move must flush the device mapping's TLB entries on every CPU the
 * process runs on (11-14 us here with a second thread), a copy only installs.
 * Pages whose device memory is not present are left to the move path (a
 * copy from them would fault, possibly on the handler thread itself).
 */
#define MOVE_MIN_RUN 8

/* Page k by copy (short run, or a move refused it); false: restart at k (-EAGAIN). */
static bool place_copy(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t k,
		       uint64_t to, uint64_t from, bool to_process)
{
	int rc = place_one(mm, to, from, to_process);

	if (rc == -EAGAIN && to_process)
		return false;
	c->placed[k] = rc == 0;
	if (!rc && !to_process)
		pm_page_set_present(c->dstpage[k], true);
	if (rc)
		c->m->src[k] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	return true;
}

#define RUN_DONE UINT64_MAX		/* place_run: every page handled */
#define RUN_NOT_PRESENT (UINT64_MAX - 1)

static uint64_t copy_present(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t to,
			     uint64_t from, uint64_t i, uint64_t j)
{
	unsigned char vec[MOVE_MIN_RUN];
	bool known = true;

	for (uint64_t k = i; k < j && known; k++)
		known = pm_page_present(c->devpage[k]);
	if (!known && mincore((void *)(uintptr_t)from, (j - i) * PG, vec))
		return RUN_NOT_PRESENT;
	for (uint64_t k = 0; k < j - i && !known; k++)
		if (!(vec[k] & 1))
			return RUN_NOT_PRESENT;
	for (uint64_t k = i; k < j; k++)
		if (!place_copy(mm, c, k, to + (k - i) * PG, from + (k - i) * PG, true))
			return k;
	return RUN_DONE;
}

/*
 * Place pages [i, j) (contiguous at both ends): copies for short runs into
 * the process, else moves, copying what cannot move. RUN_DONE, or the page
 * to start again from when a write into the process met -EAGAIN under the
 * gate (an event is queued that the handler must read first).
 */
static uint64_t place_run(struct uhmm_mm *mm, struct mig_ctl *c, uint64_t i, uint64_t j,
			  uint64_t to, uint64_t from, bool to_process)
{
	uint64_t moved = 0;

	if (to_process && j - i < MOVE_MIN_RUN) {
		uint64_t r = copy_present(mm, c, to, from, i, j);

		if (r != RUN_NOT_PRESENT)
			return r;
	}
	for (uint64_t k = i; k < j;) {
		uint64_t off = (k - i) * PG;
		int rc = uhmm_uffd_move(mm, to + off, from + off, (j - k) * PG, &moved);

		for (uint64_t q = k; q < k + moved / PG; q++) {
			c->placed[q] = true;
			/* the data left device memory, or arrived there */
			pm_page_set_present(to_process ? c->devpage[q] : c->dstpage[q],
					    !to_process);
		}
		if (to_process && moved)
			fill_holes(mm, to + off, moved);
		k += moved / PG;
		if (k >= j)
			break;
		if (rc == -EAGAIN && to_process)
			return k;
		/* page k could not move (occupied slot, shared...): copy it,
		 * then keep moving; a refused mapping copies the rest */
		if (!place_copy(mm, c, k, to + (k - i) * PG, from + (k - i) * PG, to_process))
			return k;
		k++;
		if (rc == -EINVAL || rc == -EPERM)
			for (; k < j; k++)
				if (!place_copy(mm, c, k, to + (k - i) * PG,
						from + (k - i) * PG, to_process))
					return k;
	}
	return RUN_DONE;
}

/*
 * UHMM_MIGRATE_PFN_MOVE: move runs of pages whose source and destination are
 * both contiguous with one UFFDIO_MOVE each; copy what cannot move. Runs
 * before finalize takes mm->lock (a copy may fault). Pages that cannot be
 * placed at all stop migrating.
 */
static void transfer(struct uhmm_migrate *m, struct mig_ctl *c)
{
	struct uhmm_mm *mm = m->mm;

	c->run_page = NULL;
	for (uint64_t i = 0; i < m->npages; i++)
		if ((m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
		    (m->dst[i] & UHMM_MIGRATE_PFN_DEVICE))
			dst_page(m, c, i);

	for (uint64_t i = 0; i < m->npages;) {
		uint64_t to, from, j, t2, f2, again;
		bool to_process = c->devpage[i] != NULL, gate = false;

		if (!move_wanted(m, c, i, &to, &from)) {
			i++;
			continue;
		}
		if (!to || (to_process && !from)) {
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;	/* nowhere to go */
			i++;
			continue;
		}
		if (from && from == to) {	/* moved in by setup (direct) */
			c->placed[i] = true;
			pm_page_set_present(c->dstpage[i], true);
			i++;
			continue;
		}
		if (!from) {	/* never-touched source: a zero page */
			c->placed[i] = place_one(mm, to, 0, false) == 0;
			i++;
			continue;
		}
		/*
		 * Writes into the process happen under mm->lock and only where
		 * the entry is still ours: the range may have been unmapped and
		 * mapped again meanwhile. (The lock is safe here: these ioctls
		 * never wait for the handler, and nothing below can fault.)
		 */
		if (to_process) {
			/* (the gate only around writes into the process: a
			 * write into device memory may fault and need a read) */
			gate = uhmm_mm_lock_gated(mm);
			if (!still_ours(mm, c, i)) {
				uhmm_mm_unlock_gated(mm, gate);
				m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
				i++;
				continue;
			}
		}
		for (j = i + 1; j < m->npages && move_wanted(m, c, j, &t2, &f2) &&
				(c->devpage[j] != NULL) == to_process &&
				t2 == to + (j - i) * PG && f2 == from + (j - i) * PG &&
				(!to_process || still_ours(mm, c, j));
		     j++)
			;
		again = place_run(mm, c, i, j, to, from, to_process);
		if (to_process)
			uhmm_mm_unlock_gated(mm, gate);
		if (again != RUN_DONE) {
			int tries = 0;

			/* let the handler read and apply what is queued, then
			 * start again at page again (still ours?) */
			uhmm_uffd_retry_wait(mm, &tries);
			i = again;
			continue;
		}
		i = j;
	}
}

int uhmm_migrate_finalize(struct uhmm_migrate *m)
{
	struct mig_ctl *c;
	struct uhmm_mm *mm;
	struct uhmm_page **put;
	struct mm_vma *v;
	uint64_t nput = 0, placed_to = 0;	/* pages before placed_to: placed by a run */
	int done = 0;
	bool gate, runs = true;

	if (!m || !(c = m->priv))
		return -EINVAL;
	mm = m->mm;
	put = c->put;
	/*
	 * A MADV_DONTNEED the handler has read but not applied yet has resumed
	 * and zapped nothing (the pages were isolated): let the handler apply it
	 * first, so the entry check below sees the page dropped and nothing
	 * comes back. (On the handler itself, events run before faults.)
	 */
	uhmm_mm_batch_barrier(mm);
	transfer(m, c);
	gate = uhmm_mm_lock_gated(mm);	/* no DONTNEED zap may follow our writes */
	v = NULL;			/* the range of page i, while mm->lock is held */
	for (uint64_t i = 0; i < m->npages; i++) {
		uint64_t s = m->src[i], d = m->dst[i];
		bool migrate = fin_migrates(c, i);
		struct uhmm_page *dpg = NULL;
		uint64_t *pe;

		if (!migrate)
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;

		/* (pe stays valid: mm->lock is held until "again") */
		if (!(pe = ours_ent(mm, c, VA(m, i), &v))) {
			/* not ours, or unmapped/dropped meanwhile: data is gone */
			if (migrate && (d & UHMM_MIGRATE_PFN_DEVICE))
				dpg = c->dstpage[i];
			if (dpg)
				put[nput++] = dpg;
			if (c->devpage[i])
				put[nput++] = c->devpage[i];
			continue;
		}
		if (c->devpage[i]) {	/* device -> system */
			int rc = -ENOENT;

			if (migrate && i < placed_to)
				rc = 0;		/* placed with the run of an earlier page */
			else if (migrate && copies_back(c, i))
				rc = place_back(mm, c, i, v, copies_back,
						(uint64_t)(uintptr_t)(c->dstbuf + i * PG), true,
						&runs, &placed_to);
			if (rc == -EAGAIN)
				goto again;
			if (migrate && (c->placed[i] || rc == 0)) {
				uhmm_ent_store(mm, v, pe, 0);
				put[nput++] = c->devpage[i];
				if (c->devpage[i] == uhmm_wake_defer.fault_page)
					uhmm_wake_defer.fault_done = true;
				if (uhmm_wake_defer.active)
					uhmm_wake_defer.back++;
				done++;
			} else {
				uhmm_ent_store(mm, v, pe,
					       ENT_MAKE(c->devpage[i], ENT_DEVICE,
							s & UHMM_MIGRATE_PFN_WRITE));
			}
			continue;
		}
		if (migrate) {		/* system -> device: the entry owns dst */
			dpg = c->dstpage[i];
			uhmm_ent_store(mm, v, pe,
				       ENT_MAKE(dpg, ENT_DEVICE, s & UHMM_MIGRATE_PFN_WRITE));
			done++;
			continue;
		}
		/* system page that stays: give it back to the process, with
		 * the run that follows it (a device that ran full) */
		if ((s & UHMM_MIGRATE_PFN_VALID) && stage_at(c, i) && i >= placed_to) {
			uint64_t from = stage_at(c, i);
			int rc = place_back(mm, c, i, v, stays_staged, from, false, &runs,
					    &placed_to);

			if (rc && rc != -EAGAIN)	/* not movable (fork-shared): copy */
				rc = uhmm_uffd_copy(mm, VA(m, i), (void *)(uintptr_t)from, PG,
						    false, NULL);
			if (rc == -EAGAIN)
				goto again;
		}
		uhmm_ent_store(mm, v, pe, 0);
		continue;
again:
		/* an event is queued: let the handler apply it, then look at
		 * page i again (the ranges may have changed meanwhile) */
		gate = uhmm_mm_relock_gated(mm, gate);
		v = NULL;
		i--;
	}
	uhmm_mm_unlock_gated(mm, gate);
	if (uhmm_wake_defer.active) {
		struct uhmm_wake_defer *w = &uhmm_wake_defer;

		w->start = w->end > w->start ? UHMM_MIN(w->start, m->start) : m->start;
		w->end = UHMM_MAX(w->end, m->end);
	} else {
		uhmm_uffd_wake(mm, m->start, m->end - m->start);
	}
	for (uint64_t i = 0; i < nput; i++)
		uhmm_page_put(put[i]);
	ctl_free(mm, c, m->npages);
	m->priv = NULL;
	uhmm_mm_migration_end(mm);
	return done;
}

/* ---------------------------------------------------------------------- */
/* eviction                                                                 */

/* Device pages of one pagemap within a pfn range. */
struct evict_want {
	struct uhmm_pagemap *pgmap;
	uint64_t first, last;
};

static bool evict_wanted(uint64_t e, void *arg)
{
	const struct evict_want *w = arg;
	struct uhmm_page *pg = ENT_PTR(e);
	uint64_t pfn;

	if (ENT_STATE(e) != ENT_DEVICE || pg->pgmap != w->pgmap)
		return false;
	pfn = uhmm_page_to_pfn(pg);
	return pfn >= w->first && pfn < w->last;
}

/*
 * Bring back every page of @pgmap in [first, last) that a CPU entry holds.
 * A page that fails is skipped, not the end of the walk: the usual failure
 * is a race (its range was unmanaged or its page brought back meanwhile, so
 * setup finds no range: -EINVAL), and teardown waits for every page, so one
 * page left behind is a hang. Skipped pages are tried again a few times.
 */
static int evict(struct uhmm_pagemap *pgmap, uint64_t first, uint64_t last)
{
	struct evict_want w = { pgmap, first, last };
	int count = 0, err;

	pthread_mutex_lock(&uhmm_mm_list_lock);
	for (struct uhmm_mm *mm = uhmm_mm_list; mm; mm = mm->next_open)
		count += uhmm_mm_bring_back_if(mm, 0, UINT64_MAX, evict_wanted, &w, &err);
	pthread_mutex_unlock(&uhmm_mm_list_lock);
	return count;
}

int uhmm_pagemap_evict(struct uhmm_pagemap *pgmap)
{
	return evict(pgmap, 0, UINT64_MAX);
}

int uhmm_migrate_device_range(struct uhmm_pagemap *pgmap, uint64_t pfn,
			      uint64_t npages)
{
	if (!pgmap || !pgmap->priv || !npages || pfn + npages < pfn)
		return -EINVAL;
	return evict(pgmap, pfn, pfn + npages);
}

__attribute__((constructor)) static void migrate_init(void)
{
	uhmm_pagemap_set_evict_hook(uhmm_pagemap_evict);
}

/* ---------------------------------------------------------------------- */
/* exclusive access                                                         */

void uhmm_excl_free(struct uhmm_excl *x);

/* x->buf is a one-page managed mapping of its own, x->mm its mm. */
void uhmm_excl_free(struct uhmm_excl *x)
{
	if (!x)
		return;
	uhmm_mm_unmanage(x->mm, x->buf, PG);
	munmap(x->buf, PG);
	free(x);
}

int uhmm_make_device_exclusive(struct uhmm_mm *mm, uint64_t start,
			       uint64_t npages, void *owner, void **pages)
{
	uint64_t end = start + npages * PG;
	struct vma_info vi;
	int err = 0;

	if (!mm || !pages || !npages || !UHMM_IS_ALIGNED(start, PG) || end < start)
		return -EINVAL;
	err = uhmm_vma_query(mm, start, &vi);
	if (err || vi.start > start || vi.end < end)
		return -EFAULT;
	if (!(vi.prot & PROT_WRITE) || !(mm->features & UHMM_FEAT_MOVE))
		return -EFAULT;
	/* Fault in writable first (the handler serves holes). */
	if (uhmm_uffd_populate(mm, start, end - start, true))
		return -EFAULT;
	/* like a migration to a device: a fork waits for it, and it for a fork */
	uhmm_mm_migration_begin(mm);
	uhmm_invalidate_start(mm, UHMM_EVENT_EXCLUSIVE, start, end, owner, 0);
	for (uint64_t i = 0; i < npages && !err; i++) {
		uint64_t a = start + i * PG, moved = 0, *pe;
		struct uhmm_excl *x = calloc(1, sizeof(*x));
		struct mm_vma *v;

		if (!x || uhmm_mm_alloc(mm, PG, 0, &x->buf)) {
			free(x);
			err = -ENOMEM;
			break;
		}
		x->mm = mm;
		x->owner = owner;
		mm_lock(mm);
		v = uhmm_vma_find(mm, a);
		pe = v && v->kind == VMA_ANON ? uhmm_vma_ent(v, a, true) : NULL;
		if (!pe || *pe || uhmm_mm_drop_pending_locked(mm, a)) {
			mm_unlock(mm);
			uhmm_excl_free(x);
			err = !pe ? -EINVAL : -EBUSY;
			break;
		}
		/* Atomically take the page: later CPU accesses fault to us. */
		err = uhmm_uffd_move(mm, (uint64_t)(uintptr_t)x->buf, a, PG, &moved);
		/* a hole "moves" too (DONTNEED raced the populate): not taken */
		if (!err && moved == PG && !page_present(x->buf))
			err = -EBUSY;
		if (!err && moved == PG)
			uhmm_ent_set(mm, v, a, ENT_MAKE(x, ENT_EXCLUSIVE, 1));
		mm_unlock(mm);
		if (err || moved != PG) {
			uhmm_excl_free(x);
			err = err ? -EBUSY : -EFAULT;
			break;
		}
		pages[i] = x->buf;
	}
	uhmm_invalidate_end(mm);
	uhmm_mm_migration_end(mm);
	return err;
}

int uhmm_excl_restore(struct uhmm_mm *mm, uint64_t addr)
{
	struct uhmm_excl *x;
	struct mm_vma *v;
	uint64_t *pe;
	bool gate;
	int rc;

	mm_lock(mm);
	v = uhmm_vma_find(mm, addr);
	pe = v ? uhmm_vma_ent(v, addr, false) : NULL;
	if (!pe || ENT_STATE(*pe) != ENT_EXCLUSIVE) {
		mm_unlock(mm);
		return 0;
	}
	x = ENT_PTR(*pe);
	/* park other CPU threads until the page is back */
	*pe = ENT_MAKE(x, ENT_MIGRATING, 0);
	mm_unlock(mm);
	uhmm_mm_migration_begin(mm);
	uhmm_invalidate(mm, UHMM_EVENT_CLEAR, addr, addr + PG, NULL, 0);
	gate = uhmm_mm_lock_gated(mm);
	for (;;) {
		v = uhmm_vma_find(mm, addr);
		pe = v ? uhmm_vma_ent(v, addr, false) : NULL;
		if (!pe || *pe != ENT_MAKE(x, ENT_MIGRATING, 0)) {
			rc = 0;		/* dropped or unmapped meanwhile: so is the page */
			break;
		}
		{
			uint64_t moved = 0;

			rc = uhmm_uffd_move(mm, addr, (uint64_t)(uintptr_t)x->buf, PG, &moved);
			/* a read-only mapping refuses moves: copy, but never from a
			 * hole (the copy would fault, maybe on the handler itself) */
			if ((rc || moved != PG) && rc != -EAGAIN)
				rc = page_present(x->buf)
					     ? uhmm_uffd_copy(mm, addr, x->buf, PG, false, NULL)
					     : uhmm_uffd_fill(mm, addr, PG, true, &moved);
		}
		if (rc != -EAGAIN) {
			uhmm_ent_set(mm, v, addr, 0);
			break;
		}
		/* an event is queued: let the handler apply it, look again */
		gate = uhmm_mm_relock_gated(mm, gate);
	}
	uhmm_mm_unlock_gated(mm, gate);
	uhmm_mm_migration_end(mm);
	uhmm_uffd_wake(mm, addr, PG);
	uhmm_excl_free(x);
	return rc == -EEXIST ? 0 : rc;
}
