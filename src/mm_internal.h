/* SPDX-License-Identifier: MIT */
/*
 * mm_internal.h - the uhmm_mm object shared by mm.c (ranges, CPU entries,
 * wrappers, fork), uffd.c (the handler threads), mirror.c (notifiers,
 * range_fault) and migrate.c.
 *
 * Lock order: fork_lock (counter+cond) -> mm->lock -> notifier lock.
 * mm->lock may be held across UFFDIO_* ioctls (they never wait for the
 * handler: they fail -EAGAIN instead) but never across munmap, mremap,
 * madvise, fork, or any driver callback.
 */
#ifndef UHMM_MM_INTERNAL_H
#define UHMM_MM_INTERNAL_H

#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <uhmm/mm.h>
#include <uhmm/mirror.h>
#include <uhmm/pagemap.h>
#include "internal.h"

/*
 * CPU entry of one managed page that is not ordinary RAM: a pointer with
 * the state in the low bits. 0 = ordinary (present or not yet touched).
 */
#define ENT_STATE_MASK 3ULL
#define ENT_DEVICE 1ULL		/* ptr: struct uhmm_page (one reference) */
#define ENT_MIGRATING 2ULL	/* ptr: device page or NULL; isolated */
#define ENT_EXCLUSIVE 3ULL	/* ptr: struct uhmm_excl */
#define ENT_WRITE 4ULL		/* device mapping writable */

#define ENT_PTR(e) ((void *)(uintptr_t)((e) & ~7ULL))
#define ENT_STATE(e) ((e) & ENT_STATE_MASK)
#define ENT_MAKE(p, st, w) ((uint64_t)(uintptr_t)(p) | (st) | ((w) ? ENT_WRITE : 0))

enum vma_kind { VMA_ANON = 0, VMA_SHMEM = 1, VMA_HUGETLB = 2, VMA_INTERNAL = 3 };

/* One managed range, as registered with the userfaultfd. */
struct mm_vma {
	uint64_t start, end;
	enum vma_kind kind;
	unsigned int page_shift;	/* 12, 21 or 30 */
	bool allocated;			/* from uhmm_mm_alloc */
	uint64_t *ents;			/* per 4 KiB page, NULL until needed */
	uint64_t nents;			/* non-zero entries */
};

/* An event the caller has already announced (wrappers, own DONTNEED/munmap). */
struct mm_suppress {
	uint8_t event;			/* UFFD_EVENT_* */
	uint64_t start, end;
};

/*
 * A plain MADV_DONTNEED whose REMOVE event the handler has read: the kernel
 * zaps the range only after that, at a moment user space cannot observe. A
 * page still present in it may hold data the zap is about to drop, so it is
 * not taken (migration, exclusive) until it is absent or the record expires.
 */
struct mm_zap {
	uint64_t start, end;
	uint64_t read_ns;		/* when the event was read (CLOCK_MONOTONIC) */
};

#define MM_MAX_ZAP 32
#define MM_ZAP_EXPIRE_NS 2000000000ULL	/* the zap follows the read within microseconds */

/* Exclusive access: the page's data parked in @buf while a device owns it. */
struct uhmm_excl {
	void *buf;			/* one page of its own managed mapping */
	void *owner;
	struct uhmm_mm *mm;
} __attribute__((aligned(8)));

#define MM_MAX_SUPPRESS 32
#define MM_BACKLOG 256

struct uhmm_notif_state;

struct uhmm_mm {
	pthread_mutex_t lock;		/* vmas, ents, suppress, backlog */
	int uffd;
	int wake_fd;			/* eventfd: stop the handlers */
	int pagemap_fd;			/* /proc/self/pagemap */
	int maps_fd;			/* /proc/self/maps (PROCMAP_QUERY) */
	unsigned int features;		/* UHMM_FEAT_* */
	uint64_t uffd_features;
	unsigned int spin_usec;
	unsigned int fault_around;	/* pages */
	bool frames;			/* UHMM_MM_FRAMES */
	bool inthread;			/* UHMM_MM_INTHREAD: SIGBUS mode */
	unsigned int nr_handlers;
	pthread_t *handlers;
	atomic_bool stop;

	struct mm_vma *vmas;		/* sorted by start */
	size_t nr_vmas, cap_vmas;
	uint64_t nr_ents;		/* over all vmas */

	struct mm_suppress suppress[MM_MAX_SUPPRESS];
	unsigned int nr_suppress;
	struct mm_zap zap[MM_MAX_ZAP];	/* under lock */
	unsigned int nr_zap;

