// SPDX-License-Identifier: MIT
/* kmem.c - a heap on a dax device's memory: one jemalloc arena per device
 * whose extent hooks carve the device's direct map, one explicit jemalloc
 * thread cache per device and thread, and in front of it a small per-thread
 * cache of freed small blocks. API in include/uhmm/dax.h. */
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dax_internal.h"

/* jemalloc 5.3's argument to "experimental.arenas_create_ext". */
struct kmem_arena_config {
	extent_hooks_t *extent_hooks;
	bool metadata_use_hooks;
};

/* A free piece of the device, below the bump pointer. */
struct kmem_ext {
	struct kmem_ext *next;
	uint64_t off;
	uint64_t len;
};

struct kmem_slot;

/*
 * Front cache: mallocx() with MALLOCX_ARENA | MALLOCX_TCACHE skips jemalloc's
 * malloc fast path, so freed blocks of up to KMEM_FC_MAX bytes wait in
 * per-thread lists (one per jemalloc size class) for the next malloc. A list
 * holds at most KMEM_FC_NR blocks and KMEM_FC_BYTES bytes (jemalloc's own
 * tcache holds up to 200 per class); the overflow goes to jemalloc. Cached blocks are free, not live: arena destroy reclaims them.
 */
#define KMEM_FC_MAX 4096
#define KMEM_FC_NR 200
#define KMEM_FC_BYTES (64U << 10)
#define KMEM_FC_BINS 32

struct kmem_bin {
	void *head;			/* next pointer in each block's first word */
	uint32_t nr;
};

struct dax_kmem {
	extent_hooks_t hooks;		/* jemalloc passes it back: container_of */
	struct uhmm_dax_dev *dev;
	uint64_t kid;			/* unique id, never reused */
	unsigned int arena;
	char *base;			/* the device's direct map, constant */
	uint64_t span;			/* reserved bytes at base, constant */
	pthread_mutex_t lock;		/* protects bump, limit, free */
	uint64_t bump;			/* offsets below were handed to jemalloc */
	uint64_t limit;			/* device size: nothing is handed beyond */
	struct kmem_ext *free;
	struct kmem_slot *slots;	/* under kmem_glock */
	long live_dead;			/* under kmem_glock: counts of exited threads */
};

/* One thread's cache for one heap. Owned and freed by its thread. */
struct kmem_slot {
	_Atomic uint64_t kid;		/* heap it serves, 0 = none (reusable) */
	struct dax_kmem *k;		/* under kmem_glock */
	unsigned int tcache;
	int tflags;			/* MALLOCX_TCACHE(tcache) or _NONE */
	_Atomic long live;		/* mallocs - frees by this thread */
	struct kmem_slot *knext;	/* k->slots, under kmem_glock */
	struct kmem_slot *tnext;	/* this thread's slots */
	struct kmem_bin bins[KMEM_FC_BINS];	/* owner thread only */
};

#define KMEM_HINTS 8

/* Protects every heap's slot list and live_dead, and slot ownership changes. */
static pthread_mutex_t kmem_glock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t kmem_next_kid = 1;
static pthread_key_t kmem_key;
static pthread_once_t kmem_once = PTHREAD_ONCE_INIT;
static __thread struct kmem_slot *t_hint[KMEM_HINTS];
static __thread struct kmem_slot *t_slots;

/* Size classes of the front cache, from nallocx(): constant once built. */
static pthread_once_t kmem_fc_once = PTHREAD_ONCE_INIT;
static uint8_t kmem_fc_idx[KMEM_FC_MAX / 16 + 1];	/* (size+15)/16 -> bin + 1 */
static uint32_t kmem_fc_size[KMEM_FC_BINS];		/* bin -> class size */
static uint32_t kmem_fc_cap[KMEM_FC_BINS];		/* bin -> max blocks */

/* ---------------------------------------------------------------------- */
/* Extent hooks: jemalloc asks for device memory here                     */

static struct dax_kmem *hooks_kmem(extent_hooks_t *h)
{
	return container_of(h, struct dax_kmem, hooks);
}

static void ext_add_locked(struct dax_kmem *k, uint64_t off, uint64_t len)
{
	struct kmem_ext *e;

	if (!len)
		return;
	e = malloc(sizeof(*e));
	if (!e)
		return;		/* leaks device space, never corrupts it */
	e->off = off;
	e->len = len;
	e->next = k->free;
	k->free = e;
}

