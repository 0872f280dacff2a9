// SPDX-License-Identifier: MIT
/* dax.c - device-dax in user space: regions on a file, memfd, hugetlbfs or
 * /dev/dax backing, and the devices carved from them. API in
 * include/uhmm/dax.h; the label lives in dax_meta.c, mappings and the
 * pagemap in dax_map.c, kmem in kmem.c. */
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

/* ---------------------------------------------------------------------- */
/* Locking and label refresh                                              */

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
		uhmm_dax_dev_reconcile_locked(d);
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
		uhmm_dax_dev_reconcile_locked(d);
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

/* Run @fn with @dev's region locked and the label fresh; -ENODEV when gone. */
int uhmm_dax_dev_call(struct uhmm_dax_dev *dev, uhmm_dax_dev_locked_fn *fn,
		      void *arg)
{
	struct dax_ldev *ld;
	int ret;

	if (!dev)
		return -EINVAL;
	ret = region_lock(dev->region);
	if (ret)
		return ret;
	ld = uhmm_dax_dev_ldev(dev);
	ret = ld && !dev->gone ? fn(dev, ld, arg) : -ENODEV;
	region_unlock(dev->region);
	return ret;
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
			uhmm_dax_pg_release(d);
		}
		uhmm_dax_dev_deactivate(d);
		free(d);
	}
	r->devs = NULL;
	pthread_mutex_unlock(&r->lock);
	region_free(r);
	return 0;
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
	info->available = r->lay->size - uhmm_dax_layout_used(r->lay);
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

static int dev_info_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			   void *arg)
{
	struct uhmm_dax_dev_info *info = arg;

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
	return 0;
}

int uhmm_dax_dev_info(struct uhmm_dax_dev *dev, struct uhmm_dax_dev_info *info)
{
	if (!info)
		return -EINVAL;
	return uhmm_dax_dev_call(dev, dev_info_locked, info);
}

struct ranges_arg {
	struct uhmm_dax_range *out;
	unsigned int n;
};

static int dev_ranges_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			     void *arg)
{
	struct ranges_arg *a = arg;

	for (uint32_t i = 0; i < ld->nr_range && i < a->n; i++)
		a->out[i] = ld->ranges[i];
	return (int)ld->nr_range;
}

int uhmm_dax_dev_ranges(struct uhmm_dax_dev *dev, struct uhmm_dax_range *out,
			unsigned int n)
{
	struct ranges_arg a = { out, n };

	if (n && !out)
		return -EINVAL;
	return uhmm_dax_dev_call(dev, dev_ranges_locked, &a);
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
		ret = uhmm_dax_pg_unregister(dev);
		if (ret) {
			uhmm_dax_layout_free(nl);
			return ret;
		}
	}
	ret = region_commit_locked(r, nl);
	if (ret && dev->dmap)
		uhmm_dax_dev_reconcile_locked(dev);
	return ret;
}

/* Commit @nl, in which @dev got memory (@ret: the edit's result so far);
 * a seed that got memory becomes a device and a new seed appears. */
static int dev_commit_sized(struct uhmm_dax_dev *dev, struct dax_layout *nl,
			    int ret)
{
	if (!ret && dev->id == nl->seed_id &&
	    uhmm_dax_layout_dev(nl, dev->id)->nr_range)
		ret = uhmm_dax_layout_new_seed(nl, nl->align);
	if (ret) {
		uhmm_dax_layout_free(nl);
		return ret;
	}
	return dev_commit(dev, nl, true);
}

/* Commit a copy of the label with @dev's flags and mode replaced. */
static int dev_relabel(struct uhmm_dax_dev *dev, uint32_t flags,
		       uint32_t mode)
{
	struct dax_layout *nl = uhmm_dax_layout_dup(dev->region->lay);
	struct dax_ldev *nd;

	if (!nl)
		return -ENOMEM;
	nd = uhmm_dax_layout_dev(nl, dev->id);
	nd->flags = flags;
	nd->mode = mode;
	return dev_commit(dev, nl, false);
}

