// SPDX-License-Identifier: MIT
/* pagemap.c - device memory registry (the user-space dev_pagemap): page
 * structs, pfn lookup, pagemap refcount and teardown; the free page pool is
 * in pagemap_alloc.c. API in include/uhmm/pagemap.h; helpers for other parts
 * in pagemap_internal.h. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fault_inject.h"
#include "pagemap_internal.h"

/*
 * Concurrency overview.
 *
 * Lookups (uhmm_pfn_to_page, uhmm_get_dev_pagemap) binary-search an immutable
 * sorted array of ranges (struct pm_snap). Writers (memremap/memunmap) build a
 * new array, publish it with one atomic store and free the old one after a
 * grace period. Readers announce themselves in per-thread-shard counters
 * (pm_read_lock), so a lookup touches only its own thread's cache line; a
 * grace period (pm_synchronize) waits until every reader that could still see
 * the old array or a dying pagemap's private data has left. The same grace
 * period protects struct uhmm_pagemap_priv: teardown clears pgmap->priv and
 * unpublishes, synchronizes, and only then frees it, so any function that
 * loads pgmap->priv inside a read section may use it until it unlocks.
 *
 * The pagemap refcount is split in two: references from
 * uhmm_get_dev_pagemap() live in per-thread-shard counters (gets[]), so
 * get/put from several threads do not bounce one cache line; the base
 * reference and one reference per page with refcount > 0 live in priv->ref,
 * changed under priv->lock (the allocator takes that lock anyway).
 * Teardown sets PM_GETS_DYING in every shard word with an atomic OR, so the
 * RMW of each get or put tells it, atomically, whether teardown has begun:
 * a get that sees the bit backs out; a put that sees it wakes the teardown
 * thread. Wakeups go through one process-global condvar (pm_drain_cv), never
 * through priv, so a put touches nothing of the pagemap after its decrement
 * and needs no read section: one atomic RMW.
 */

#define PM_NSHARDS 32		/* reader and get-ref shards (threads map to one each) */
#define PM_CACHELINE 64
#define PM_MAX_PAGES (1ULL << 36) /* 256 TiB of device memory per pagemap */
#define PM_GETS_DYING (1L << 62)	/* in each gets[] word: teardown started */
#define PM_GETS_COUNT (PM_GETS_DYING - 1)

/* ---------------------------------------------------------------------- */
/* Thread shards and read-side critical sections                          */

static atomic_uint pm_next_shard;
static __thread unsigned pm_tls_shard __attribute__((tls_model("initial-exec")));

/* This thread's shard: threads are spread round robin, then keep theirs. */
static inline unsigned pm_shard(void)
{
	unsigned s = pm_tls_shard;

	if (__builtin_expect(!s, 0)) {
		s = atomic_fetch_add_explicit(&pm_next_shard, 1,
					      memory_order_relaxed) % PM_NSHARDS + 1;
		pm_tls_shard = s;
	}
	return s - 1;
}

struct pm_rd_shard {
	atomic_long nr[2];		/* readers inside, per epoch */
} __attribute__((aligned(PM_CACHELINE)));

static struct pm_rd_shard pm_rd[PM_NSHARDS];
static atomic_uint pm_rd_epoch;		/* flipped only under pm_lock */

/* Enter a read section; returns the token for pm_read_unlock. Nests. */
static inline unsigned pm_read_lock(void)
{
	unsigned s = pm_shard();
	unsigned e = atomic_load_explicit(&pm_rd_epoch, memory_order_relaxed) & 1;

	/* seq_cst: ordered before our loads of published pointers. */
	atomic_fetch_add(&pm_rd[s].nr[e], 1);
	return s << 1 | e;
}

static inline void pm_read_unlock(unsigned tok)
{
	atomic_fetch_sub_explicit(&pm_rd[tok >> 1].nr[tok & 1], 1,
				  memory_order_release);
}

static void pm_backoff(unsigned *spins)
{
	struct timespec ts = { 0, 20000 };

	if (++*spins < 64)
		sched_yield();
	else
		nanosleep(&ts, NULL);
}

/*
 * Wait until every read section that began before the call has ended.
 * Flip the epoch and drain the old one, twice: a reader that sampled the
 * epoch before the first flip but incremented late is caught by one of the
 * two drains, and new readers go to the other counter, so neither drain
 * can be starved. Caller holds pm_lock (epoch flips are serialised).
 */
