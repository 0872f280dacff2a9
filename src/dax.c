// SPDX-License-Identifier: MIT
/* dax.c - device-dax in user space: regions on a file, memfd, hugetlbfs or
 * /dev/dax backing, devices carved from them, mappings, pagemap registration.
 * API in include/uhmm/dax.h; the label lives in dax_meta.c, kmem in kmem.c. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "dax_internal.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

/* OFD lock bytes marking a device busy (mapped: read, kmem: write). */
#define DAX_BUSY_BASE (1LL << 50)

static const struct uhmm_pagemap_ops dax_pgmap_ops = { 0 };

/* ---------------------------------------------------------------------- */
/* Locking and label refresh                                              */

static void dev_reconcile_locked(struct uhmm_dax_dev *dev);

static int region_refresh_locked(struct uhmm_dax_region *r)
{
	struct dax_layout *lay;
	int ret;

	uhmm_lockdep_assert_held(&r->lock);
	ret = uhmm_dax_label_read(r->label, &lay);
	if (ret)
		return ret == -ENODATA ? -EUCLEAN : ret;
	if (lay->seq == r->lay->seq || lay->size != r->lay->size ||
	    lay->data_off != r->lay->data_off) {
		/* Unchanged, or a label that does not fit this backing. */
		ret = lay->seq == r->lay->seq ? 0 : -EUCLEAN;
		uhmm_dax_layout_free(lay);
		return ret;
	}
	uhmm_dax_layout_free(r->lay);
	r->lay = lay;
	for (struct uhmm_dax_dev *d = r->devs; d; d = d->next)
		dev_reconcile_locked(d);
	return 0;
}

