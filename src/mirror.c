// SPDX-License-Identifier: MIT
/* mirror.c - interval notifiers with the kernel's collision-retry sequence,
 * and uhmm_range_fault(). API in include/uhmm/mirror.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "compat.h"
#include "mm_internal.h"

/*
 * Subscriptions live in an array sorted by start, viewed as an implicit
 * balanced binary tree (node = middle of its slice) augmented with the
 * largest end in each subtree: overlap queries cost O(log n + k). Inserts
 * and removes shift the array (a memmove, O(n)) and mark the augmentation
 * stale; the next query rebuilds it once, O(n), so a batch of n inserts costs
 * O(n^2 / page) bytes moved rather than n full rebuilds.
 *
 * The sequence (kernel A1.4): even when idle; the first invalidation makes
 * it odd, the last one to end makes it even again and applies inserts and
 * removes deferred meanwhile.
 */
struct uhmm_notif_state {
	pthread_mutex_t lock;		/* everything below */
	pthread_cond_t cond;		/* seq changed / callbacks done */
	unsigned long seq;
	unsigned int active;		/* invalidations in progress */
	struct uhmm_interval_notifier **subs;	/* sorted by start */
	uint64_t *maxend;		/* per implicit-tree node */
	size_t n, cap;
	bool maxend_stale;		/* subs changed since maxend was built */
	struct uhmm_interval_notifier **deferred_add, **deferred_del;
	size_t nadd, ndel, capadd, capdel;
};

static __thread int tls_in_callback;

#define SUB_INSERTED ((void *)1)
#define SUB_PENDING ((void *)2)

int uhmm_notif_init(struct uhmm_mm *mm)
{
	struct uhmm_notif_state *ns = calloc(1, sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	pthread_mutex_init(&ns->lock, NULL);
	pthread_cond_init(&ns->cond, NULL);
	mm->notif = ns;
	return 0;
}

void uhmm_notif_fini(struct uhmm_mm *mm)
{
	struct uhmm_notif_state *ns = mm->notif;

	if (!ns)
		return;
	for (size_t i = 0; i < ns->n; i++)
		ns->subs[i]->priv = NULL;
	free(ns->subs);
	free(ns->maxend);
	free(ns->deferred_add);
	free(ns->deferred_del);
	pthread_mutex_destroy(&ns->lock);
	pthread_cond_destroy(&ns->cond);
	free(ns);
	mm->notif = NULL;
}

static uint64_t build_maxend(struct uhmm_notif_state *ns, size_t lo, size_t hi)
{
	size_t mid;
	uint64_t m;

	if (lo >= hi)
		return 0;
	mid = lo + (hi - lo) / 2;
	m = ns->subs[mid]->end;
	m = UHMM_MAX(m, build_maxend(ns, lo, mid));
	m = UHMM_MAX(m, build_maxend(ns, mid + 1, hi));
	ns->maxend[mid] = m;
	return m;
}

static int tree_add(struct uhmm_notif_state *ns, struct uhmm_interval_notifier *sub)
{
	size_t lo = 0, hi = ns->n;

	if (ns->n == ns->cap) {
		size_t cap = ns->cap ? ns->cap * 2 : 16;
		void *a = realloc(ns->subs, cap * sizeof(*ns->subs));
		void *b;

		if (!a)
			return -ENOMEM;
		ns->subs = a;
		b = realloc(ns->maxend, cap * sizeof(*ns->maxend));
		if (!b)
			return -ENOMEM;
		ns->maxend = b;
		ns->cap = cap;
	}
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (ns->subs[mid]->start <= sub->start)
			lo = mid + 1;
		else
			hi = mid;
	}
	memmove(&ns->subs[lo + 1], &ns->subs[lo], (ns->n - lo) * sizeof(*ns->subs));
	ns->subs[lo] = sub;
	ns->n++;
	ns->maxend_stale = true;
	sub->priv = SUB_INSERTED;
	return 0;
}