static void pm_synchronize(void)
{
	for (int pass = 0; pass < 2; pass++) {
		unsigned e = atomic_load(&pm_rd_epoch) & 1;

		atomic_store(&pm_rd_epoch, e ^ 1);
		for (unsigned s = 0; s < PM_NSHARDS; s++) {
			unsigned spins = 0;

			while (atomic_load(&pm_rd[s].nr[e]) != 0)
				pm_backoff(&spins);
		}
	}
}

/* ---------------------------------------------------------------------- */
/* Registry                                                               */

struct pm_count {
	atomic_long nr;
} __attribute__((aligned(PM_CACHELINE)));

struct uhmm_pagemap_priv {
	struct uhmm_pagemap *pgmap;
	struct uhmm_pagemap_priv *next;		/* pm_list, under pm_lock */
	const struct uhmm_pagemap_ops *ops;
	enum uhmm_pagemap_type type;
	unsigned int nr_range;
	struct uhmm_dev_range *ranges;		/* copy, in the caller's order */
	uint64_t *first;			/* first page index per range; [nr_range] = nr_pages */
	uint64_t nr_pages;
	struct uhmm_page *pages;		/* nr_pages, in range order */
	char *base;				/* host backing or NULL */
	bool pages_in_base;			/* ALTMAP: pages are in base, not malloc'd */
	bool unmapping;				/* under pm_lock: a memunmap call is running */
	bool base_dropped;			/* the unmapping thread's: base ref gone */
	atomic_bool dying;			/* written under lock, read anywhere */

	/* lock protects: pool (but reads of pool.nr_free), writes of ref and dying, page flags */
	pthread_mutex_t lock;
	atomic_long ref;			/* base ref + pages with refcount > 0 */
	struct uhmm_page_pool pool;		/* free pages */

	struct pm_count gets[PM_NSHARDS];	/* get refs per shard, | PM_GETS_DYING */
};

struct pm_ent {
	struct uhmm_span pfns;			/* first member: see uhmm_span_search */
	struct uhmm_page *pages;		/* page struct of start */
	struct uhmm_pagemap_priv *priv;
};

struct pm_snap {
	size_t nr;
	struct pm_ent ent[];			/* sorted by start, disjoint */
};

/* Serialises registry writers: pm_list, pm_published, epoch flips, unmapping. */
static pthread_mutex_t pm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pm_unmap_cv = PTHREAD_COND_INITIALIZER; /* an unmap call ended */
static struct uhmm_pagemap_priv *pm_list;
static _Atomic(struct pm_snap *) pm_published; /* NULL when empty */
static _Atomic(uhmm_pagemap_evict_fn) pm_evict_hook;
/* Teardown waits on pm_drain_cv; puts on dying pagemaps broadcast it under the lock. */
static pthread_mutex_t pm_drain_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pm_drain_cv = PTHREAD_COND_INITIALIZER;

static inline struct uhmm_pagemap_priv *pm_priv(const struct uhmm_pagemap *pgmap)
{
	return __atomic_load_n(&pgmap->priv, __ATOMIC_SEQ_CST);
}

/*
 * Enter a read section (token in *@tok, for pm_read_unlock) and load
 * @pgmap's private state: NULL if unregistered, else usable until unlock.
 */
static inline struct uhmm_pagemap_priv *pm_priv_read_lock(const struct uhmm_pagemap *pgmap,
							  unsigned *tok)
{
	*tok = pm_read_lock();
	return pm_priv(pgmap);
}

/* The first entry of @snap (may be NULL) that ends above @pfn, or NULL. */
static inline const struct pm_ent *pm_search(const struct pm_snap *snap,
					     uint64_t pfn)
{
	size_t i;

	if (!snap)
		return NULL;
	i = uhmm_span_search(snap->ent, snap->nr, sizeof(snap->ent[0]), pfn);
	return i < snap->nr ? &snap->ent[i] : NULL;
}

/* The entry covering @pfn, or NULL. */
static inline const struct pm_ent *pm_find(const struct pm_snap *snap,
					   uint64_t pfn)
{
	const struct pm_ent *e = pm_search(snap, pfn);

	return e && e->pfns.start <= pfn ? e : NULL;
}