/* Take the handle's mutex and the opener-wide flock, then re-read the label. */
static int region_lock(struct uhmm_dax_region *r)
{
	int ret;

	pthread_mutex_lock(&r->lock);
	while (flock(r->fd, LOCK_EX)) {
		if (errno != EINTR) {
			ret = -errno;
			pthread_mutex_unlock(&r->lock);
			return ret;
		}
	}
	ret = region_refresh_locked(r);
	if (ret) {
		flock(r->fd, LOCK_UN);
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

static void region_unlock(struct uhmm_dax_region *r)
{
	flock(r->fd, LOCK_UN);
	pthread_mutex_unlock(&r->lock);
}

/* Write @nl as the new label; on success it replaces r->lay. */
static int region_commit_locked(struct uhmm_dax_region *r,
				struct dax_layout *nl)
{
	int ret;

	nl->seq = r->lay->seq;
	ret = uhmm_dax_label_write(r->label, nl,
				   r->kind == DAX_BACKING_FILE && r->persistent);
	if (ret) {
		uhmm_dax_layout_free(nl);
		return ret;
	}
	uhmm_dax_layout_free(r->lay);
	r->lay = nl;
	for (struct uhmm_dax_dev *d = r->devs; d; d = d->next)
		dev_reconcile_locked(d);
	return 0;
}

/* Device @id's handle, created on first use. */
static struct uhmm_dax_dev *dev_handle_locked(struct uhmm_dax_region *r,
					      uint32_t id)
{
	struct uhmm_dax_dev *d;

	for (d = r->devs; d; d = d->next)
		if (d->id == id)
			return d;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->region = r;
	d->id = id;
	d->busy_lock = F_UNLCK;
	d->next = r->devs;
	r->devs = d;
	return d;
}

static struct dax_ldev *dev_ldev(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_layout_dev(dev->region->lay, dev->id);
}

/* Lock the device's region; -ENODEV when the device is gone. */
static int dev_lock(struct uhmm_dax_dev *dev, struct dax_ldev **ld)
{
	int ret;

	if (!dev)
		return -EINVAL;
	ret = region_lock(dev->region);
	if (ret)
		return ret;
	*ld = dev_ldev(dev);
	if (!*ld || dev->gone) {
		region_unlock(dev->region);
		return -ENODEV;
	}
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Busy marks shared between openers: OFD locks on one byte per device    */

static int busy_set(struct uhmm_dax_dev *dev, int type)
{
	struct flock fl = {
		.l_type = (short)type,
		.l_whence = SEEK_SET,
		.l_start = DAX_BUSY_BASE + dev->id,
		.l_len = 1,
	};

	if (dev->busy_lock == type)
		return 0;
	if (fcntl(dev->region->fd, F_OFD_SETLK, &fl))
		return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
	dev->busy_lock = type;
	return 0;
}

/* True when another opener has the device mapped or online as kmem. */
static bool busy_foreign(struct uhmm_dax_dev *dev)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = DAX_BUSY_BASE + dev->id,
		.l_len = 1,
	};

	if (fcntl(dev->region->fd, F_OFD_GETLK, &fl))
		return false;
	return fl.l_type != F_UNLCK;
}

static void busy_update(struct uhmm_dax_dev *dev)
{
	int want = atomic_load(&dev->kmem) ? F_WRLCK :
		   dev->nr_maps ? F_RDLCK : F_UNLCK;

	/* Downgrades and unlocks cannot conflict. */
	if (want != F_WRLCK)
		busy_set(dev, want);
}

static bool dev_busy(struct uhmm_dax_dev *dev)
{
	return dev->nr_maps || atomic_load(&dev->kmem) || busy_foreign(dev);
}

/* ---------------------------------------------------------------------- */
/* Direct map (the device's memory at one contiguous span) and pagemap    */

static void *map_reserve(size_t len, size_t align, size_t *span)
{
	size_t sp = len + align;
	char *p, *a;

	p = mmap(NULL, sp, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	a = (char *)UHMM_ALIGN_UP((uintptr_t)p, align);
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + sp)
		munmap(a + len, (size_t)(p + sp - (a + len)));
	*span = len;
	return a;
}

/* Map the device-offset part [from, end of ranges) of @ranges at @base. */
static int map_ranges(struct uhmm_dax_region *r, char *base,
		      const struct uhmm_dax_range *rg, uint32_t nr,
		      uint64_t from, int prot)
{
	uint64_t off = 0;

	for (uint32_t i = 0; i < nr; i++) {
		uint64_t len = rg[i].end - rg[i].start;
		uint64_t skip = from > off ? UHMM_MIN(from - off, len) : 0;

		if (skip < len) {
			void *p = mmap(base + off + skip, len - skip, prot,
				       MAP_SHARED | MAP_FIXED, r->fd,
				       (off_t)(r->lay->data_off + rg[i].start + skip));

			if (p == MAP_FAILED)
				return -errno;
		}
		off += len;
	}
	return 0;
}

static void pg_release(struct uhmm_dax_dev *dev)
{
	uhmm_release_region(NULL, dev->pgrange.start);
	dev->pg_state = DAX_PG_NONE;
}

/* Unregister the pagemap without waiting; -EBUSY while pages are referenced. */
static int pg_unregister(struct uhmm_dax_dev *dev)
{
	int ret;

	if (dev->pg_state == DAX_PG_NONE)
		return 0;
	ret = uhmm_memunmap_pages_timeout(&dev->pgmap, 0);
	if (ret == -EBUSY) {
		dev->pg_state = DAX_PG_KILLED;
		return ret;
	}
	pg_release(dev);
	return 0;
}

static int pg_register(struct uhmm_dax_dev *dev, uint64_t size, uint64_t align)
{
	uint64_t start;
	int ret;

	if (dev->pg_state != DAX_PG_NONE || !size)
		return 0;
	ret = uhmm_request_free_region(NULL, size, align, &start);
	if (ret)
		return ret;
	dev->pgrange.start = start;
	dev->pgrange.end = start + size;
	memset(&dev->pgmap, 0, sizeof(dev->pgmap));
	dev->pgmap.type = UHMM_PAGEMAP_GENERIC;
	dev->pgmap.ops = &dax_pgmap_ops;
	dev->pgmap.owner = dev;
	dev->pgmap.nr_range = 1;
	dev->pgmap.ranges = &dev->pgrange;
	dev->pgmap.base = dev->dmap;
	ret = uhmm_memremap_pages(&dev->pgmap);
	if (ret) {
		uhmm_release_region(NULL, start);
		return ret;
	}
	dev->pg_state = DAX_PG_LIVE;
	return 0;
}

static bool ranges_equal(const struct dax_ldev *ld,
			 const struct uhmm_dax_range *rg, uint32_t nr)
{
	return ld->nr_range == nr &&
	       (!nr || !memcmp(ld->ranges, rg, nr * sizeof(*rg)));
}

/* Make the direct map show @ld's ranges, remapping only what changed. */
static int dmap_sync(struct uhmm_dax_dev *dev, const struct dax_ldev *ld)
{
	uint64_t common = 0, size = uhmm_dax_ldev_size(ld);
	struct uhmm_dax_range *copy = NULL;
	int ret;

	for (uint32_t i = 0; i < ld->nr_range && i < dev->dmap_nr; i++) {
		const struct uhmm_dax_range *a = &ld->ranges[i];
		const struct uhmm_dax_range *b = &dev->dmap_ranges[i];

		if (a->start != b->start)
			break;
		common += UHMM_MIN(a->end, b->end) - a->start;
		if (a->end != b->end)
			break;
	}
	if (size > dev->dmap_span)
		return -EINVAL;
	if (ld->nr_range) {
		copy = malloc(ld->nr_range * sizeof(*copy));
		if (!copy)
			return -ENOMEM;
		memcpy(copy, ld->ranges, ld->nr_range * sizeof(*copy));
	}
	ret = map_ranges(dev->region, dev->dmap, ld->ranges, ld->nr_range,
			 common, PROT_READ | PROT_WRITE);
	if (ret) {
		free(copy);
		return ret;
	}
	if (size < dev->dmap_len)
		mmap(dev->dmap + size, dev->dmap_len - size, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
		     -1, 0);
	free(dev->dmap_ranges);
	dev->dmap_ranges = copy;
	dev->dmap_nr = ld->nr_range;
	dev->dmap_len = size;
	return 0;
}

/* Give the device a direct map and a pagemap in this process. */
static int dev_activate(struct uhmm_dax_dev *dev, const struct dax_ldev *ld)
{
	struct uhmm_dax_region *r = dev->region;
	int ret;

	if (!dev->dmap) {
		dev->dmap = map_reserve(UHMM_ALIGN_UP(r->lay->size, ld->align),
					ld->align, &dev->dmap_span);
		if (!dev->dmap)
			return -ENOMEM;
	}
	if (!ranges_equal(ld, dev->dmap_ranges, dev->dmap_nr) ||
	    !dev->dmap_len) {
		ret = pg_unregister(dev);
		if (ret)
			return ret;
		ret = dmap_sync(dev, ld);
		if (ret)
			return ret;
	}
	return pg_register(dev, dev->dmap_len, ld->align);
}

static int dev_deactivate(struct uhmm_dax_dev *dev)
{
	int ret;

	if (!dev->dmap)
		return 0;
	ret = pg_unregister(dev);
	if (ret)
		return ret;
	munmap(dev->dmap, dev->dmap_span);
	free(dev->dmap_ranges);
	dev->dmap = NULL;
	dev->dmap_ranges = NULL;
	dev->dmap_nr = 0;
	dev->dmap_len = 0;
	dev->dmap_span = 0;
	return 0;
}

/*
 * Bring this process's view of @dev in line with r->lay after any label
 * change, ours or another opener's. Best effort: a pagemap with referenced
 * pages stays killed and is retried on the next change.
 */
static void dev_reconcile_locked(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld = dev_ldev(dev);
	bool kmem = atomic_load(&dev->kmem) != NULL;

	if (!ld) {
		dev->gone = true;
		if (!kmem && !dev->nr_maps)
			dev_deactivate(dev);
		return;
	}
	if (!dev->dmap)
		return;
	if (!kmem && !dev->nr_maps && !(ld->flags & DAX_LDEV_ENABLED)) {
		dev_deactivate(dev);
		return;
	}
	if (ranges_equal(ld, dev->dmap_ranges, dev->dmap_nr) &&
	    dev->pg_state == DAX_PG_LIVE)
		return;
	if (pg_unregister(dev))
		return;
	if (UHMM_WARN_ON(dmap_sync(dev, ld)))
		return;
	if (kmem)
		uhmm_kmem_set_limit(dev, dev->dmap_len);
	pg_register(dev, dev->dmap_len, ld->align);
}

/* ---------------------------------------------------------------------- */
/* Regions                                                                */

/* A character device is a dax device when sysfs says its subsystem is dax. */
static bool devdax_check(const struct stat *st)
{
	char p[96], link[256];
	ssize_t n;

	snprintf(p, sizeof(p), "/sys/dev/char/%u:%u/subsystem",
		 major(st->st_rdev), minor(st->st_rdev));
	n = readlink(p, link, sizeof(link) - 1);
	if (n < 4)
		return false;
	link[n] = 0;
	return !strcmp(link + n - 4, "/dax");
}

static int backing_open(const char *path, bool create, int *fd,
			enum dax_backing *kind, uint64_t *hpage)
{
	struct statfs sfs;
	struct stat st;

	*hpage = 0;
	if (!path || !strncmp(path, "memfd:", 6)) {
		if (!create)
			return -EINVAL;
		*fd = memfd_create(path ? path + 6 : "uhmm-dax", MFD_CLOEXEC);
		if (*fd < 0)
			return -errno;
		*kind = DAX_BACKING_MEMFD;
		return 0;
	}
	*fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (*fd < 0)
		return -errno;
	if (fstat(*fd, &st) || fstatfs(*fd, &sfs))
		goto err;
	if (S_ISCHR(st.st_mode) && devdax_check(&st)) {
		*kind = DAX_BACKING_DEVDAX;
	} else if (S_ISREG(st.st_mode)) {
		*kind = DAX_BACKING_FILE;
		if ((uint32_t)sfs.f_type == HUGETLBFS_MAGIC) {
			*kind = DAX_BACKING_HUGETLBFS;
			*hpage = (uint64_t)st.st_blksize;
		} else if (st.st_nlink == 0) {
			*kind = DAX_BACKING_MEMFD; /* /proc/<pid>/fd/<n> of a memfd */
		}
	} else {
		close(*fd);
		return -EINVAL;
	}
	return 0;
err:
	{
		int ret = -errno;

		close(*fd);
		return ret;
	}
}

/* Size of a /dev/dax character device, from sysfs. */
static int devdax_size(int fd, uint64_t *size)
{
	char p[96];
	unsigned long long v;
	struct stat st;
	FILE *f;
	int n;

	if (fstat(fd, &st))
		return -errno;
	snprintf(p, sizeof(p), "/sys/dev/char/%u:%u/size", major(st.st_rdev),
		 minor(st.st_rdev));
	f = fopen(p, "re");
	if (!f)
		return -errno;
	n = fscanf(f, "%llu", &v);
	fclose(f);
	if (n != 1)
		return -EINVAL;
	*size = v;
	return 0;
}

static uint64_t backing_size(struct uhmm_dax_region *r)
{
	struct stat st;
	uint64_t sz = 0;

	if (r->kind == DAX_BACKING_DEVDAX)
		return devdax_size(r->fd, &sz) ? 0 : sz;
	return fstat(r->fd, &st) ? 0 : (uint64_t)st.st_size;
}

static size_t label_map_len(uint64_t hpage)
{
	return UHMM_ALIGN_UP(DAX_LABEL_AREA, hpage ? hpage : UHMM_PAGE_SIZE);
}

static int region_alloc(const char *path, int fd, enum dax_backing kind,
			struct uhmm_dax_region **out)
{
	struct uhmm_dax_region *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	if (path) {
		r->path = strdup(path);
		if (!r->path) {
			free(r);
			return -ENOMEM;
		}
	}
	pthread_mutex_init(&r->lock, NULL);
	r->fd = fd;
	r->kind = kind;
	r->persistent = kind != DAX_BACKING_MEMFD;
	*out = r;
	return 0;
}

static void region_free(struct uhmm_dax_region *r)
{
	if (r->label)
		munmap(r->label, r->label_len);
	uhmm_dax_layout_free(r->lay);
	close(r->fd);
	pthread_mutex_destroy(&r->lock);
	free(r->path);
	free(r);
}

int uhmm_dax_region_create(const char *path, uint64_t size, uint64_t align,
			   struct uhmm_dax_region **out)
{
	struct uhmm_dax_region *r;
	struct dax_layout *lay, *old;
	enum dax_backing kind;
	uint64_t hpage, data_off, total;
	size_t llen;
	struct stat st;
	int fd, ret;

	if (!out || !uhmm_dax_align_valid(align) ||
	    !UHMM_IS_ALIGNED(size, align))
		return -EINVAL;
	ret = backing_open(path, true, &fd, &kind, &hpage);
	if (ret)
		return ret;
	ret = -EINVAL;
	if ((kind != DAX_BACKING_DEVDAX && !size) || (hpage && align < hpage))
		goto err_fd;
	data_off = UHMM_ALIGN_UP(DAX_LABEL_AREA, align);
	llen = label_map_len(hpage);
	if (flock(fd, LOCK_EX)) {
		ret = -errno;
		goto err_fd;
	}
	if (kind == DAX_BACKING_DEVDAX) {
		ret = devdax_size(fd, &total);
		if (ret)
			goto err_fd;
		if (total <= data_off)
			goto err_fd;
		total = UHMM_ALIGN_DOWN(total - data_off, align);
		if (!size)
			size = total;
		if (size > total || !size) {
			ret = size ? -ENOSPC : -EINVAL;
			goto err_fd;
		}
	} else {
		if (fstat(fd, &st)) {
			ret = -errno;
			goto err_fd;
		}
		if ((uint64_t)st.st_size < llen && ftruncate(fd, (off_t)llen)) {
			ret = -errno;
			goto err_fd;
		}
	}
	ret = region_alloc(path, fd, kind, &r);
	if (ret)
		goto err_fd;
	r->label = mmap(NULL, llen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->label == MAP_FAILED) {
		ret = -errno;
		r->label = NULL;
		goto err_region;
	}
	r->label_len = llen;
	if (!uhmm_dax_label_read(r->label, &old)) {
		uhmm_dax_layout_free(old);
		ret = -EEXIST;
		goto err_label;
	}
	if (kind != DAX_BACKING_DEVDAX &&
	    ftruncate(fd, (off_t)(data_off + size))) {
		ret = -errno;
		goto err_label;
	}
	lay = uhmm_dax_layout_new();
	if (!lay) {
		ret = -ENOMEM;
		goto err_label;
	}
	if (fstat(fd, &st) == 0)
		lay->region_id = (uint32_t)(st.st_ino % 1000);
	lay->size = size;
	lay->align = align;
	lay->data_off = data_off;
	lay->next_id = 2;
	lay->seed_id = 1;
	lay->nr_dev = 1;
	lay->devs[0].id = 1;
	lay->devs[0].align = align;
	memset(r->label, 0, DAX_LABEL_AREA);
	ret = uhmm_dax_label_write(r->label, lay, r->persistent);
	if (ret) {
		uhmm_dax_layout_free(lay);
		goto err_label;
	}
	r->lay = lay;
	flock(fd, LOCK_UN);
	*out = r;
	return 0;
err_label:
	munmap(r->label, llen);
	r->label = NULL;
err_region:
	region_free(r);
	return ret;
err_fd:
	close(fd);
	return ret;
}

int uhmm_dax_region_open(const char *path, struct uhmm_dax_region **out)
{
	struct uhmm_dax_region *r;
	enum dax_backing kind;
	uint64_t hpage;
	size_t llen;
	int fd, ret;

	if (!path || !out)
		return -EINVAL;
	ret = backing_open(path, false, &fd, &kind, &hpage);
	if (ret)
		return ret;
	ret = region_alloc(path, fd, kind, &r);
	if (ret) {
		close(fd);
		return ret;
	}
	llen = label_map_len(hpage);
	if (flock(fd, LOCK_SH)) {
		ret = -errno;
		goto err;
	}
	if (backing_size(r) < llen) {
		ret = -ENODATA;
		goto err;
	}
	r->label = mmap(NULL, llen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->label == MAP_FAILED) {
		ret = -errno;
		r->label = NULL;
		goto err;
	}
	r->label_len = llen;
	ret = uhmm_dax_label_read(r->label, &r->lay);
	if (ret)
		goto err;
	if (r->lay->data_off < llen ||
	    r->lay->data_off + r->lay->size > backing_size(r)) {
		ret = -EUCLEAN;
		goto err;
	}
	flock(fd, LOCK_UN);
	*out = r;
	return 0;
err:
	region_free(r);
	return ret;
}

int uhmm_dax_region_close(struct uhmm_dax_region *r)
{
	struct uhmm_dax_dev *d, *next;

	if (!r)
		return 0;
	pthread_mutex_lock(&r->lock);
	for (d = r->devs; d; d = d->next) {
		if (d->nr_maps || (atomic_load(&d->kmem) && uhmm_kmem_live(d))) {
			pthread_mutex_unlock(&r->lock);
			return -EBUSY;
		}
	}
	for (d = r->devs; d; d = next) {
		next = d->next;
		if (atomic_load(&d->kmem))
			uhmm_kmem_offline(d);
		if (d->pg_state != DAX_PG_NONE) {
			uhmm_memunmap_pages(&d->pgmap);
			pg_release(d);
		}
		dev_deactivate(d);
		free(d);
	}
	r->devs = NULL;
	pthread_mutex_unlock(&r->lock);
	region_free(r);
	return 0;
}

static uint64_t layout_used(const struct dax_layout *lay)
{
	uint64_t used = 0;

	for (uint32_t i = 0; i < lay->nr_dev; i++)
		used += uhmm_dax_ldev_size(&lay->devs[i]);
	return used;
}

int uhmm_dax_region_info(struct uhmm_dax_region *r,
			 struct uhmm_dax_region_info *info)
{
	int ret;

	if (!r || !info)
		return -EINVAL;
	ret = region_lock(r);
	if (ret)
		return ret;
	memset(info, 0, sizeof(*info));
	info->size = r->lay->size;
	info->align = r->lay->align;
	info->available = r->lay->size - layout_used(r->lay);
	info->id = r->lay->region_id;
	info->nr_devices = r->lay->nr_dev;
	info->seed_id = r->lay->seed_id;
	info->persistent = r->persistent;
	region_unlock(r);
	return 0;
}

int uhmm_dax_region_devices(struct uhmm_dax_region *r,
			    struct uhmm_dax_dev **devs, unsigned int n)
{
	int ret;

	if (!r || (n && !devs))
		return -EINVAL;
	ret = region_lock(r);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < r->lay->nr_dev && i < n; i++) {
		devs[i] = dev_handle_locked(r, r->lay->devs[i].id);
		if (!devs[i]) {
			region_unlock(r);
			return -ENOMEM;
		}
	}
	ret = (int)r->lay->nr_dev;
	region_unlock(r);
	return ret;
}

