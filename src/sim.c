// SPDX-License-Identifier: MIT
/* sim.c - the simulated device, uhmm's reference driver: a memory pool as a
 * pagemap, a device page table kept coherent by an interval notifier, and
 * dmirror-like commands. API in include/uhmm/sim.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <uhmm/migrate.h>
#include <uhmm/sim.h>
#include "mm_internal.h"
#include "fault_inject.h"

#define PG UHMM_PAGE_SIZE
#define PIECE 64		/* pages per range_fault / access piece */
#define MIG_PIECE 512		/* pages per migration: amortizes the staging setup */
/* pages per migration into the device (no eviction policy): 16 MiB
 * amortize a migration's fixed costs (range lookup, mincore calls, the
 * invalidation, the wake; on the copy path, emptying the staging area) to
 * a few ns a page */
#define MOVE_PIECE 4096
#define BUSY_BUDGET_NS 1000000000ULL

/* device page table entry kinds */
enum { PT_SYS = 1, PT_DEV = 2, PT_ATOMIC = 3 };

struct pt_ent {
	void *data;			/* PT_DEV: uhmm_page; PT_ATOMIC: buffer */
	uint8_t kind;			/* 0: no entry */
	bool write;
};

/*
 * The device page table: a radix tree like a CPU's, 512 slots a level,
 * four levels of nodes above leaves of entries (45 bits of page number:
 * 57-bit addresses). Setting an entry allocates nothing once its leaf
 * exists; nodes and leaves are freed when their last entry goes.
 */
#define PT_BITS 9
#define PT_FAN (1U << PT_BITS)
#define PT_LEVELS 4			/* node levels above the leaves */
#define PT_VPN_BITS (PT_BITS * (PT_LEVELS + 1))

struct pt_leaf {
	struct pt_ent ent[PT_FAN];
	unsigned int used;
	struct pt_leaf *next_free;	/* in the sim's cache of empty leaves */
};

struct pt_node {
	void *slot[PT_FAN];		/* pt_node, or pt_leaf one level up */
	unsigned int used;
};

struct uhmm_sim {
	struct uhmm_pagemap pgmap;
	struct uhmm_dev_range range;
	struct uhmm_interval_notifier notifier;
	struct uhmm_mm *mm;
	pthread_mutex_t lock;		/* page table and counters */
	struct pt_node pt;		/* the page table's root */
	struct pt_leaf *pt_last;	/* leaf of the last lookup (sequential) */
	uint64_t pt_last_base;		/* its first page number */
	struct pt_leaf *pt_free;	/* empty leaves kept for reuse: a range */
	uint64_t pt_nfree;		/* migrated back and forth allocates none */
	void *pool;
	uint64_t capacity;
	bool evict;
	bool copy;			/* copy pages instead of moving them */
	struct uhmm_sim_counters cnt;
	_Atomic uint64_t dev_pages;
	struct uhmm_block_cache scratch;	/* sim_to_dev's arrays, reused */
};

static unsigned int pt_index(uint64_t vpn, unsigned int level)
{
	return (unsigned int)(vpn >> (PT_BITS * level)) & (PT_FAN - 1);
}

/* Empty leaves cached: enough for the device's capacity, and some. */
static uint64_t pt_cache_max(const struct uhmm_sim *s)
{
	return s->capacity / PT_FAN + 64;
}

static struct pt_leaf *pt_leaf_new(struct uhmm_sim *s)
{
	struct pt_leaf *l = s->pt_free;

	if (!l)
		return calloc(1, sizeof(*l));
	s->pt_free = l->next_free;
	s->pt_nfree--;
	l->next_free = NULL;
	return l;
}

static void pt_leaf_free(struct uhmm_sim *s, struct pt_leaf *l)
{
	if (s->pt_nfree >= pt_cache_max(s)) {
		free(l);
		return;
	}
	l->next_free = s->pt_free;
	s->pt_free = l;
	s->pt_nfree++;
}

static struct pt_leaf *pt_leaf_walk(struct uhmm_sim *s, uint64_t vpn, bool alloc);

/* The leaf holding @vpn; allocated if @alloc, else NULL when absent.
 * (inline: the last leaf's check runs for every page a command maps) */
static inline struct pt_leaf *pt_leaf_of(struct uhmm_sim *s, uint64_t vpn, bool alloc)
{
	if (s->pt_last && s->pt_last_base == (vpn & ~(uint64_t)(PT_FAN - 1)))
		return s->pt_last;
	return pt_leaf_walk(s, vpn, alloc);
}

static struct pt_leaf *pt_leaf_walk(struct uhmm_sim *s, uint64_t vpn, bool alloc)
{
	uint64_t base = vpn & ~(uint64_t)(PT_FAN - 1);
	struct pt_node *n = &s->pt;

