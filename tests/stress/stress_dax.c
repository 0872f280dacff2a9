// SPDX-License-Identifier: MIT
/* stress_dax.c - seeded random dax operations (create, resize, add_range,
 * destroy, enable/disable, map/unmap, kmem, reopen) on a /dev/shm region with
 * a per-page shadow of the data area; run with `stress --dax`. */
#include <inttypes.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm/dax.h>
#include <uhmm/pagemap.h>
#include "stress_util.h"

int stress_dax_main(uint64_t seed, double seconds, int verbose);

#ifdef UHMM_FAULT_INJECT
/* libuhmm's internal counter of injected failures (src/fault_inject.h) */
uint64_t uhmm_fi_stats(FILE *f);
/* Injected: a library malloc (ENOMEM), a label write or msync (EIO). */
static bool fi_err(int ret)
{
	return ret == -ENOMEM || ret == -EIO;
}
#else
static bool fi_err(int ret)
{
	(void)ret;
	return false;
}
#endif

/*
 * Queries only read the label, so an injected failure is -ENOMEM from the
 * label refresh: retry it (never loops in a build without fault injection).
 */
#define Q(expr)                                                          \
	({                                                               \
		int q_, n_ = 0;                                          \
		do                                                       \
			q_ = (expr);                                     \
		while (q_ == -ENOMEM && fi_err(q_) && ++n_ < 1000);      \
		q_;                                                      \
	})

#define MAX_DEVS 64
#define MAX_ALLOCS 64

enum {
	D_CREATE, D_RESIZE, D_ADD_RANGE, D_DESTROY, D_ENABLE, D_DISABLE, D_MAP,
	D_UNMAP, D_WRITE, D_VERIFY, D_TO_KMEM, D_TO_DEVDAX, D_KMALLOC, D_KFREE,
	D_REOPEN, D_CLOSE_OPEN, D_SET_ALIGN, D_NR,
};

static struct st_tally dt[D_NR] = {
	[D_CREATE] = { .name = "create" }, [D_RESIZE] = { .name = "resize" },
	[D_ADD_RANGE] = { .name = "add_range" }, [D_DESTROY] = { .name = "destroy" },
	[D_ENABLE] = { .name = "enable" }, [D_DISABLE] = { .name = "disable" },
	[D_MAP] = { .name = "map" }, [D_UNMAP] = { .name = "unmap" },
	[D_WRITE] = { .name = "write" }, [D_VERIFY] = { .name = "verify" },
	[D_TO_KMEM] = { .name = "to_kmem" }, [D_TO_DEVDAX] = { .name = "to_devdax" },
	[D_KMALLOC] = { .name = "kmem_malloc" }, [D_KFREE] = { .name = "kmem_free" },
	[D_REOPEN] = { .name = "open_second" }, [D_CLOSE_OPEN] = { .name = "close_reopen" },
	[D_SET_ALIGN] = { .name = "set_align" },
};

struct kalloc {
	uint8_t *p;
	size_t len;
	uint64_t tag;
};

/* What this process did to a device (by id); the label is the library's. */
struct mdev {
	uint32_t id;
	uint8_t *map;			/* our mapping, or NULL */
	uint64_t map_len;
	struct uhmm_dax_range rg[64];	/* ranges at map time */
	unsigned int nr_rg;
	struct kalloc allocs[MAX_ALLOCS];
	unsigned int nr_allocs;
};

static struct {
	struct st_rng r;
	char path[64];
	struct uhmm_dax_region *reg;
	uint64_t size, align, npages;
	uint64_t *ver;			/* per data-area page; UINT64_MAX = unknown */
	struct mdev devs[MAX_DEVS];
	uint64_t next_ver;
	uint64_t ops, bytes, mismatches, unexpected, injected;
	int verbose;
} d;

#define UNKNOWN UINT64_MAX

static struct mdev *mdev_of(uint32_t id, bool create)
{
	for (unsigned int i = 0; i < MAX_DEVS; i++)
		if (d.devs[i].id == id)
			return &d.devs[i];
	if (!create)
		return NULL;
	for (unsigned int i = 0; i < MAX_DEVS; i++)
		if (!d.devs[i].id) {
			memset(&d.devs[i], 0, sizeof(d.devs[i]));
			d.devs[i].id = id;
			return &d.devs[i];
		}
	return NULL;
}