int uhmm_dax_region_seed(struct uhmm_dax_region *r, struct uhmm_dax_dev **out)
{
	int ret;

	if (!r || !out)
		return -EINVAL;
	ret = region_lock(r);
	if (ret)
		return ret;
	*out = dev_handle_locked(r, r->lay->seed_id);
	region_unlock(r);
	return *out ? 0 : -ENOMEM;
}

int uhmm_dax_dev_find(struct uhmm_dax_region *r, const char *name,
		      struct uhmm_dax_dev **out)
{
	unsigned int rid, id;
	char tail;
	int ret;

	if (!r || !name || !out)
		return -EINVAL;
	if (sscanf(name, "dax%u.%u%c", &rid, &id, &tail) != 2) {
		if (sscanf(name, "%u%c", &id, &tail) != 1)
			return -EINVAL;
		rid = UINT32_MAX;
	}
	ret = region_lock(r);
	if (ret)
		return ret;
	ret = -ENOENT;
	if ((rid == UINT32_MAX || rid == r->lay->region_id) &&
	    uhmm_dax_layout_dev(r->lay, id)) {
		*out = dev_handle_locked(r, id);
		ret = *out ? 0 : -ENOMEM;
	}
	region_unlock(r);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* Devices                                                                */

int uhmm_dax_dev_info(struct uhmm_dax_dev *dev, struct uhmm_dax_dev_info *info)
{
	struct dax_ldev *ld;
	int ret;

	if (!info)
		return -EINVAL;
	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "dax%u.%u",
		 dev->region->lay->region_id, dev->id);
	info->id = dev->id;
	info->nr_range = ld->nr_range;
	info->size = uhmm_dax_ldev_size(ld);
	info->align = ld->align;
	info->mode = (enum uhmm_dax_mode)ld->mode;
	if (ld->flags & DAX_LDEV_ENABLED)
		info->flags |= UHMM_DAX_DEV_ENABLED;
	if (dev->id == dev->region->lay->seed_id)
		info->flags |= UHMM_DAX_DEV_SEED;
	if (dev->nr_maps)
		info->flags |= UHMM_DAX_DEV_MAPPED;
	if (atomic_load(&dev->kmem))
		info->flags |= UHMM_DAX_DEV_KMEM_ONLINE;
	region_unlock(dev->region);
	return 0;
}