/* Does [start, end) (pfns) intersect a published range? */
static bool pm_overlaps(const struct pm_snap *snap, uint64_t start,
			uint64_t end)
{
	const struct pm_ent *e = pm_search(snap, start);

	return e && e->pfns.start < end;
}

static int pm_ent_cmp(const void *a, const void *b)
{
	const struct pm_ent *x = a, *y = b;

	return x->pfns.start < y->pfns.start ? -1 : x->pfns.start > y->pfns.start;
}

static struct uhmm_pagemap_priv *pm_registered_locked(const struct uhmm_pagemap *pgmap)
{
	uhmm_lockdep_assert_held(&pm_lock);
	for (struct uhmm_pagemap_priv *p = pm_list; p; p = p->next)
		if (p->pgmap == pgmap)
			return p;
	return NULL;
}

/* Publish @snap in place of the current array, which is freed when safe. */
static void pm_publish_locked(struct pm_snap *snap)
{
	struct pm_snap *old;

	uhmm_lockdep_assert_held(&pm_lock);
	old = atomic_exchange(&pm_published, snap);
	pm_synchronize();
	free(old);
}

/* ---------------------------------------------------------------------- */
/* Reference counts                                                       */

static long pm_gets_sum(struct uhmm_pagemap_priv *priv)
{
	long sum = 0;

	for (unsigned s = 0; s < PM_NSHARDS; s++)
		sum += atomic_load(&priv->gets[s].nr) & PM_GETS_COUNT;
	return sum;
}

/*
 * Drop one get reference from shard @s. Returns the shard word before the
 * decrement (its PM_GETS_DYING bit says whether to wake teardown), or -1 if
 * the shard holds none: counters never go negative.
 */
static inline long pm_gets_dec(struct uhmm_pagemap_priv *priv, unsigned s)
{
	atomic_long *c = &priv->gets[s].nr;
	long v = atomic_load_explicit(c, memory_order_relaxed);

	while (v & PM_GETS_COUNT)
		if (atomic_compare_exchange_weak(c, &v, v - 1))
			return v;
	return -1;
}

/* As pm_gets_dec, trying this thread's shard first, then every other. */
static long pm_gets_put(struct uhmm_pagemap_priv *priv, unsigned shard)
{
	for (unsigned i = 0; i < PM_NSHARDS; i++) {
		long v = pm_gets_dec(priv, (shard + i) % PM_NSHARDS);

		if (v >= 0)
			return v;
	}
	return -1;
}

static bool pm_drained(struct uhmm_pagemap_priv *priv)
{
	return atomic_load(&priv->ref) == 0 && pm_gets_sum(priv) == 0;
}

/* A reference went away from a dying pagemap: let teardown re-check. */
static void pm_wake(void)
{
	pthread_mutex_lock(&pm_drain_lock);
	pthread_cond_broadcast(&pm_drain_cv);
	pthread_mutex_unlock(&pm_drain_lock);
}

/* ---------------------------------------------------------------------- */
/* memremap                                                               */

static uint64_t pm_memmap_pages(uint64_t nr_pages)
{
	return (nr_pages * sizeof(struct uhmm_page) + UHMM_PAGE_SIZE - 1) /
	       UHMM_PAGE_SIZE;
}

