/* SPDX-License-Identifier: MIT */
/*
 * uhmm/mirror.h - keep a device page table coherent with the process:
 * interval notifiers and uhmm_range_fault().
 *
 * A device registers a struct uhmm_interval_notifier over the part of the
 * address space it mirrors. Whenever that part changes (munmap, MADV_DONTNEED,
 * mremap, fork, mprotect through the wrappers, a migration, exclusive access,
 * uhmm_mm_close) its ops->invalidate() runs: the device must stop using its
 * mappings of the range and call uhmm_interval_set_seq() under its own lock.
 * To (re)build mappings, the device follows the kernel's protocol:
 *
 *	again:
 *	range.notifier_seq = uhmm_interval_read_begin(&dev->notifier);
 *	ret = uhmm_range_fault(&range);		// fills range.hmm_pfns[]
 *	if (ret == -EBUSY) goto again;
 *	if (ret) return ret;
 *	pthread_mutex_lock(&dev->lock);
 *	if (uhmm_interval_read_retry(&dev->notifier, range.notifier_seq)) {
 *		pthread_mutex_unlock(&dev->lock);
 *		goto again;
 *	}
 *	... program device page table from range.hmm_pfns[] ...
 *	pthread_mutex_unlock(&dev->lock);
 *
 * Kernel counterpart: mmu_interval_notifier_insert/remove,
 * mmu_interval_read_begin/retry, mmu_interval_set_seq, hmm_range_fault().
 *
 * When a callback runs relative to the CPU change, per source:
 *   uhmm_munmap/uhmm_mremap/uhmm_madvise/uhmm_mprotect (and the preload
 *   library): before; migration (MIGRATE) and exclusive (EXCLUSIVE): before
 *   the CPU page is removed; uhmm_mm_close (RELEASE): before unregistering;
 *   plain munmap/mremap/madvise/fork seen through userfaultfd events (UNMAP,
 *   REMAP, CLEAR, PROTECTION): after the change, as soon as the handler reads
 *   the event (the kernel holds the calling thread until then).
 */
#ifndef UHMM_MIRROR_H
#define UHMM_MIRROR_H

#include <stdbool.h>
#include <stdint.h>
#include <uhmm/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_mm;
struct uhmm_interval_notifier;

enum uhmm_event {
	UHMM_EVENT_UNMAP = 0,		/* range unmapped (munmap, mremap source) */
	UHMM_EVENT_CLEAR = 1,		/* pages dropped (MADV_DONTNEED/REMOVE...) */
	UHMM_EVENT_PROTECTION = 2,	/* protection changed (mprotect, fork) */
	UHMM_EVENT_RELEASE = 5,		/* the mm is being closed */
	UHMM_EVENT_MIGRATE = 6,		/* pages migrating; owner = migrating device */
	UHMM_EVENT_EXCLUSIVE = 7,	/* pages made device-exclusive; owner set */
	UHMM_EVENT_REMAP = 8,		/* range moved by mremap (see new_start) */
};

#define UHMM_RANGE_BLOCKABLE (1U << 0)

/* The invalidation handed to ops->invalidate(); already clipped to the notifier. */
struct uhmm_notifier_range {
	struct uhmm_mm *mm;
	uint64_t start;
	uint64_t end;			/* exclusive */
	enum uhmm_event event;
	unsigned int flags;		/* UHMM_RANGE_BLOCKABLE */
	void *owner;			/* MIGRATE/EXCLUSIVE: the device, else NULL */
	uint64_t new_start;		/* REMAP: where start moved to, else 0 */
};

struct uhmm_interval_notifier_ops {
	/*
	 * invalidate - [range->start, range->end) is changing. Before returning
	 * the device must stop using its mappings of the range and call
	 * uhmm_interval_set_seq(sub, cur_seq) under the lock it uses for
	 * uhmm_interval_read_retry(). May sleep if BLOCKABLE (always set by
	 * uhmm today). Runs on a handler thread or on the thread making the
	 * change. Must not call uhmm_interval_notifier_insert/remove, nor
	 * munmap/mremap/madvise managed memory. Return true (false is only
	 * allowed when not BLOCKABLE).
	 */
	bool (*invalidate)(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq);
};

/*
 * Caller-owned; valid from insert until remove returns. Fields are uhmm's
 * except that the caller may read start/end.
 */
struct uhmm_interval_notifier {
	struct uhmm_mm *mm;
	const struct uhmm_interval_notifier_ops *ops;
	uint64_t start;
	uint64_t end;				/* exclusive */
	unsigned long invalidate_seq;		/* uhmm's */
	void *priv;				/* uhmm's */
};

/**
 * uhmm_interval_notifier_insert() - subscribe to invalidations of
 * [start, start + length) of @mm
 *
 * The range need not be managed (yet). Use read_begin/read_retry before
 * trusting any snapshot: an insert during an invalidation takes effect when
 * that invalidation ends.
 * Context: any thread but inside a notifier callback.
 * Return: 0; -EINVAL NULL args, already inserted; -EOVERFLOW length 0 or
 *   start + length wraps; -ENOMEM.
 */