int uhmm_dax_dev_ranges(struct uhmm_dax_dev *dev, struct uhmm_dax_range *out,
			unsigned int n)
{
	struct dax_ldev *ld;
	int ret;

	if (n && !out)
		return -EINVAL;
	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < ld->nr_range && i < n; i++)
		out[i] = ld->ranges[i];
	ret = (int)ld->nr_range;
	region_unlock(dev->region);
	return ret;
}

static int range_cmp(const void *a, const void *b)
{
	const struct uhmm_dax_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Every range of @lay sorted by start; *nr set. Caller frees. */
static struct uhmm_dax_range *layout_sorted(const struct dax_layout *lay,
					    uint32_t *nr)
{
	struct uhmm_dax_range *all;
	uint32_t n = 0;

	for (uint32_t i = 0; i < lay->nr_dev; i++)
		n += lay->devs[i].nr_range;
	all = malloc((n + 1) * sizeof(*all));
	if (!all)
		return NULL;
	n = 0;
	for (uint32_t i = 0; i < lay->nr_dev; i++)
		for (uint32_t j = 0; j < lay->devs[i].nr_range; j++)
			all[n++] = lay->devs[i].ranges[j];
	qsort(all, n, sizeof(*all), range_cmp);
	*nr = n;
	return all;
}

/* Label-wide range count after a change must stay within the label. */
static bool layout_fits(const struct dax_layout *lay)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < lay->nr_dev; i++)
		n += lay->devs[i].nr_range;
	return n <= UHMM_DAX_MAX_RANGES;
}