/* Argument checks that need no lock; fills the page count. */
static int pm_validate(const struct uhmm_pagemap *pgmap, uint64_t *nr_pages)
{
	const struct uhmm_pagemap_ops *ops = pgmap->ops;
	uint64_t total = 0, r0;

	switch (pgmap->type) {
	case UHMM_PAGEMAP_PRIVATE:
		if (!ops || !ops->page_free || !ops->migrate_to_ram || !pgmap->owner)
			return -EINVAL;
		break;
	case UHMM_PAGEMAP_COHERENT:
		if (!ops || !ops->page_free || !pgmap->base)
			return -EINVAL;
		break;
	case UHMM_PAGEMAP_GENERIC:
	case UHMM_PAGEMAP_P2P:
		if (!pgmap->base)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if ((pgmap->flags & ~UHMM_PGMAP_ALTMAP) || !pgmap->nr_range ||
	    !pgmap->ranges ||
	    !UHMM_IS_ALIGNED((uintptr_t)pgmap->base, UHMM_PAGE_SIZE))
		return -EINVAL;
	for (unsigned r = 0; r < pgmap->nr_range; r++) {
		const struct uhmm_dev_range *rg = &pgmap->ranges[r];

		if (rg->start >= rg->end ||
		    !UHMM_IS_ALIGNED(rg->start, UHMM_PAGE_SIZE) ||
		    !UHMM_IS_ALIGNED(rg->end, UHMM_PAGE_SIZE))
			return -EINVAL;
		total += (rg->end - rg->start) >> UHMM_PAGE_SHIFT;
		if (total > PM_MAX_PAGES)
			return -ENOMEM;
	}
	if (pgmap->flags & UHMM_PGMAP_ALTMAP) {
		uint64_t need = pm_memmap_pages(total);

		r0 = (pgmap->ranges[0].end - pgmap->ranges[0].start) >> UHMM_PAGE_SHIFT;
		if (!pgmap->base || pgmap->altmap.reserve > r0 ||
		    need > r0 - pgmap->altmap.reserve)
			return -EINVAL;
	}
	*nr_pages = total;
	return 0;
}

static void pm_priv_free(struct uhmm_pagemap_priv *priv)
{
	if (!priv)
		return;
	if (!priv->pages_in_base)
		free(priv->pages);
	uhmm_page_pool_fini(&priv->pool);
	free(priv->first);
	free(priv->ranges);
	pthread_mutex_destroy(&priv->lock);
	free(priv);
}

/* Allocate the private state; pages in host backing are placed, not written. */
static int pm_priv_create(struct uhmm_pagemap *pgmap, uint64_t nr_pages,
			  struct uhmm_pagemap_priv **out)
{
	struct uhmm_pagemap_priv *priv;
	uint64_t idx = 0;

	priv = aligned_alloc(PM_CACHELINE, sizeof(*priv));
	if (!priv)
		return -ENOMEM;
	memset(priv, 0, sizeof(*priv));
	pthread_mutex_init(&priv->lock, NULL);
	priv->pgmap = pgmap;
	priv->ops = pgmap->ops;
	priv->type = pgmap->type;
	priv->nr_range = pgmap->nr_range;
	priv->nr_pages = nr_pages;
	priv->base = pgmap->base;
	atomic_init(&priv->ref, 1);		/* the base reference */
	priv->ranges = malloc(pgmap->nr_range * sizeof(*priv->ranges));
	priv->first = malloc((pgmap->nr_range + 1) * sizeof(*priv->first));
	if (pgmap->flags & UHMM_PGMAP_ALTMAP) {
		priv->pages_in_base = true;
		priv->pages = (struct uhmm_page *)(priv->base +
			pgmap->altmap.reserve * UHMM_PAGE_SIZE);
	} else {
		priv->pages = uhmm_calloc_huge(nr_pages, sizeof(*priv->pages));
	}
	if (!priv->ranges || !priv->first || !priv->pages)
		goto err_free;
	memcpy(priv->ranges, pgmap->ranges, pgmap->nr_range * sizeof(*priv->ranges));
	for (unsigned r = 0; r < pgmap->nr_range; r++) {
		priv->first[r] = idx;
		idx += (priv->ranges[r].end - priv->ranges[r].start) >> UHMM_PAGE_SHIFT;
	}
	priv->first[pgmap->nr_range] = idx;
	if (uhmm_page_pool_init(&priv->pool, priv->pages, priv->first, priv->nr_range))
		goto err_free;
	*out = priv;
	return 0;

err_free:
	pm_priv_free(priv);
	return -ENOMEM;
}

/* Write the page structs and the free pool. For ALTMAP this writes to base. */
static void pm_pages_init(struct uhmm_pagemap_priv *priv, uint64_t unusable)
{
	for (unsigned r = 0; r < priv->nr_range; r++) {
		for (uint64_t i = priv->first[r]; i < priv->first[r + 1]; i++) {
			struct uhmm_page *page = &priv->pages[i];

			page->refcount = 0;
			page->pgmap = priv->pgmap;
			page->zone_device_data = NULL;
			page->flags = 0;
			page->run = r;
		}
	}
	uhmm_page_pool_fill(&priv->pool, unusable, priv->nr_pages);
}

/* The published array plus @priv's ranges, sorted; NULL on ENOMEM. */
static struct pm_snap *pm_snap_with(const struct pm_snap *old,
				    struct uhmm_pagemap_priv *priv)
{
	size_t nr_old = old ? old->nr : 0;
	struct pm_snap *snap;

	snap = malloc(sizeof(*snap) + (nr_old + priv->nr_range) * sizeof(snap->ent[0]));
	if (!snap)
		return NULL;
	if (nr_old)
		memcpy(snap->ent, old->ent, nr_old * sizeof(snap->ent[0]));
	for (unsigned r = 0; r < priv->nr_range; r++) {
		struct pm_ent *e = &snap->ent[nr_old + r];

		e->pfns.start = priv->ranges[r].start >> UHMM_PAGE_SHIFT;
		e->pfns.end = priv->ranges[r].end >> UHMM_PAGE_SHIFT;
		e->pages = &priv->pages[priv->first[r]];
		e->priv = priv;
	}
	snap->nr = nr_old + priv->nr_range;
	qsort(snap->ent, snap->nr, sizeof(snap->ent[0]), pm_ent_cmp);
	return snap;
}

/* The published array without @priv's ranges (NULL if that leaves none). */
static int pm_snap_without(const struct pm_snap *old,
			   struct uhmm_pagemap_priv *priv, struct pm_snap **out)
{
	struct pm_snap *snap;
	size_t n = 0;

	if (!old || old->nr <= priv->nr_range) {
		*out = NULL;
		return 0;
	}
	snap = malloc(sizeof(*snap) + (old->nr - priv->nr_range) * sizeof(snap->ent[0]));
	if (!snap)
		return -ENOMEM;
	for (size_t i = 0; i < old->nr; i++)
		if (old->ent[i].priv != priv)
			snap->ent[n++] = old->ent[i];
	snap->nr = n;
	*out = snap;
	return 0;
}

int uhmm_memremap_pages(struct uhmm_pagemap *pgmap)
{
	struct uhmm_pagemap_priv *priv = NULL;
	struct pm_snap *old, *snap;
	uint64_t nr_pages, memmap = 0;
	int ret;

	if (!pgmap)
		return -EINVAL;
	ret = pm_validate(pgmap, &nr_pages);
	if (ret)
		return ret;
	ret = pm_priv_create(pgmap, nr_pages, &priv);
	if (ret)
		return ret;
	/* The caller's ranges must not overlap each other: check them sorted. */
	snap = pm_snap_with(NULL, priv);
	if (!snap) {
		ret = -ENOMEM;
		goto err_priv;
	}
	for (size_t i = 1; i < snap->nr; i++) {
		if (snap->ent[i - 1].pfns.end > snap->ent[i].pfns.start) {
			free(snap);
			ret = -EINVAL;
			goto err_priv;
		}
	}
	free(snap);

	pthread_mutex_lock(&pm_lock);
	if (pm_registered_locked(pgmap)) {
		ret = -EBUSY;
		goto err_unlock;
	}
	old = atomic_load(&pm_published);
	for (unsigned r = 0; r < priv->nr_range; r++) {
		if (pm_overlaps(old, priv->ranges[r].start >> UHMM_PAGE_SHIFT,
				priv->ranges[r].end >> UHMM_PAGE_SHIFT)) {
			ret = -EBUSY;
			goto err_unlock;
		}
	}
	snap = pm_snap_with(old, priv);
	if (!snap) {
		ret = -ENOMEM;
		goto err_unlock;
	}
	/* Only now, with no error left, write into the caller's memory. */
	if (pgmap->flags & UHMM_PGMAP_ALTMAP)
		memmap = pm_memmap_pages(nr_pages);
	pm_pages_init(priv, priv->pages_in_base ? pgmap->altmap.reserve + memmap : 0);
	pgmap->altmap.alloc = memmap;
	__atomic_store_n(&pgmap->priv, priv, __ATOMIC_SEQ_CST);
	priv->next = pm_list;
	pm_list = priv;
	pm_publish_locked(snap);
	pthread_mutex_unlock(&pm_lock);
	return 0;

err_unlock:
	pthread_mutex_unlock(&pm_lock);
err_priv:
	pm_priv_free(priv);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* memunmap                                                               */

/* Wait on @cv until the absolute monotonic @deadline (NULL: forever). */
static int pm_cond_wait(pthread_cond_t *cv, pthread_mutex_t *m,
			const struct timespec *deadline)
{
	if (!deadline)
		return pthread_cond_wait(cv, m);
	return pthread_cond_clockwait(cv, m, CLOCK_MONOTONIC, deadline);
}

/* Remove @priv from the registry; after this no reader can reach it. */
static void pm_unpublish_locked(struct uhmm_pagemap_priv *priv)
{
	struct timespec ts = { 0, 1000000 };
	struct pm_snap *snap;

	uhmm_lockdep_assert_held(&pm_lock);
	/* Teardown must finish once drained: retry a failed small malloc. */
	while (pm_snap_without(atomic_load(&pm_published), priv, &snap))
		nanosleep(&ts, NULL);
	for (struct uhmm_pagemap_priv **pp = &pm_list; *pp; pp = &(*pp)->next) {
		if (*pp == priv) {
			*pp = priv->next;
			break;
		}
	}
	__atomic_store_n(&priv->pgmap->priv, NULL, __ATOMIC_SEQ_CST);
	pm_publish_locked(snap);	/* includes the grace period */
}

static int pm_memunmap(struct uhmm_pagemap *pgmap, const struct timespec *deadline)
{
	struct uhmm_pagemap_priv *priv;
	const struct uhmm_pagemap_ops *ops;
	uhmm_pagemap_evict_fn evict;
	bool busy = false;

	if (!pgmap)
		return -EINVAL;
	pthread_mutex_lock(&pm_lock);
	for (;;) {
		priv = pm_registered_locked(pgmap);
		if (!priv) {
			pthread_mutex_unlock(&pm_lock);
			return -EINVAL;
		}
		if (!priv->unmapping)
			break;
		/* Another thread is tearing it down: wait for its verdict. */
		if (pm_cond_wait(&pm_unmap_cv, &pm_lock, deadline) == ETIMEDOUT) {
			pthread_mutex_unlock(&pm_lock);
			return -EBUSY;
		}
	}
	priv->unmapping = true;
	pthread_mutex_unlock(&pm_lock);

	pthread_mutex_lock(&priv->lock);
	atomic_store(&priv->dying, true);
	pthread_mutex_unlock(&priv->lock);
	/* From each shard's next RMW on, gets fail and puts wake us. */
	for (unsigned s = 0; s < PM_NSHARDS; s++)
		atomic_fetch_or(&priv->gets[s].nr, PM_GETS_DYING);

	evict = atomic_load(&pm_evict_hook);
	if (evict && (priv->type == UHMM_PAGEMAP_PRIVATE ||
		      priv->type == UHMM_PAGEMAP_COHERENT)) {
		int ret = evict(pgmap);

		if (ret < 0)
			uhmm_log(UHMM_LOG_WARN, "pagemap %p: eviction failed: %d",
				 (void *)pgmap, ret);
	}

	if (!priv->base_dropped) {
		priv->base_dropped = true;
		pthread_mutex_lock(&priv->lock);
		atomic_fetch_sub(&priv->ref, 1);
		pthread_mutex_unlock(&priv->lock);
	}
	pthread_mutex_lock(&pm_drain_lock);
	while (!pm_drained(priv)) {
		if (pm_cond_wait(&pm_drain_cv, &pm_drain_lock, deadline) == ETIMEDOUT &&
		    !pm_drained(priv)) {
			busy = true;
			break;
		}
	}
	pthread_mutex_unlock(&pm_drain_lock);

	pthread_mutex_lock(&pm_lock);
	if (busy)
		priv->unmapping = false;	/* stays dying and registered */
	else
		pm_unpublish_locked(priv);
	pthread_cond_broadcast(&pm_unmap_cv);
	pthread_mutex_unlock(&pm_lock);
	if (busy)
		return -EBUSY;

	/* Nothing can reach priv now. Touch neither pgmap nor base after cleanup. */
	ops = priv->ops;
	if (ops && ops->cleanup)
		ops->cleanup(pgmap);
	pm_priv_free(priv);
	return 0;
}

int uhmm_memunmap_pages(struct uhmm_pagemap *pgmap)
{
	return pm_memunmap(pgmap, NULL);
}

int uhmm_memunmap_pages_timeout(struct uhmm_pagemap *pgmap, unsigned int timeout_ms)
{
	struct timespec dl;

	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	return pm_memunmap(pgmap, &dl);
}

void uhmm_pagemap_set_evict_hook(uhmm_pagemap_evict_fn fn)
{
	atomic_store(&pm_evict_hook, fn);
}

/* ---------------------------------------------------------------------- */
/* Lookups                                                                */

struct uhmm_page *uhmm_pfn_to_page_run(uint64_t pfn, uint64_t *left)
{
	unsigned tok = pm_read_lock();
	const struct pm_ent *e = pm_find(atomic_load(&pm_published), pfn);
	struct uhmm_page *page = e ? e->pages + (pfn - e->pfns.start) : NULL;

	*left = e ? e->pfns.end - pfn : 0;
	pm_read_unlock(tok);
	return page;
}

struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn)
{
	uint64_t left;

	return uhmm_pfn_to_page_run(pfn, &left);
}

uint64_t uhmm_page_index(const struct uhmm_page *page)
{
	return (uint64_t)(page - pm_priv(page->pgmap)->pages);
}

uint64_t uhmm_page_to_pfn(const struct uhmm_page *page)
{
	struct uhmm_pagemap_priv *priv;
	uint32_t r;

	if (!page || !page->pgmap)
		return 0;
	priv = pm_priv(page->pgmap);
	r = page->run;
	return (priv->ranges[r].start >> UHMM_PAGE_SHIFT) +
	       (uint64_t)(page - priv->pages) - priv->first[r];
}

void *uhmm_page_to_virt(const struct uhmm_page *page)
{
	struct uhmm_pagemap_priv *priv;

	if (!page || !page->pgmap)
		return NULL;
	priv = pm_priv(page->pgmap);
	if (!priv->base)
		return NULL;
	return priv->base + (size_t)(page - priv->pages) * UHMM_PAGE_SIZE;
}

int uhmm_get_dev_pagemap(uint64_t pfn, struct uhmm_pagemap **out)
{
	struct uhmm_pagemap_priv *priv;
	const struct pm_ent *e;
	unsigned tok;
	int ret = 0;

	if (!out)
		return -EINVAL;
	tok = pm_read_lock();
	e = pm_find(atomic_load(&pm_published), pfn);
	if (!e) {
		ret = -ENOENT;
		goto out;
	}
	priv = e->priv;
	if (atomic_load_explicit(&priv->dying, memory_order_relaxed)) {
		ret = -ENXIO;
		goto out;
	}
	/* The increment itself tells whether teardown has begun (see top). */
	if (atomic_fetch_add(&priv->gets[tok >> 1].nr, 1) & PM_GETS_DYING) {
		pm_gets_put(priv, tok >> 1);
		pm_wake();
		ret = -ENXIO;
		goto out;
	}
	*out = priv->pgmap;
out:
	pm_read_unlock(tok);
	return ret;
}

int uhmm_put_dev_pagemap(struct uhmm_pagemap *pgmap)
{
	struct uhmm_pagemap_priv *priv;
	unsigned tok;
	long v;

	if (!pgmap)
		return -EINVAL;
	/*
	 * Fast path: the caller's reference keeps priv alive up to our
	 * decrement, and nothing of priv is touched after it.
	 */
	priv = pm_priv(pgmap);
	if (!priv)
		return -EINVAL;
	v = pm_gets_dec(priv, pm_shard());
	if (v < 0) {
		/* Not in our shard: taken on another thread, or never taken. */
		priv = pm_priv_read_lock(pgmap, &tok);
		v = priv ? pm_gets_put(priv, tok >> 1) : -1;
		pm_read_unlock(tok);
		if (v < 0)
			return -EINVAL;
	}
	if (v & PM_GETS_DYING)
		pm_wake();
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Pages                                                                  */

/* Add @d to @page's refcount unless the page is free; the count before, or <= 0. */
static long pm_page_ref_add(struct uhmm_page *page, long d)
{
	long r = __atomic_load_n(&page->refcount, __ATOMIC_RELAXED);

	do {
		if (r <= 0)
			return r;
	} while (!__atomic_compare_exchange_n(&page->refcount, &r, r + d, true,
					      __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	return r;
}

int uhmm_page_get(struct uhmm_page *page)
{
	if (!page || pm_page_ref_add(page, 1) <= 0)
		return -EINVAL;
	return 0;
}

int uhmm_page_put(struct uhmm_page *page)
{
	struct uhmm_pagemap_priv *priv;
	unsigned int flags;
	unsigned tok;
	bool dying;
	long r;

	if (!page)
		return -EINVAL;
	r = pm_page_ref_add(page, -1);
	if (r <= 0)
		return -EINVAL;
	if (r > 1)
		return 0;
	/* Last reference: the page still pins the pagemap until ref-- below. */
	priv = pm_priv(page->pgmap);
	if (priv->ops && priv->ops->page_free)
		priv->ops->page_free(page);
	tok = pm_read_lock();
	pthread_mutex_lock(&priv->lock);
	flags = __atomic_load_n(&page->flags, __ATOMIC_RELAXED);
	if (!UHMM_WARN_ON(!(flags & UHMM_PAGE_ALLOCATED))) {
		__atomic_fetch_and(&page->flags, ~(UHMM_PAGE_ALLOCATED | UHMM_PAGE_HOST_PRESENT),
				   __ATOMIC_RELAXED);
		uhmm_page_pool_release(&priv->pool, (uint64_t)(page - priv->pages));
		atomic_fetch_sub(&priv->ref, 1);
	}
	dying = atomic_load_explicit(&priv->dying, memory_order_relaxed);
	pthread_mutex_unlock(&priv->lock);
	pm_read_unlock(tok);
	if (dying)
		pm_wake();
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Allocation (the free page pool itself is in pagemap_alloc.c)           */

int uhmm_pagemap_alloc_pages(struct uhmm_pagemap *pgmap, uint64_t n,
			     unsigned int flags, struct uhmm_page **pages)
{
	struct uhmm_pagemap_priv *priv;
	unsigned tok;
	int ret;

	if (!pgmap || !pages || !n || (flags & ~UHMM_ALLOC_CONTIG))
		return -EINVAL;
	if (uhmm_fi_fail(UHMM_FI_PAGE_ALLOC))
		return uhmm_fi_errno(UHMM_FI_PAGE_ALLOC, -ENOSPC);
	priv = pm_priv_read_lock(pgmap, &tok);
	if (!priv) {
		pm_read_unlock(tok);
		return -EINVAL;
	}
	pthread_mutex_lock(&priv->lock);
	if (atomic_load_explicit(&priv->dying, memory_order_relaxed))
		ret = -EINVAL;
	else
		ret = uhmm_page_pool_alloc(&priv->pool, n, flags, pages);
	if (!ret)
		atomic_fetch_add(&priv->ref, (long)n);
	pthread_mutex_unlock(&priv->lock);
	pm_read_unlock(tok);
	return ret;
}

/* @pgmap's number of pages (@free_only: free pages), or -EINVAL. */
static int64_t pm_count(struct uhmm_pagemap *pgmap, bool free_only)
{
	struct uhmm_pagemap_priv *priv;
	int64_t ret = -EINVAL;
	unsigned tok;

	if (!pgmap)
		return -EINVAL;
	priv = pm_priv_read_lock(pgmap, &tok);
	if (priv)
		ret = free_only ? (int64_t)atomic_load(&priv->pool.nr_free)
				: (int64_t)priv->nr_pages;
	pm_read_unlock(tok);
	return ret;
}

int64_t uhmm_pagemap_nr_free(struct uhmm_pagemap *pgmap)
{
	return pm_count(pgmap, true);
}

int64_t uhmm_pagemap_nr_pages(struct uhmm_pagemap *pgmap)
{
	return pm_count(pgmap, false);
}

/* ---------------------------------------------------------------------- */
/* Helpers for other parts of uhmm                                        */

struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap, uint64_t idx)
{
	struct uhmm_pagemap_priv *priv;
	struct uhmm_page *page = NULL;
	unsigned tok;

	if (!pgmap)
		return NULL;
	priv = pm_priv_read_lock(pgmap, &tok);
	if (priv && idx < priv->nr_pages)
		page = &priv->pages[idx];
	pm_read_unlock(tok);
	return page;
}

bool uhmm_pagemap_is_dying(struct uhmm_pagemap *pgmap)
{
	struct uhmm_pagemap_priv *priv;
	bool dying = true;
	unsigned tok;

	if (!pgmap)
		return true;
	priv = pm_priv_read_lock(pgmap, &tok);
	if (priv)
		dying = atomic_load(&priv->dying);
	pm_read_unlock(tok);
	return dying;
}
