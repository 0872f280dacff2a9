/* SPDX-License-Identifier: MIT */
/*
 * uhmm/dax.h - device-dax in user space: regions, devices, ranges, kmem.
 *
 * A region is a span of memory any process can map: a regular file (tmpfs,
 * a DAX filesystem, any filesystem), a hugetlbfs file, an anonymous memfd or
 * a real /dev/daxX.Y character device. The region is carved into devices.
 * Every region has exactly one zero-size *seed* device; giving the seed a
 * size (uhmm_dax_dev_resize() or uhmm_dax_dev_add_range()) makes it a real
 * device and creates the next seed. A device is a list of ranges of the
 * region (possibly discontiguous), has an alignment (4 KiB, 2 MiB or 1 GiB)
 * and a mode: devdax (mapped by applications with uhmm_dax_map()) or kmem
 * (its memory feeds a heap: uhmm_kmem_malloc() and friends).
 *
 * Kernel counterpart: drivers/dax (dax_region, dev_dax, the seed device and
 * its size/mapping/align attributes), dax/kmem.c, and daxctl.
 *
 * Persistence: the layout (devices, ranges, modes, align, enabled state) is
 * kept in a label area at the start of the backing: two checksummed label
 * blocks with sequence numbers, the newer valid one wins. An update writes
 * the older block, so a crash at any point leaves the old or the new layout.
 * The data area follows the label area, aligned to the region's align; range
 * offsets are relative to the data area, so they run from 0 to the region
 * size. Device names are "dax<region id>.<device id>", where the region id is
 * fixed at creation (derived from the backing's inode number).
 *
 * Sharing: several processes (or several opens in one process) may use a
 * region at once. Each change takes the region's flock() and re-reads the
 * label first, so every opener sees the latest layout. A device that is
 * mapped, or whose memory is online as kmem, in any opener is busy for the
 * others (shrink, destroy, disable and reconfigure fail with -EBUSY). Mapping
 * and kmem state belong to the process: a region handle must not be used
 * across fork(); open the region again in the child.
 *
 * The CLI (uhmm dax) names a region by its backing path.
 *
 *	struct uhmm_dax_region *r;
 *	struct uhmm_dax_dev *dev;
 *	void *p;
 *	uhmm_dax_region_create("/dev/shm/pool", 1ULL << 30, 2 << 20, &r);
 *	uhmm_dax_region_seed(r, &dev);
 *	uhmm_dax_dev_resize(dev, 256 << 20);	// dev is now dax<N>.1, seed is .2
 *	uhmm_dax_dev_enable(dev);
 *	uhmm_dax_map(dev, PROT_READ | PROT_WRITE, &p);
 *	...
 *	uhmm_dax_unmap(dev, p);
 *	uhmm_dax_dev_disable(dev);
 *	uhmm_dax_dev_reconfigure(dev, UHMM_DAX_MODE_KMEM);
 *	char *s = uhmm_kmem_malloc(dev, 100);	// any thread
 *	uhmm_kmem_free(dev, s);
 *	uhmm_dax_region_close(r);
 *
 * kmem is built on jemalloc (Debian libjemalloc2): one arena per device with
 * extent hooks that hand out the device's memory, one explicit thread
 * cache per device and thread, and in front of that a small per-thread list
 * per size class (up to 4 KiB) of freed blocks, at most 64 KiB or 200 blocks
 * each, so that small malloc/free pairs skip jemalloc's flagged slow path.
 */
#ifndef UHMM_DAX_H
#define UHMM_DAX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uhmm/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_dax_region;		/* opaque, one per open */
struct uhmm_dax_dev;		/* opaque, owned by its region handle */
struct uhmm_pagemap;

enum uhmm_dax_mode {
	UHMM_DAX_MODE_DEVDAX = 0,	/* mapped by applications */
	UHMM_DAX_MODE_KMEM = 1,		/* memory feeds uhmm_kmem_malloc() */
};

/* Alignments a region or a device may have. */
#define UHMM_DAX_ALIGN_4K (1ULL << 12)
#define UHMM_DAX_ALIGN_2M (1ULL << 21)
#define UHMM_DAX_ALIGN_1G (1ULL << 30)

/* Limits of the label area. */
#define UHMM_DAX_MAX_DEVICES 255
#define UHMM_DAX_MAX_RANGES 2048
#define UHMM_DAX_NAME_MAX 32