	/* messages drained by a handler while it waited inside a callback */
	pthread_mutex_t backlog_lock;	/* backlog only; leaf lock */
	struct uffd_msg backlog[MM_BACKLOG];
	unsigned int nr_backlog;

	/*
	 * A MADV_DONTNEED zaps only once its REMOVE event has been read, so a
	 * migration writing a page back into the process must not do so while
	 * a REMOVE is read but not applied (the zap could come after the
	 * write: the dropped data would come back). Handlers read under the
	 * write side of read_gate and count the REMOVEs read; writers into the
	 * process hold the read side and wait for the count to drop to 0
	 * (uhmm_mm_lock_gated).
	 */
	pthread_rwlock_t read_gate;
	atomic_uint removes_unapplied;

	/* batch barrier: wrappers wait until events they caused are handled */
	pthread_cond_t batch_cond;	/* under backlog_lock */
	uint64_t batch_start, batch_done;

	/* migrations in flight vs fork (see mm.c) */
	pthread_cond_t fork_cond;	/* under lock */
	unsigned int migrations;
	bool forking;
	/*
	 * glibc's fork() holds every malloc arena lock while the kernel waits
	 * for a handler to read the FORK event; a handler inside malloc then
	 * never reads it. From the end of atfork_prepare to the parent's
	 * atfork handler the handlers park: they read messages into the
	 * backlog (no allocation) and run none (uffd.c).
	 */
	atomic_bool fork_park;
	unsigned int parked;		/* under backlog_lock; batch_cond */

	struct uhmm_notif_state *notif;

	/* one idle migration staging area, reused (migrate.c; under lock) */
	void *stage_cache;
	uint64_t stage_cache_pages;
	void *dst_cache;		/* one idle uhmm_migrate_dst_buf area */
	uint64_t dst_cache_pages;
	struct uhmm_block_cache ctl_cache;	/* one idle migration control block */

	_Atomic uint64_t st_faults, st_fills, st_filled_pages, st_device_faults,
		st_events, st_invalidations;

	struct uhmm_mm *next_open;	/* global list of open mms */
	void *zero_huge;		/* zeroed source for hugetlb fills */
	size_t zero_huge_len;
};

/* mm.c */
UHMM_HIDDEN struct mm_vma *uhmm_vma_find(struct uhmm_mm *mm, uint64_t addr);
UHMM_HIDDEN bool uhmm_vma_ents_alloc(struct mm_vma *v);

/* The entry of @addr (inside @v); NULL if @v has no table and !@alloc (or
 * it cannot be allocated). mm->lock held. */
static inline uint64_t *uhmm_vma_ent(struct mm_vma *v, uint64_t addr, bool alloc)
{
	if (!v->ents && !(alloc && uhmm_vma_ents_alloc(v)))
		return NULL;
	return &v->ents[(addr - v->start) >> UHMM_PAGE_SHIFT];
}

/* Set entry *@pe of @v, keeping the counts of non-zero entries. */
static inline void uhmm_ent_store(struct uhmm_mm *mm, struct mm_vma *v, uint64_t *pe,
				  uint64_t val)
{
	if (!*pe && val) {
		v->nents++;
		mm->nr_ents++;
	} else if (*pe && !val) {
		v->nents--;
		mm->nr_ents--;
	}
	*pe = val;
}

/* Set the entry of @addr (mm->lock held); allocates the table for a non-zero value. */
static inline void uhmm_ent_set(struct uhmm_mm *mm, struct mm_vma *v, uint64_t addr,
				uint64_t val)
{
	uint64_t *pe = uhmm_vma_ent(v, addr, val != 0);

	if (pe)
		uhmm_ent_store(mm, v, pe, val);
}
UHMM_HIDDEN int uhmm_mm_bring_back(struct uhmm_mm *mm, uint64_t start,
				   uint64_t end);
/* Bring device page @addr back through its migrate_to_ram (fault->end =
 * @end: the pages up to there are wanted back too); *back (if given): the
 * device pages the driver's migrations brought back. */
UHMM_HIDDEN int uhmm_device_fault(struct uhmm_mm *mm, uint64_t addr, uint64_t end,
				  bool write, int tid, uint64_t *back);
UHMM_HIDDEN int uhmm_excl_restore(struct uhmm_mm *mm, uint64_t addr);
UHMM_HIDDEN void uhmm_mm_suppress_add(struct uhmm_mm *mm, uint8_t event,
				      uint64_t start, uint64_t end);