static int dev_resize_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			     void *arg)
{
	uint64_t size = *(const uint64_t *)arg, cur = uhmm_dax_ldev_size(ld);
	bool kmem = atomic_load(&dev->kmem) != NULL;
	struct dax_layout *nl;
	struct dax_ldev *nd;
	int ret = 0;

	if (!UHMM_IS_ALIGNED(size, ld->align))
		return -EINVAL;
	if (size == cur)
		return 0;
	if (size < cur) {
		/* Only a kmem heap can tell which memory is still unused. */
		if (dev->nr_maps || (!kmem && uhmm_dax_busy_foreign(dev)))
			return -EBUSY;
		if (kmem) {
			ret = uhmm_kmem_set_limit(dev, size);
			if (ret)
				return ret;
		}
	}
	nl = uhmm_dax_layout_dup(dev->region->lay);
	if (nl) {
		nd = uhmm_dax_layout_dev(nl, dev->id);
		if (size > cur)
			ret = uhmm_dax_layout_grow(nl, nd, size - cur);
		else
			uhmm_dax_ldev_shrink(nd, cur - size);
		ret = dev_commit_sized(dev, nl, ret);
	} else {
		ret = -ENOMEM;
	}
	if (ret && kmem && size < cur)
		uhmm_kmem_set_limit(dev, cur);
	return ret;
}

int uhmm_dax_dev_resize(struct uhmm_dax_dev *dev, uint64_t size)
{
	return uhmm_dax_dev_call(dev, dev_resize_locked, &size);
}

static int dev_add_range_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
				void *arg)
{
	const struct uhmm_dax_range *want = arg;
	uint64_t offset = want->start, len = want->end - want->start;
	struct dax_layout *nl, *lay = dev->region->lay;
	struct uhmm_dax_range *all;
	uint32_t n;
	int ret = 0;

	if (!len || !UHMM_IS_ALIGNED(offset, ld->align) ||
	    !UHMM_IS_ALIGNED(len, ld->align) || offset >= lay->size ||
	    len > lay->size - offset)
		return -EINVAL;
	all = uhmm_dax_layout_sorted(lay, &n);
	if (!all)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		if (all[i].start < offset + len && offset < all[i].end)
			ret = -EBUSY;
	free(all);
	if (ret)
		return ret;
	nl = uhmm_dax_layout_dup(lay);
	if (!nl)
		return -ENOMEM;
	ret = uhmm_dax_ldev_push(uhmm_dax_layout_dev(nl, dev->id), offset,
				 offset + len);
	if (!ret && !uhmm_dax_layout_fits(nl))
		ret = -ENOSPC;
	return dev_commit_sized(dev, nl, ret);
}

int uhmm_dax_dev_add_range(struct uhmm_dax_dev *dev, uint64_t offset,
			   uint64_t len)
{
	/* end may wrap: the locked part checks offset and len, not end. */
	struct uhmm_dax_range want = { offset, offset + len };

	return uhmm_dax_dev_call(dev, dev_add_range_locked, &want);
}

static int dev_set_align_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
				void *arg)
{
	uint64_t align = *(const uint64_t *)arg;
	struct dax_layout *nl;
	int ret;

	if (!uhmm_dax_align_valid(align) || align < dev->region->lay->align)
		return -EINVAL;
	for (uint32_t i = 0; i < ld->nr_range; i++)
		if (!UHMM_IS_ALIGNED(ld->ranges[i].start, align) ||
		    !UHMM_IS_ALIGNED(ld->ranges[i].end, align))
			return -EINVAL;
	if (align == ld->align)
		return 0;
	if (uhmm_dax_dev_busy(dev))
		return -EBUSY;
	nl = uhmm_dax_layout_dup(dev->region->lay);
	if (!nl)
		return -ENOMEM;
	uhmm_dax_layout_dev(nl, dev->id)->align = align;
	/* The direct map was aligned to the old value: rebuild it. */
	ret = uhmm_dax_dev_deactivate(dev);
	if (ret) {
		uhmm_dax_layout_free(nl);
		return ret;
	}
	ret = dev_commit(dev, nl, false);
	ld = uhmm_dax_dev_ldev(dev);
	if (!ret && (ld->flags & DAX_LDEV_ENABLED))
		uhmm_dax_dev_activate(dev, ld);
	return ret;
}

int uhmm_dax_dev_set_align(struct uhmm_dax_dev *dev, uint64_t align)
{
	return uhmm_dax_dev_call(dev, dev_set_align_locked, &align);
}

