/* SPDX-License-Identifier: MIT */
/*
 * uhmm/mm.h - the process address space as uhmm sees it.
 *
 * A struct uhmm_mm owns one userfaultfd and the handler thread(s) reading it.
 * Memory comes under management with uhmm_mm_manage() (an existing private
 * anonymous, memfd/shmem or hugetlbfs mapping) or uhmm_mm_alloc(). Managed
 * memory behaves exactly like ordinary memory for the application: the
 * handler serves first-touch faults itself, filling a whole fault-around
 * window per fault. What uhmm adds is that pages of managed memory can live
 * in device memory (see migrate.h) and that devices can mirror it coherently
 * (see mirror.h): munmap, MADV_DONTNEED, mremap and fork of managed memory are
 * seen by the handler and turned into invalidations.
 *
 * Kernel counterpart: struct mm_struct as seen by HMM (its VMAs, page tables
 * and the mmu notifier list); the handler thread plays the page-fault path.
 *
 *	struct uhmm_mm *mm;
 *	void *p;
 *	uhmm_mm_open(&mm, NULL);		// one per process is typical
 *	uhmm_mm_alloc(mm, 64 << 20, 0, &p);	// managed, zero-filled on touch
 *	...					// mirror it, migrate it
 *	uhmm_munmap(p, 64 << 20);		// invalidates, then unmaps
 *	uhmm_mm_close(mm);			// RELEASE to every notifier
 *
 * Threads: the handler thread(s) never take locks an application thread may
 * hold across munmap/mremap/madvise; drivers must not hold their own locks
 * across those calls either (the kernel's rule for notifier callbacks).
 * fork(): before the fork, device-resident and exclusive pages of every open
 * mm are brought back to system memory (cost: one migration per such page),
 * so the child sees plain memory with the parent's data; managed memory is
 * not managed in the child and the child must not use the mm. Meanwhile
 * migrations started by other threads wait until the fork is done (a page
 * in flight would be a hole in the child), so a driver must not start one
 * while holding a lock its migrate_to_ram() takes.
 */
#ifndef UHMM_MM_H
#define UHMM_MM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uhmm/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_mm;

struct uhmm_mm_opts {
	size_t sz;			/* sizeof(struct uhmm_mm_opts) */
	unsigned int nr_handlers;	/* handler threads, 0 = 1 */
	/* Busy-poll the fd this long after each message before sleeping:
	 * trades a core for fault latency (LIMITS.md: ~60 us wake-up). */
	unsigned int spin_usec;
	/* Pages filled per first-touch fault (power of two, 1..512; 0 = 512). */
	unsigned int fault_around_pages;
	unsigned int flags;		/* UHMM_MM_* */
};

/*
 * uhmm_range_fault() reports physical frames (read from /proc/self/pagemap,
 * visible to CAP_SYS_ADMIN only). Off by default: that read makes a snapshot
 * about 5x slower than PAGEMAP_SCAN alone, and a device in user space uses
 * virtual addresses anyway; without it the frame of a system page is 0.
 */
#define UHMM_MM_FRAMES (1U << 0)

/*
 * Resolve CPU faults in the faulting thread (userfaultfd SIGBUS mode)
 * instead of waking a handler thread: a first touch or a fault-back from a
 * device costs a signal (~3-8 us here) instead of a cross-CPU wake-up
 * (~60 us). uhmm installs a process-wide SIGBUS handler; SIGBUS it does not
 * own goes to the handler installed before it (or the default action).
 * Costs: a system call that reads or writes a page that is not present (never
 * touched, or on a device) fails with EFAULT instead of waiting; call
 * uhmm_mm_populate() on such buffers first. Code that touches managed memory
 * while holding a lock the fault path needs (malloc's, a driver's) must not
 * run in this mode. Needs UFFD_FEATURE_SIGBUS, else uhmm_mm_open() fails
 * with -EOPNOTSUPP.
 */
#define UHMM_MM_INTHREAD (1U << 1)

/* Counters, read with uhmm_mm_stat(). */
struct uhmm_mm_stat {
	uint64_t faults;		/* fault messages handled */
	uint64_t fills;			/* first-touch faults served by fill */
	uint64_t filled_pages;		/* pages filled by fault-around */
	uint64_t device_faults;		/* faults that called migrate_to_ram */
	uint64_t events;		/* UNMAP/REMOVE/REMAP/FORK events */
	uint64_t invalidations;		/* invalidations delivered */
};

/**
 * uhmm_mm_open() - create the process's uhmm_mm: userfaultfd + handler threads
 * @out: the new mm
 * @opts: NULL for defaults
 *
 * Opens a userfaultfd (syscall, else /dev/userfaultfd), negotiates MISSING and
 * WP faults with the UNMAP, REMOVE, REMAP and FORK events, probes optional
 * kernel features (UFFDIO_MOVE, PAGEMAP_SCAN, PROCMAP_QUERY) and starts the
 * handler thread(s).
 * Context: any thread; not async-signal-safe.
 * Return: 0, or -EINVAL bad opts or unknown flags; -ENOSYS/-EPERM no usable userfaultfd;
 *   -EOPNOTSUPP a required feature is missing; -ENOMEM; -EAGAIN no thread.
 */