static void unexpected(const char *op, const char *fmt, int got, int want)
{
	d.unexpected++;
	fprintf(stderr, "UNEXPECTED %s: %s: got %d, want %d\n", op, fmt, got, want);
}

/* Every device handle of the current region handle (seed included). */
static int list_devs(struct uhmm_dax_dev **devs, unsigned int n)
{
	int nr = Q(uhmm_dax_region_devices(d.reg, devs, n));

	if (nr < 0) {
		unexpected("devices", "list", nr, 0);
		return 0;
	}
	return nr < (int)n ? nr : (int)n;
}

static struct uhmm_dax_dev *pick_dev(bool want_seed)
{
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES], *cand[UHMM_DAX_MAX_DEVICES];
	int nr = list_devs(devs, UHMM_DAX_MAX_DEVICES), nc = 0;

	for (int i = 0; i < nr; i++) {
		struct uhmm_dax_dev_info di;

		if (Q(uhmm_dax_dev_info(devs[i], &di)))
			continue;
		if (!!(di.flags & UHMM_DAX_DEV_SEED) == want_seed)
			cand[nc++] = devs[i];
	}
	return nc ? cand[st_below(&d.r, (uint64_t)nc)] : NULL;
}

/* Region page of device offset @off, via the ranges @rg. */
static uint64_t dev_page(const struct uhmm_dax_range *rg, unsigned int nr, uint64_t off)
{
	for (unsigned int i = 0; i < nr; i++) {
		uint64_t len = rg[i].end - rg[i].start;

		if (off < len)
			return (rg[i].start + off) / ST_PAGE;
		off -= len;
	}
	return UINT64_MAX;
}

static void mark_unknown(struct uhmm_dax_dev *dev)
{
	struct uhmm_dax_range rg[256];
	int nr = Q(uhmm_dax_dev_ranges(dev, rg, 256));

	for (int i = 0; i < nr && i < 256; i++)
		for (uint64_t o = rg[i].start; o < rg[i].end; o += ST_PAGE)
			d.ver[o / ST_PAGE] = UNKNOWN;
}

/* Check the layout invariants: disjoint aligned ranges, sizes add up. */
static void check_layout(const char *after)
{
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	struct uhmm_dax_region_info ri;
	uint8_t *used;
	uint64_t total = 0;
	int nr, seeds = 0;

	if (Q(uhmm_dax_region_info(d.reg, &ri))) {
		unexpected(after, "region_info", -1, 0);
		return;
	}
	used = calloc(d.npages, 1);
	nr = list_devs(devs, UHMM_DAX_MAX_DEVICES);
	for (int i = 0; i < nr; i++) {
		struct uhmm_dax_range rg[512];
		struct uhmm_dax_dev_info di;
		uint64_t sz = 0;
		int n;

		if (Q(uhmm_dax_dev_info(devs[i], &di))) {
			unexpected(after, "dev_info", -1, 0);
			continue;
		}
		seeds += !!(di.flags & UHMM_DAX_DEV_SEED);
		n = Q(uhmm_dax_dev_ranges(devs[i], rg, 512));
		for (int j = 0; j < n && j < 512; j++) {
			if (rg[j].start >= rg[j].end || rg[j].end > d.size ||
			    rg[j].start % di.align || rg[j].end % di.align)
				unexpected(after, "bad range", (int)j, -1);
			for (uint64_t o = rg[j].start; o < rg[j].end && o < d.size; o += ST_PAGE) {
				if (used[o / ST_PAGE]++)
					unexpected(after, "overlapping ranges", (int)di.id, -1);
			}
			sz += rg[j].end - rg[j].start;
		}
		if (sz != di.size)
			unexpected(after, "device size != sum of ranges", (int)di.id, -1);
		total += sz;
	}
	if (seeds != 1)
		unexpected(after, "seed devices", seeds, 1);
	if (total + ri.available != ri.size)
		unexpected(after, "sizes + available != region size", (int)(total >> 12),
			   (int)((ri.size - ri.available) >> 12));
	free(used);
}

static int free_units(void)
{
	struct uhmm_dax_region_info ri;

	if (Q(uhmm_dax_region_info(d.reg, &ri)))
		return 0;
	return (int)(ri.available / d.align);
}