	if (vpn >> PT_VPN_BITS)
		return NULL;
	for (unsigned int level = PT_LEVELS; level >= 1; level--) {
		void **slot = &n->slot[pt_index(vpn, level)];

		if (!*slot) {
			if (!alloc)
				return NULL;
			*slot = level > 1 ? calloc(1, sizeof(struct pt_node)) : pt_leaf_new(s);
			if (!*slot)
				return NULL;
			n->used++;
		}
		if (level == 1) {
			s->pt_last = *slot;
			s->pt_last_base = base;
			return *slot;
		}
		n = *slot;
	}
	return NULL;
}

static struct pt_ent *pt_find(struct uhmm_sim *s, uint64_t vpn)
{
	struct pt_leaf *l = pt_leaf_of(s, vpn, false);
	struct pt_ent *e = l ? &l->ent[vpn & (PT_FAN - 1)] : NULL;

	return e && e->kind ? e : NULL;
}

/* False when out of memory: a missing entry only costs the device a fault,
 * but a caller that promised a mapping (exclusive) must say so. */
static inline bool pt_set(struct uhmm_sim *s, uint64_t vpn, uint8_t kind, bool write,
			  void *data)
{
	struct pt_leaf *l = pt_leaf_of(s, vpn, true);
	struct pt_ent *e;

	if (!l)
		return false;
	e = &l->ent[vpn & (PT_FAN - 1)];
	l->used += !e->kind;
	*e = (struct pt_ent){ .data = data, .kind = kind, .write = write };
	return true;
}

/* Erase page numbers [a, b) below @n (covering 512^(level+1) pages from
 * @base); true when @n is left empty. */
static bool pt_erase_node(struct uhmm_sim *s, void *node, unsigned int level,
			  uint64_t base, uint64_t a, uint64_t b)
{
	if (level == 0) {
		struct pt_leaf *l = node;

		for (uint64_t v = UHMM_MAX(a, base); v < b && v < base + PT_FAN; v++) {
			struct pt_ent *e = &l->ent[v - base];

			l->used -= !!e->kind;
			e->kind = 0;
		}
		return !l->used;
	}
	struct pt_node *n = node;
	uint64_t span = 1ULL << (PT_BITS * level);

	for (unsigned int i = a > base ? pt_index(a, level) : 0; i < PT_FAN; i++) {
		uint64_t lo = base + i * span;

		if (lo >= b)
			break;
		if (n->slot[i] && pt_erase_node(s, n->slot[i], level - 1, lo, a, b)) {
			if (n->slot[i] == s->pt_last)
				s->pt_last = NULL;
			if (level == 1)
				pt_leaf_free(s, n->slot[i]);
			else
				free(n->slot[i]);
			n->slot[i] = NULL;
			n->used--;
		}
	}
	return !n->used;
}

/* Drop the entries of addresses [start, end). */
static void pt_erase(struct uhmm_sim *s, uint64_t start, uint64_t end)
{
	uint64_t a = start >> UHMM_PAGE_SHIFT, b = end >> UHMM_PAGE_SHIFT;

	if (a >> PT_VPN_BITS)
		return;
	pt_erase_node(s, &s->pt, PT_LEVELS, 0, a, UHMM_MIN(b, 1ULL << PT_VPN_BITS));
}