static void *hook_alloc(extent_hooks_t *h, void *new_addr, size_t size,
			size_t align, bool *zero, bool *commit,
			unsigned int arena_ind)
{
	struct dax_kmem *k = hooks_kmem(h);
	uint64_t off = UINT64_MAX;

	pthread_mutex_lock(&k->lock);
	if (new_addr) {
		uint64_t want = (uint64_t)((char *)new_addr - k->base);

		/* In-place growth: only at the bump pointer. */
		if ((char *)new_addr >= k->base && want == k->bump &&
		    size <= k->limit - k->bump) {
			off = want;
			k->bump += size;
		}
	} else {
		for (struct kmem_ext **pp = &k->free, *e; (e = *pp);
		     pp = &e->next) {
			uint64_t s = UHMM_ALIGN_UP(e->off, align);

			if (s + size > e->off + e->len)
				continue;
			*pp = e->next;
			ext_add_locked(k, s + size, e->off + e->len - s - size);
			ext_add_locked(k, e->off, s - e->off);
			free(e);
			off = s;
			break;
		}
		if (off == UINT64_MAX) {
			uint64_t s = UHMM_ALIGN_UP(k->bump, align);

			if (s <= k->limit && size <= k->limit - s) {
				ext_add_locked(k, k->bump, s - k->bump);
				k->bump = s + size;
				off = s;
			}
		}
	}
	pthread_mutex_unlock(&k->lock);
	if (off == UINT64_MAX)
		return NULL;
	/* File memory keeps old contents: zero only when asked. */
	if (*zero)
		memset(k->base + off, 0, size);
	*commit = true;
	return k->base + off;
}

/* Opt out: jemalloc keeps (retains) the extent for reuse. */
static bool hook_dalloc(extent_hooks_t *h, void *addr, size_t size,
			bool committed, unsigned int arena_ind)
{
	return true;
}

static void hook_destroy(extent_hooks_t *h, void *addr, size_t size,
			 bool committed, unsigned int arena_ind)
{
	struct dax_kmem *k = hooks_kmem(h);

	pthread_mutex_lock(&k->lock);
	ext_add_locked(k, (uint64_t)((char *)addr - k->base), size);
	pthread_mutex_unlock(&k->lock);
}

/* Device memory is always committed. */
static bool hook_commit(extent_hooks_t *h, void *addr, size_t size,
			size_t offset, size_t length, unsigned int arena_ind)
{
	return false;
}

static bool hook_split(extent_hooks_t *h, void *addr, size_t size,
		       size_t size_a, size_t size_b, bool committed,
		       unsigned int arena_ind)
{
	return false;
}

static bool hook_merge(extent_hooks_t *h, void *addr_a, size_t size_a,
		       void *addr_b, size_t size_b, bool committed,
		       unsigned int arena_ind)
{
	return false;
}

/* ---------------------------------------------------------------------- */
/* Front cache                                                            */

static void kmem_fc_init(void)
{
	unsigned int nr = 0;

	for (size_t i = 1; i <= KMEM_FC_MAX / 16; i++) {
		size_t c = nallocx(i * 16, 0);

		/* Classes that are not multiples of 16 stay uncached. */
		if (!c || c > KMEM_FC_MAX || c % 16)
			continue;
		if (!nr || kmem_fc_size[nr - 1] != c) {
			if (UHMM_WARN_ON(nr == KMEM_FC_BINS))
				break;
			kmem_fc_size[nr] = (uint32_t)c;
			kmem_fc_cap[nr] = (uint32_t)(KMEM_FC_BYTES / c < KMEM_FC_NR ?
						     KMEM_FC_BYTES / c : KMEM_FC_NR);
			nr++;
		}
		kmem_fc_idx[i] = (uint8_t)nr;
	}
}

/* Bin of a request of @size bytes, or -1. */
static inline int fc_bin_of_request(size_t size)
{
	if (size > KMEM_FC_MAX)
		return -1;
	return kmem_fc_idx[(size + 15) >> 4] - 1;
}

/* Bin of a block whose class size is @usable, or -1. */
static inline int fc_bin_of_block(size_t usable)
{
	int b;

	if (usable > KMEM_FC_MAX || usable % 16)
		return -1;
	b = kmem_fc_idx[usable >> 4] - 1;
	return b >= 0 && kmem_fc_size[b] == usable ? b : -1;
}

static inline void *fc_pop(struct kmem_bin *bin)
{
	void *p = bin->head;

	if (p) {
		bin->head = *(void **)p;
		bin->nr--;
	}
	return p;
}