static int dev_destroy_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			      void *arg)
{
	struct dax_layout *nl;
	uint32_t i;

	if (dev->id == dev->region->lay->seed_id)
		return -EINVAL;
	if (uhmm_dax_dev_busy(dev))
		return -EBUSY;
	nl = uhmm_dax_layout_dup(dev->region->lay);
	if (!nl)
		return -ENOMEM;
	for (i = 0; nl->devs[i].id != dev->id; i++)
		;
	free(nl->devs[i].ranges);
	memmove(&nl->devs[i], &nl->devs[i + 1],
		(nl->nr_dev - i - 1) * sizeof(nl->devs[0]));
	nl->nr_dev--;
	return dev_commit(dev, nl, true);
}

int uhmm_dax_dev_destroy(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_dev_call(dev, dev_destroy_locked, NULL);
}

static int dev_enable_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			     void *arg)
{
	int ret;

	if (!ld->nr_range)
		return -ENXIO;
	ret = uhmm_dax_dev_activate(dev, ld);
	if (ret)
		return ret;
	if (!(ld->flags & DAX_LDEV_ENABLED))
		ret = dev_relabel(dev, ld->flags | DAX_LDEV_ENABLED, ld->mode);
	if (ret && !atomic_load(&dev->kmem))
		uhmm_dax_dev_deactivate(dev);
	return ret;
}

int uhmm_dax_dev_enable(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_dev_call(dev, dev_enable_locked, NULL);
}

static int dev_disable_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			      void *arg)
{
	int ret;

	if (uhmm_dax_dev_busy(dev))
		return -EBUSY;
	ret = uhmm_dax_dev_deactivate(dev);
	if (!ret && (ld->flags & DAX_LDEV_ENABLED))
		ret = dev_relabel(dev, ld->flags & ~DAX_LDEV_ENABLED, ld->mode);
	return ret;
}

int uhmm_dax_dev_disable(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_dev_call(dev, dev_disable_locked, NULL);
}

/* Drop the direct map when nothing in this process uses a disabled device. */
static void dev_deactivate_unused(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld = uhmm_dax_dev_ldev(dev);

	if (!atomic_load(&dev->kmem) && !dev->nr_maps && ld &&
	    !(ld->flags & DAX_LDEV_ENABLED))
		uhmm_dax_dev_deactivate(dev);
}

/* Bring the heap online here; region locked, label says kmem. */
static int kmem_attach_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld)
{
	int ret;

	if (atomic_load(&dev->kmem))
		return 0;
	ret = uhmm_dax_busy_set(dev, F_WRLCK);
	if (ret)
		return ret;
	ret = uhmm_dax_dev_activate(dev, ld);
	if (!ret)
		ret = uhmm_kmem_online(dev);
	if (ret) {
		uhmm_dax_busy_update(dev);
		dev_deactivate_unused(dev);
	}
	return ret;
}

static int kmem_attach_call(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			    void *arg)
{
	if (ld->mode != UHMM_DAX_MODE_KMEM || !ld->nr_range)
		return -ENXIO;
	return kmem_attach_locked(dev, ld);
}

int uhmm_dax_kmem_attach(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_dev_call(dev, kmem_attach_call, NULL);
}

static int dev_reconfigure_locked(struct uhmm_dax_dev *dev,
				  struct dax_ldev *ld, void *arg)
{
	uint32_t mode = *(const uint32_t *)arg;
	int ret;

	if (ld->mode == mode)
		return 0;
	if (mode == UHMM_DAX_MODE_KMEM) {
		if (!ld->nr_range)
			return -ENXIO;
		if (dev->nr_maps)
			return -EBUSY;
		ret = kmem_attach_locked(dev, ld);
		if (ret)
			return ret;
		ret = dev_relabel(dev, ld->flags, mode);
		if (ret)
			uhmm_kmem_offline(dev);
	} else {
		if (atomic_load(&dev->kmem))
			ret = uhmm_kmem_offline(dev);
		else
			ret = uhmm_dax_busy_foreign(dev) ? -EBUSY : 0;
		if (ret)
			return ret;
		ret = dev_relabel(dev, ld->flags, mode);
	}
	uhmm_dax_busy_update(dev);
	dev_deactivate_unused(dev);
	return ret;
}

int uhmm_dax_dev_reconfigure(struct uhmm_dax_dev *dev, enum uhmm_dax_mode mode)
{
	uint32_t m = (uint32_t)mode;

	if (mode != UHMM_DAX_MODE_DEVDAX && mode != UHMM_DAX_MODE_KMEM)
		return -EINVAL;
	return uhmm_dax_dev_call(dev, dev_reconfigure_locked, &m);
}
