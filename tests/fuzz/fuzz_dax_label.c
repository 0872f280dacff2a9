// SPDX-License-Identifier: MIT
/* fuzz_dax_label.c - the dax label parser (src/dax_meta.c,
 * uhmm_dax_label_read): a corrupted label area must be rejected with
 * -EUCLEAN/-ENODATA, never trusted, never crash. A label that is accepted
 * must pass uhmm_dax_layout_check() and survive a write/read round trip.
 *
 * Input: byte 0 selects how the rest becomes the 128 KiB label area:
 *   bit 0 clear: raw bytes at the start of block 0 (block 1 zero);
 *   bit 0 set:   a well-formed header (magic, version, sizes, "used") is
 *                built from the input, devices and ranges follow from the
 *                input, and the checksum is made valid, so validation
 *                itself is exercised; bit 1 puts it in block 1 instead;
 *                bit 2 also copies it to the other block with seq + 1.
 */
#include <stdlib.h>
#include <string.h>
#include "dax_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* dax_meta.c's label_sum(): the on-backing checksum. */
static uint64_t sum(const uint8_t *p, size_t len)
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

/* header offsets (struct dax_label_hdr, 128 bytes) */
#define H_VERSION 8
#define H_HDR_SIZE 12
#define H_SEQ 16
#define H_SUM 24
#define H_USED 32
#define H_NR_DEV 64
#define H_NR_RANGE 68

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Build a checksummed block at @blk from @in; returns bytes used. */
static size_t build_block(uint8_t *blk, const uint8_t *in, size_t len)
{
	uint32_t nr_dev, nr_range, used;
	uint64_t s;

	memset(blk, 0, DAX_LABEL_BLOCK);
	memcpy(blk, in, len < 128 ? len : 128);
	memcpy(blk, "UHMMDAX", 8);
	put32(blk + H_VERSION, 1);
	put32(blk + H_HDR_SIZE, 128);
	memcpy(&nr_dev, blk + H_NR_DEV, 4);
	memcpy(&nr_range, blk + H_NR_RANGE, 4);
	nr_dev %= 8;
	nr_range %= 16;
	put32(blk + H_NR_DEV, nr_dev);
	put32(blk + H_NR_RANGE, nr_range);
	used = 128 + nr_dev * 32 + nr_range * 16;
	put32(blk + H_USED, used);
	if (len > 128)
		memcpy(blk + 128, in + 128, len - 128 < used - 128 ? len - 128 : used - 128);
	put64(blk + H_SUM, 0);
	s = sum(blk, used);
	put64(blk + H_SUM, s);
	return used;
}

static void check_layout_equal(const struct dax_layout *a, const struct dax_layout *b)
{
	if (a->size != b->size || a->align != b->align || a->data_off != b->data_off ||
	    a->region_id != b->region_id || a->next_id != b->next_id ||
	    a->seed_id != b->seed_id || a->nr_dev != b->nr_dev)
		abort();
	for (uint32_t i = 0; i < a->nr_dev; i++) {
		const struct dax_ldev *x = &a->devs[i], *y = &b->devs[i];

		if (x->id != y->id || x->mode != y->mode || x->flags != y->flags ||
		    x->align != y->align || x->nr_range != y->nr_range ||
		    (x->nr_range && memcmp(x->ranges, y->ranges, x->nr_range * sizeof(*x->ranges))))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *area, *area2;
	struct dax_layout *lay = NULL, *back = NULL;
	uint8_t mode;
	int ret;

	if (!size)
		return 0;
	mode = data[0];
	data++;
	size--;
	area = calloc(1, DAX_LABEL_AREA);
	area2 = calloc(1, DAX_LABEL_AREA);
	if (!area || !area2)
		abort();
	if (!(mode & 1)) {
		memcpy(area, data, size < DAX_LABEL_AREA ? size : DAX_LABEL_AREA);
	} else {
		uint8_t *blk = area + ((mode & 2) ? DAX_LABEL_BLOCK : 0);
		size_t used = build_block(blk, data, size);

		if (mode & 4) {
			uint8_t *other = area + ((mode & 2) ? 0 : DAX_LABEL_BLOCK);
			uint64_t seq;

			memcpy(other, blk, used);
			memcpy(&seq, other + H_SEQ, 8);
			put64(other + H_SEQ, seq + 1);
			put64(other + H_SUM, 0);
			put64(other + H_SUM, sum(other, used));
		}
	}
	ret = uhmm_dax_label_read(area, &lay);
	if (ret != 0 && ret != -EUCLEAN && ret != -ENODATA && ret != -ENOMEM)
		abort();
	if (ret == 0) {
		/* trusted: it must be valid, and must write and read back unchanged */
		if (uhmm_dax_layout_check(lay))
			abort();
		if (uhmm_dax_label_write(area2, lay, false))
			abort();
		if (uhmm_dax_label_read(area2, &back))
			abort();
		check_layout_equal(lay, back);
		uhmm_dax_layout_free(back);
		uhmm_dax_layout_free(lay);
	}
	free(area);
	free(area2);
	return 0;
}
