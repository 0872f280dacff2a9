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
 * and removes rebuild the array, O(n), which is cheap next to a callback.
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
	build_maxend(ns, 0, ns->n);
	sub->priv = SUB_INSERTED;
	return 0;
}

static void tree_del(struct uhmm_notif_state *ns, struct uhmm_interval_notifier *sub)
{
	for (size_t i = 0; i < ns->n; i++)
		if (ns->subs[i] == sub) {
			memmove(&ns->subs[i], &ns->subs[i + 1],
				(ns->n - i - 1) * sizeof(*ns->subs));
			ns->n--;
			break;
		}
	build_maxend(ns, 0, ns->n);
	sub->priv = NULL;
}

static void tree_query(struct uhmm_notif_state *ns, size_t lo, size_t hi,
		       uint64_t s, uint64_t e, struct uhmm_interval_notifier ***out,
		       size_t *n, size_t *cap)
{
	size_t mid;

	if (lo >= hi)
		return;
	mid = lo + (hi - lo) / 2;
	if (ns->maxend[mid] <= s)
		return;		/* nothing in this subtree ends after s */
	tree_query(ns, lo, mid, s, e, out, n, cap);
	if (ns->subs[mid]->start >= e)
		return;		/* this node and its right subtree start too late */
	if (ns->subs[mid]->end > s) {
		if (*n == *cap) {
			size_t c = *cap ? *cap * 2 : 8;
			void *p = realloc(*out, c * sizeof(**out));

			if (!p)
				return;
			*out = p;
			*cap = c;
		}
		(*out)[(*n)++] = ns->subs[mid];
	}
	tree_query(ns, mid + 1, hi, s, e, out, n, cap);
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
	tree_query(ns, 0, ns->n, start, end, &hits, &n, &cap);
	pthread_mutex_unlock(&ns->lock);
	/* The tree cannot change until the last invalidation ends. */
	tls_in_callback++;
	for (size_t i = 0; i < n; i++) {
		struct uhmm_interval_notifier *sub = hits[i];
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
	if (sub->priv == SUB_INSERTED || sub->priv == SUB_PENDING) {
		for (size_t i = 0; i < ns->n; i++)
			if (ns->subs[i] == sub) {
				pthread_mutex_unlock(&ns->lock);
				return -EINVAL;
			}
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

	pthread_mutex_lock(&ns->lock);
	seq = __atomic_load_n(&sub->invalidate_seq, __ATOMIC_ACQUIRE);
	while (seq == ns->seq && (ns->seq & 1)) {
		pthread_cond_wait(&ns->cond, &ns->lock);
		seq = __atomic_load_n(&sub->invalidate_seq, __ATOMIC_ACQUIRE);
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
	if (madvise((void *)(uintptr_t)a, b - a,
		    write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
		return 0;
	if (errno == EINVAL || errno == ENOMEM || errno == EFAULT)
		return -EFAULT;
	return -errno;
}

/*
 * One walk. Return 0 done, 1 something was faulted (walk again), -errno.
 * Entries before a faulted page hold final output; the rest keep input.
 */
static int walk(struct uhmm_range *r, struct uhmm_mm *mm, uint64_t *in_req,
		uint8_t *cat, uint64_t *frames)
{
	uint64_t n = (r->end - r->start) >> UHMM_PAGE_SHIFT;
	int err;

	err = scan_present(mm, r->start, r->end, cat);
	if (err)
		return err;
	read_frames(mm, r->start, n, frames);
	for (uint64_t addr = r->start; addr < r->end;) {
		struct vma_info vi;
		uint64_t vend;
		bool mapped;

		err = uhmm_vma_query(mm, addr, &vi);
		mapped = !err && vi.start <= addr;
		if (err && err != -ENOENT)
			return err;
		vend = mapped ? UHMM_MIN(vi.end, r->end)
			      : (!err ? UHMM_MIN(vi.start, r->end) : r->end);
		for (uint64_t a = addr; a < vend; a += UHMM_PAGE_SIZE) {
			uint64_t i = (a - r->start) >> UHMM_PAGE_SHIFT;
			uint64_t req = in_req[i];
			bool want = req & UHMM_PFN_REQ_FAULT;
			bool wantw = want && (req & UHMM_PFN_REQ_WRITE);
			uint64_t e = 0, out = 0;
			struct mm_vma *v;
			unsigned int order = 0;

			if (!mapped || !(vi.prot & PROT_READ)) {
				if (want)
					return -EFAULT;
				r->hmm_pfns[i] = UHMM_PFN_ERROR;
				continue;
			}
			if (wantw && !(vi.prot & PROT_WRITE))
				return -EPERM;
			if (mm->nr_ents) {
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
				err = uhmm_device_fault(mm, a, wantw, 0);
				return err ? -EFAULT : 1;
			}
			if (e) {	/* migrating or exclusive: not present */
				if (!want) {
					r->hmm_pfns[i] = 0;
					continue;
				}
				if (ENT_STATE(e) == ENT_EXCLUSIVE) {
					err = uhmm_excl_restore(mm, a);
					return err ? err : 1;
				}
				err = populate(mm, a, a + UHMM_PAGE_SIZE, wantw);
				return err ? err : 1;
			}
			if (cat[i] & PAGE_IS_PRESENT) {
				out = UHMM_PFN_VALID | frames[i];
				if (cat[i] & PAGE_IS_PFNZERO)
					out |= UHMM_PFN_ZERO;
				else if (vi.prot & PROT_WRITE)
					out |= UHMM_PFN_WRITE;
				if (vi.page_size > UHMM_PAGE_SIZE)
					order = (unsigned int)__builtin_ctzll(vi.page_size) -
						UHMM_PAGE_SHIFT;
				else if (cat[i] & PAGE_IS_HUGE)
					order = 9;
				out |= (uint64_t)order << UHMM_PFN_ORDER_SHIFT;
			}
			if (want && (!(out & UHMM_PFN_VALID) ||
				     (wantw && !(out & UHMM_PFN_WRITE)))) {
				/* fault the run of pages that need the same fault */
				uint64_t b = a + UHMM_PAGE_SIZE;

				while (b < vend) {
					uint64_t j = (b - r->start) >> UHMM_PAGE_SHIFT;

					if ((in_req[j] & REQ_BITS) != (req & REQ_BITS) ||
					    (cat[j] & PAGE_IS_PRESENT))
						break;
					b += UHMM_PAGE_SIZE;
				}
				err = populate(mm, a, b, wantw);
				return err ? err : 1;
			}
			r->hmm_pfns[i] = out;
		}
		addr = vend;
	}
	return 0;
}

int uhmm_range_fault(struct uhmm_range *r)
{
	struct uhmm_mm *mm;
	uint64_t n, *in_req = NULL, *frames = NULL;
	uint8_t *cat = NULL;
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
	n = (r->end - r->start) >> UHMM_PAGE_SHIFT;
	in_req = malloc(n * sizeof(*in_req));
	frames = malloc(n * sizeof(*frames));
	cat = malloc(n);
	if (!in_req || !frames || !cat) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < n; i++)
		in_req[i] = (r->hmm_pfns[i] & r->pfn_flags_mask) | r->default_flags;
	do {
		if (uhmm_interval_check_retry(r->notifier, r->notifier_seq)) {
			ret = -EBUSY;
			break;
		}
		ret = walk(r, mm, in_req, cat, frames);
	} while (ret == 1);
out:
	free(in_req);
	free(frames);
	free(cat);
	return ret;
}