/* Hands every cached block back to jemalloc (owner thread or thread exit). */
static void fc_flush(struct kmem_slot *s)
{
	for (unsigned int b = 0; b < KMEM_FC_BINS; b++) {
		void *p;

		while ((p = fc_pop(&s->bins[b])))
			sdallocx(p, kmem_fc_size[b], s->tflags);
	}
}

/* ---------------------------------------------------------------------- */
/* Per-thread caches                                                      */

static void slot_tcache_destroy(struct kmem_slot *s)
{
	if (s->tflags != MALLOCX_TCACHE_NONE)
		mallctl("tcache.destroy", NULL, NULL, &s->tcache,
			sizeof(s->tcache));
}

/* Thread exit: hand counts to the heaps and drop this thread's caches. */
static void kmem_thread_exit(void *arg)
{
	struct kmem_slot *s, *next;

	pthread_mutex_lock(&kmem_glock);
	for (s = t_slots; s; s = next) {
		next = s->tnext;
		if (atomic_load_explicit(&s->kid, memory_order_relaxed)) {
			struct dax_kmem *k = s->k;

			k->live_dead += atomic_load_explicit(&s->live,
							     memory_order_relaxed);
			fc_flush(s);
			for (struct kmem_slot **pp = &k->slots; *pp;
			     pp = &(*pp)->knext)
				if (*pp == s) {
					*pp = s->knext;
					break;
				}
			slot_tcache_destroy(s);
		}
		free(s);
	}
	t_slots = NULL;
	memset(t_hint, 0, sizeof(t_hint));
	pthread_mutex_unlock(&kmem_glock);
}

static void kmem_key_init(void)
{
	if (pthread_key_create(&kmem_key, kmem_thread_exit))
		UHMM_WARN_ON(1);
}

static struct kmem_slot *slot_slow(struct dax_kmem *k)
{
	struct kmem_slot *s, *free_slot = NULL;
	unsigned int idx;
	size_t sz = sizeof(idx);

	for (s = t_slots; s; s = s->tnext) {
		uint64_t kid = atomic_load_explicit(&s->kid, memory_order_relaxed);

		if (kid == k->kid)
			goto found;
		if (!kid && !free_slot)
			free_slot = s;
	}
	pthread_once(&kmem_once, kmem_key_init);
	s = free_slot;
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return NULL;
		s->tnext = t_slots;
		t_slots = s;
		pthread_setspecific(kmem_key, s);
	}
	/* A reused slot's blocks went with its destroyed arena. */
	memset(s->bins, 0, sizeof(s->bins));
	/* Without a thread cache (tcache:false) go straight to the arena. */
	s->tflags = MALLOCX_TCACHE_NONE;
	if (!mallctl("tcache.create", &idx, &sz, NULL, 0)) {
		s->tcache = idx;
		s->tflags = (int)MALLOCX_TCACHE(idx);
	}
	pthread_mutex_lock(&kmem_glock);
	s->k = k;
	atomic_store_explicit(&s->live, 0, memory_order_relaxed);
	atomic_store_explicit(&s->kid, k->kid, memory_order_relaxed);
	s->knext = k->slots;
	k->slots = s;
	pthread_mutex_unlock(&kmem_glock);
found:
	t_hint[k->kid % KMEM_HINTS] = s;
	return s;
}

static inline struct kmem_slot *slot_get(struct dax_kmem *k)
{
	struct kmem_slot *s = t_hint[k->kid % KMEM_HINTS];

	if (__builtin_expect(s && atomic_load_explicit(&s->kid,
			     memory_order_relaxed) == k->kid, 1))
		return s;
	return slot_slow(k);
}

/* Only the owning thread writes its count: a plain load + store suffices. */
static inline void slot_count(struct kmem_slot *s, long d)
{
	atomic_store_explicit(&s->live,
			      atomic_load_explicit(&s->live, memory_order_relaxed) + d,
			      memory_order_relaxed);
}

/* ---------------------------------------------------------------------- */
/* Heap lifetime (region lock held)                                       */

static int arena_ctl(unsigned int arena, const char *what, void *val,
		     size_t len)
{
	char name[64];

	snprintf(name, sizeof(name), "arena.%u.%s", arena, what);
	return mallctl(name, NULL, NULL, val, len);
}

