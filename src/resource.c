// SPDX-License-Identifier: MIT
/* resource.c - device physical address space: trees of claimed ranges, like
 * the kernel's iomem resource tree. API in include/uhmm/pagemap.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uhmm/pagemap.h>
#include "internal.h"

struct uhmm_resource {
	uint64_t start;				/* span, constant */
	uint64_t end;
	pthread_mutex_t lock;			/* protects nr, cap, reg */
	size_t nr;
	size_t cap;
	struct uhmm_span *reg;			/* sorted by start, disjoint */
};

/* The process-global tree: statically initialised, so no init race. */
static struct uhmm_resource res_global = {
	.start = UHMM_DEVADDR_MIN,
	.end = UHMM_DEVADDR_MAX,
	.lock = PTHREAD_MUTEX_INITIALIZER,
};

static struct uhmm_resource *res_tree(struct uhmm_resource *res)
{
	return res ? res : &res_global;
}

static bool res_page_aligned(uint64_t x)
{
	return UHMM_IS_ALIGNED(x, UHMM_PAGE_SIZE);
}

int uhmm_resource_create(uint64_t start, uint64_t end,
			 struct uhmm_resource **out)
{
	struct uhmm_resource *res;

	if (!out || start >= end || !res_page_aligned(start) ||
	    !res_page_aligned(end))
		return -EINVAL;
	res = calloc(1, sizeof(*res));
	if (!res)
		return -ENOMEM;
	res->start = start;
	res->end = end;
	if (pthread_mutex_init(&res->lock, NULL)) {
		free(res);
		return -ENOMEM;
	}
	*out = res;
	return 0;
}

void uhmm_resource_destroy(struct uhmm_resource *res)
{
	if (!res || res == &res_global)
		return;
	pthread_mutex_destroy(&res->lock);
	free(res->reg);
	free(res);
}

/* Index of the first region whose end is above @addr (nr if none). */
static size_t res_first_above(const struct uhmm_resource *res, uint64_t addr)
{
	uhmm_lockdep_assert_held(&res->lock);
	return uhmm_span_search(res->reg, res->nr, sizeof(res->reg[0]), addr);
}

/* Insert [start, end) at index @at, which keeps the array sorted. */
static int res_insert_locked(struct uhmm_resource *res, size_t at,
			     uint64_t start, uint64_t end)
{
	uhmm_lockdep_assert_held(&res->lock);
	if (res->nr == res->cap) {
		size_t cap = res->cap ? res->cap * 2 : 16;
		struct uhmm_span *reg;

		reg = realloc(res->reg, cap * sizeof(*reg));
		if (!reg)
			return -ENOMEM;
		res->reg = reg;
		res->cap = cap;
	}
	memmove(&res->reg[at + 1], &res->reg[at],
		(res->nr - at) * sizeof(res->reg[0]));
	res->reg[at].start = start;
	res->reg[at].end = end;
	res->nr++;
	return 0;
}

int uhmm_request_region(struct uhmm_resource *res, uint64_t start,
			uint64_t size)
{
	uint64_t end = start + size;
	size_t at;
	int ret;

	res = res_tree(res);
	if (!size || !res_page_aligned(start) || !res_page_aligned(size) ||
	    end < start || start < res->start || end > res->end)
		return -EINVAL;
	pthread_mutex_lock(&res->lock);
	at = res_first_above(res, start);
	if (at < res->nr && res->reg[at].start < end)
		ret = -EBUSY;
	else
		ret = res_insert_locked(res, at, start, end);
	pthread_mutex_unlock(&res->lock);
	return ret;
}

/* Round @x up to @align; false when that overflows. */
static bool res_align_up(uint64_t x, uint64_t align, uint64_t *out)
{
	uint64_t r = UHMM_ALIGN_UP(x, align);

	if (r < x)
		return false;
	*out = r;
	return true;
}

int uhmm_request_free_region(struct uhmm_resource *res, uint64_t size,
			     uint64_t align, uint64_t *start)
{
	uint64_t cand;
	size_t i;
	int ret = -ENOSPC;

	res = res_tree(res);
	if (!align)
		align = UHMM_PAGE_SIZE;
	if (!start || !size || !res_page_aligned(size) ||
	    align < UHMM_PAGE_SIZE || (align & (align - 1)))
		return -EINVAL;
	if (size > res->end - res->start || !res_align_up(res->start, align, &cand))
		return -ENOSPC;
	pthread_mutex_lock(&res->lock);
	/* Walk the gaps in address order: the first that fits is the lowest. */
	for (i = 0; i <= res->nr; i++) {
		uint64_t limit = i < res->nr ? res->reg[i].start : res->end;

		if (cand <= limit && limit - cand >= size) {
			ret = res_insert_locked(res, i, cand, cand + size);
			if (!ret)
				*start = cand;
			break;
		}
		if (i == res->nr ||
		    !res_align_up(UHMM_MAX(cand, res->reg[i].end), align, &cand))
			break;
	}
	pthread_mutex_unlock(&res->lock);
	return ret;
}

int uhmm_release_region(struct uhmm_resource *res, uint64_t start)
{
	size_t at;
	int ret = -ENOENT;

	res = res_tree(res);
	pthread_mutex_lock(&res->lock);
	at = res_first_above(res, start);
	if (at < res->nr && res->reg[at].start == start) {
		memmove(&res->reg[at], &res->reg[at + 1],
			(res->nr - at - 1) * sizeof(res->reg[0]));
		res->nr--;
		ret = 0;
	}
	pthread_mutex_unlock(&res->lock);
	return ret;
}