/*
 * Hash of what the label says (devices, modes, enabled, aligns, ranges,
 * seed, free space) as seen through @r; process-local flags left out.
 */
static int label_hash(struct uhmm_dax_region *r, uint64_t *out)
{
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	struct uhmm_dax_region_info ri;
	uint64_t h = 0xcbf29ce484222325ULL;
	int nr, ret;

#define MIX(v) (h = (h ^ (uint64_t)(v)) * 0x100000001b3ULL)
	ret = Q(uhmm_dax_region_info(r, &ri));
	if (ret)
		return ret;
	MIX(ri.available);
	MIX(ri.seed_id);
	MIX(ri.nr_devices);
	nr = Q(uhmm_dax_region_devices(r, devs, UHMM_DAX_MAX_DEVICES));
	if (nr < 0)
		return nr;
	for (int i = 0; i < nr && i < UHMM_DAX_MAX_DEVICES; i++) {
		struct uhmm_dax_range rg[512];
		struct uhmm_dax_dev_info di;
		int n;

		ret = Q(uhmm_dax_dev_info(devs[i], &di));
		if (ret)
			return ret;
		MIX(di.id);
		MIX(di.mode);
		MIX(di.align);
		MIX(di.flags & (UHMM_DAX_DEV_ENABLED | UHMM_DAX_DEV_SEED));
		n = Q(uhmm_dax_dev_ranges(devs[i], rg, 512));
		if (n < 0)
			return n;
		MIX(n);
		for (int j = 0; j < n && j < 512; j++) {
			MIX(rg[j].start);
			MIX(rg[j].end);
		}
	}
#undef MIX
	*out = h;
	return 0;
}

/* The label before a change, to compare with when the change fails. */
static uint64_t label_before(void)
{
	uint64_t h = 0;

	if (fi_err(-ENOMEM) && label_hash(d.reg, &h))
		unexpected("label_hash", "before", -1, 0);
	return h;
}

/*
 * Was @ret an injected failure? Then the call must have changed nothing:
 * this handle and a freshly opened one both still see the label of before.
 */
static bool fi_failed(const char *op, int ret, uint64_t before)
{
	struct uhmm_dax_region *r2;
	uint64_t now = 0, fresh = 0;
	int err;

	if (!fi_err(ret))
		return false;
	d.injected++;
	if (label_hash(d.reg, &now) || now != before)
		unexpected(op, "label changed by a failed call (this handle)", ret, 0);
	err = Q(uhmm_dax_region_open(d.path, &r2));
	if (err) {
		unexpected(op, "reopen after a failed call", err, 0);
		return true;
	}
	if (label_hash(r2, &fresh) || fresh != before)
		unexpected(op, "label changed by a failed call (fresh handle)", ret, 0);
	err = uhmm_dax_region_close(r2);
	if (err)
		unexpected(op, "close fresh handle", err, 0);
	return true;
}

static void op_create(void)
{
	struct uhmm_dax_dev *seed;
	int avail = free_units(), ret;
	uint64_t units = st_range(&d.r, 1, 8);

	uint64_t before;

	if (Q(uhmm_dax_region_seed(d.reg, &seed)))
		return;
	before = label_before();
	ret = uhmm_dax_dev_resize(seed, units * d.align);
	st_count(&dt[D_CREATE], ret);
	if (fi_failed("create", ret, before))
		return;
	if ((uint64_t)avail >= units && ret && ret != -ENOSPC)
		unexpected("create", "resize seed with space free", ret, 0);
	if ((uint64_t)avail < units && ret != -ENOSPC)
		unexpected("create", "resize seed beyond free space", ret, -ENOSPC);
	if (!ret) {
		struct uhmm_dax_dev_info di;

		Q(uhmm_dax_dev_info(seed, &di));
		mdev_of(di.id, true);
		before = label_before();
		ret = uhmm_dax_dev_enable(seed);
		st_count(&dt[D_ENABLE], ret);
		if (fi_failed("create: enable", ret, before))
			return;
		if (ret)
			unexpected("create", "enable new device", ret, 0);
	}
}