/* A range of a region, [start, end) as offsets into the region's data area. */
struct uhmm_dax_range {
	uint64_t start;
	uint64_t end;
};

/* Region attributes, a snapshot of the label at the time of the call. */
struct uhmm_dax_region_info {
	uint64_t size;		/* bytes of the data area */
	uint64_t align;		/* the region's alignment */
	uint64_t available;	/* bytes not in any device */
	uint32_t id;		/* region id, the <region> of device names */
	uint32_t nr_devices;	/* devices, the seed included */
	uint32_t seed_id;	/* device id of the seed */
	uint32_t persistent;	/* 1 when the backing outlives the process */
};

/* device flags (uhmm_dax_dev_info.flags) */
#define UHMM_DAX_DEV_ENABLED (1U << 0)	/* may be mapped */
#define UHMM_DAX_DEV_SEED (1U << 1)	/* the region's seed device */
#define UHMM_DAX_DEV_MAPPED (1U << 2)	/* mapped in this process */
#define UHMM_DAX_DEV_KMEM_ONLINE (1U << 3) /* kmem heap live in this process */

/* Device attributes, a snapshot of the label at the time of the call. */
struct uhmm_dax_dev_info {
	char name[UHMM_DAX_NAME_MAX];	/* "dax<region>.<id>" */
	uint32_t id;
	uint32_t nr_range;
	uint64_t size;
	uint64_t align;
	enum uhmm_dax_mode mode;
	unsigned int flags;		/* UHMM_DAX_DEV_* */
};

/* ---------------------------------------------------------------------- */
/* Regions                                                                */

/**
 * uhmm_dax_region_create() - format a backing as a new region and open it
 * @path: a regular or hugetlbfs file (created when missing), a /dev/daxX.Y
 *        character device, or NULL (or "memfd:<name>") for an anonymous memfd
 *        that lives as long as it is open (other processes may open it as
 *        /proc/<pid>/fd/<n>)
 * @size: bytes of the data area, a multiple of @align; 0 for a /dev/dax
 *        device means all of it
 * @align: UHMM_DAX_ALIGN_4K, _2M or _1G; hugetlbfs needs at least its page size
 * @out: the open region
 *
 * The file grows to the label area (@align rounded, at least 128 KiB) plus
 * @size. The new region has one device, its seed.
 * Context: any thread; may block on the region's file lock.
 * Return: 0, or
 *   -EINVAL  bad size or align, NULL @out, @path not a file or dax device;
 *   -EEXIST  @path already holds a valid uhmm dax label;
 *   -ENOMEM  no memory (or no huge pages on hugetlbfs);
 *   other -errno from open/ftruncate/mmap.
 */
UHMM_API int uhmm_dax_region_create(const char *path, uint64_t size,
				    uint64_t align,
				    struct uhmm_dax_region **out);

/**
 * uhmm_dax_region_open() - open an existing region
 * @path: the backing given to uhmm_dax_region_create()
 * @out: the open region
 *
 * Context: any thread; may block on the region's file lock.
 * Return: 0, or -EINVAL (NULL argument), -ENOENT (no such file),
 *   -ENODATA (no label: never formatted), -EUCLEAN (both label blocks
 *   corrupt, or a label that fails validation: never trusted), other -errno.
 */
UHMM_API int uhmm_dax_region_open(const char *path,
				  struct uhmm_dax_region **out);

/**
 * uhmm_dax_region_close() - close a region handle and free its devices
 *
 * Removes this process's pagemaps of the region's devices. NULL does nothing.
 * Context: any thread; blocks.
 * Return: 0; -EBUSY a device is still mapped or has live kmem allocations
 *   (nothing is closed).
 */
UHMM_API int uhmm_dax_region_close(struct uhmm_dax_region *region);

/**
 * uhmm_dax_region_info() - region attributes (re-reads the label)
 * Return: 0; -EINVAL NULL argument; -EUCLEAN the label became corrupt.
 */
UHMM_API int uhmm_dax_region_info(struct uhmm_dax_region *region,
				  struct uhmm_dax_region_info *info);

/**
 * uhmm_dax_region_devices() - list the region's devices, seed included
 * @devs: out, up to @n device handles in id order (may be NULL when @n is 0)
 *
 * Handles stay valid until the region is closed; one whose device another
 * opener destroyed answers -ENODEV.
 * Return: the number of devices (may exceed @n), or -EINVAL, -EUCLEAN, -ENOMEM.
 */
