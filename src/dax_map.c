// SPDX-License-Identifier: MIT
/* dax_map.c - a device's memory in this process: the direct map, the
 * uhmm_dax_map() spans, the GENERIC pagemap, and the busy marks that tell
 * other openers about them. API in include/uhmm/dax.h; regions and the
 * device operations that change the label are in dax.c. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "dax_internal.h"

/* OFD lock bytes marking a device busy (mapped: read, kmem: write). */
#define DAX_BUSY_BASE (1LL << 50)

static const struct uhmm_pagemap_ops dax_pgmap_ops = { 0 };

/* ---------------------------------------------------------------------- */
/* Busy marks shared between openers: OFD locks on one byte per device    */

int uhmm_dax_busy_set(struct uhmm_dax_dev *dev, int type)
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
bool uhmm_dax_busy_foreign(struct uhmm_dax_dev *dev)
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

void uhmm_dax_busy_update(struct uhmm_dax_dev *dev)
{
	int want = atomic_load(&dev->kmem) ? F_WRLCK :
		   dev->nr_maps ? F_RDLCK : F_UNLCK;

	/* Downgrades and unlocks cannot conflict. */
	if (want != F_WRLCK)
		uhmm_dax_busy_set(dev, want);
}

bool uhmm_dax_dev_busy(struct uhmm_dax_dev *dev)
{
	return dev->nr_maps || atomic_load(&dev->kmem) || uhmm_dax_busy_foreign(dev);
}

/* ---------------------------------------------------------------------- */
/* Direct map (the device's memory at one contiguous span) and pagemap    */

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

void uhmm_dax_pg_release(struct uhmm_dax_dev *dev)
{
	uhmm_release_region(NULL, dev->pgrange.start);
	dev->pg_state = DAX_PG_NONE;
}

/* Unregister the pagemap without waiting; -EBUSY while pages are referenced. */
int uhmm_dax_pg_unregister(struct uhmm_dax_dev *dev)
{
	int ret;

	if (dev->pg_state == DAX_PG_NONE)
		return 0;
	ret = uhmm_memunmap_pages_timeout(&dev->pgmap, 0);
	if (ret == -EBUSY) {
		dev->pg_state = DAX_PG_KILLED;
		return ret;
	}
	uhmm_dax_pg_release(dev);
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
int uhmm_dax_dev_activate(struct uhmm_dax_dev *dev, const struct dax_ldev *ld)
{
	struct uhmm_dax_region *r = dev->region;
	int ret;

	if (!dev->dmap) {
		size_t span = UHMM_ALIGN_UP(r->lay->size, ld->align);

		dev->dmap = uhmm_map_aligned(span, ld->align, PROT_NONE, false);
		if (!dev->dmap)
			return -ENOMEM;
		dev->dmap_span = span;
	}
	if (!ranges_equal(ld, dev->dmap_ranges, dev->dmap_nr) ||
	    !dev->dmap_len) {
		ret = uhmm_dax_pg_unregister(dev);
		if (ret)
			return ret;
		ret = dmap_sync(dev, ld);
		if (ret)
			return ret;
	}
	return pg_register(dev, dev->dmap_len, ld->align);
}

int uhmm_dax_dev_deactivate(struct uhmm_dax_dev *dev)
{
	int ret;

	if (!dev->dmap)
		return 0;
	ret = uhmm_dax_pg_unregister(dev);
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
void uhmm_dax_dev_reconcile_locked(struct uhmm_dax_dev *dev)
{
	struct dax_ldev *ld = uhmm_dax_dev_ldev(dev);
	bool kmem = atomic_load(&dev->kmem) != NULL;

	if (!ld) {
		dev->gone = true;
		if (!kmem && !dev->nr_maps)
			uhmm_dax_dev_deactivate(dev);
		return;
	}
	if (!dev->dmap)
		return;
	if (!kmem && !dev->nr_maps && !(ld->flags & DAX_LDEV_ENABLED)) {
		uhmm_dax_dev_deactivate(dev);
		return;
	}
	if (ranges_equal(ld, dev->dmap_ranges, dev->dmap_nr) &&
	    dev->pg_state == DAX_PG_LIVE)
		return;
	if (uhmm_dax_pg_unregister(dev))
		return;
	if (UHMM_WARN_ON(dmap_sync(dev, ld)))
		return;
	if (kmem)
		uhmm_kmem_set_limit(dev, dev->dmap_len);
	pg_register(dev, dev->dmap_len, ld->align);
}


/* ---------------------------------------------------------------------- */
/* Application mappings and the pagemap handle                            */

struct map_arg {
	int prot;
	void **addr;
};

static int dax_map_locked(struct uhmm_dax_dev *dev, struct dax_ldev *ld,
			  void *arg)
{
	struct map_arg *a = arg;
	struct dax_map *m;
	int ret;

	if (ld->mode == UHMM_DAX_MODE_KMEM)
		return -EBUSY;
	if (!ld->nr_range || !(ld->flags & DAX_LDEV_ENABLED))
		return -ENXIO;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->len = uhmm_dax_ldev_size(ld);
	ret = uhmm_dax_busy_set(dev, F_RDLCK);
	if (ret)
		goto err_free;
	ret = uhmm_dax_dev_activate(dev, ld);
	if (ret)
		goto err_busy;
	ret = -ENOMEM;
	m->addr = uhmm_map_aligned(m->len, ld->align, PROT_NONE, false);
	if (!m->addr)
		goto err_busy;
	ret = map_ranges(dev->region, m->addr, ld->ranges, ld->nr_range, 0,
			 a->prot);
	if (ret) {
		munmap(m->addr, m->len);
		goto err_busy;
	}
	m->next = dev->maps;
	dev->maps = m;
	dev->nr_maps++;
	*a->addr = m->addr;
	return 0;
err_busy:
	uhmm_dax_busy_update(dev);
err_free:
	free(m);
	return ret;
}

int uhmm_dax_map(struct uhmm_dax_dev *dev, int prot, void **addr)
{
	struct map_arg a = { prot, addr };

	if (!addr || !prot || (prot & ~(PROT_READ | PROT_WRITE)))
		return -EINVAL;
	return uhmm_dax_dev_call(dev, dax_map_locked, &a);
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
	munmap(m->addr, m->len);
	free(m);
	dev->nr_maps--;
	uhmm_dax_busy_update(dev);
	ld = uhmm_dax_dev_ldev(dev);
	if (!dev->nr_maps && !atomic_load(&dev->kmem) &&
	    (!ld || !(ld->flags & DAX_LDEV_ENABLED)))
		uhmm_dax_dev_deactivate(dev);
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

