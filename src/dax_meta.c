// SPDX-License-Identifier: MIT
/* dax_meta.c - the dax label: two checksummed, sequenced blocks at the start
 * of a region's backing; parse, validate, write. API in include/uhmm/dax.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "dax_internal.h"
#include "fault_inject.h"

#define DAX_MAGIC "UHMMDAX"
#define DAX_VERSION 1

/* On-backing format, host byte order, every struct a multiple of 8 bytes. */
struct dax_label_hdr {
	char magic[8];
	uint32_t version;
	uint32_t hdr_size;
	uint64_t seq;
	uint64_t checksum;		/* over [0, used) with this field 0 */
	uint32_t used;			/* bytes of the block in use */
	uint32_t region_id;
	uint64_t size;
	uint64_t align;
	uint64_t data_off;
	uint32_t nr_dev;
	uint32_t nr_range;
	uint32_t next_id;
	uint32_t seed_id;
	uint8_t reserved[48];
};

struct dax_label_dev {
	uint32_t id;
	uint32_t mode;
	uint32_t flags;
	uint32_t nr_range;
	uint64_t align;
	uint64_t reserved;
};

struct dax_label_range {
	uint64_t start;
	uint64_t end;
};

_Static_assert(sizeof(struct dax_label_hdr) == 128, "label header layout");
_Static_assert(sizeof(struct dax_label_dev) == 32, "label device layout");
_Static_assert(sizeof(struct dax_label_hdr) +
		       UHMM_DAX_MAX_DEVICES * sizeof(struct dax_label_dev) +
		       UHMM_DAX_MAX_RANGES * sizeof(struct dax_label_range) <=
	       DAX_LABEL_BLOCK, "label block too small");

static uint64_t label_sum(const uint8_t *p, size_t len)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL;

	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t w;

		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return h ^ len;
}

bool uhmm_dax_align_valid(uint64_t align)
{
	return align == UHMM_DAX_ALIGN_4K || align == UHMM_DAX_ALIGN_2M ||
	       align == UHMM_DAX_ALIGN_1G;
}

struct dax_layout *uhmm_dax_layout_new(void)
{
	return calloc(1, sizeof(struct dax_layout));
}

void uhmm_dax_layout_free(struct dax_layout *lay)
{
	if (!lay)
		return;
	for (uint32_t i = 0; i < lay->nr_dev; i++)
		free(lay->devs[i].ranges);
	free(lay);
}

struct dax_layout *uhmm_dax_layout_dup(const struct dax_layout *l)
{
	struct dax_layout *n = malloc(sizeof(*n));

	if (!n)
		return NULL;
	memcpy(n, l, sizeof(*n));
	for (uint32_t i = 0; i < n->nr_dev; i++) {
		struct dax_ldev *d = &n->devs[i];
		size_t sz = d->nr_range * sizeof(*d->ranges);

		d->ranges = NULL;
		if (!d->nr_range)
			continue;
		d->ranges = malloc(sz);
		if (!d->ranges) {
			n->nr_dev = i;
			uhmm_dax_layout_free(n);
			return NULL;
		}
		memcpy(d->ranges, l->devs[i].ranges, sz);
	}
	return n;
}

struct dax_ldev *uhmm_dax_layout_dev(struct dax_layout *lay, uint32_t id)
{
	for (uint32_t i = 0; i < lay->nr_dev; i++)
		if (lay->devs[i].id == id)
			return &lay->devs[i];
	return NULL;
}

uint64_t uhmm_dax_ldev_size(const struct dax_ldev *d)
{
	uint64_t s = 0;

	for (uint32_t i = 0; i < d->nr_range; i++)
		s += d->ranges[i].end - d->ranges[i].start;
	return s;
}