UHMM_API int uhmm_dax_region_devices(struct uhmm_dax_region *region,
				     struct uhmm_dax_dev **devs,
				     unsigned int n);

/**
 * uhmm_dax_region_seed() - the region's seed device
 * Return: 0; -EINVAL; -EUCLEAN; -ENOMEM.
 */
UHMM_API int uhmm_dax_region_seed(struct uhmm_dax_region *region,
				  struct uhmm_dax_dev **out);

/**
 * uhmm_dax_dev_find() - device by name ("dax3.1") or by id ("1")
 * Return: 0; -EINVAL; -ENOENT no such device; -EUCLEAN; -ENOMEM.
 */
UHMM_API int uhmm_dax_dev_find(struct uhmm_dax_region *region,
			       const char *name, struct uhmm_dax_dev **out);

/* ---------------------------------------------------------------------- */
/* Devices                                                                */

/**
 * uhmm_dax_dev_info() - device attributes (re-reads the label)
 * Return: 0; -EINVAL NULL argument; -ENODEV the device was destroyed.
 */
UHMM_API int uhmm_dax_dev_info(struct uhmm_dax_dev *dev,
			       struct uhmm_dax_dev_info *info);

/**
 * uhmm_dax_dev_ranges() - the device's ranges, in device offset order
 * @out: up to @n ranges (may be NULL when @n is 0)
 * Return: the number of ranges (may exceed @n); -EINVAL; -ENODEV.
 */
UHMM_API int uhmm_dax_dev_ranges(struct uhmm_dax_dev *dev,
				 struct uhmm_dax_range *out, unsigned int n);

/**
 * uhmm_dax_dev_resize() - grow or shrink a device to @size bytes
 *
 * Growth first extends the last range in place when the space after it is
 * free, then takes free extents first fit, each aligned to the device's
 * align, so a device may end up with several ranges. Shrinking releases from
 * the last range backward. Resizing the seed makes it a device and creates a
 * new seed. Growth is allowed while mapped (existing mappings keep their
 * size; a kmem heap gets the new memory).
 * Context: any thread; takes the region lock.
 * Return: 0, or
 *   -EINVAL  @size not a multiple of the device's align;
 *   -ENOSPC  not enough free aligned space, or the label is full;
 *   -EBUSY   shrinking a device that is mapped, or whose dropped memory is
 *            in kmem use, or busy in another opener;
 *   -ENODEV  destroyed device; -EUCLEAN corrupt label.
 */
UHMM_API int uhmm_dax_dev_resize(struct uhmm_dax_dev *dev, uint64_t size);

/**
 * uhmm_dax_dev_add_range() - append [@offset, @offset + @len) to a device
 *
 * Explicit placement, like writing the kernel's "mapping" attribute.
 * Return: 0, or -EINVAL (unaligned to the device's align, empty, outside the
 *   region), -EBUSY (overlaps a range of any device), -ENOSPC (label full),
 *   -ENODEV, -EUCLEAN.
 */
UHMM_API int uhmm_dax_dev_add_range(struct uhmm_dax_dev *dev, uint64_t offset,
				    uint64_t len);

/**
 * uhmm_dax_dev_set_align() - change the device's align
 * @align: UHMM_DAX_ALIGN_4K/_2M/_1G, at least the region's align
 * Return: 0; -EINVAL bad align, or the current ranges are not aligned to it;
 *   -EBUSY mapped or kmem; -ENODEV; -EUCLEAN.
 */
UHMM_API int uhmm_dax_dev_set_align(struct uhmm_dax_dev *dev, uint64_t align);

/**
 * uhmm_dax_dev_destroy() - release a device's ranges and remove it
 *
 * The handle stays allocated (answering -ENODEV) until the region is closed.
 * Return: 0; -EINVAL the seed cannot be destroyed; -EBUSY mapped, kmem
 *   online, or busy in another opener; -ENODEV already gone; -EUCLEAN.
 */
UHMM_API int uhmm_dax_dev_destroy(struct uhmm_dax_dev *dev);

/**
 * uhmm_dax_dev_enable() - allow mapping and register the device's pagemap
 *
 * The enabled state is persistent. In the calling process the device's
 * memory is registered as a UHMM_PAGEMAP_GENERIC pagemap (device addresses
 * from uhmm_request_free_region(NULL, ...)), see uhmm_dax_dev_pagemap().
 * Enabling an enabled device only registers the pagemap here.
 * Return: 0; -ENXIO zero-size device (the seed); -ENODEV; -EUCLEAN;
 *   -errno from the pagemap registration.
 */