/*
 * Grow @d by @need bytes: extend its last range in place when the space
 * after it is free, then first fit over the free gaps, aligned to d->align.
 */
static int layout_grow(struct dax_layout *lay, struct dax_ldev *d,
		       uint64_t need)
{
	struct uhmm_dax_range *all;
	uint64_t avail = 0, prev = 0;
	uint32_t n;
	int ret = 0;

	all = layout_sorted(lay, &n);
	if (!all)
		return -ENOMEM;
	all[n].start = all[n].end = lay->size;	/* sentinel */
	for (uint32_t i = 0; i <= n; i++) {
		uint64_t s = UHMM_ALIGN_UP(prev, d->align);
		uint64_t e = UHMM_ALIGN_DOWN(all[i].start, d->align);

		if (e > s)
			avail += e - s;
		prev = all[i].end;
	}
	if (avail < need) {
		free(all);
		return -ENOSPC;
	}
	if (d->nr_range) {
		uint64_t last = d->ranges[d->nr_range - 1].end, lim = lay->size;

		for (uint32_t i = 0; i < n; i++)
			if (all[i].start >= last) {
				lim = all[i].start;
				break;
			}
		lim = UHMM_ALIGN_DOWN(lim, d->align);
		if (lim > last) {
			uint64_t take = UHMM_MIN(need, lim - last);

			d->ranges[d->nr_range - 1].end += take;
			need -= take;
		}
	}
	free(all);
	if (!need)
		return 0;
	all = layout_sorted(lay, &n);
	if (!all)
		return -ENOMEM;
	all[n].start = all[n].end = lay->size;
	prev = 0;
	for (uint32_t i = 0; i <= n && need; i++) {
		uint64_t s = UHMM_ALIGN_UP(prev, d->align);
		uint64_t e = UHMM_ALIGN_DOWN(all[i].start, d->align);

		prev = all[i].end;
		if (e <= s)
			continue;
		e = UHMM_MIN(e, s + need);
		ret = uhmm_dax_ldev_push(d, s, e);
		if (ret)
			break;
		need -= e - s;
	}
	free(all);
	if (!ret && (need || !layout_fits(lay)))
		ret = -ENOSPC;
	return ret;
}