UHMM_HIDDEN bool uhmm_mm_suppressed(struct uhmm_mm *mm, uint8_t event,
				    uint64_t start, uint64_t end);
/* addr is inside a uhmm_madvise() drop in progress (mm->lock held) */
UHMM_HIDDEN bool uhmm_mm_dropping_locked(struct uhmm_mm *mm, uint64_t addr);
/* a plain DONTNEED's REMOVE was read (mm->lock held; see struct mm_zap) */
UHMM_HIDDEN void uhmm_mm_zap_note_locked(struct uhmm_mm *mm, uint64_t start, uint64_t end);
/* page @addr is present and a noted zap may still drop it (mm->lock held) */
UHMM_HIDDEN bool uhmm_mm_zap_pending_locked(struct uhmm_mm *mm, uint64_t addr);
/*
 * A DONTNEED may still drop page @addr (uhmm_madvise's in progress, or a
 * plain one's zap pending): the page is not to be taken. mm->lock held.
 */
static inline bool uhmm_mm_drop_pending_locked(struct uhmm_mm *mm, uint64_t addr)
{
	return (mm->nr_suppress && uhmm_mm_dropping_locked(mm, addr)) ||
	       (mm->nr_zap && uhmm_mm_zap_pending_locked(mm, addr));
}
UHMM_HIDDEN void uhmm_mm_apply_unmap(struct uhmm_mm *mm, uint64_t start,
				     uint64_t end, bool clear_only);
UHMM_HIDDEN void uhmm_mm_apply_remap(struct uhmm_mm *mm, uint64_t from,
				     uint64_t to, uint64_t len);
UHMM_HIDDEN void uhmm_mm_migration_begin(struct uhmm_mm *mm);
/*
 * Bring back to RAM the pages of [start, end) whose CPU entry @want accepts
 * (device pages by migrate_to_ram, exclusive ones by restoring them). A
 * page that fails does not stop the walk. Passes repeat while one brings
 * pages back, and up to 64 times, 1 ms apart, while pages fail. Return: the
 * pages brought back; *err: the last error of the final pass, 0 if none.
 */
typedef bool (*uhmm_ent_want_fn)(uint64_t e, void *arg);
UHMM_HIDDEN int uhmm_mm_bring_back_if(struct uhmm_mm *mm, uint64_t start, uint64_t end,
				      uhmm_ent_want_fn want, void *arg, int *err);
/* kernel view of the mapping at addr (PROCMAP_QUERY, else /proc/self/maps) */
struct vma_info {
	uint64_t start, end;
	unsigned int prot;		/* PROT_READ | PROT_WRITE | PROT_EXEC */
	bool shared, file;
	uint64_t page_size;
};
/* First mapping that covers or follows addr: 0, or -ENOENT (none). */
UHMM_HIDDEN int uhmm_vma_query(struct uhmm_mm *mm, uint64_t addr,
			       struct vma_info *out);
UHMM_HIDDEN void uhmm_mm_migration_end(struct uhmm_mm *mm);

/* uffd.c */
UHMM_HIDDEN int uhmm_uffd_open(struct uhmm_mm *mm);
UHMM_HIDDEN int uhmm_uffd_register(struct uhmm_mm *mm, uint64_t start,
				   uint64_t len, bool wp);
UHMM_HIDDEN int uhmm_uffd_unregister(struct uhmm_mm *mm, uint64_t start,
				     uint64_t len);
UHMM_HIDDEN int uhmm_uffd_start(struct uhmm_mm *mm);
/* mm->lock plus the read side of read_gate, for writes of migrated data
 * into the process; returns whether the gate was taken (never on a handler
 * thread). Under the gate, UFFDIO copy/move report -EAGAIN instead of
 * waiting for the handler: relock lets go, lets it catch up, takes both. */