static void op_resize(struct uhmm_dax_dev *dev)
{
	struct uhmm_dax_dev_info di;
	struct mdev *m;
	uint64_t units, want, before;
	int avail = free_units(), ret;

	if (Q(uhmm_dax_dev_info(dev, &di)))
		return;
	m = mdev_of(di.id, true);
	units = st_range(&d.r, 1, 10);
	want = units * di.align;
	if (want % d.align)
		return;
	before = label_before();
	ret = uhmm_dax_dev_resize(dev, want);
	st_count(&dt[D_RESIZE], ret);
	if (fi_failed("resize", ret, before))
		return;
	if (want > di.size) {
		bool room = (want - di.size) / d.align <= (uint64_t)avail;

		if (room && ret && ret != -ENOSPC)
			unexpected("resize", "grow with room", ret, 0);
		if (!room && ret != -ENOSPC)
			unexpected("resize", "grow without room", ret, -ENOSPC);
	} else if (want < di.size) {
		if (m && m->map && ret != -EBUSY)
			unexpected("resize", "shrink while mapped", ret, -EBUSY);
		if (m && !m->map && di.mode == UHMM_DAX_MODE_DEVDAX && ret)
			unexpected("resize", "shrink unmapped devdax", ret, 0);
	}
	if (!ret && di.mode == UHMM_DAX_MODE_KMEM)
		mark_unknown(dev);
}

static void op_add_range(struct uhmm_dax_dev *dev)
{
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	struct uhmm_dax_dev_info di;
	uint64_t units = d.size / d.align, off, len, before;
	bool overlap = false;
	int nr, ret;

	if (Q(uhmm_dax_dev_info(dev, &di)) || (di.flags & UHMM_DAX_DEV_SEED) ||
	    di.align != d.align)
		return;
	off = st_below(&d.r, units) * d.align;
	len = st_range(&d.r, 1, 4) * d.align;
	nr = list_devs(devs, UHMM_DAX_MAX_DEVICES);
	for (int i = 0; i < nr; i++) {
		struct uhmm_dax_range rg[512];
		int n = Q(uhmm_dax_dev_ranges(devs[i], rg, 512));

		for (int j = 0; j < n && j < 512; j++)
			if (off < rg[j].end && rg[j].start < off + len)
				overlap = true;
	}
	before = label_before();
	ret = uhmm_dax_dev_add_range(dev, off, len);
	st_count(&dt[D_ADD_RANGE], ret);
	if (fi_failed("add_range", ret, before))
		return;
	if (off + len > d.size) {
		if (ret != -EINVAL)
			unexpected("add_range", "beyond the region", ret, -EINVAL);
	} else if (overlap) {
		if (ret != -EBUSY)
			unexpected("add_range", "overlapping", ret, -EBUSY);
	} else if (ret && ret != -ENOSPC) {
		unexpected("add_range", "free extent", ret, 0);
	}
	if (!ret && di.mode == UHMM_DAX_MODE_KMEM)
		mark_unknown(dev);
}

static void op_destroy(struct uhmm_dax_dev *dev)
{
	struct uhmm_dax_dev_info di;
	struct mdev *m;
	uint64_t before;
	int ret;

	if (Q(uhmm_dax_dev_info(dev, &di)))
		return;
	m = mdev_of(di.id, false);
	before = label_before();
	ret = uhmm_dax_dev_destroy(dev);
	st_count(&dt[D_DESTROY], ret);
	if (fi_failed("destroy", ret, before))
		return;
	if ((m && m->map) || di.mode == UHMM_DAX_MODE_KMEM) {
		if (ret != -EBUSY && !(di.mode == UHMM_DAX_MODE_KMEM && !ret))
			unexpected("destroy", "mapped or kmem device", ret, -EBUSY);
	} else if (ret) {
		unexpected("destroy", "idle device", ret, 0);
	}
	if (!ret && m)
		memset(m, 0, sizeof(*m));
}

static void verify_map(struct mdev *m, const char *how)
{
	for (uint64_t off = 0; off < m->map_len; off += ST_PAGE) {
		uint64_t rp = dev_page(m->rg, m->nr_rg, off);
		long bad;

		if (rp >= d.npages || d.ver[rp] == UNKNOWN)
			continue;
		d.bytes += ST_PAGE;
		bad = st_check(m->map + off, rp, d.ver[rp]);
		if (bad >= 0) {
			char what[96];

			st_describe(m->map + off, what, sizeof(what));
			d.mismatches++;
			fprintf(stderr, "MISMATCH (%s) dax%u offset %#" PRIx64 " = region page %"
				PRIu64 ": want version %" PRIu64 ", word %ld; holds %s\n",
				how, m->id, off, rp, d.ver[rp], bad, what);
		}
	}
}