static void layout_shrink(struct dax_ldev *d, uint64_t drop)
{
	while (drop && d->nr_range) {
		struct uhmm_dax_range *r = &d->ranges[d->nr_range - 1];
		uint64_t len = r->end - r->start;

		if (len <= drop) {
			drop -= len;
			d->nr_range--;
		} else {
			r->end -= drop;
			drop = 0;
		}
	}
	if (!d->nr_range) {
		free(d->ranges);
		d->ranges = NULL;
	}
}

/* The seed got memory: it becomes a device and a new seed appears. */
static int layout_new_seed(struct dax_layout *lay, uint64_t align)
{
	struct dax_ldev *s;

	if (lay->nr_dev >= UHMM_DAX_MAX_DEVICES)
		return -ENOSPC;
	s = &lay->devs[lay->nr_dev++];
	memset(s, 0, sizeof(*s));
	s->id = lay->next_id++;
	s->align = align;
	lay->seed_id = s->id;
	return 0;
}

/*
 * Common tail of every change: unregister the pagemap first when the
 * device's memory changes (so referenced pages make it fail cleanly), then
 * write the label; the reconcile in commit redoes the direct map.
 */
static int dev_commit(struct uhmm_dax_dev *dev, struct dax_layout *nl,
		      bool memory_changes)
{
	struct uhmm_dax_region *r = dev->region;
	int ret;

	if (memory_changes && dev->dmap) {
		ret = pg_unregister(dev);
		if (ret) {
			uhmm_dax_layout_free(nl);
			return ret;
		}
	}
	ret = region_commit_locked(r, nl);
	if (ret && dev->dmap)
		dev_reconcile_locked(dev);
	return ret;
}

int uhmm_dax_dev_resize(struct uhmm_dax_dev *dev, uint64_t size)
{
	struct uhmm_dax_region *r;
	struct dax_layout *nl;
	struct dax_ldev *ld, *nd;
	uint64_t cur;
	bool kmem;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	r = dev->region;
	cur = uhmm_dax_ldev_size(ld);
	kmem = atomic_load(&dev->kmem) != NULL;
	if (!UHMM_IS_ALIGNED(size, ld->align)) {
		ret = -EINVAL;
		goto out;
	}
	if (size == cur)
		goto out;
	if (size < cur) {
		/* Only a kmem heap can tell which memory is still unused. */
		if (dev->nr_maps || (!kmem && busy_foreign(dev))) {
			ret = -EBUSY;
			goto out;
		}
		if (kmem) {
			ret = uhmm_kmem_set_limit(dev, size);
			if (ret)
				goto out;
		}
	}
	nl = uhmm_dax_layout_dup(r->lay);
	if (!nl) {
		ret = -ENOMEM;
		goto out_limit;
	}
	nd = uhmm_dax_layout_dev(nl, dev->id);
	if (size > cur)
		ret = layout_grow(nl, nd, size - cur);
	else
		layout_shrink(nd, cur - size);
	if (!ret && dev->id == nl->seed_id && size)
		ret = layout_new_seed(nl, nl->align);
	if (ret) {
		uhmm_dax_layout_free(nl);
		goto out_limit;
	}
	ret = dev_commit(dev, nl, true);
out_limit:
	if (ret && kmem && size < cur)
		uhmm_kmem_set_limit(dev, cur);
out:
	region_unlock(r);
	return ret;
}

