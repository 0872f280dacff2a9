/* SPDX-License-Identifier: MIT */
/*
 * uhmm/sim.h - a simulated device: uhmm's reference driver and test vehicle,
 * what the kernel's dmirror (lib/test_hmm.c) is to HMM.
 *
 * A sim has its own memory pool, registered as a PRIVATE or COHERENT pagemap,
 * and its own page table mirroring one uhmm_mm through an interval notifier
 * and uhmm_range_fault() (read_begin / retry protocol). Its commands act on
 * npages pages from a page-aligned address:
 *
 *	struct uhmm_sim *dev;
 *	UHMM_OPTS(sim_opts, o, .mem_type = UHMM_SIM_PRIVATE, .capacity_pages = 1024);
 *	uhmm_sim_create(mm, &o, &dev);
 *	uhmm_sim_write(dev, addr, 16, buf);		// device writes process memory
 *	int moved = uhmm_sim_migrate_to_dev(dev, addr, 16);	// into device memory
 *	((char *)addr)[0]++;				// CPU touch: page comes back
 *	uhmm_sim_destroy(dev);				// device pages come back first
 *
 * Device accesses to system pages go through the process's own memory with
 * process_vm_readv/writev, so a stale or unmapped address yields -EFAULT,
 * never a crash; device-resident pages are read and written in the pool.
 */
#ifndef UHMM_SIM_H
#define UHMM_SIM_H

#include <stdint.h>
#include <uhmm/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_mm;
struct uhmm_sim;

enum uhmm_sim_mem_type {
	UHMM_SIM_PRIVATE = 1,	/* device-private pagemap */
	UHMM_SIM_COHERENT = 2,	/* device-coherent pagemap */
};

struct uhmm_sim_opts {
	size_t sz;				/* sizeof(struct uhmm_sim_opts) */
	enum uhmm_sim_mem_type mem_type;	/* 0 = PRIVATE */
	uint64_t capacity_pages;		/* device memory, 0 = 65536 (256 MiB) */
	/* when device memory is full, migrate_to_dev evicts the oldest pages */
	int evict_when_full;
	/*
	 * The pool is host memory managed by the same mm, so by default pages
	 * move in and out with UFFDIO_MOVE (UHMM_MIGRATE_PFN_MOVE); non-zero
	 * makes the sim copy them itself, like a device with its own memory:
	 * into the device with process_vm_readv (its "DMA engine": the kernel
	 * reads the pages, the CPU falls back to memcpy if that fails).
	 */
	int copy_path;
};

/* Snapshot bytes (the values of dmirror's HMM_DMIRROR_PROT_*). */
#define UHMM_SIM_PROT_ERROR 0xFF
#define UHMM_SIM_PROT_NONE 0x00
#define UHMM_SIM_PROT_READ 0x01
#define UHMM_SIM_PROT_WRITE 0x02
#define UHMM_SIM_PROT_PMD 0x04
#define UHMM_SIM_PROT_PUD 0x08
#define UHMM_SIM_PROT_ZERO 0x10
#define UHMM_SIM_PROT_DEV_PRIVATE_LOCAL 0x20
#define UHMM_SIM_PROT_DEV_PRIVATE_REMOTE 0x30
#define UHMM_SIM_PROT_DEV_COHERENT_LOCAL 0x40
#define UHMM_SIM_PROT_DEV_COHERENT_REMOTE 0x50

struct uhmm_sim_counters {
	uint64_t faults;		/* range_fault calls that had to fault */
	uint64_t cpages;		/* pages moved by migrate commands */
	uint64_t cpu_faults;		/* migrate_to_ram calls (CPU touched) */
	uint64_t dev_pages;		/* device pages in use now (not reset) */
};

/**
 * uhmm_sim_create() - create a simulated device mirroring @mm
 * Return: 0; -EINVAL bad args/opts; -ENOMEM; -ENOSPC no device address space.
 */
UHMM_API int uhmm_sim_create(struct uhmm_mm *mm, const struct uhmm_sim_opts *opts,
			     struct uhmm_sim **out);
/** uhmm_sim_destroy() - bring device pages back, unregister, free. NULL ok. */
UHMM_API void uhmm_sim_destroy(struct uhmm_sim *sim);

/**
 * uhmm_sim_read() - the device reads @npages pages at @addr into @buf
 * Faults missing pages in through range_fault (one `faults` per call that
 * faulted); pages the device holds are read from device memory.
 * Context: any application thread; not from a notifier or pagemap callback.
 * Return: 0; -EINVAL bad args; -EFAULT unmapped, PROT_NONE or stale;
 *   -EPERM (write) read-only memory; -EBUSY kept changing for 1 s.
 */
UHMM_API int uhmm_sim_read(struct uhmm_sim *sim, uint64_t addr, uint64_t npages,
			   void *buf);
/** uhmm_sim_write() - the device writes @buf to @npages pages at @addr; as read. */
UHMM_API int uhmm_sim_write(struct uhmm_sim *sim, uint64_t addr, uint64_t npages,
			    const void *buf);
/**
 * uhmm_sim_migrate_to_dev() - migrate system pages of the range into device
 * memory, 16 MiB at a time; without evict_when_full it stops at the first
 * 16 MiB after which device memory is full. Return: pages moved (>= 0;
 * fewer when device memory is full), or -EINVAL (bad args, unmanaged
 * range), -ENOMEM.
 */
UHMM_API int uhmm_sim_migrate_to_dev(struct uhmm_sim *sim, uint64_t addr,
				     uint64_t npages);
/** uhmm_sim_migrate_to_sys() - migrate this device's pages of the range back. Return: pages moved or -errno. */
UHMM_API int uhmm_sim_migrate_to_sys(struct uhmm_sim *sim, uint64_t addr,
				     uint64_t npages);
/**
 * uhmm_sim_snapshot() - one UHMM_SIM_PROT_* byte per page, faulting nothing.
 * Return: 0; -EINVAL; -EBUSY kept changing for 1 s.
 */
UHMM_API int uhmm_sim_snapshot(struct uhmm_sim *sim, uint64_t addr,
			       uint64_t npages, uint8_t *prot);
/** uhmm_sim_exclusive() - take the pages exclusive (device atomics). Return: 0 or -errno (see uhmm_make_device_exclusive). */
UHMM_API int uhmm_sim_exclusive(struct uhmm_sim *sim, uint64_t addr,
				uint64_t npages);
/** uhmm_sim_check_exclusive() - 1 if every page is still exclusive, 0 if not, -EINVAL. */
UHMM_API int uhmm_sim_check_exclusive(struct uhmm_sim *sim, uint64_t addr,
				      uint64_t npages);
/** uhmm_sim_release() - evict every device page back to system memory. Return: pages evicted or -errno. */
UHMM_API int uhmm_sim_release(struct uhmm_sim *sim);
/** uhmm_sim_counters() - read the counters; all but dev_pages reset. Return: 0 or -EINVAL. */
UHMM_API int uhmm_sim_counters(struct uhmm_sim *sim, struct uhmm_sim_counters *c);

#ifdef __cplusplus
}
#endif
#endif