static void tree_del(struct uhmm_notif_state *ns, struct uhmm_interval_notifier *sub)
{
	size_t lo = 0, hi = ns->n;

	/* first entry with start >= sub->start, then scan the equal starts */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (ns->subs[mid]->start < sub->start)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < ns->n && ns->subs[i]->start == sub->start; i++)
		if (ns->subs[i] == sub) {
			memmove(&ns->subs[i], &ns->subs[i + 1],
				(ns->n - i - 1) * sizeof(*ns->subs));
			ns->n--;
			break;
		}
	ns->maxend_stale = true;
	sub->priv = NULL;
}

/* Subscriptions overlapping [s, e) into *out; false if it ran out of memory. */
static bool tree_query(struct uhmm_notif_state *ns, size_t lo, size_t hi,
		       uint64_t s, uint64_t e, struct uhmm_interval_notifier ***out,
		       size_t *n, size_t *cap)
{
	size_t mid;

	if (lo >= hi)
		return true;
	mid = lo + (hi - lo) / 2;
	if (ns->maxend[mid] <= s)
		return true;	/* nothing in this subtree ends after s */
	if (!tree_query(ns, lo, mid, s, e, out, n, cap))
		return false;
	if (ns->subs[mid]->start >= e)
		return true;	/* this node and its right subtree start too late */
	if (ns->subs[mid]->end > s) {
		if (*n == *cap) {
			size_t c = *cap ? *cap * 2 : 8;
			void *p = realloc(*out, c * sizeof(**out));

			if (!p)
				return false;
			*out = p;
			*cap = c;
		}
		(*out)[(*n)++] = ns->subs[mid];
	}
	return tree_query(ns, mid + 1, hi, s, e, out, n, cap);
}

static bool push(struct uhmm_interval_notifier ***arr, size_t *n, size_t *cap,
		 struct uhmm_interval_notifier *sub)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 8;
		void *p = realloc(*arr, c * sizeof(**arr));

		if (!p)
			return false;
		*arr = p;
		*cap = c;
	}
	(*arr)[(*n)++] = sub;
	return true;
}

void uhmm_invalidate_start(struct uhmm_mm *mm, enum uhmm_event ev, uint64_t start,
			   uint64_t end, void *owner, uint64_t new_start)
{
	struct uhmm_notif_state *ns = mm->notif;
	struct uhmm_interval_notifier **hits = NULL;
	size_t n = 0, cap = 0;
	unsigned long cur;

	pthread_mutex_lock(&ns->lock);
	ns->active++;
	ns->seq |= 1;
	cur = ns->seq;
	if (ns->maxend_stale) {
		build_maxend(ns, 0, ns->n);
		ns->maxend_stale = false;
	}
	if (!tree_query(ns, 0, ns->n, start, end, &hits, &n, &cap)) {
		/* No memory for the list: walk every subscription instead (a
		 * device must never miss an invalidation). */
		free(hits);
		hits = NULL;
		n = ns->n;
	}
	pthread_mutex_unlock(&ns->lock);
	/* The tree cannot change until the last invalidation ends. */
	tls_in_callback++;
	for (size_t i = 0; i < n; i++) {
		struct uhmm_interval_notifier *sub = hits ? hits[i] : ns->subs[i];

		if (sub->end <= start || sub->start >= end)
			continue;	/* the walk without a list */
		struct uhmm_notifier_range r = {
			.mm = mm,
			.start = UHMM_MAX(start, sub->start),
			.end = UHMM_MIN(end, sub->end),
			.event = ev,
			.flags = UHMM_RANGE_BLOCKABLE,
			.owner = owner,
			.new_start = new_start ? new_start + (UHMM_MAX(start, sub->start) - start) : 0,
		};

		atomic_fetch_add(&mm->st_invalidations, 1);
		UHMM_WARN_ON(!sub->ops->invalidate(sub, &r, cur));
	}
	tls_in_callback--;
	free(hits);
}