int uhmm_kmem_online(struct uhmm_dax_dev *dev)
{
	struct kmem_arena_config cfg;
	struct dax_kmem *k;
	extent_hooks_t *hp;
	ssize_t never = -1;
	size_t sz = sizeof(unsigned int);

	if (atomic_load(&dev->kmem))
		return 0;
	if (!dev->dmap)
		return -EINVAL;
	pthread_once(&kmem_fc_once, kmem_fc_init);
	k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->hooks.alloc = hook_alloc;
	k->hooks.dalloc = hook_dalloc;
	k->hooks.destroy = hook_destroy;
	k->hooks.commit = hook_commit;
	k->hooks.split = hook_split;
	k->hooks.merge = hook_merge;
	k->dev = dev;
	k->base = dev->dmap;
	k->span = dev->dmap_span;
	k->limit = dev->dmap_len;
	pthread_mutex_init(&k->lock, NULL);
	/* Metadata stays in ordinary memory: the device holds only user data. */
	cfg.extent_hooks = &k->hooks;
	cfg.metadata_use_hooks = false;
	if (mallctl("experimental.arenas_create_ext", &k->arena, &sz, &cfg,
		    sizeof(cfg))) {
		hp = &k->hooks;
		sz = sizeof(unsigned int);
		if (mallctl("arenas.create", &k->arena, &sz, &hp, sizeof(hp))) {
			pthread_mutex_destroy(&k->lock);
			free(k);
			return -EOPNOTSUPP;
		}
	}
	/* No purging: the hooks cannot give memory back piecemeal. */
	arena_ctl(k->arena, "dirty_decay_ms", &never, sizeof(never));
	arena_ctl(k->arena, "muzzy_decay_ms", &never, sizeof(never));
	k->kid = atomic_fetch_add(&kmem_next_kid, 1);
	atomic_store(&dev->kmem, k);
	return 0;
}

/* Allocations of @k not yet freed; kmem_glock held. */
static long kmem_live_locked(const struct dax_kmem *k)
{
	long live = k->live_dead;

	uhmm_lockdep_assert_held(&kmem_glock);
	for (struct kmem_slot *s = k->slots; s; s = s->knext)
		live += atomic_load_explicit(&s->live, memory_order_relaxed);
	return live;
}

long uhmm_kmem_live(struct uhmm_dax_dev *dev)
{
	struct dax_kmem *k = atomic_load(&dev->kmem);
	long live;

	if (!k)
		return 0;
	pthread_mutex_lock(&kmem_glock);
	live = kmem_live_locked(k);
	pthread_mutex_unlock(&kmem_glock);
	return live;
}

int uhmm_kmem_offline(struct uhmm_dax_dev *dev)
{
	struct dax_kmem *k = atomic_load(&dev->kmem);
	struct kmem_ext *e, *next;

	if (!k)
		return 0;
	pthread_mutex_lock(&kmem_glock);
	if (kmem_live_locked(k)) {
		pthread_mutex_unlock(&kmem_glock);
		return -EBUSY;
	}
	/*
	 * Flush every jemalloc cache before the arena goes (jemalloc's rule).
	 * Front caches are left to their threads: what they hold is free memory
	 * of this arena, which destroy reclaims, and a slot with kid 0 is reset
	 * before reuse.
	 */
	for (struct kmem_slot *s = k->slots; s; s = s->knext) {
		slot_tcache_destroy(s);
		s->k = NULL;
		atomic_store_explicit(&s->kid, 0, memory_order_relaxed);
	}
	k->slots = NULL;
	pthread_mutex_unlock(&kmem_glock);
	UHMM_WARN_ON(arena_ctl(k->arena, "destroy", NULL, 0));
	atomic_store(&dev->kmem, NULL);
	for (e = k->free; e; e = next) {
		next = e->next;
		free(e);
	}
	pthread_mutex_destroy(&k->lock);
	free(k);
	return 0;
}

