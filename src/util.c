// SPDX-License-Identifier: MIT
/* util.c - memory helpers for uhmm's own tables and scratch blocks.
 * Internal only: declared in src/internal.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "internal.h"

void *uhmm_calloc_huge(size_t n, size_t size)
{
	const size_t huge = 2UL << 20;
	size_t bytes;
	void *p;

	if (__builtin_mul_overflow(n, size, &bytes) || bytes > SIZE_MAX - huge)
		return NULL;
	if (bytes < huge)
		return calloc(n, size);
	if (posix_memalign(&p, huge, UHMM_ALIGN_UP(bytes, huge)))
		return NULL;
	madvise(p, UHMM_ALIGN_UP(bytes, huge), MADV_HUGEPAGE);	/* a hint */
	return memset(p, 0, bytes);
}

void *uhmm_map_aligned(size_t len, size_t align, int prot, bool huge)
{
	size_t maplen;
	uint8_t *p, *a;

	if (__builtin_add_overflow(len, align - UHMM_PAGE_SIZE, &maplen))
		return NULL;
	p = mmap(NULL, maplen, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	a = (uint8_t *)UHMM_ALIGN_UP((uintptr_t)p, align);
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + maplen)
		munmap(a + len, (size_t)(p + maplen - (a + len)));
	if (huge)
		madvise(a, len, MADV_HUGEPAGE);	/* a hint */
	return a;
}

/* A block's size sits in front of it (16 bytes keep the alignment). */
#define BLOCK_HDR 16

static size_t block_size(const void *p)
{
	return *(const size_t *)((const char *)p - BLOCK_HDR);
}

void *uhmm_block_get(struct uhmm_block_cache *bc, size_t size, bool zero)
{
	void *p = bc ? atomic_exchange(&bc->idle, NULL) : NULL;
	size_t *h;

	if (p && block_size(p) < size) {
		uhmm_block_put(bc, p);		/* too small for this one */
		p = NULL;
	}
	if (!p) {
		if (size > SIZE_MAX - BLOCK_HDR || !(h = malloc(BLOCK_HDR + size)))
			return NULL;
		*h = size;
		p = (char *)h + BLOCK_HDR;
	}
	return zero ? memset(p, 0, size) : p;
}

/*
 * Only blocks this thread holds are looked at: @p before it is published,
 * the one the exchange hands back after. (Reading the idle block's size
 * without taking it could read a block another thread took and freed.)
 */
void uhmm_block_put(struct uhmm_block_cache *bc, void *p)
{
	void *old;
	size_t size;

	if (!p)
		return;
	if (!bc) {
		free((char *)p - BLOCK_HDR);
		return;
	}
	size = block_size(p);
	old = atomic_exchange(&bc->idle, p);
	if (old && block_size(old) > size) {
		void *expect = p;

		/* keep the larger: put it back, unless p was taken meanwhile */
		if (atomic_compare_exchange_strong(&bc->idle, &expect, old))
			old = p;
	}
	if (old)
		free((char *)old - BLOCK_HDR);
}

void uhmm_block_cache_fini(struct uhmm_block_cache *bc)
{
	void *p = atomic_exchange(&bc->idle, NULL);

	if (p)
		free((char *)p - BLOCK_HDR);
}
