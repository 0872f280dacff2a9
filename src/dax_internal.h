/* SPDX-License-Identifier: MIT */
/*
 * dax_internal.h - structs shared by dax.c (regions, devices), dax_map.c
 * (mappings, pagemap, busy marks), dax_meta.c (the on-backing label) and
 * kmem.c (the device heap).
 */
#ifndef UHMM_DAX_INTERNAL_H
#define UHMM_DAX_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <uhmm/dax.h>
#include <uhmm/pagemap.h>
#include "internal.h"

/* Two label blocks at the start of the backing; the data area follows. */
#define DAX_LABEL_BLOCK (64UL << 10)
#define DAX_LABEL_AREA (2 * DAX_LABEL_BLOCK)

/* label device flags */
#define DAX_LDEV_ENABLED (1U << 0)
#define DAX_LDEV_FLAGS_ALL DAX_LDEV_ENABLED

/* One device of a layout: what the label says. */
struct dax_ldev {
	uint32_t id;
	uint32_t mode;			/* enum uhmm_dax_mode */
	uint32_t flags;			/* DAX_LDEV_* */
	uint32_t nr_range;
	uint64_t align;
	struct uhmm_dax_range *ranges;	/* nr_range, device offset order */
};

/* A parsed, validated label. */
struct dax_layout {
	uint64_t seq;
	uint64_t size;			/* data area bytes */
	uint64_t align;
	uint64_t data_off;		/* file offset of the data area */
	uint32_t region_id;
	uint32_t next_id;
	uint32_t seed_id;
	uint32_t nr_dev;
	struct dax_ldev devs[UHMM_DAX_MAX_DEVICES];	/* sorted by id */
};

enum dax_backing {
	DAX_BACKING_FILE,
	DAX_BACKING_HUGETLBFS,
	DAX_BACKING_MEMFD,
	DAX_BACKING_DEVDAX,
};

struct dax_map {
	struct dax_map *next;
	char *addr;
	size_t len;			/* mapped bytes */
};

struct dax_kmem;

/* pagemap state of a device in this process */
enum dax_pg_state {
	DAX_PG_NONE,			/* not registered */
	DAX_PG_LIVE,			/* registered */
	DAX_PG_KILLED,			/* memunmap timed out; retry to finish */
};

struct uhmm_dax_dev {
	struct uhmm_dax_region *region;	/* constant */
	struct uhmm_dax_dev *next;	/* region->devs */
	uint32_t id;			/* constant */
	bool gone;			/* destroyed (by anyone) */
	/* process-local state, protected by region->lock */
	struct dax_map *maps;		/* uhmm_dax_map() spans */
	unsigned int nr_maps;
	int busy_lock;			/* OFD lock held: F_UNLCK/F_RDLCK/F_WRLCK */
	char *dmap;			/* direct map: device memory, contiguous */
	size_t dmap_span;		/* reserved VA of the direct map */
	uint32_t dmap_nr;		/* ranges mapped at dmap */
	struct uhmm_dax_range *dmap_ranges;
	uint64_t dmap_len;
	enum dax_pg_state pg_state;
	struct uhmm_pagemap pgmap;
	struct uhmm_dev_range pgrange;
	/* heap in kmem mode; set and cleared under region->lock */
	_Atomic(struct dax_kmem *) kmem;
};

struct uhmm_dax_region {
	pthread_mutex_t lock;		/* serializes every operation of this handle */
	int fd;				/* the backing; flock() serializes openers */
	char *path;
	enum dax_backing kind;
	bool persistent;
	uint8_t *label;			/* mapping of the label area */
	size_t label_len;
	struct dax_layout *lay;		/* the label last read or written */
	struct uhmm_dax_dev *devs;	/* handles handed out */
};

/* dax_meta.c: the label */
UHMM_HIDDEN struct dax_layout *uhmm_dax_layout_new(void);
UHMM_HIDDEN void uhmm_dax_layout_free(struct dax_layout *lay);
UHMM_HIDDEN struct dax_layout *uhmm_dax_layout_dup(const struct dax_layout *l);
UHMM_HIDDEN struct dax_ldev *uhmm_dax_layout_dev(struct dax_layout *lay,
						 uint32_t id);