int uhmm_kmem_set_limit(struct uhmm_dax_dev *dev, uint64_t size)
{
	struct dax_kmem *k = atomic_load(&dev->kmem);
	int ret = 0;

	if (!k)
		return 0;
	pthread_mutex_lock(&k->lock);
	if (size > k->span)
		ret = -EINVAL;
	else if (size < k->bump)
		ret = -EBUSY;	/* jemalloc holds memory there */
	else
		k->limit = size;
	pthread_mutex_unlock(&k->lock);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* The heap API                                                           */

static struct dax_kmem *kmem_get(struct uhmm_dax_dev *dev)
{
	struct dax_kmem *k;

	if (!dev)
		return NULL;
	k = atomic_load_explicit(&dev->kmem, memory_order_acquire);
	if (__builtin_expect(k != NULL, 1))
		return k;
	/* Another opener switched the mode: bring the heap online here. */
	if (uhmm_dax_kmem_attach(dev))
		return NULL;
	return atomic_load_explicit(&dev->kmem, memory_order_acquire);
}

static bool kmem_owns(const struct dax_kmem *k, const void *p)
{
	return (uintptr_t)p - (uintptr_t)k->base < k->span;
}

static int kmem_flags(const struct dax_kmem *k, const struct kmem_slot *s)
{
	return (int)MALLOCX_ARENA(k->arena) | s->tflags;
}

void *uhmm_kmem_malloc(struct uhmm_dax_dev *dev, size_t size)
{
	struct dax_kmem *k = kmem_get(dev);
	struct kmem_slot *s;
	int b = fc_bin_of_request(size);
	void *p;

	if (!k || !(s = slot_get(k)))
		return NULL;
	if (b >= 0) {
		p = fc_pop(&s->bins[b]);
		if (!p)
			p = mallocx(kmem_fc_size[b], kmem_flags(k, s));
	} else {
		p = mallocx(size, kmem_flags(k, s));
	}
	if (p)
		slot_count(s, 1);
	return p;
}

void *uhmm_kmem_calloc(struct uhmm_dax_dev *dev, size_t n, size_t size)
{
	struct dax_kmem *k;
	struct kmem_slot *s;
	size_t total;
	int b;
	void *p;

	if (__builtin_mul_overflow(n, size, &total))
		return NULL;
	k = kmem_get(dev);
	if (!k || !(s = slot_get(k)))
		return NULL;
	b = fc_bin_of_request(total);
	p = b >= 0 ? fc_pop(&s->bins[b]) : NULL;
	if (p)
		memset(p, 0, kmem_fc_size[b]);
	else
		p = mallocx(b >= 0 ? kmem_fc_size[b] : total,
			    kmem_flags(k, s) | MALLOCX_ZERO);
	if (p)
		slot_count(s, 1);
	return p;
}

/* Checks that @ptr is @dev's; NULL (after a one-time warning) if not. */
static inline struct dax_kmem *kmem_of_ptr(struct uhmm_dax_dev *dev,
					   const void *ptr)
{
	struct dax_kmem *k = atomic_load_explicit(&dev->kmem,
						  memory_order_acquire);

	if (__builtin_expect(k && kmem_owns(k, ptr), 1))
		return k;
	UHMM_WARN_ON(1);
	return NULL;
}

void uhmm_kmem_free(struct uhmm_dax_dev *dev, void *ptr)
{
	struct dax_kmem *k;
	struct kmem_slot *s;
	size_t usable;
	int b;

	if (!ptr || !dev)
		return;
	k = kmem_of_ptr(dev, ptr);
	if (!k || !(s = slot_get(k)))
		return;
	usable = sallocx(ptr, 0);
	b = fc_bin_of_block(usable);
	if (b >= 0 && s->bins[b].nr < kmem_fc_cap[b]) {
		*(void **)ptr = s->bins[b].head;
		s->bins[b].head = ptr;
		s->bins[b].nr++;
	} else {
		/* The size is known: skip jemalloc's second lookup. */
		sdallocx(ptr, usable, s->tflags);
	}
	slot_count(s, -1);
}

void *uhmm_kmem_realloc(struct uhmm_dax_dev *dev, void *ptr, size_t size)
{
	struct dax_kmem *k;
	struct kmem_slot *s;

	if (!ptr)
		return uhmm_kmem_malloc(dev, size);
	if (!size) {
		uhmm_kmem_free(dev, ptr);
		return NULL;
	}
	if (!dev)
		return NULL;
	k = kmem_of_ptr(dev, ptr);
	if (!k || !(s = slot_get(k)))
		return NULL;
	return rallocx(ptr, size, kmem_flags(k, s));
}

size_t uhmm_kmem_usable_size(struct uhmm_dax_dev *dev, const void *ptr)
{
	struct dax_kmem *k;

	if (!ptr || !dev)
		return 0;
	k = atomic_load_explicit(&dev->kmem, memory_order_acquire);
	if (!k || !kmem_owns(k, ptr))
		return 0;
	return sallocx(ptr, 0);
}