static void op_map(struct uhmm_dax_dev *dev)
{
	struct uhmm_dax_dev_info di;
	struct mdev *m;
	void *p;
	int ret, n;

	if (Q(uhmm_dax_dev_info(dev, &di)) || (di.flags & UHMM_DAX_DEV_SEED))
		return;
	m = mdev_of(di.id, true);
	if (!m || m->map)
		return;
	ret = uhmm_dax_map(dev, PROT_READ | PROT_WRITE, &p);
	st_count(&dt[D_MAP], ret);
	if (fi_err(ret)) {
		d.injected++;
		return;
	}
	if (di.mode == UHMM_DAX_MODE_KMEM) {
		if (ret != -EBUSY)
			unexpected("map", "kmem device", ret, -EBUSY);
	} else if (!(di.flags & UHMM_DAX_DEV_ENABLED)) {
		if (ret != -ENXIO)
			unexpected("map", "disabled device", ret, -ENXIO);
	} else if (ret) {
		unexpected("map", "enabled devdax device", ret, 0);
	}
	if (ret)
		return;
	n = Q(uhmm_dax_dev_ranges(dev, m->rg, 64));
	if (n < 0 || n > 64) {
		uhmm_dax_unmap(dev, p);	/* too fragmented to model: skip */
		return;
	}
	if ((uintptr_t)p % di.align)
		unexpected("map", "mapping not aligned to the device", (int)((uintptr_t)p % di.align), 0);
	m->nr_rg = (unsigned int)n;
	m->map = p;
	m->map_len = di.size;
	verify_map(m, "after map");
}

static void op_write(struct mdev *m)
{
	for (int k = (int)st_range(&d.r, 1, 16); k > 0; k--) {
		uint64_t off = st_below(&d.r, m->map_len / ST_PAGE) * ST_PAGE;
		uint64_t rp = dev_page(m->rg, m->nr_rg, off);

		if (rp >= d.npages)
			continue;
		d.ver[rp] = ++d.next_ver;
		st_fill(m->map + off, rp, d.ver[rp]);
	}
	st_count(&dt[D_WRITE], 0);
}

static void op_unmap(struct uhmm_dax_dev *dev, struct mdev *m)
{
	int ret = uhmm_dax_unmap(dev, m->map);

	st_count(&dt[D_UNMAP], ret);
	if (ret)
		unexpected("unmap", "own mapping", ret, 0);
	m->map = NULL;
	/* a bogus address must be refused */
	ret = uhmm_dax_unmap(dev, (void *)(uintptr_t)ST_PAGE);
	if (ret != -EINVAL)
		unexpected("unmap", "foreign address", ret, -EINVAL);
}