static bool sim_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	struct uhmm_sim *s = container_of(sub, struct uhmm_sim, notifier);

	/* our own migrations and exclusive grabs update the table themselves */
	if ((r->event == UHMM_EVENT_MIGRATE || r->event == UHMM_EVENT_EXCLUSIVE) &&
	    r->owner == s)
		return true;
	pthread_mutex_lock(&s->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	pt_erase(s, r->start, r->end);
	pthread_mutex_unlock(&s->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops sim_notifier_ops = {
	.invalidate = sim_invalidate,
};

static void sim_page_free(struct uhmm_page *page)
{
	struct uhmm_sim *s = container_of(page->pgmap, struct uhmm_sim, pgmap);

	atomic_fetch_sub(&s->dev_pages, 1);
}

/* Device -> system for the pages of [start, end) owned by this sim. */
static int sim_to_sys(struct uhmm_sim *s, uint64_t start, uint64_t end,
		      struct uhmm_page *fault_page)
{
	uint64_t n = (end - start) / PG, src[MIG_PIECE], dst[MIG_PIECE];
	struct uhmm_migrate m = {
		.mm = s->mm, .start = start, .end = end, .src = src, .dst = dst,
		.flags = s->pgmap.type == UHMM_PAGEMAP_PRIVATE
				 ? UHMM_MIGRATE_SELECT_DEVICE_PRIVATE
				 : UHMM_MIGRATE_SELECT_DEVICE_COHERENT,
		.pgmap_owner = s, .fault_page = fault_page,
	};
	int err;

	if (n > MIG_PIECE)
		return -EINVAL;
	err = uhmm_migrate_setup(&m);
	if (err)
		return err;
	if (s->copy)	/* allocate now: not under s->lock (it takes mm->lock) */
		uhmm_migrate_dst_buf(&m, 0);
	pthread_mutex_lock(&s->lock);
	for (uint64_t i = 0; i < n; i++) {
		void *to = s->copy ? uhmm_migrate_dst_buf(&m, i) : NULL;
		struct uhmm_page *pg;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || (s->copy && !to))
			continue;
		pg = uhmm_pfn_to_page(uhmm_migrate_pfn_to_pfn(src[i]));
		if (s->copy) {
			memcpy(to, uhmm_page_to_virt(pg), PG);
			dst[i] = UHMM_MIGRATE_PFN_SYSTEM;
		} else {
			dst[i] = UHMM_MIGRATE_PFN_SYSTEM | UHMM_MIGRATE_PFN_MOVE;
		}
		pt_erase(s, start + i * PG, start + (i + 1) * PG);
	}
	pthread_mutex_unlock(&s->lock);
	uhmm_migrate_pages(&m);
	return uhmm_migrate_finalize(&m);
}

static int sim_migrate_to_ram(struct uhmm_fault *f)
{
	struct uhmm_sim *s = container_of(f->page->pgmap, struct uhmm_sim, pgmap);
	int rc;

	pthread_mutex_lock(&s->lock);
	s->cnt.cpu_faults++;
	pthread_mutex_unlock(&s->lock);
	/* a bulk bring-back names its run: one migration for all of it */
	rc = sim_to_sys(s, f->addr, UHMM_MIN(f->end, f->addr + MIG_PIECE * PG), f->page);
	return rc < 0 ? rc : 0;
}

static const struct uhmm_pagemap_ops sim_pagemap_ops = {
	.page_free = sim_page_free,
	.migrate_to_ram = sim_migrate_to_ram,
};

static void pool_free(struct uhmm_sim *s)
{
	if (!s->copy)
		uhmm_mm_unmanage(s->mm, s->pool, s->capacity * PG);
	munmap(s->pool, s->capacity * PG);
}

int uhmm_sim_create(struct uhmm_mm *mm, const struct uhmm_sim_opts *opts,
		    struct uhmm_sim **out)
{
	enum uhmm_sim_mem_type type = UHMM_SIM_PRIVATE;
	uint64_t cap = 65536, start;
	struct uhmm_sim *s;
	int err;

	if (!mm || !out)
		return -EINVAL;
	*out = NULL;
	if (opts) {
		if (opts->sz < sizeof(size_t) || opts->sz > sizeof(*opts))
			return -EINVAL;
		if (opts->mem_type)
			type = opts->mem_type;
		if (type != UHMM_SIM_PRIVATE && type != UHMM_SIM_COHERENT)
			return -EINVAL;
		if (opts->capacity_pages)
			cap = opts->capacity_pages;
		if (cap > (1ULL << 26))
			return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	s->mm = mm;
	s->capacity = cap;
	s->evict = opts && opts->evict_when_full;
	s->copy = opts && opts->copy_path;
	/*
	 * Moving in: managed by the same mm, so UFFDIO_MOVE can put pages
	 * straight in. Copying in: plain memory, populated as THPs by the
	 * first copy into it (a managed pool is filled 4 KiB at a time, and
	 * the copy then writes through one TLB entry per page).
	 */
	if (s->copy) {
		s->pool = uhmm_map_aligned(cap * PG, 2UL << 20, PROT_READ | PROT_WRITE, true);
		err = s->pool ? 0 : -ENOMEM;
	} else {
		err = uhmm_mm_alloc(mm, cap * PG, UHMM_ALLOC_HUGE, &s->pool);
	}
	if (err)
		goto err_free;
	err = uhmm_request_free_region(NULL, cap * PG, 0, &start);
	if (err)
		goto err_pool;
	s->range = (struct uhmm_dev_range){ start, start + cap * PG };
	s->pgmap = (struct uhmm_pagemap){
		.type = type == UHMM_SIM_PRIVATE ? UHMM_PAGEMAP_PRIVATE
						 : UHMM_PAGEMAP_COHERENT,
		.ops = &sim_pagemap_ops,
		.owner = s,
		.nr_range = 1,
		.ranges = &s->range,
		.base = s->pool,
	};
	err = uhmm_memremap_pages(&s->pgmap);
	if (err)
		goto err_region;
	err = uhmm_interval_notifier_insert(&s->notifier, mm, 0,
					    (1ULL << 57) - PG, &sim_notifier_ops);
	if (err)
		goto err_pgmap;
	*out = s;
	return 0;

err_pgmap:
	uhmm_memunmap_pages(&s->pgmap);
err_region:
	uhmm_release_region(NULL, start);
err_pool:
	pool_free(s);
err_free:
	pthread_mutex_destroy(&s->lock);
	free(s);
	return err;
}

void uhmm_sim_destroy(struct uhmm_sim *s)
{
	if (!s)
		return;
	/* memunmap brings every device page back through migrate_to_ram */
	uhmm_memunmap_pages(&s->pgmap);
	uhmm_interval_notifier_remove(&s->notifier);
	pt_erase(s, 0, UINT64_MAX & ~(PG - 1));
	while (s->pt_free) {
		struct pt_leaf *l = s->pt_free;

		s->pt_free = l->next_free;
		free(l);
	}
	uhmm_release_region(NULL, s->range.start);
	pool_free(s);
	uhmm_block_cache_fini(&s->scratch);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static bool args_ok(struct uhmm_sim *s, uint64_t addr, uint64_t npages, const void *p)
{
	return s && p && npages && UHMM_IS_ALIGNED(addr, PG) && addr &&
	       npages < (1ULL << 36) && addr + npages * PG > addr;
}

/* ok[i]: the CPU entry of page i from @addr is device page pg[i] (s->lock held). */
static void cpu_entries_are(struct uhmm_sim *s, uint64_t addr,
			    struct uhmm_page *const *pg, uint64_t n, bool *ok)
{
	/*
	 * Never wait for mm->lock under s->lock: its holder may be waiting for
	 * the handler, which may be waiting for s->lock in our invalidate.
	 * Busy means "not known to be mapped": the page is simply not mapped
	 * now and the next access faults it in.
	 */
	if (uhmm_uffd_is_handler() || !mm_trylock(s->mm)) {
		memset(ok, 0, n * sizeof(*ok));
		return;
	}
	/* range by range: the pages inside one read its table in a row */
	for (uint64_t i = 0, lim; i < n; i = lim) {
		uint64_t a = addr + i * PG;
		struct mm_vma *v = uhmm_vma_find(s->mm, a);
		const uint64_t *ents;

		lim = v ? i + UHMM_MIN(n - i, (v->end - a) / PG) : i + 1;
		ents = v && v->ents ? &v->ents[(a - v->start) >> UHMM_PAGE_SHIFT] : NULL;
		for (uint64_t k = i; k < lim; k++) {
			uint64_t e = ents ? ents[k - i] : 0;

			ok[k] = pg[k] && ENT_STATE(e) == ENT_DEVICE && ENT_PTR(e) == pg[k];
		}
	}
	mm_unlock(s->mm);
}

/* The CPU entry of @addr is device page @pg (see cpu_entries_are()). */
static bool cpu_entry_is(struct uhmm_sim *s, uint64_t addr, struct uhmm_page *pg)
{
	bool ok;

	cpu_entries_are(s, addr, &pg, 1, &ok);
	return ok;
}

/* Fill the device page table for [a, b) (read_begin/range_fault/retry). */
static int sim_fault(struct uhmm_sim *s, uint64_t a, uint64_t b, bool write)
{
	uint64_t pfns[PIECE], t0 = uhmm_now_ns();
	struct uhmm_range r = {
		.notifier = &s->notifier, .start = a, .end = b, .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = s,
	};
	int err;

	for (;;) {
		if (uhmm_now_ns() - t0 > BUSY_BUDGET_NS)
			return -EBUSY;
		r.notifier_seq = uhmm_interval_read_begin(&s->notifier);
		err = uhmm_range_fault(&r);
		if (err == -EBUSY)
			continue;
		if (err)
			return err;
		pthread_mutex_lock(&s->lock);
		if (uhmm_interval_read_retry(&s->notifier, r.notifier_seq)) {
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		for (uint64_t i = 0; i < (b - a) / PG; i++) {
			uint64_t e = pfns[i];
			bool w = e & UHMM_PFN_WRITE;

			if (e & UHMM_PFN_DEVICE) {
				struct uhmm_page *pg = uhmm_pfn_to_page(uhmm_pfn_frame(e));

				/* our own migrations do not move the sequence:
				 * map the page only if the CPU still points at it */
				if (cpu_entry_is(s, a + i * PG, pg))
					pt_set(s, (a >> UHMM_PAGE_SHIFT) + i, PT_DEV, w, pg);
			}
			else if (e & UHMM_PFN_VALID)
				pt_set(s, (a >> UHMM_PAGE_SHIFT) + i, PT_SYS, w, NULL);
		}
		s->cnt.faults++;
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
}

/* Add page @l <- @r to a process_vm iovec pair; a page that continues the
 * last pair at both ends extends it. False when all @cap pairs are used and
 * the page needs a new one. */
static bool iov_add_page(struct iovec *loc, struct iovec *rem, unsigned long *nv,
			 unsigned long cap, void *l, void *r)
{
	if (*nv && (uint8_t *)loc[*nv - 1].iov_base + loc[*nv - 1].iov_len == l &&
	    (uint8_t *)rem[*nv - 1].iov_base + rem[*nv - 1].iov_len == r) {
		loc[*nv - 1].iov_len += PG;
		rem[*nv - 1].iov_len += PG;
		return true;
	}
	if (*nv == cap)
		return false;	/* a new pair is needed and there is no room */
	loc[*nv] = (struct iovec){ l, PG };
	rem[(*nv)++] = (struct iovec){ r, PG };
	return true;
}

/* Every page of [a, a + n pages) still has an entry of the kind seen (s->lock). */
static bool kinds_unchanged(struct uhmm_sim *s, uint64_t a, uint64_t n,
			    const uint8_t *kinds)
{
	for (uint64_t i = 0; i < n; i++) {
		struct pt_ent *e = pt_find(s, (a >> UHMM_PAGE_SHIFT) + i);

		if (!e || e->kind != kinds[i])
			return false;
	}
	return true;
}

/* One piece of a read or write: fault what the table lacks, then copy. */
static int sim_access(struct uhmm_sim *s, uint64_t a, uint64_t n, uint8_t *buf,
		      bool write)
{
	uint64_t t0 = uhmm_now_ns();
	uint8_t kinds[PIECE];

	for (;;) {
		unsigned long seq;
		uint64_t missing = UINT64_MAX;
		struct iovec local[PIECE], remote[PIECE];
		unsigned long nv;
		int err;

		if (uhmm_now_ns() - t0 > BUSY_BUDGET_NS)
			return -EBUSY;
		seq = uhmm_interval_read_begin(&s->notifier);
		pthread_mutex_lock(&s->lock);
		for (uint64_t i = 0; i < n; i++) {
			struct pt_ent *e = pt_find(s, (a >> UHMM_PAGE_SHIFT) + i);

			if (!e || (write && !e->write && e->kind != PT_ATOMIC)) {
				missing = i;
				break;
			}
		}
		pthread_mutex_unlock(&s->lock);
		if (missing != UINT64_MAX) {
			err = sim_fault(s, a + missing * PG, a + n * PG, write);
			if (err)
				return err;
			continue;
		}
		/* System pages: through the process's memory, outside our lock
		 * (a fault there may need the handler, which may need our lock),
		 * in one call; runs of pages share one iovec. */
		nv = 0;
		pthread_mutex_lock(&s->lock);
		for (uint64_t i = 0; i < n; i++) {
			struct pt_ent *e = pt_find(s, (a >> UHMM_PAGE_SHIFT) + i);

			kinds[i] = e ? e->kind : 0;
			if (kinds[i] != PT_SYS)
				continue;
			iov_add_page(local, remote, &nv, PIECE, buf + i * PG,
				     (void *)(uintptr_t)(a + i * PG));
		}
		pthread_mutex_unlock(&s->lock);
		if (nv) {
			ssize_t r, total = 0;

			for (unsigned long k = 0; k < nv; k++)
				total += (ssize_t)local[k].iov_len;
			if (uhmm_fi_fail(UHMM_FI_PROCESS_VM))
				r = -1;	/* as if the pages went away */
			else if (write)
				r = process_vm_writev(getpid(), local, nv, remote, nv, 0);
			else
				r = process_vm_readv(getpid(), local, nv, remote, nv, 0);
			if (r != total)
				return -EFAULT;
		}
		pthread_mutex_lock(&s->lock);
		if (uhmm_interval_read_retry(&s->notifier, seq) ||
		    !kinds_unchanged(s, a, n, kinds)) {
			/* changed meanwhile (our own migrations move no sequence) */
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		for (uint64_t i = 0; i < n; i++) {
			struct pt_ent *e = pt_find(s, (a >> UHMM_PAGE_SHIFT) + i);
			void *mem;

			if (e->kind == PT_SYS)
				continue;
			mem = e->kind == PT_DEV ? uhmm_page_to_virt(e->data) : e->data;
			if (write)
				memcpy(mem, buf + i * PG, PG);
			else
				memcpy(buf + i * PG, mem, PG);
		}
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
}

static int sim_rw(struct uhmm_sim *s, uint64_t addr, uint64_t npages, void *buf,
		  bool write)
{
	if (!args_ok(s, addr, npages, buf))
		return -EINVAL;
	if (uhmm_uffd_is_handler())
		return -EDEADLK;
	for (uint64_t off = 0; off < npages; off += PIECE) {
		uint64_t n = UHMM_MIN(PIECE, npages - off);
		int err = sim_access(s, addr + off * PG, n, (uint8_t *)buf + off * PG,
				     write);

		if (err)
			return err;
	}
	return 0;
}

int uhmm_sim_read(struct uhmm_sim *s, uint64_t addr, uint64_t npages, void *buf)
{
	return sim_rw(s, addr, npages, buf, false);
}

int uhmm_sim_write(struct uhmm_sim *s, uint64_t addr, uint64_t npages,
		   const void *buf)
{
	return sim_rw(s, addr, npages, (void *)buf, true);
}

/* Oldest-first eviction when full: give back one piece's worth. */
static void sim_evict_some(struct uhmm_sim *s, uint64_t want)
{
	uint64_t first = s->range.start >> UHMM_PAGE_SHIFT;

	uhmm_migrate_device_range(&s->pgmap, first, UHMM_MIN(s->capacity, want * 4));
}

/* Copy the pairs with one process_vm_readv; whatever it leaves is copied
 * with memcpy (seccomp, valgrind, a fault-injected failure). */
static void dma_flush(struct iovec *loc, struct iovec *rem, unsigned long nv)
{
	ssize_t r = 0;

	if (nv && !uhmm_fi_fail(UHMM_FI_PROCESS_VM))
		r = process_vm_readv(getpid(), loc, nv, rem, nv, 0);
	if (r < 0)
		r = 0;
	for (unsigned long k = 0; k < nv; k++) {
		size_t skip = UHMM_MIN((size_t)r, loc[k].iov_len);

		r -= (ssize_t)skip;
		if (skip < loc[k].iov_len)
			memcpy((uint8_t *)loc[k].iov_base + skip,
			       (uint8_t *)rem[k].iov_base + skip, loc[k].iov_len - skip);
	}
}

/*
 * The sim's DMA engine: copy the sources of a migration into the device
 * pages @pages[i] (NULL: not migrating) with process_vm_readv. The kernel
 * reads each page through its own mapping, as a device reads physical
 * memory; a CPU load from a page UFFDIO_MOVE has just placed costs ~2.5 us
 * on a shadow-paging VM (README, "Performance"). Runs contiguous at both
 * ends go as one iovec, up to DMA_IOV pairs a call.
 */
#define DMA_IOV 256

static void dma_copy_in(const struct uhmm_migrate *m, struct uhmm_page *const *pages,
			uint64_t n)
{
	struct iovec loc[DMA_IOV], rem[DMA_IOV];
	unsigned long nv = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint8_t *to = pages[i] ? uhmm_page_to_virt(pages[i]) : NULL;
		uint8_t *from = to ? uhmm_migrate_src_buf(m, i) : NULL;

		if (!to)
			continue;
		if (!from) {
			memset(to, 0, PG);	/* never touched: zero */
			continue;
		}
		if (!iov_add_page(loc, rem, &nv, DMA_IOV, to, from)) {
			dma_flush(loc, rem, nv);	/* full: copy what it holds */
			nv = 0;
			iov_add_page(loc, rem, &nv, DMA_IOV, to, from);
		}
	}
	dma_flush(loc, rem, nv);
}

static int sim_to_dev(struct uhmm_sim *s, uint64_t start, uint64_t end)
{
	uint64_t n = (end - start) / PG, *src, *dst;
	struct uhmm_migrate m = {
		.mm = s->mm, .start = start, .end = end,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM, .pgmap_owner = s,
	};
	struct uhmm_page **pages, **batch;
	bool *mapped;
	uint64_t batch_left = 0, batch_next = 0;
	bool batch_tried = false;
	unsigned long seq;
	int err, done;
	/* one block: src, dst, pages, batch, mapped */
	uint64_t *blk = n <= MOVE_PIECE ? uhmm_block_get(&s->scratch, n * (4 * 8 + 1), false)
					 : NULL;

	if (!blk)
		return n <= MOVE_PIECE ? -ENOMEM : -EINVAL;
	m.src = src = blk;
	m.dst = dst = blk + n;
	pages = (struct uhmm_page **)(blk + 2 * n);
	batch = (struct uhmm_page **)(blk + 3 * n);
	mapped = (bool *)(blk + 4 * n);

	/*
	 * Moving in: with a destination for every page up front, setup moves
	 * the pages straight into device memory (one move, no staging).
	 */
	memset(pages, 0, n * sizeof(*pages));
	if (!s->copy && uhmm_pagemap_alloc_pages(&s->pgmap, n, UHMM_ALLOC_CONTIG, pages) == 0) {
		uint64_t pfn = uhmm_page_to_pfn(pages[0]);	/* a contiguous run */

		m.flags |= UHMM_MIGRATE_DST_PREFILLED;
		atomic_fetch_add(&s->dev_pages, n);
		for (uint64_t i = 0; i < n; i++) {
			pages[i]->zone_device_data = s;
			dst[i] = uhmm_migrate_pfn(pfn + i) | UHMM_MIGRATE_PFN_MOVE;
		}
	}
	seq = uhmm_interval_read_begin(&s->notifier);
	err = uhmm_migrate_setup(&m);
	if (err) {
		for (uint64_t i = 0; i < n; i++)
			if (pages[i])
				uhmm_page_put(pages[i]);
		uhmm_block_put(&s->scratch, blk);
		return err;
	}
	for (uint64_t i = 0; i < n && !(m.flags & UHMM_MIGRATE_DST_PREFILLED); i++) {
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if (!batch_left && !batch_tried) {
			/* one contiguous run for the piece: moves go in one go */
			uint64_t want = 0;

			batch_tried = true;
			for (uint64_t k = i; k < n; k++)
				want += !!(src[k] & UHMM_MIGRATE_PFN_MIGRATE);
			if (uhmm_pagemap_alloc_pages(&s->pgmap, want, UHMM_ALLOC_CONTIG,
						     batch) == 0)
				batch_left = want;
		}
		if (batch_left) {
			pages[i] = batch[batch_next++];
			batch_left--;
		} else if (uhmm_pagemap_alloc_pages(&s->pgmap, 1, 0, &pages[i])) {
			continue;	/* full: this page stays in RAM */
		}
		atomic_fetch_add(&s->dev_pages, 1);
		pages[i]->zone_device_data = s;
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pages[i]));
		if (!s->copy)
			dst[i] |= UHMM_MIGRATE_PFN_MOVE;	/* uhmm moves it in */
	}
	if (s->copy)
		dma_copy_in(&m, pages, n);
	uhmm_migrate_pages(&m);
	done = uhmm_migrate_finalize(&m);
	/*
	 * Map what moved, unless the range changed since read_begin, and only
	 * pages the CPU entry still points to: another command of this sim (we
	 * skip our own MIGRATE events) may have brought one back already. Its
	 * table updates also run under s->lock, so the check cannot go stale.
	 */
	pthread_mutex_lock(&s->lock);
	if (!uhmm_interval_read_retry(&s->notifier, seq)) {
		cpu_entries_are(s, start, pages, n, mapped);
		for (uint64_t i = 0; i < n; i++)
			if (mapped[i] && (src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				pt_set(s, (start >> UHMM_PAGE_SHIFT) + i, PT_DEV,
				       src[i] & UHMM_MIGRATE_PFN_WRITE, pages[i]);
	}
	pthread_mutex_unlock(&s->lock);
	/* pages allocated for entries that did not migrate */
	for (uint64_t i = 0; i < n; i++)
		if (pages[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(pages[i]);
	uhmm_block_put(&s->scratch, blk);
	return done;
}

typedef int (*piece_fn)(struct uhmm_sim *s, uint64_t a, uint64_t b);

static int sim_to_sys_piece(struct uhmm_sim *s, uint64_t a, uint64_t b)
{
	return sim_to_sys(s, a, b, NULL);
}

static int for_pieces(struct uhmm_sim *s, uint64_t addr, uint64_t npages,
		      piece_fn fn, bool to_dev)
{
	uint64_t piece = MIG_PIECE;
	int total = 0;

	if (!s || !npages || !addr || !UHMM_IS_ALIGNED(addr, PG) ||
	    addr + npages * PG < addr)
		return -EINVAL;
	if (to_dev && !s->evict)
		piece = MOVE_PIECE;
	for (uint64_t off = 0; off < npages; off += piece) {
		uint64_t n = UHMM_MIN(piece, npages - off);
		int r;

		/* full after a piece, and no eviction: nothing more fits (the
		 * pages would only be taken from the process and given back) */
		if (to_dev && off && !s->evict && uhmm_pagemap_nr_free(&s->pgmap) == 0)
			break;
		r = fn(s, addr + off * PG, addr + (off + n) * PG);
		if (r < 0)
			return total ? total : r;
		if (to_dev && (uint64_t)r < n && s->evict && uhmm_pagemap_nr_free(&s->pgmap) == 0) {
			sim_evict_some(s, n);
			r += fn(s, addr + off * PG, addr + (off + n) * PG) > 0;
		}
		total += r;
	}
	pthread_mutex_lock(&s->lock);
	s->cnt.cpages += (uint64_t)total;
	pthread_mutex_unlock(&s->lock);
	return total;
}

int uhmm_sim_migrate_to_dev(struct uhmm_sim *s, uint64_t addr, uint64_t npages)
{
	return for_pieces(s, addr, npages, sim_to_dev, true);
}

int uhmm_sim_migrate_to_sys(struct uhmm_sim *s, uint64_t addr, uint64_t npages)
{
	return for_pieces(s, addr, npages, sim_to_sys_piece, false);
}

/* Foreign device page under addr, for REMOTE snapshot bytes. */
static uint8_t remote_kind(struct uhmm_sim *s, uint64_t addr)
{
	struct uhmm_mm *mm = s->mm;
	struct mm_vma *v;
	uint64_t e = 0;
	uint8_t k = 0;

	mm_lock(mm);
	v = uhmm_vma_find(mm, addr);
	if (v && v->ents)
		e = v->ents[(addr - v->start) >> UHMM_PAGE_SHIFT];
	if (ENT_STATE(e) == ENT_DEVICE) {
		struct uhmm_page *pg = ENT_PTR(e);

		k = pg->pgmap->type == UHMM_PAGEMAP_COHERENT
			    ? UHMM_SIM_PROT_DEV_COHERENT_REMOTE
			    : UHMM_SIM_PROT_DEV_PRIVATE_REMOTE;
		k |= e & ENT_WRITE ? UHMM_SIM_PROT_WRITE : UHMM_SIM_PROT_READ;
	}
	mm_unlock(mm);
	return k;
}

int uhmm_sim_snapshot(struct uhmm_sim *s, uint64_t addr, uint64_t npages,
		      uint8_t *prot)
{
	uint64_t pfns[PIECE];

	if (!args_ok(s, addr, npages, prot))
		return -EINVAL;
	for (uint64_t off = 0; off < npages; off += PIECE) {
		uint64_t n = UHMM_MIN(PIECE, npages - off), t0 = uhmm_now_ns();
		struct uhmm_range r = {
			.notifier = &s->notifier, .start = addr + off * PG,
			.end = addr + (off + n) * PG, .hmm_pfns = pfns,
			.dev_private_owner = s,
		};
		int err;

		do {
			if (uhmm_now_ns() - t0 > BUSY_BUDGET_NS)
				return -EBUSY;
			memset(pfns, 0, sizeof(pfns));
			r.notifier_seq = uhmm_interval_read_begin(&s->notifier);
			err = uhmm_range_fault(&r);
		} while (err == -EBUSY);
		if (err)
			return err;
		for (uint64_t i = 0; i < n; i++) {
			uint64_t e = pfns[i];
			uint8_t b;
			unsigned int order = uhmm_pfn_to_map_order(e);

			if (e & UHMM_PFN_ERROR) {
				prot[off + i] = UHMM_SIM_PROT_ERROR;
				continue;
			}
			if (!(e & UHMM_PFN_VALID)) {
				prot[off + i] = remote_kind(s, r.start + i * PG);
				continue;
			}
			b = e & UHMM_PFN_WRITE ? UHMM_SIM_PROT_WRITE : UHMM_SIM_PROT_READ;
			if (e & UHMM_PFN_DEVICE)
				b |= s->pgmap.type == UHMM_PAGEMAP_COHERENT
					     ? UHMM_SIM_PROT_DEV_COHERENT_LOCAL
					     : UHMM_SIM_PROT_DEV_PRIVATE_LOCAL;
			else if (e & UHMM_PFN_ZERO)
				b |= UHMM_SIM_PROT_ZERO;
			if (order == 9)
				b |= UHMM_SIM_PROT_PMD;
			else if (order == 18)
				b |= UHMM_SIM_PROT_PUD;
			prot[off + i] = b;
		}
	}
	return 0;
}

int uhmm_sim_exclusive(struct uhmm_sim *s, uint64_t addr, uint64_t npages)
{
	unsigned long seq;
	void **bufs;
	int err;

	if (!args_ok(s, addr, npages, s))
		return -EINVAL;
	bufs = calloc(npages, sizeof(*bufs));
	if (!bufs)
		return -ENOMEM;
	seq = uhmm_interval_read_begin(&s->notifier);
	err = uhmm_make_device_exclusive(s->mm, addr, npages, s, bufs);
	/*
	 * A CPU touch may already have revoked some (CLEAR moves the sequence):
	 * then map none; check_exclusive reports them gone, as they are.
	 */
	pthread_mutex_lock(&s->lock);
	if (!uhmm_interval_read_retry(&s->notifier, seq))
		for (uint64_t i = 0; i < npages; i++)
			if (bufs[i] && !pt_set(s, (addr >> UHMM_PAGE_SHIFT) + i, PT_ATOMIC,
					       true, bufs[i]) && !err)
				err = -ENOMEM;	/* taken, but the device cannot map it */
	pthread_mutex_unlock(&s->lock);
	free(bufs);
	return err;
}

int uhmm_sim_check_exclusive(struct uhmm_sim *s, uint64_t addr, uint64_t npages)
{
	int all = 1;

	if (!args_ok(s, addr, npages, s))
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	for (uint64_t i = 0; i < npages && all; i++) {
		struct pt_ent *e = pt_find(s, (addr >> UHMM_PAGE_SHIFT) + i);

		all = e && e->kind == PT_ATOMIC;
	}
	pthread_mutex_unlock(&s->lock);
	return all;
}

int uhmm_sim_release(struct uhmm_sim *s)
{
	if (!s)
		return -EINVAL;
	return uhmm_migrate_device_range(&s->pgmap, s->range.start >> UHMM_PAGE_SHIFT,
					 s->capacity);
}

int uhmm_sim_counters(struct uhmm_sim *s, struct uhmm_sim_counters *c)
{
	if (!s || !c)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	*c = s->cnt;
	c->dev_pages = atomic_load(&s->dev_pages);
	memset(&s->cnt, 0, sizeof(s->cnt));
	pthread_mutex_unlock(&s->lock);
	return 0;
}