/* Append [start, end), merging with the last range when they touch. */
int uhmm_dax_ldev_push(struct dax_ldev *d, uint64_t start, uint64_t end)
{
	struct uhmm_dax_range *r;

	if (d->nr_range && d->ranges[d->nr_range - 1].end == start) {
		d->ranges[d->nr_range - 1].end = end;
		return 0;
	}
	r = realloc(d->ranges, (d->nr_range + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	d->ranges = r;
	r[d->nr_range].start = start;
	r[d->nr_range].end = end;
	d->nr_range++;
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	const struct uhmm_dax_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Everything a label must satisfy before it is trusted. */
int uhmm_dax_layout_check(const struct dax_layout *lay)
{
	struct uhmm_dax_range *all;
	uint32_t nr, total = 0;
	bool seed = false;
	int ret = 0;

	if (!uhmm_dax_align_valid(lay->align) || !lay->size ||
	    !UHMM_IS_ALIGNED(lay->size, lay->align) ||
	    lay->data_off < DAX_LABEL_AREA ||
	    !UHMM_IS_ALIGNED(lay->data_off, lay->align) || !lay->nr_dev ||
	    lay->nr_dev > UHMM_DAX_MAX_DEVICES)
		return -EUCLEAN;
	for (uint32_t i = 0; i < lay->nr_dev; i++) {
		const struct dax_ldev *d = &lay->devs[i];

		if (!d->id || d->id >= lay->next_id ||
		    (i && d->id <= lay->devs[i - 1].id) ||
		    d->mode > UHMM_DAX_MODE_KMEM ||
		    (d->flags & ~DAX_LDEV_FLAGS_ALL) ||
		    !uhmm_dax_align_valid(d->align) || d->align < lay->align)
			return -EUCLEAN;
		if (d->id == lay->seed_id) {
			if (d->nr_range)
				return -EUCLEAN;
			seed = true;
		}
		total += d->nr_range;
		if (total > UHMM_DAX_MAX_RANGES)
			return -EUCLEAN;
		for (uint32_t j = 0; j < d->nr_range; j++) {
			const struct uhmm_dax_range *r = &d->ranges[j];

			if (r->start >= r->end || r->end > lay->size ||
			    !UHMM_IS_ALIGNED(r->start, d->align) ||
			    !UHMM_IS_ALIGNED(r->end, d->align))
				return -EUCLEAN;
		}
	}
	if (!seed)
		return -EUCLEAN;
	all = uhmm_dax_layout_sorted(lay, &nr);
	if (!all)
		return -ENOMEM;
	for (uint32_t i = 1; i < nr; i++)
		if (all[i].start < all[i - 1].end)
			ret = -EUCLEAN;
	free(all);
	return ret;
}

/* Parse one block; -ENODATA when it was never written, -EUCLEAN when bad. */
static int label_parse(const uint8_t *blk, struct dax_layout **out)
{
	struct dax_label_hdr h;
	const struct dax_label_dev *ld;
	const struct dax_label_range *lr;
	struct dax_layout *lay;
	uint8_t *copy;
	uint64_t sum;
	size_t need;
	uint32_t ri = 0;
	int ret;

	memcpy(&h, blk, sizeof(h));
	if (memcmp(h.magic, DAX_MAGIC, sizeof(DAX_MAGIC))) {
		for (size_t i = 0; i < sizeof(h); i++)
			if (blk[i])
				return -EUCLEAN;
		return -ENODATA;
	}
	if (h.version != DAX_VERSION || h.hdr_size != sizeof(h) ||
	    h.nr_dev > UHMM_DAX_MAX_DEVICES || h.nr_range > UHMM_DAX_MAX_RANGES)
		return -EUCLEAN;
	need = sizeof(h) + (size_t)h.nr_dev * sizeof(*ld) +
	       (size_t)h.nr_range * sizeof(*lr);
	if (h.used != need || need > DAX_LABEL_BLOCK)
		return -EUCLEAN;
	/* Checksum a private copy: another opener may be writing this block. */
	copy = malloc(need);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, blk, need);
	memcpy(&h, copy, sizeof(h));
	if (h.used != need) {
		free(copy);
		return -EUCLEAN;
	}
	sum = h.checksum;
	memset(copy + offsetof(struct dax_label_hdr, checksum), 0, 8);
	if (label_sum(copy, need) != sum) {
		free(copy);
		return -EUCLEAN;
	}
	lay = uhmm_dax_layout_new();
	if (!lay) {
		free(copy);
		return -ENOMEM;
	}
	lay->seq = h.seq;
	lay->size = h.size;
	lay->align = h.align;
	lay->data_off = h.data_off;
	lay->region_id = h.region_id;
	lay->next_id = h.next_id;
	lay->seed_id = h.seed_id;
	ld = (const void *)(copy + sizeof(h));
	lr = (const void *)(copy + sizeof(h) + h.nr_dev * sizeof(*ld));
	for (uint32_t i = 0; i < h.nr_dev; i++) {
		struct dax_ldev *d = &lay->devs[i];

		lay->nr_dev = i + 1;
		d->id = ld[i].id;
		d->mode = ld[i].mode;
		d->flags = ld[i].flags;
		d->align = ld[i].align;
		if (ld[i].nr_range > h.nr_range - ri) {
			ret = -EUCLEAN;
			goto err;
		}
		d->nr_range = ld[i].nr_range;
		if (!d->nr_range)
			continue;
		d->ranges = malloc(d->nr_range * sizeof(*d->ranges));
		if (!d->ranges) {
			d->nr_range = 0;
			ret = -ENOMEM;
			goto err;
		}
		for (uint32_t j = 0; j < d->nr_range; j++, ri++) {
			d->ranges[j].start = lr[ri].start;
			d->ranges[j].end = lr[ri].end;
		}
	}
	ret = ri == h.nr_range ? uhmm_dax_layout_check(lay) : -EUCLEAN;
	if (ret)
		goto err;
	free(copy);
	*out = lay;
	return 0;
err:
	free(copy);
	uhmm_dax_layout_free(lay);
	return ret;
}

int uhmm_dax_label_read(const uint8_t *area, struct dax_layout **out)
{
	struct dax_layout *l[2] = { NULL, NULL };
	int r[2];

	for (int i = 0; i < 2; i++) {
		r[i] = label_parse(area + i * DAX_LABEL_BLOCK, &l[i]);
		if (r[i] == -ENOMEM) {
			uhmm_dax_layout_free(l[0]);
			return -ENOMEM;
		}
	}
	if (l[0] && l[1]) {
		/* The newer block wins; the other is the previous layout. */
		int keep = l[1]->seq > l[0]->seq;

		uhmm_dax_layout_free(l[!keep]);
		*out = l[keep];
		return 0;
	}
	if (l[0] || l[1]) {
		*out = l[0] ? l[0] : l[1];
		return 0;
	}
	return r[0] == -ENODATA && r[1] == -ENODATA ? -ENODATA : -EUCLEAN;
}

/*
 * Write @lay with seq + 1 into the block not holding the current label, so
 * an interrupted write leaves the current one intact. @lay->seq is updated
 * on success only; on failure the current label stays the newest valid one.
 */
int uhmm_dax_label_write(uint8_t *area, struct dax_layout *lay, bool sync)
{
	struct dax_label_hdr h, old;
	struct dax_label_dev *ld;
	struct dax_label_range *lr;
	uint32_t nr_range = 0, ri = 0;
	uint8_t *buf, *blk;
	size_t need;
	int ret;

	ret = uhmm_dax_layout_check(lay);
	if (UHMM_WARN_ON(ret == -EUCLEAN))
		return -EINVAL;
	if (ret)
		return ret;
	for (uint32_t i = 0; i < lay->nr_dev; i++)
		nr_range += lay->devs[i].nr_range;
	need = sizeof(h) + lay->nr_dev * sizeof(*ld) + nr_range * sizeof(*lr);
	buf = calloc(1, need);
	if (!buf)
		return -ENOMEM;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, DAX_MAGIC, sizeof(DAX_MAGIC));
	h.version = DAX_VERSION;
	h.hdr_size = sizeof(h);
	h.seq = lay->seq + 1;
	h.used = (uint32_t)need;
	h.region_id = lay->region_id;
	h.size = lay->size;
	h.align = lay->align;
	h.data_off = lay->data_off;
	h.nr_dev = lay->nr_dev;
	h.nr_range = nr_range;
	h.next_id = lay->next_id;
	h.seed_id = lay->seed_id;
	ld = (void *)(buf + sizeof(h));
	lr = (void *)(buf + sizeof(h) + lay->nr_dev * sizeof(*ld));
	for (uint32_t i = 0; i < lay->nr_dev; i++) {
		const struct dax_ldev *d = &lay->devs[i];

		ld[i].id = d->id;
		ld[i].mode = d->mode;
		ld[i].flags = d->flags;
		ld[i].nr_range = d->nr_range;
		ld[i].align = d->align;
		for (uint32_t j = 0; j < d->nr_range; j++, ri++) {
			lr[ri].start = d->ranges[j].start;
			lr[ri].end = d->ranges[j].end;
		}
	}
	memcpy(buf, &h, sizeof(h));
	h.checksum = label_sum(buf, need);
	memcpy(buf + offsetof(struct dax_label_hdr, checksum), &h.checksum, 8);
	blk = area + (h.seq & 1) * DAX_LABEL_BLOCK;
	/*
	 * The header is the commit point: body first, header last. A write cut
	 * short leaves the block's old header, whose checksum then fails (or
	 * which is exactly the older label, and loses on seq).
	 */
	memcpy(&old, blk, sizeof(old));
	if (uhmm_fi_fail(UHMM_FI_LABEL_WRITE)) {
		/* as if the process died or the device failed mid-body */
		memcpy(blk + sizeof(h), buf + sizeof(h), (need - sizeof(h)) / 2);
		free(buf);
		return -uhmm_fi_errno(UHMM_FI_LABEL_WRITE, EIO);
	}
	memcpy(blk + sizeof(h), buf + sizeof(h), need - sizeof(h));
	memcpy(blk, buf, sizeof(h));
	free(buf);
	if (sync) {
		if (uhmm_fi_fail(UHMM_FI_LABEL_SYNC))
			ret = -uhmm_fi_errno(UHMM_FI_LABEL_SYNC, EIO);
		else if (msync(blk, DAX_LABEL_BLOCK, MS_SYNC))
			ret = -errno;
		if (ret) {
			/* Not durable, so not written: no opener may trust it. */
			memcpy(blk, &old, sizeof(old));
			msync(blk, DAX_LABEL_BLOCK, MS_SYNC);
			return ret;
		}
	}
	lay->seq = h.seq;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Layout edits: what resize and add_range do to a copy of the label      */

uint64_t uhmm_dax_layout_used(const struct dax_layout *lay)
{
	uint64_t used = 0;

	for (uint32_t i = 0; i < lay->nr_dev; i++)
		used += uhmm_dax_ldev_size(&lay->devs[i]);
	return used;
}

/* Every range of @lay sorted by start; *nr set. Caller frees. */
struct uhmm_dax_range *uhmm_dax_layout_sorted(const struct dax_layout *lay,
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
bool uhmm_dax_layout_fits(const struct dax_layout *lay)
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
int uhmm_dax_layout_grow(struct dax_layout *lay, struct dax_ldev *d,
		       uint64_t need)
{
	struct uhmm_dax_range *all;
	uint64_t avail = 0, prev = 0;
	uint32_t n;
	int ret = 0;

	all = uhmm_dax_layout_sorted(lay, &n);
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
	all = uhmm_dax_layout_sorted(lay, &n);
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
	if (!ret && (need || !uhmm_dax_layout_fits(lay)))
		ret = -ENOSPC;
	return ret;
}

void uhmm_dax_ldev_shrink(struct dax_ldev *d, uint64_t drop)
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
int uhmm_dax_layout_new_seed(struct dax_layout *lay, uint64_t align)
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