static void op_kmem(struct uhmm_dax_dev *dev, struct mdev *m, int op)
{
	struct uhmm_dax_dev_info di;
	uint64_t before;
	int ret;

	if (Q(uhmm_dax_dev_info(dev, &di)) || (di.flags & UHMM_DAX_DEV_SEED))
		return;
	if (op == D_TO_KMEM) {
		before = label_before();
		ret = uhmm_dax_dev_reconfigure(dev, UHMM_DAX_MODE_KMEM);
		st_count(&dt[op], ret);
		if (fi_failed("to_kmem", ret, before)) {
			/* the heap may have come online and gone again */
			mark_unknown(dev);
			return;
		}
		if (m->map && ret != -EBUSY)
			unexpected("to_kmem", "mapped device", ret, -EBUSY);
		if (!m->map && ret)
			unexpected("to_kmem", "unmapped device", ret, 0);
		if (!ret)
			mark_unknown(dev);
		return;
	}
	if (op == D_TO_DEVDAX) {
		before = label_before();
		ret = uhmm_dax_dev_reconfigure(dev, UHMM_DAX_MODE_DEVDAX);
		st_count(&dt[op], ret);
		if (fi_failed("to_devdax", ret, before))
			return;
		if (di.mode == UHMM_DAX_MODE_KMEM && m->nr_allocs && ret != -EBUSY)
			unexpected("to_devdax", "live allocations", ret, -EBUSY);
		if ((di.mode != UHMM_DAX_MODE_KMEM || !m->nr_allocs) && ret)
			unexpected("to_devdax", "no allocations", ret, 0);
		return;
	}
	if (di.mode != UHMM_DAX_MODE_KMEM)
		return;
	if (op == D_KMALLOC && m->nr_allocs < MAX_ALLOCS) {
		size_t len = (size_t)st_range(&d.r, 1, st_below(&d.r, 4) ? 4096 : 256 << 10);
		struct uhmm_pagemap *pg;
		uint8_t *p = uhmm_kmem_malloc(dev, len);

		st_count(&dt[op], p ? 0 : -ENOMEM);
		if (!p)
			return;
		if (!Q(uhmm_dax_dev_pagemap(dev, &pg))) {
			uint8_t *base = pg->base;
			uint64_t span = (uint64_t)uhmm_pagemap_nr_pages(pg) * ST_PAGE;

			if (p < base || p + len > base + span)
				unexpected("kmem_malloc", "pointer outside the device", 0, 1);
		}
		if (uhmm_kmem_usable_size(dev, p) < len)
			unexpected("kmem_malloc", "usable size below request", 0, 1);
		m->allocs[m->nr_allocs] = (struct kalloc){ p, len, ++d.next_ver };
		for (size_t i = 0; i < len; i++)
			p[i] = (uint8_t)(d.next_ver * 131 + i);
		m->nr_allocs++;
		return;
	}
	if (op == D_KFREE && m->nr_allocs) {
		unsigned int i = (unsigned int)st_below(&d.r, m->nr_allocs);
		struct kalloc *a = &m->allocs[i];

		for (size_t j = 0; j < a->len; j++)
			if (a->p[j] != (uint8_t)(a->tag * 131 + j)) {
				d.mismatches++;
				fprintf(stderr, "MISMATCH kmem allocation %p+%zu (len %zu) of dax%u\n",
					(void *)a->p, j, a->len, m->id);
				break;
			}
		d.bytes += a->len;
		uhmm_kmem_free(dev, a->p);
		st_count(&dt[op], 0);
		*a = m->allocs[--m->nr_allocs];
	}
}

/* A second handle must see the same layout and the same bytes. */
static void op_second_handle(void)
{
	struct uhmm_dax_region *r2;
	struct uhmm_dax_dev *a[UHMM_DAX_MAX_DEVICES], *b[UHMM_DAX_MAX_DEVICES];
	int na, nb, ret = Q(uhmm_dax_region_open(d.path, &r2));

	st_count(&dt[D_REOPEN], ret);
	if (ret) {
		unexpected("open_second", "region_open", ret, 0);
		return;
	}
	na = list_devs(a, UHMM_DAX_MAX_DEVICES);
	nb = Q(uhmm_dax_region_devices(r2, b, UHMM_DAX_MAX_DEVICES));
	if (na != nb)
		unexpected("open_second", "device count", nb, na);
	for (int i = 0; i < na && i < nb; i++) {
		struct uhmm_dax_range ra[512], rb[512];
		int x = Q(uhmm_dax_dev_ranges(a[i], ra, 512));
		int y = Q(uhmm_dax_dev_ranges(b[i], rb, 512));

		if (x != y || (x > 0 && memcmp(ra, rb, (size_t)(x < 512 ? x : 512) * sizeof(ra[0]))))
			unexpected("open_second", "ranges differ", y, x);
	}
	/* map one enabled devdax device through the second handle and verify */
	for (int i = 0; i < nb; i++) {
		struct uhmm_dax_dev_info di;
		struct mdev m2;
		void *p;

		if (Q(uhmm_dax_dev_info(b[i], &di)) || !(di.flags & UHMM_DAX_DEV_ENABLED) ||
		    di.mode != UHMM_DAX_MODE_DEVDAX || !di.size)
			continue;
		if (uhmm_dax_map(b[i], PROT_READ, &p))
			break;
		memset(&m2, 0, sizeof(m2));
		m2.id = di.id;
		ret = Q(uhmm_dax_dev_ranges(b[i], m2.rg, 64));
		if (ret > 0 && ret <= 64) {
			m2.nr_rg = (unsigned int)ret;
			m2.map = p;
			m2.map_len = di.size;
			verify_map(&m2, "second handle");
		}
		uhmm_dax_unmap(b[i], p);
		break;
	}
	ret = uhmm_dax_region_close(r2);
	if (ret)
		unexpected("open_second", "close", ret, 0);
}