UHMM_API int uhmm_mm_open(struct uhmm_mm **out, const struct uhmm_mm_opts *opts);

/**
 * uhmm_mm_close() - release every notifier (RELEASE event), bring device pages
 * back, unregister managed memory (it stays mapped, as ordinary memory), stop
 * the handler threads and free the mm. NULL does nothing.
 * Context: any thread but a handler thread or a notifier callback.
 */
UHMM_API void uhmm_mm_close(struct uhmm_mm *mm);

/**
 * uhmm_mm_manage() - bring [addr, addr+len) under management
 *
 * The range must be mapped, private anonymous, memfd/shmem or hugetlbfs, and
 * not overlap managed memory. Pages already present stay as they are.
 * Return: 0; -EINVAL NULL/unaligned/empty; -EFAULT not entirely mapped;
 *   -EOPNOTSUPP file-backed page cache or special mapping; -EEXIST overlaps
 *   managed memory; -ENOMEM.
 */
UHMM_API int uhmm_mm_manage(struct uhmm_mm *mm, void *addr, size_t len);

/**
 * uhmm_mm_unmanage() - stop managing [addr, addr+len), which must be entirely
 * managed (all or part of what uhmm_mm_manage() or uhmm_mm_alloc() gave);
 * device pages are brought back first. The memory stays mapped.
 * Return: 0; -EINVAL bad args; -ENOENT some of the range is not managed.
 */
UHMM_API int uhmm_mm_unmanage(struct uhmm_mm *mm, void *addr, size_t len);

/**
 * uhmm_mm_populate() - make managed pages present, as a CPU access would
 * @mm: the mm
 * @addr: page-aligned start
 * @len: bytes, a multiple of the page size
 * @write: fault for writing (a device page comes back writable)
 *
 * First-touch fills and device pages are brought in through the same path as
 * a CPU access. Use it before handing a buffer to a system call in
 * UHMM_MM_INTHREAD mode; in the default mode it is MADV_POPULATE_(READ|WRITE).
 * Context: any application thread; not on a uhmm handler thread.
 * Return: 0, or -EINVAL bad args; -EFAULT part of the range is not mapped
 *   (or not writable for @write); -EDEADLK on a handler thread.
 */
UHMM_API int uhmm_mm_populate(struct uhmm_mm *mm, void *addr, size_t len, bool write);

/* uhmm_mm_alloc flags */
#define UHMM_ALLOC_HUGE (1U << 0)	/* 2 MiB aligned, MADV_HUGEPAGE */

/**
 * uhmm_mm_alloc() - map and manage @len bytes of anonymous memory
 * Return: 0 and *out; -EINVAL bad args/flags; -ENOMEM.
 */
UHMM_API int uhmm_mm_alloc(struct uhmm_mm *mm, size_t len, unsigned int flags,
			   void **out);
/** uhmm_mm_free() - unmanage and unmap memory from uhmm_mm_alloc(). Return: 0, -EINVAL, -ENOENT. */
UHMM_API int uhmm_mm_free(struct uhmm_mm *mm, void *addr, size_t len);

/** uhmm_mm_stat() - copy the counters. Return: 0 or -EINVAL. */
UHMM_API int uhmm_mm_stat(struct uhmm_mm *mm, struct uhmm_mm_stat *st);

/**
 * uhmm_mm_features() - kernel features found at open (UHMM_FEAT_* bits).
 */
#define UHMM_FEAT_MOVE (1U << 0)
#define UHMM_FEAT_PAGEMAP_SCAN (1U << 1)
#define UHMM_FEAT_PROCMAP_QUERY (1U << 2)
#define UHMM_FEAT_WP (1U << 3)
UHMM_API unsigned int uhmm_mm_features(struct uhmm_mm *mm);

/*
 * Wrappers for the calls that change mappings. Each delivers the invalidation
 * to every notifier of every open mm that overlaps the range *before* the
 * change takes effect (PROTECTION for mprotect, UNMAP for munmap, CLEAR for
 * madvise DONTNEED/FREE/REMOVE, and for mremap UNMAP of the old range, whose
 * mappings die; the new range has none yet), then performs it. The
 * userfaultfd events that the change also causes are then not delivered a
 * second time. Return 0 (uhmm_mremap: 0 and *new_addr) or -errno.
 */
UHMM_API int uhmm_mprotect(void *addr, size_t len, int prot);
UHMM_API int uhmm_munmap(void *addr, size_t len);
UHMM_API int uhmm_madvise(void *addr, size_t len, int advice);
UHMM_API int uhmm_mremap(void *old_addr, size_t old_len, size_t new_len,
			 int flags, void *fixed_addr, void **new_addr);

#ifdef __cplusplus
}
#endif
#endif