void uhmm_invalidate_end(struct uhmm_mm *mm)
{
	struct uhmm_notif_state *ns = mm->notif;

	pthread_mutex_lock(&ns->lock);
	if (--ns->active == 0) {
		ns->seq++;
		for (size_t i = 0; i < ns->ndel; i++)
			tree_del(ns, ns->deferred_del[i]);
		for (size_t i = 0; i < ns->nadd; i++)
			if (tree_add(ns, ns->deferred_add[i]))
				ns->deferred_add[i]->priv = NULL;
		ns->nadd = ns->ndel = 0;
		pthread_cond_broadcast(&ns->cond);
	}
	pthread_mutex_unlock(&ns->lock);
}

void uhmm_invalidate(struct uhmm_mm *mm, enum uhmm_event ev, uint64_t start,
		     uint64_t end, void *owner, uint64_t new_start)
{
	uhmm_invalidate_start(mm, ev, start, end, owner, new_start);
	uhmm_invalidate_end(mm);
}

int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *sub,
				  struct uhmm_mm *mm, uint64_t start,
				  uint64_t length,
				  const struct uhmm_interval_notifier_ops *ops)
{
	struct uhmm_notif_state *ns;
	int err = 0;

	if (!sub || !mm || !ops || !ops->invalidate)
		return -EINVAL;
	if (!length || start + length < start)
		return -EOVERFLOW;
	if (tls_in_callback)
		return -EDEADLK;
	ns = mm->notif;
	pthread_mutex_lock(&ns->lock);
	/* already inserted here or in another mm (possibly still deferred) */
	if ((sub->priv == SUB_INSERTED || sub->priv == SUB_PENDING) && sub->mm) {
		pthread_mutex_unlock(&ns->lock);
		return -EINVAL;
	}
	sub->mm = mm;
	sub->ops = ops;
	sub->start = start;
	sub->end = start + length;
	if (ns->active) {
		/* read_begin waits until the running invalidation ends */
		sub->invalidate_seq = ns->seq;
		if (push(&ns->deferred_add, &ns->nadd, &ns->capadd, sub))
			sub->priv = SUB_PENDING;
		else
			err = -ENOMEM;
	} else {
		sub->invalidate_seq = ns->seq - 1;
		err = tree_add(ns, sub);
	}
	pthread_mutex_unlock(&ns->lock);
	return err;
}

int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub)
{
	struct uhmm_notif_state *ns;

	if (!sub || !sub->mm || (sub->priv != SUB_INSERTED && sub->priv != SUB_PENDING))
		return -EINVAL;
	if (tls_in_callback)
		return -EDEADLK;
	ns = sub->mm->notif;
	pthread_mutex_lock(&ns->lock);
	if (sub->priv == SUB_PENDING) {
		for (size_t i = 0; i < ns->nadd; i++)
			if (ns->deferred_add[i] == sub) {
				ns->deferred_add[i] = ns->deferred_add[--ns->nadd];
				break;
			}
		sub->priv = NULL;
	} else if (ns->active) {
		unsigned long seq = ns->seq;

		/* a callback may be running on it: wait for the end */
		if (!push(&ns->deferred_del, &ns->ndel, &ns->capdel, sub)) {
			while (ns->active)
				pthread_cond_wait(&ns->cond, &ns->lock);
			tree_del(ns, sub);
		}
		while (ns->seq == seq && sub->priv)
			pthread_cond_wait(&ns->cond, &ns->lock);
	} else {
		tree_del(ns, sub);
	}
	pthread_mutex_unlock(&ns->lock);
	sub->mm = NULL;
	return 0;
}

unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub)
{
	struct uhmm_notif_state *ns = sub->mm->notif;
	unsigned long seq;

	uhmm_mm_removes_settle(sub->mm);	/* a DONTNEED that returned is seen */
	pthread_mutex_lock(&ns->lock);
	seq = __atomic_load_n(&sub->invalidate_seq, __ATOMIC_ACQUIRE);
	/* Wait only for the invalidation in progress to end, as the kernel
	 * does: a stream of later ones must not hold the reader forever (its
	 * read_retry fails and its own loop decides how long to go on). */
	if (seq == ns->seq && (seq & 1)) {
		while (ns->seq == seq)
			pthread_cond_wait(&ns->cond, &ns->lock);
	}
	pthread_mutex_unlock(&ns->lock);
	return seq;
}

bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub, unsigned long seq)
{
	return __atomic_load_n(&sub->invalidate_seq, __ATOMIC_ACQUIRE) != seq;
}

bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub, unsigned long seq)
{
	return __atomic_load_n(&sub->invalidate_seq, __ATOMIC_RELAXED) != seq;
}

void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub, unsigned long cur_seq)
{
	__atomic_store_n(&sub->invalidate_seq, cur_seq, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------------- */
/* uhmm_range_fault                                                        */

#define SCAN_VEC 256

/* Presence categories for [start, end), one byte per page in @cat. */
static int scan_present(struct uhmm_mm *mm, uint64_t start, uint64_t end,
			uint8_t *cat)
{
	struct page_region vec[SCAN_VEC];
	uint64_t at = start;

	memset(cat, 0, (end - start) >> UHMM_PAGE_SHIFT);
	if (!(mm->features & UHMM_FEAT_PAGEMAP_SCAN)) {
		/* Fallback: /proc/self/pagemap, bit 63 present, 62 swapped. */
		uint64_t n = (end - start) >> UHMM_PAGE_SHIFT;

		for (uint64_t i = 0; i < n; i += 512) {
			uint64_t buf[512], k = UHMM_MIN(512, n - i);
			off_t off = (off_t)(((start >> UHMM_PAGE_SHIFT) + i) * 8);

			if (pread(mm->pagemap_fd, buf, k * 8, off) != (ssize_t)(k * 8))
				return -EFAULT;
			for (uint64_t j = 0; j < k; j++)
				cat[i + j] = buf[j] >> 63 ? PAGE_IS_PRESENT : 0;
		}
		return 0;
	}
	while (at < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.start = at,
			.end = end,
			.vec = (uint64_t)(uintptr_t)vec,
			.vec_len = SCAN_VEC,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED |
				       PAGE_IS_PFNZERO | PAGE_IS_HUGE,
		};
		long n = ioctl(mm->pagemap_fd, PAGEMAP_SCAN, &arg);

		if (n < 0)
			return -errno;
		UHMM_KERNEL_WROTE(&arg, sizeof(arg));
		UHMM_KERNEL_WROTE(vec, (size_t)n * sizeof(*vec));
		for (long i = 0; i < n; i++) {
			uint64_t s = UHMM_MAX(vec[i].start, at);

			for (uint64_t a = s; a < vec[i].end && a < end; a += UHMM_PAGE_SIZE)
				cat[(a - start) >> UHMM_PAGE_SHIFT] =
					(uint8_t)vec[i].categories;
		}
		/* A full vector may have stopped early: continue from walk_end. */
		if (n < SCAN_VEC || arg.walk_end <= at)
			at = arg.walk_end > at && n == SCAN_VEC ? arg.walk_end : end;
		else
			at = arg.walk_end;
	}
	return 0;
}

/* Physical frames from /proc/self/pagemap (0 where hidden). */
static void read_frames(struct uhmm_mm *mm, uint64_t start, uint64_t n,
			uint64_t *out)
{
	if (mm->pagemap_fd < 0 ||
	    pread(mm->pagemap_fd, out, n * 8,
		  (off_t)((start >> UHMM_PAGE_SHIFT) * 8)) != (ssize_t)(n * 8)) {
		memset(out, 0, n * 8);
		return;
	}
	for (uint64_t i = 0; i < n; i++)
		out[i] = out[i] >> 63 ? out[i] & ((1ULL << 55) - 1) : 0;
}

#define REQ_BITS (UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE)

/* Fault in [a, b) through the CPU fault path (the handler serves it). */
static int populate(struct uhmm_mm *mm, uint64_t a, uint64_t b, bool write)
{
	return uhmm_uffd_populate(mm, a, b - a, write);
}

/* Pages examined per PAGEMAP_SCAN / pagemap read; scratch stays small and
 * reused by malloc, so a snapshot touches no fresh memory. */
#define WALK_CHUNK 4096

struct walk_buf {
	uint8_t cat[WALK_CHUNK];
	uint64_t frames[WALK_CHUNK];
};

static uint64_t req_of(const struct uhmm_range *r, uint64_t i)
{
	return (r->hmm_pfns[i] & r->pfn_flags_mask) | r->default_flags;
}

/*
 * One walk from *last. Return 0 done, 1 something was faulted (walk again
 * from *last), -errno. As in the kernel, entries before *last hold final
 * output and entries from *last on still hold their input.
 */
static int walk(struct uhmm_range *r, struct uhmm_mm *mm, struct walk_buf *wb,
		uint64_t *last)
{
	struct vma_info vi = { 0 };
	uint64_t vend = 0;
	bool mapped = false, has_ents;
	int err;

	/* entries created later come with a MIGRATE/EXCLUSIVE invalidation,
	 * which the caller's read_retry catches */
	mm_lock(mm);
	has_ents = mm->nr_ents != 0;
	mm_unlock(mm);

	for (uint64_t cs = *last; cs < r->end;) {
		uint64_t ce = UHMM_MIN(r->end, cs + ((uint64_t)WALK_CHUNK << UHMM_PAGE_SHIFT));

		err = scan_present(mm, cs, ce, wb->cat);
		if (err)
			return err;
		if (mm->frames)
			read_frames(mm, cs, (ce - cs) >> UHMM_PAGE_SHIFT, wb->frames);
		for (uint64_t a = cs; a < ce; a += UHMM_PAGE_SIZE) {
			uint64_t i = (a - r->start) >> UHMM_PAGE_SHIFT;
			uint64_t k = (a - cs) >> UHMM_PAGE_SHIFT;
			uint64_t req = req_of(r, i);
			bool want = req & UHMM_PFN_REQ_FAULT;
			bool wantw = want && (req & UHMM_PFN_REQ_WRITE);
			uint64_t e = 0, out = 0;
			struct mm_vma *v;
			unsigned int order = 0;

			if (a >= vend) {
				err = uhmm_vma_query(mm, a, &vi);
				if (err && err != -ENOENT)
					return err;
				mapped = !err && vi.start <= a;
				vend = mapped ? vi.end : (!err ? vi.start : r->end);
			}
			if (!mapped || !(vi.prot & PROT_READ)) {
				if (want)
					return -EFAULT;
				r->hmm_pfns[i] = UHMM_PFN_ERROR;
				continue;
			}
			if (wantw && !(vi.prot & PROT_WRITE))
				return -EPERM;
			if (has_ents) {
				mm_lock(mm);
				v = uhmm_vma_find(mm, a);
				if (v && v->ents)
					e = v->ents[(a - v->start) >> UHMM_PAGE_SHIFT];
				if (ENT_STATE(e) == ENT_DEVICE)
					uhmm_page_get(ENT_PTR(e));
				mm_unlock(mm);
			}
			if (ENT_STATE(e) == ENT_DEVICE) {
				struct uhmm_page *pg = ENT_PTR(e);

				if (r->dev_private_owner &&
				    pg->pgmap->owner == r->dev_private_owner) {
					out = UHMM_PFN_VALID | UHMM_PFN_DEVICE |
					      uhmm_page_to_pfn(pg);
					if ((e & ENT_WRITE) && (vi.prot & PROT_WRITE))
						out |= UHMM_PFN_WRITE;
					uhmm_page_put(pg);
					r->hmm_pfns[i] = out;
					continue;
				}
				uhmm_page_put(pg);
				if (!want) {
					r->hmm_pfns[i] = 0;
					continue;
				}
				*last = a;
				err = uhmm_device_fault(mm, a, a + UHMM_PAGE_SIZE, wantw, 0, NULL);
				return err ? -EFAULT : 1;
			}
			if (ENT_STATE(e)) {	/* migrating or exclusive: not present */
				if (!want) {
					r->hmm_pfns[i] = 0;
					continue;
				}
				*last = a;
				if (ENT_STATE(e) == ENT_EXCLUSIVE) {
					err = uhmm_excl_restore(mm, a);
					return err ? err : 1;
				}
				err = populate(mm, a, a + UHMM_PAGE_SIZE, wantw);
				return err ? err : 1;
			}
			if (wb->cat[k] & PAGE_IS_PRESENT) {
				out = UHMM_PFN_VALID | (mm->frames ? wb->frames[k] : 0);
				if (wb->cat[k] & PAGE_IS_PFNZERO)
					out |= UHMM_PFN_ZERO;
				else if (vi.prot & PROT_WRITE)
					out |= UHMM_PFN_WRITE;
				if (vi.page_size > UHMM_PAGE_SIZE)
					order = (unsigned int)__builtin_ctzll(vi.page_size) -
						UHMM_PAGE_SHIFT;
				else if (wb->cat[k] & PAGE_IS_HUGE)
					order = 9;
				out |= (uint64_t)order << UHMM_PFN_ORDER_SHIFT;
			}
			if (want && (!(out & UHMM_PFN_VALID) ||
				     (wantw && !(out & UHMM_PFN_WRITE)))) {
				/* fault the run of pages that need the same fault */
				uint64_t b = a + UHMM_PAGE_SIZE, bend = UHMM_MIN(vend, ce);

				while (b < bend) {
					uint64_t j = (b - r->start) >> UHMM_PAGE_SHIFT;

					if ((req_of(r, j) & REQ_BITS) != (req & REQ_BITS) ||
					    (wb->cat[(b - cs) >> UHMM_PAGE_SHIFT] & PAGE_IS_PRESENT))
						break;
					b += UHMM_PAGE_SIZE;
				}
				*last = a;
				err = populate(mm, a, b, wantw);
				return err ? err : 1;
			}
			r->hmm_pfns[i] = out;
		}
		cs = ce;
	}
	return 0;
}

static void fill(struct uhmm_range *r, uint64_t a, uint64_t b, uint64_t v)
{
	uint64_t *p = r->hmm_pfns + ((a - r->start) >> UHMM_PAGE_SHIFT);

	for (uint64_t n = (b - a) >> UHMM_PAGE_SHIFT; n; n--)
		*p++ = v;
}

/*
 * Pure snapshot, no frames, no device entries (the common case): one
 * PAGEMAP_SCAN per VMA, entries written run by run without a per-page pass.
 * Return 0, 1 (use the general walk) or -errno.
 */
static int snapshot_fast(struct uhmm_range *r, struct uhmm_mm *mm)
{
	struct page_region vec[SCAN_VEC];

	for (uint64_t a = r->start; a < r->end;) {
		struct vma_info vi;
		int err = uhmm_vma_query(mm, a, &vi);
		uint64_t vend, at, order = 0;
		bool mapped;

		if (err && err != -ENOENT)
			return err;
		mapped = !err && vi.start <= a;
		vend = UHMM_MIN(r->end, mapped ? vi.end : (!err ? vi.start : r->end));
		if (!mapped || !(vi.prot & PROT_READ)) {
			fill(r, a, vend, UHMM_PFN_ERROR);
			a = vend;
			continue;
		}
		if (vi.page_size > UHMM_PAGE_SIZE)
			order = (uint64_t)__builtin_ctzll(vi.page_size) - UHMM_PAGE_SHIFT;
		for (at = a; at < vend;) {
			struct pm_scan_arg arg = {
				.size = sizeof(arg),
				.start = at,
				.end = vend,
				.vec = (uint64_t)(uintptr_t)vec,
				.vec_len = SCAN_VEC,
				.category_anyof_mask = PAGE_IS_PRESENT,
				.return_mask = PAGE_IS_PRESENT | PAGE_IS_PFNZERO |
					       PAGE_IS_HUGE,
			};
			long n = ioctl(mm->pagemap_fd, PAGEMAP_SCAN, &arg);
			uint64_t next;

			if (n < 0)
				return -errno;
			UHMM_KERNEL_WROTE(&arg, sizeof(arg));
			UHMM_KERNEL_WROTE(vec, (size_t)n * sizeof(*vec));
			for (long i = 0; i < n; i++) {
				uint64_t s = UHMM_MAX(vec[i].start, at);
				uint64_t e = UHMM_MIN(vec[i].end, vend);
				uint64_t c = vec[i].categories, out = UHMM_PFN_VALID;

				if (e <= s)
					continue;	/* seen already (scan quirk) */
				if (c & PAGE_IS_PFNZERO)
					out |= UHMM_PFN_ZERO;
				else if (vi.prot & PROT_WRITE)
					out |= UHMM_PFN_WRITE;
				out |= (order ? order : (c & PAGE_IS_HUGE ? 9 : 0))
				       << UHMM_PFN_ORDER_SHIFT;
				fill(r, at, s, 0);
				fill(r, s, e, out);
				at = e;
			}
			/* a full vector may have stopped early: go on from walk_end */
			next = n < SCAN_VEC ? vend : UHMM_MIN(arg.walk_end, vend);
			if (next < at)
				return 1;
			fill(r, at, next, 0);
			at = next;
			if (n == SCAN_VEC && arg.walk_end <= arg.start)
				return 1;	/* no progress: let the walk do it */
		}
		a = vend;
	}
	return 0;
}

int uhmm_range_fault(struct uhmm_range *r)
{
	struct uhmm_mm *mm;
	struct walk_buf *wb;
	uint64_t last;
	bool fast;
	int ret;

	if (!r || !r->notifier || !r->notifier->mm || !r->hmm_pfns ||
	    r->start >= r->end || !UHMM_IS_ALIGNED(r->start, UHMM_PAGE_SIZE) ||
	    !UHMM_IS_ALIGNED(r->end, UHMM_PAGE_SIZE) ||
	    r->start < r->notifier->start || r->end > r->notifier->end ||
	    ((r->default_flags | r->pfn_flags_mask) & ~REQ_BITS))
		return -EINVAL;
	if (uhmm_uffd_is_handler())
		return -EDEADLK;
	mm = r->notifier->mm;
	/* the kernel's shortcut: nothing can fault, so one pass reports all */
	mm_lock(mm);
	fast = !mm->nr_ents;
	mm_unlock(mm);
	if (fast && !((r->default_flags | r->pfn_flags_mask) & UHMM_PFN_REQ_FAULT) &&
	    !mm->frames && (mm->features & UHMM_FEAT_PAGEMAP_SCAN)) {
		if (uhmm_interval_check_retry(r->notifier, r->notifier_seq))
			return -EBUSY;
		ret = snapshot_fast(r, mm);
		if (ret <= 0)
			return ret;
	}
	wb = malloc(sizeof(*wb));
	if (!wb)
		return -ENOMEM;
	last = r->start;
	do {
		if (uhmm_interval_check_retry(r->notifier, r->notifier_seq)) {
			ret = -EBUSY;
			break;
		}
		ret = walk(r, mm, wb, &last);
	} while (ret == 1);
	free(wb);
	return ret;
}