static bool anything_busy(void)
{
	for (unsigned int i = 0; i < MAX_DEVS; i++)
		if (d.devs[i].id && (d.devs[i].map || d.devs[i].nr_allocs))
			return true;
	return false;
}

static void op_close_open(void)
{
	bool busy = anything_busy();
	int ret = uhmm_dax_region_close(d.reg);

	st_count(&dt[D_CLOSE_OPEN], ret);
	if (busy) {
		if (ret != -EBUSY)
			unexpected("close", "with mappings or allocations", ret, -EBUSY);
		return;
	}
	/* kmem heaps without allocations go away with the handle */
	if (ret) {
		unexpected("close", "idle handle", ret, 0);
		return;
	}
	ret = Q(uhmm_dax_region_open(d.path, &d.reg));
	if (ret) {
		fprintf(stderr, "FATAL: reopen %s: %d\n", d.path, ret);
		exit(1);
	}
}

static void op_set_align(struct uhmm_dax_dev *dev, struct mdev *m)
{
	struct uhmm_dax_range rg[512];
	struct uhmm_dax_dev_info di;
	uint64_t al = st_below(&d.r, 2) ? UHMM_DAX_ALIGN_4K : UHMM_DAX_ALIGN_2M;
	bool fits = true;
	uint64_t before;
	int n, ret;

	if (Q(uhmm_dax_dev_info(dev, &di)) || (di.flags & UHMM_DAX_DEV_SEED))
		return;
	n = Q(uhmm_dax_dev_ranges(dev, rg, 512));
	for (int i = 0; i < n && i < 512; i++)
		if (rg[i].start % al || rg[i].end % al)
			fits = false;
	before = label_before();
	ret = uhmm_dax_dev_set_align(dev, al);
	st_count(&dt[D_SET_ALIGN], ret);
	if (fi_failed("set_align", ret, before))
		return;
	if (al < d.align) {
		if (ret != -EINVAL)
			unexpected("set_align", "below the region's", ret, -EINVAL);
	} else if ((m && m->map) || di.mode == UHMM_DAX_MODE_KMEM) {
		/* busy, or refused first for misaligned ranges, or a no-op */
		if (ret != -EBUSY && !(ret == -EINVAL && !fits) && !(ret == 0 && al == di.align))
			unexpected("set_align", "mapped or kmem", ret, -EBUSY);
	} else if (!fits) {
		if (ret != -EINVAL)
			unexpected("set_align", "ranges not aligned", ret, -EINVAL);
	} else if (ret) {
		unexpected("set_align", "aligned ranges", ret, 0);
	}
}

static void one_op(void)
{
	uint64_t dice = st_below(&d.r, 100);
	struct uhmm_dax_dev *dev = pick_dev(false);
	struct uhmm_dax_dev_info di;
	struct mdev *m = NULL;

	if (dev && !Q(uhmm_dax_dev_info(dev, &di)))
		m = mdev_of(di.id, true);
	if (dice < 10 || !dev || !m) {
		op_create();
	} else if (dice < 18) {
		op_resize(dev);
	} else if (dice < 22) {
		op_add_range(dev);
	} else if (dice < 27) {
		op_destroy(dev);
	} else if (dice < 30) {
		uint64_t before = label_before();
		int ret = uhmm_dax_dev_disable(dev);

		st_count(&dt[D_DISABLE], ret);
		if (fi_failed("disable", ret, before))
			;
		else if (!m->map && di.mode == UHMM_DAX_MODE_DEVDAX && ret)
			unexpected("disable", "idle device", ret, 0);
	} else if (dice < 35) {
		uint64_t before = label_before();
		int ret = uhmm_dax_dev_enable(dev);

		st_count(&dt[D_ENABLE], ret);
		fi_failed("enable", ret, before);
	} else if (dice < 45) {
		op_map(dev);
	} else if (dice < 60) {
		if (m->map)
			op_write(m);
	} else if (dice < 66) {
		if (m->map) {
			verify_map(m, "verify");
			st_count(&dt[D_VERIFY], 0);
		}
	} else if (dice < 72) {
		if (m->map)
			op_unmap(dev, m);
	} else if (dice < 75) {
		op_kmem(dev, m, D_TO_KMEM);
	} else if (dice < 78) {
		op_kmem(dev, m, D_TO_DEVDAX);
	} else if (dice < 86) {
		op_kmem(dev, m, D_KMALLOC);
	} else if (dice < 92) {
		op_kmem(dev, m, D_KFREE);
	} else if (dice < 95) {
		op_second_handle();
	} else if (dice < 97) {
		op_close_open();
	} else {
		op_set_align(dev, m);
	}
	d.ops++;
	check_layout("op");
}