UHMM_API int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *sub,
					   struct uhmm_mm *mm, uint64_t start,
					   uint64_t length,
					   const struct uhmm_interval_notifier_ops *ops);
/**
 * uhmm_interval_notifier_remove() - unsubscribe; waits for a callback in
 * flight. After return no callback runs or will run.
 * Context: never from a notifier callback (-EDEADLK).
 * Return: 0; -EINVAL NULL or not inserted; -EDEADLK called from a callback.
 */
UHMM_API int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub);

/**
 * uhmm_interval_read_begin() - start a read section; waits while an
 * invalidation covering @sub is in flight, and (up to 100 ms) for plain
 * madvise(MADV_DONTNEED) calls that have returned to be applied: the kernel
 * lets such a call return once uhmm has read its event, before uhmm has
 * invalidated. Return: the sequence to pass to read_retry (and in
 * uhmm_range.notifier_seq).
 */
UHMM_API unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub);
/** uhmm_interval_read_retry() - true if @seq is stale; call under the driver lock. */
UHMM_API bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub,
				       unsigned long seq);
/** uhmm_interval_check_retry() - lockless hint: true means read_retry will be true. */
UHMM_API bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub,
					unsigned long seq);
/** uhmm_interval_set_seq() - from ops->invalidate, under the driver lock. */
UHMM_API void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub,
				    unsigned long cur_seq);

/* ---------------------------------------------------------------------- */
/* uhmm_range_fault() entries: 64 bits per page                           */

#define UHMM_PFN_VALID (1ULL << 63)	/* out: readable */
#define UHMM_PFN_WRITE (1ULL << 62)	/* out: writable (implies VALID) */
#define UHMM_PFN_ERROR (1ULL << 61)	/* out: no access possible */
#define UHMM_PFN_ZERO (1ULL << 60)	/* out: the shared zero page */
#define UHMM_PFN_DEVICE (1ULL << 59)	/* out: frame is a device pfn */
#define UHMM_PFN_ORDER_SHIFT 53		/* out: 5-bit map order, bits 53..57 */
#define UHMM_PFN_ORDER_MASK (0x1fULL << UHMM_PFN_ORDER_SHIFT)
#define UHMM_PFN_FLAGS (~0ULL << UHMM_PFN_ORDER_SHIFT)
#define UHMM_PFN_REQ_FAULT UHMM_PFN_VALID	/* in: must end VALID */
#define UHMM_PFN_REQ_WRITE UHMM_PFN_WRITE	/* in: must end WRITE */

static inline unsigned int uhmm_pfn_to_map_order(uint64_t e)
{
	return (unsigned int)((e & UHMM_PFN_ORDER_MASK) >> UHMM_PFN_ORDER_SHIFT);
}

static inline uint64_t uhmm_pfn_frame(uint64_t e)
{
	return e & ~UHMM_PFN_FLAGS;
}

/* Caller-owned description of one uhmm_range_fault() call. */
struct uhmm_range {
	struct uhmm_interval_notifier *notifier;	/* gives the mm */
	unsigned long notifier_seq;	/* from uhmm_interval_read_begin() */
	uint64_t start;			/* page aligned */
	uint64_t end;			/* exclusive, page aligned */
	uint64_t *hmm_pfns;		/* (end - start) / page entries, in/out */
	uint64_t default_flags;		/* REQ_* applied to every page */
	uint64_t pfn_flags_mask;	/* per-page REQ_* bits honoured */
	void *dev_private_owner;	/* report these device pages, never fault */
};

/**
 * uhmm_range_fault() - snapshot, and optionally fault in, the CPU state of a range
 * @range: range, notifier and entry array; entries carry UHMM_PFN_REQ_* on input
 *
 * Per page the request is (hmm_pfns[i] & pfn_flags_mask) | default_flags.
 * Without REQ_FAULT nothing is faulted: a missing page reports 0. With it,
 * missing pages are populated (writable with REQ_WRITE) and a device-private
 * page of another owner is migrated back to RAM first. Output: VALID, WRITE,
 * ERROR, ZERO, the map order (0 for 4 KiB, 9 for 2 MiB, 18 for 1 GiB) and
 * the frame: the physical pfn when the mm was opened with UHMM_MM_FRAMES and
 * /proc/self/pagemap shows it (else 0; use the virtual address), or the device pfn with UHMM_PFN_DEVICE for a
 * device-private page of dev_private_owner (never faulted).
 * Context: any thread except a handler thread or a notifier callback; may block.
 * Return: 0 on success, or
 *   -EINVAL  bad range, flags or notifier, or range outside the notifier;
 *   -EFAULT  unmapped or PROT_NONE page requested, or a device page could
 *            not be brought back;
 *   -EPERM   write requested on read-only memory;
 *   -EBUSY   the range changed (interval sequence moved): call read_begin again.
 */
UHMM_API int uhmm_range_fault(struct uhmm_range *range);

#ifdef __cplusplus
}
#endif
#endif