UHMM_HIDDEN bool uhmm_mm_lock_gated(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_mm_unlock_gated(struct uhmm_mm *mm, bool gated);
UHMM_HIDDEN bool uhmm_mm_relock_gated(struct uhmm_mm *mm, bool gated);
/* In-thread (SIGBUS) mode: route SIGBUS on @mm's ranges to its fault path. */
UHMM_HIDDEN int uhmm_uffd_inthread_add(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_uffd_inthread_del(struct uhmm_mm *mm);
/* Fault [start, start+len) in through the CPU fault path, in either mode. */
UHMM_HIDDEN int uhmm_uffd_populate(struct uhmm_mm *mm, uint64_t start,
				   uint64_t len, bool write);
UHMM_HIDDEN void uhmm_uffd_stop(struct uhmm_mm *mm);
UHMM_HIDDEN bool uhmm_uffd_is_handler(void);
UHMM_HIDDEN void uhmm_uffd_drain(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_uffd_retry_wait(struct uhmm_mm *mm, int *tries);
/* UFFDIO_COPY of [dst, dst+len), retried while mm changes; *copied (if
 * given) gets the bytes placed, also when it fails part way. */
UHMM_HIDDEN int uhmm_uffd_copy(struct uhmm_mm *mm, uint64_t dst, const void *src,
			       uint64_t len, bool wake, uint64_t *copied);
UHMM_HIDDEN int uhmm_uffd_move(struct uhmm_mm *mm, uint64_t dst, uint64_t src,
			       uint64_t len, uint64_t *moved);
UHMM_HIDDEN int uhmm_uffd_wake(struct uhmm_mm *mm, uint64_t start, uint64_t len);
UHMM_HIDDEN int uhmm_uffd_fill(struct uhmm_mm *mm, uint64_t start,
			       uint64_t len, bool write, uint64_t *done);
UHMM_HIDDEN void uhmm_mm_batch_barrier(struct uhmm_mm *mm);
/* Wait (bounded) until every REMOVE read so far has been applied. */
UHMM_HIDDEN void uhmm_mm_removes_settle(struct uhmm_mm *mm);
/* atfork: park the handlers before fork(), release them after */
UHMM_HIDDEN void uhmm_uffd_fork_park(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_uffd_fork_unpark(struct uhmm_mm *mm);

/* mirror.c */
UHMM_HIDDEN int uhmm_notif_init(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_notif_fini(struct uhmm_mm *mm);
/* Bracket a change: callbacks run in _start, the sequence stays odd (and
 * read_begin waits) until the matching _end. */
UHMM_HIDDEN void uhmm_invalidate_start(struct uhmm_mm *mm, enum uhmm_event ev,
				       uint64_t start, uint64_t end, void *owner,
				       uint64_t new_start);
UHMM_HIDDEN void uhmm_invalidate_end(struct uhmm_mm *mm);
UHMM_HIDDEN void uhmm_invalidate(struct uhmm_mm *mm, enum uhmm_event ev,
				 uint64_t start, uint64_t end, void *owner,
				 uint64_t new_start);

/* migrate.c */
UHMM_HIDDEN int uhmm_pagemap_evict(struct uhmm_pagemap *pgmap);
UHMM_HIDDEN void uhmm_migrate_mm_fini(struct uhmm_mm *mm);
/*
 * Wakes of a finalize inside a device fault are deferred until the fault
 * path has dropped its own page reference, so a woken CPU thread never sees
 * the device page still counted (mm.c sets it, migrate.c fills it).
 */
struct uhmm_wake_defer {
	bool active;
	bool fault_done;	/* finalize brought the faulting page back */
	bool fault_busy;	/* setup found it in another migration */
	struct uhmm_page *fault_page;
	uint64_t fault_addr;
	uint64_t back;		/* device pages finalize brought back */
	uint64_t start, end;
};
UHMM_HIDDEN extern __thread struct uhmm_wake_defer uhmm_wake_defer;

/* global list of open mms (mm.c); lock guards next_open */
UHMM_HIDDEN extern pthread_mutex_t uhmm_mm_list_lock;
UHMM_HIDDEN extern struct uhmm_mm *uhmm_mm_list;

#endif

/*
 * Take mm->lock. A handler thread never sleeps on it: an application thread
 * holding it may be waiting for the handler to read an event (UFFDIO_*
 * -EAGAIN while munmap is in flight), so the handler keeps draining the fd.
 */
/* mm->lock held by this thread (in-thread faults must not wait for it) */
extern __thread unsigned int uhmm_tls_mm_locked;

static inline void mm_lock(struct uhmm_mm *mm)
{
	int tries = 0;

	if (!uhmm_uffd_is_handler()) {
		pthread_mutex_lock(&mm->lock);
	} else {
		while (pthread_mutex_trylock(&mm->lock))
			uhmm_uffd_retry_wait(mm, &tries);
	}
	uhmm_tls_mm_locked++;
}

/* True when taken; never waits. */
static inline bool mm_trylock(struct uhmm_mm *mm)
{
	if (pthread_mutex_trylock(&mm->lock))
		return false;
	uhmm_tls_mm_locked++;
	return true;
}

static inline void mm_unlock(struct uhmm_mm *mm)
{
	uhmm_tls_mm_locked--;
	pthread_mutex_unlock(&mm->lock);
}