UHMM_HIDDEN int uhmm_dax_layout_check(const struct dax_layout *lay);
UHMM_HIDDEN int uhmm_dax_label_read(const uint8_t *area,
				    struct dax_layout **out);
UHMM_HIDDEN int uhmm_dax_label_write(uint8_t *area, struct dax_layout *lay,
				     bool sync);
UHMM_HIDDEN uint64_t uhmm_dax_ldev_size(const struct dax_ldev *d);
UHMM_HIDDEN int uhmm_dax_ldev_push(struct dax_ldev *d, uint64_t start,
				   uint64_t end);
UHMM_HIDDEN bool uhmm_dax_align_valid(uint64_t align);
UHMM_HIDDEN uint64_t uhmm_dax_layout_used(const struct dax_layout *lay);
UHMM_HIDDEN struct uhmm_dax_range *
uhmm_dax_layout_sorted(const struct dax_layout *lay, uint32_t *nr);
UHMM_HIDDEN bool uhmm_dax_layout_fits(const struct dax_layout *lay);
UHMM_HIDDEN int uhmm_dax_layout_grow(struct dax_layout *lay,
				     struct dax_ldev *d, uint64_t need);
UHMM_HIDDEN void uhmm_dax_ldev_shrink(struct dax_ldev *d, uint64_t drop);
UHMM_HIDDEN int uhmm_dax_layout_new_seed(struct dax_layout *lay,
					 uint64_t align);

/* kmem.c: the heap; called with region->lock held */
UHMM_HIDDEN int uhmm_kmem_online(struct uhmm_dax_dev *dev);
UHMM_HIDDEN int uhmm_kmem_offline(struct uhmm_dax_dev *dev);
UHMM_HIDDEN int uhmm_kmem_set_limit(struct uhmm_dax_dev *dev, uint64_t size);
UHMM_HIDDEN long uhmm_kmem_live(struct uhmm_dax_dev *dev);

/* dax.c */
typedef int uhmm_dax_dev_locked_fn(struct uhmm_dax_dev *dev,
				   struct dax_ldev *ld, void *arg);
UHMM_HIDDEN int uhmm_dax_dev_call(struct uhmm_dax_dev *dev,
				  uhmm_dax_dev_locked_fn *fn, void *arg);
UHMM_HIDDEN int uhmm_dax_kmem_attach(struct uhmm_dax_dev *dev);

/* The device's entry in the region's current label, or NULL; region locked. */
static inline struct dax_ldev *uhmm_dax_dev_ldev(struct uhmm_dax_dev *dev)
{
	return uhmm_dax_layout_dev(dev->region->lay, dev->id);
}

/* dax_map.c: this process's view of a device; region->lock held */
UHMM_HIDDEN int uhmm_dax_busy_set(struct uhmm_dax_dev *dev, int type);
UHMM_HIDDEN bool uhmm_dax_busy_foreign(struct uhmm_dax_dev *dev);
UHMM_HIDDEN void uhmm_dax_busy_update(struct uhmm_dax_dev *dev);
UHMM_HIDDEN bool uhmm_dax_dev_busy(struct uhmm_dax_dev *dev);
UHMM_HIDDEN void uhmm_dax_pg_release(struct uhmm_dax_dev *dev);
UHMM_HIDDEN int uhmm_dax_pg_unregister(struct uhmm_dax_dev *dev);
UHMM_HIDDEN int uhmm_dax_dev_activate(struct uhmm_dax_dev *dev,
				      const struct dax_ldev *ld);
UHMM_HIDDEN int uhmm_dax_dev_deactivate(struct uhmm_dax_dev *dev);
UHMM_HIDDEN void uhmm_dax_dev_reconcile_locked(struct uhmm_dax_dev *dev);

#endif