int uhmm_dax_dev_add_range(struct uhmm_dax_dev *dev, uint64_t offset,
			   uint64_t len)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_range *all;
	struct dax_layout *nl;
	struct dax_ldev *ld, *nd;
	uint32_t n;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	r = dev->region;
	ret = -EINVAL;
	if (!len || !UHMM_IS_ALIGNED(offset, ld->align) ||
	    !UHMM_IS_ALIGNED(len, ld->align) || offset >= r->lay->size ||
	    len > r->lay->size - offset)
		goto out;
	all = layout_sorted(r->lay, &n);
	ret = -ENOMEM;
	if (!all)
		goto out;
	ret = 0;
	for (uint32_t i = 0; i < n; i++)
		if (all[i].start < offset + len && offset < all[i].end)
			ret = -EBUSY;
	free(all);
	if (ret)
		goto out;
	nl = uhmm_dax_layout_dup(r->lay);
	ret = -ENOMEM;
	if (!nl)
		goto out;
	nd = uhmm_dax_layout_dev(nl, dev->id);
	ret = uhmm_dax_ldev_push(nd, offset, offset + len);
	if (!ret && !layout_fits(nl))
		ret = -ENOSPC;
	if (!ret && dev->id == nl->seed_id)
		ret = layout_new_seed(nl, nl->align);
	if (ret) {
		uhmm_dax_layout_free(nl);
		goto out;
	}
	ret = dev_commit(dev, nl, true);
out:
	region_unlock(r);
	return ret;
}

int uhmm_dax_dev_set_align(struct uhmm_dax_dev *dev, uint64_t align)
{
	struct dax_layout *nl;
	struct dax_ldev *ld;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (!uhmm_dax_align_valid(align) || align < dev->region->lay->align)
		goto out;
	for (uint32_t i = 0; i < ld->nr_range; i++)
		if (!UHMM_IS_ALIGNED(ld->ranges[i].start, align) ||
		    !UHMM_IS_ALIGNED(ld->ranges[i].end, align))
			goto out;
	ret = 0;
	if (align == ld->align)
		goto out;
	ret = -EBUSY;
	if (dev_busy(dev))
		goto out;
	nl = uhmm_dax_layout_dup(dev->region->lay);
	ret = -ENOMEM;
	if (!nl)
		goto out;
	uhmm_dax_layout_dev(nl, dev->id)->align = align;
	/* The direct map was aligned to the old value: rebuild it. */
	ret = dev_deactivate(dev);
	if (ret) {
		uhmm_dax_layout_free(nl);
		goto out;
	}
	ret = dev_commit(dev, nl, false);
	if (!ret && (dev_ldev(dev)->flags & DAX_LDEV_ENABLED))
		dev_activate(dev, dev_ldev(dev));
out:
	region_unlock(dev->region);
	return ret;
}

int uhmm_dax_dev_destroy(struct uhmm_dax_dev *dev)
{
	struct dax_layout *nl;
	struct dax_ldev *ld;
	uint32_t i;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (dev->id == dev->region->lay->seed_id)
		goto out;
	ret = -EBUSY;
	if (dev_busy(dev))
		goto out;
	nl = uhmm_dax_layout_dup(dev->region->lay);
	ret = -ENOMEM;
	if (!nl)
		goto out;
	for (i = 0; nl->devs[i].id != dev->id; i++)
		;
	free(nl->devs[i].ranges);
	memmove(&nl->devs[i], &nl->devs[i + 1],
		(nl->nr_dev - i - 1) * sizeof(nl->devs[0]));
	nl->nr_dev--;
	ret = dev_commit(dev, nl, true);
out:
	region_unlock(dev->region);
	return ret;
}

static int dev_set_flags(struct uhmm_dax_dev *dev, uint32_t flags)
{
	struct dax_layout *nl = uhmm_dax_layout_dup(dev->region->lay);

	if (!nl)
		return -ENOMEM;
	uhmm_dax_layout_dev(nl, dev->id)->flags = flags;
	return dev_commit(dev, nl, false);
}

int uhmm_dax_dev_enable(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = -ENXIO;
	if (!ld->nr_range)
		goto out;
	ret = dev_activate(dev, ld);
	if (ret)
		goto out;
	if (!(ld->flags & DAX_LDEV_ENABLED))
		ret = dev_set_flags(dev, ld->flags | DAX_LDEV_ENABLED);
	if (ret && !atomic_load(&dev->kmem))
		dev_deactivate(dev);
out:
	region_unlock(dev->region);
	return ret;
}

int uhmm_dax_dev_disable(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = -EBUSY;
	if (dev_busy(dev))
		goto out;
	ret = dev_deactivate(dev);
	if (ret)
		goto out;
	if (ld->flags & DAX_LDEV_ENABLED)
		ret = dev_set_flags(dev, ld->flags & ~DAX_LDEV_ENABLED);
out:
	region_unlock(dev->region);
	return ret;
}

static int dev_set_mode(struct uhmm_dax_dev *dev, enum uhmm_dax_mode mode)
{
	struct dax_layout *nl = uhmm_dax_layout_dup(dev->region->lay);

	if (!nl)
		return -ENOMEM;
	uhmm_dax_layout_dev(nl, dev->id)->mode = mode;
	return dev_commit(dev, nl, false);
}