UHMM_API int uhmm_dax_dev_enable(struct uhmm_dax_dev *dev);

/**
 * uhmm_dax_dev_disable() - forbid mapping and drop this process's pagemap
 * Return: 0 (also when already disabled); -EBUSY mapped, kmem online, busy in
 *   another opener, or pagemap pages still referenced; -ENODEV; -EUCLEAN.
 */
UHMM_API int uhmm_dax_dev_disable(struct uhmm_dax_dev *dev);

/**
 * uhmm_dax_dev_reconfigure() - switch between devdax and kmem
 *
 * To UHMM_DAX_MODE_KMEM: the device's memory is handed to a heap in the
 * calling process (only one opener may have it online). To
 * UHMM_DAX_MODE_DEVDAX: the heap is torn down. Switching to the current mode
 * does nothing. Must not race with uhmm_kmem_*() on the same device.
 * Return: 0; -EINVAL unknown mode; -ENXIO zero-size device; -EBUSY mapped
 *   (to kmem), live allocations or online in another opener (to devdax);
 *   -EOPNOTSUPP the allocator refused to create an arena; -ENODEV; -EUCLEAN.
 */
UHMM_API int uhmm_dax_dev_reconfigure(struct uhmm_dax_dev *dev,
				      enum uhmm_dax_mode mode);

/**
 * uhmm_dax_map() - map all of a device's ranges as one contiguous span
 * @prot: PROT_READ, PROT_WRITE or both
 * @addr: out, the start of the mapping, aligned to the device's align
 *
 * Shared mapping of the backing: stores reach every other mapping of the
 * device. The span covers the size at the time of the call.
 * Return: 0; -EINVAL bad @prot or NULL; -ENXIO disabled or zero-size device;
 *   -EBUSY kmem mode; -ENODEV; -ENOMEM.
 */
UHMM_API int uhmm_dax_map(struct uhmm_dax_dev *dev, int prot, void **addr);

/**
 * uhmm_dax_unmap() - unmap a span returned by uhmm_dax_map()
 * Return: 0; -EINVAL @addr is not a mapping of @dev.
 */
UHMM_API int uhmm_dax_unmap(struct uhmm_dax_dev *dev, void *addr);

/**
 * uhmm_dax_dev_pagemap() - the device's pagemap in this process
 *
 * Valid while the device stays enabled (or in kmem mode) and the size does
 * not change; its host base is the device's direct map.
 * Return: 0; -EINVAL NULL; -ENXIO not registered (disabled, zero size).
 */
UHMM_API int uhmm_dax_dev_pagemap(struct uhmm_dax_dev *dev,
				  struct uhmm_pagemap **out);

/* ---------------------------------------------------------------------- */
/* kmem: a heap on a device's memory                                      */

/*
 * All of these are thread-safe and need the device in kmem mode (the heap is
 * brought online in the calling process on first use when another opener
 * switched the mode). Failures return NULL, like malloc(3), without setting
 * errno. A pointer must be freed through the device it came from.
 */
/** uhmm_kmem_malloc() - @size bytes from @dev's memory, or NULL. */
UHMM_API void *uhmm_kmem_malloc(struct uhmm_dax_dev *dev, size_t size);
/** uhmm_kmem_calloc() - @n * @size zeroed bytes, or NULL (also on overflow). */
UHMM_API void *uhmm_kmem_calloc(struct uhmm_dax_dev *dev, size_t n,
				size_t size);
/**
 * uhmm_kmem_realloc() - resize an allocation, like realloc(3)
 * NULL @ptr acts as malloc; @size 0 frees @ptr and returns NULL.
 */
UHMM_API void *uhmm_kmem_realloc(struct uhmm_dax_dev *dev, void *ptr,
				 size_t size);
/** uhmm_kmem_free() - free; NULL does nothing; a foreign pointer is ignored. */
UHMM_API void uhmm_kmem_free(struct uhmm_dax_dev *dev, void *ptr);
/** uhmm_kmem_usable_size() - usable bytes of @ptr; 0 for NULL or foreign. */
UHMM_API size_t uhmm_kmem_usable_size(struct uhmm_dax_dev *dev,
				      const void *ptr);

#ifdef __cplusplus
}
#endif
#endif