/* Undo everything this process holds, so the region can close. */
static void teardown_all(void)
{
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	int nr = list_devs(devs, UHMM_DAX_MAX_DEVICES);

	for (int i = 0; i < nr; i++) {
		struct uhmm_dax_dev_info di;
		struct mdev *m;

		if (Q(uhmm_dax_dev_info(devs[i], &di)) || !(m = mdev_of(di.id, false)))
			continue;
		if (m->map) {
			verify_map(m, "final");
			if (Q(uhmm_dax_unmap(devs[i], m->map)))
				unexpected("teardown", "unmap", -1, 0);
			m->map = NULL;
		}
		while (m->nr_allocs) {
			struct kalloc *a = &m->allocs[--m->nr_allocs];

			for (size_t j = 0; j < a->len; j++)
				if (a->p[j] != (uint8_t)(a->tag * 131 + j)) {
					d.mismatches++;
					fprintf(stderr, "MISMATCH kmem allocation at teardown\n");
					break;
				}
			d.bytes += a->len;
			uhmm_kmem_free(devs[i], a->p);
		}
		if (di.mode == UHMM_DAX_MODE_KMEM) {
			int ret, n = 0;

			/* a label write may fail too (EIO): retry */
			while (fi_err(ret = uhmm_dax_dev_reconfigure(devs[i], UHMM_DAX_MODE_DEVDAX)) &&
			       ++n < 1000)
				;
			if (ret)
				unexpected("teardown", "to devdax", ret, 0);
		}
	}
}

int stress_dax_main(uint64_t seed, double seconds, int verbose)
{
	uint64_t t0 = st_now_ns();
	int ret;

	d.r.s = seed;
	d.verbose = verbose;
	d.align = st_below(&d.r, 3) ? UHMM_DAX_ALIGN_4K : UHMM_DAX_ALIGN_2M;
	d.size = d.align == UHMM_DAX_ALIGN_4K ? (16ULL << 20) : (64ULL << 20);
	d.npages = d.size / ST_PAGE;
	d.ver = calloc(d.npages, sizeof(*d.ver));
	snprintf(d.path, sizeof(d.path), "/dev/shm/uhmm-stress-dax-%d", (int)getpid());
	unlink(d.path);
	/* an injected failure leaves no label: create again */
	for (int n = 0; fi_err(ret = uhmm_dax_region_create(d.path, d.size, d.align, &d.reg)) &&
			n < 1000; n++)
		;
	if (ret) {
		fprintf(stderr, "uhmm_dax_region_create(%s): %d\n", d.path, ret);
		return 2;
	}
	printf("stress --dax: region %s, %" PRIu64 " MiB, align %" PRIu64 " KiB, %.0f s\n",
	       d.path, d.size >> 20, d.align >> 10, seconds);
	fflush(stdout);
	while (st_now_ns() - t0 < (uint64_t)(seconds * 1e9) && d.unexpected < 50 &&
	       d.mismatches < 50) {
		for (int i = 0; i < 64; i++)
			one_op();
	}
	teardown_all();
	ret = uhmm_dax_region_close(d.reg);
	if (ret)
		unexpected("final close", "idle handle", ret, 0);
	unlink(d.path);
	st_print_tally(stdout, dt, D_NR);
#ifdef UHMM_FAULT_INJECT
	printf("faults injected: %" PRIu64 " (%" PRIu64 " failed calls checked)\n",
	       uhmm_fi_stats(stdout), d.injected);
#endif
	printf("result: ops %" PRIu64 " bytes_verified %" PRIu64 " mismatches %" PRIu64
	       " unexpected %" PRIu64 " (seed %" PRIu64 ", %.1f s)\n", d.ops, d.bytes,
	       d.mismatches, d.unexpected, seed, (st_now_ns() - t0) / 1e9);
	free(d.ver);
	return d.mismatches || d.unexpected ? 1 : 0;
}