/* Bring the heap online here; region locked, label says kmem. */
static int kmem_attach_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld)
{
	int ret;

	if (atomic_load(&dev->kmem))
		return 0;
	ret = busy_set(dev, F_WRLCK);
	if (ret)
		return ret;
	ret = dev_activate(dev, ld);
	if (!ret)
		ret = uhmm_kmem_online(dev);
	if (ret) {
		busy_update(dev);
		if (!(ld->flags & DAX_LDEV_ENABLED))
			dev_deactivate(dev);
	}
	return ret;
}

int uhmm_dax_kmem_attach(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld;
	int ret;

	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = ld->mode == UHMM_DAX_MODE_KMEM && ld->nr_range ?
		      kmem_attach_locked(dev, ld) : -ENXIO;
	region_unlock(dev->region);
	return ret;
}

int uhmm_dax_dev_reconfigure(struct uhmm_dax_dev *dev, enum uhmm_dax_mode mode)
{
	struct dax_ldev *ld;
	int ret;

	if (mode != UHMM_DAX_MODE_DEVDAX && mode != UHMM_DAX_MODE_KMEM)
		return -EINVAL;
	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	if (ld->mode == (uint32_t)mode)
		goto out;
	if (mode == UHMM_DAX_MODE_KMEM) {
		ret = -ENXIO;
		if (!ld->nr_range)
			goto out;
		ret = -EBUSY;
		if (dev->nr_maps)
			goto out;
		ret = kmem_attach_locked(dev, ld);
		if (ret)
			goto out;
		ret = dev_set_mode(dev, mode);
		if (ret)
			uhmm_kmem_offline(dev);
	} else {
		if (atomic_load(&dev->kmem)) {
			ret = uhmm_kmem_offline(dev);
			if (ret)
				goto out;
		} else if (busy_foreign(dev)) {
			ret = -EBUSY;
			goto out;
		}
		ret = dev_set_mode(dev, mode);
	}
	busy_update(dev);
	ld = dev_ldev(dev);
	if (!atomic_load(&dev->kmem) && !dev->nr_maps && ld &&
	    !(ld->flags & DAX_LDEV_ENABLED))
		dev_deactivate(dev);
out:
	region_unlock(dev->region);
	return ret;
}

int uhmm_dax_map(struct uhmm_dax_dev *dev, int prot, void **addr)
{
	struct dax_map *m;
	struct dax_ldev *ld;
	size_t span;
	int ret;

	if (!addr || !prot || (prot & ~(PROT_READ | PROT_WRITE)))
		return -EINVAL;
	ret = dev_lock(dev, &ld);
	if (ret)
		return ret;
	ret = -EBUSY;
	if (ld->mode == UHMM_DAX_MODE_KMEM)
		goto out;
	ret = -ENXIO;
	if (!ld->nr_range || !(ld->flags & DAX_LDEV_ENABLED))
		goto out;
	ret = -ENOMEM;
	m = calloc(1, sizeof(*m));
	if (!m)
		goto out;
	m->len = uhmm_dax_ldev_size(ld);
	ret = busy_set(dev, F_RDLCK);
	if (ret)
		goto err_free;
	ret = dev_activate(dev, ld);
	if (ret)
		goto err_busy;
	ret = -ENOMEM;
	m->addr = map_reserve(m->len, ld->align, &span);
	if (!m->addr)
		goto err_busy;
	m->span = span;
	ret = map_ranges(dev->region, m->addr, ld->ranges, ld->nr_range, 0,
			 prot);
	if (ret) {
		munmap(m->addr, m->span);
		goto err_busy;
	}
	m->next = dev->maps;
	dev->maps = m;
	dev->nr_maps++;
	*addr = m->addr;
	region_unlock(dev->region);
	return 0;
err_busy:
	busy_update(dev);
err_free:
	free(m);
out:
	region_unlock(dev->region);
	return ret;
}

int uhmm_dax_unmap(struct uhmm_dax_dev *dev, void *addr)
{
	struct dax_map **pp, *m;
	struct dax_ldev *ld;

	if (!dev || !addr)
		return -EINVAL;
	/* Unmapping must work even when the label went bad or the dev is gone. */
	pthread_mutex_lock(&dev->region->lock);
	for (pp = &dev->maps; (m = *pp); pp = &m->next)
		if (m->addr == addr)
			break;
	if (!m) {
		pthread_mutex_unlock(&dev->region->lock);
		return -EINVAL;
	}
	*pp = m->next;
	munmap(m->addr, m->span);
	free(m);
	dev->nr_maps--;
	busy_update(dev);
	ld = dev_ldev(dev);
	if (!dev->nr_maps && !atomic_load(&dev->kmem) &&
	    (!ld || !(ld->flags & DAX_LDEV_ENABLED)))
		dev_deactivate(dev);
	pthread_mutex_unlock(&dev->region->lock);
	return 0;
}

int uhmm_dax_dev_pagemap(struct uhmm_dax_dev *dev, struct uhmm_pagemap **out)
{
	int ret = -ENXIO;

	if (!dev || !out)
		return -EINVAL;
	pthread_mutex_lock(&dev->region->lock);
	if (dev->pg_state == DAX_PG_LIVE) {
		*out = &dev->pgmap;
		ret = 0;
	}
	pthread_mutex_unlock(&dev->region->lock);
	return ret;
}
