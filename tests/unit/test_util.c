// SPDX-License-Identifier: MIT
/* Unit tests for the internal memory helpers of src/util.c: large zeroed
 * tables (uhmm_calloc_huge) and the one-block scratch cache that migrations
 * and the sim reuse (uhmm_block_get/put). */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <check.h>
#include "internal.h"
#include "t_util.h"

#define HUGE_SZ (2UL << 20)

/* Small tables come from calloc; 2 MiB and more are 2 MiB aligned; all zeroed. */
START_TEST(calloc_huge_zeroed_and_aligned)
{
	size_t n[] = { 1, 4096, HUGE_SZ / 8, HUGE_SZ / 8 + 1, 3 * HUGE_SZ / 8 };

	for (size_t k = 0; k < sizeof(n) / sizeof(n[0]); k++) {
		uint64_t *p = uhmm_calloc_huge(n[k], 8);

		ck_assert_ptr_nonnull(p);
		if (n[k] * 8 >= HUGE_SZ)
			ck_assert_uint_eq((uintptr_t)p % HUGE_SZ, 0);
		ck_assert_int_eq(t_first_nonzero(p, n[k] * 8), -1);
		memset(p, 0xab, n[k] * 8);	/* all of it is usable */
		free(p);
	}
}
END_TEST

/* Sizes that overflow are refused, not truncated. */
START_TEST(calloc_huge_overflow_is_null)
{
	ck_assert_ptr_null(uhmm_calloc_huge(SIZE_MAX / 2, 4));
	ck_assert_ptr_null(uhmm_calloc_huge(1, SIZE_MAX - 100));
}
END_TEST

/* "VmFlags:" of the mapping holding @p, from /proc/self/smaps ("" if none). */
static void vm_flags_of(const void *p, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;

	ck_assert_ptr_nonnull(f);
	out[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			snprintf(out, len, "%s", line + 8);
	}
	fclose(f);
}

/* Aligned, not populated, usable over exactly @len, THP-advised on request. */
START_TEST(map_aligned_modes)
{
	size_t lens[] = { 3 * 4096, 5 * HUGE_SZ / 2 };
	unsigned char vec[3 * HUGE_SZ / 4096];
	char flags[512];

	for (int huge = 0; huge <= 1; huge++)
		for (size_t k = 0; k < 2; k++) {
			size_t align = huge ? HUGE_SZ : 4096;
			uint8_t *p = uhmm_map_aligned(lens[k], align, PROT_READ | PROT_WRITE, huge);

			ck_assert_ptr_nonnull(p);
			ck_assert_uint_eq((uintptr_t)p % align, 0);
			ck_assert_int_eq(mincore(p, lens[k], vec), 0);
			for (size_t i = 0; i < lens[k] / 4096; i++)
				ck_assert_int_eq(vec[i] & 1, 0);	/* not populated */
			ck_assert_int_eq(t_first_nonzero(p, lens[k]), -1);
			memset(p, 0x5a, lens[k]);
			vm_flags_of(p, flags, sizeof(flags));
			ck_assert_msg((strstr(flags, " hg") != NULL) == (huge == 1),
				      "huge %d: VmFlags%s", huge, flags);
			ck_assert_int_eq(munmap(p, lens[k]), 0);
		}
}
END_TEST

/* A length that cannot be mapped is NULL, not a crash. */
START_TEST(map_aligned_too_big_is_null)
{
	ck_assert_ptr_null(uhmm_map_aligned(SIZE_MAX - 4096, HUGE_SZ, PROT_READ, true));
	ck_assert_ptr_null(uhmm_map_aligned(1ULL << 60, 4096, PROT_NONE, false));
}
END_TEST

/* A block put back is handed out again, zeroed when asked, if big enough. */
START_TEST(block_reused_when_big_enough)
{
	struct uhmm_block_cache bc = { NULL };
	uint8_t *a = uhmm_block_get(&bc, 1000, true), *b;

	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(t_first_nonzero(a, 1000), -1);
	memset(a, 0x5a, 1000);
	uhmm_block_put(&bc, a);
	b = uhmm_block_get(&bc, 600, true);
	ck_assert_ptr_eq(b, a);
	ck_assert_int_eq(t_first_nonzero(b, 600), -1);
	ck_assert_uint_eq(b[600], 0x5a);	/* only what was asked is cleared */
	uhmm_block_put(&bc, b);
	/* too small for 2000 bytes: a new block, and the idle one stays */
	b = uhmm_block_get(&bc, 2000, false);
	ck_assert_ptr_ne(b, a);
	memset(b, 1, 2000);
	ck_assert_ptr_eq(uhmm_block_get(&bc, 10, false), a);
	uhmm_block_put(&bc, a);
	uhmm_block_put(&bc, b);
	/* the larger one is kept */
	ck_assert_ptr_eq(uhmm_block_get(&bc, 1, false), b);
	uhmm_block_put(&bc, b);
	uhmm_block_cache_fini(&bc);
	ck_assert_ptr_null(atomic_load(&bc.idle));
}
END_TEST

/* No cache: plain allocation; NULL puts and an empty fini do nothing. */
START_TEST(block_without_cache_and_edges)
{
	struct uhmm_block_cache bc = { NULL };
	void *p = uhmm_block_get(NULL, 64, true);

	ck_assert_ptr_nonnull(p);
	uhmm_block_put(NULL, p);
	uhmm_block_put(&bc, NULL);
	ck_assert_ptr_null(atomic_load(&bc.idle));
	ck_assert_ptr_null(uhmm_block_get(&bc, SIZE_MAX - 8, false));
	uhmm_block_cache_fini(&bc);
}
END_TEST

static struct uhmm_block_cache shared_bc;

/* Takes and puts blocks of sizes that vary, writing each whole block. */
static void *block_user(void *arg)
{
	uint64_t x = (uintptr_t)arg;

	for (int i = 0; i < 20000; i++) {
		size_t size = 64 + (size_t)(x % 4096);
		uint8_t *p;

		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		p = uhmm_block_get(&shared_bc, size, i & 1);
		if (!p)
			return (void *)1;
		memset(p, (int)i, size);
		uhmm_block_put(&shared_bc, p);
	}
	return NULL;
}

/* Threads sharing one cache never get the same block at once, and no block
 * is used after it is freed (ASan and TSan run this too). */
START_TEST(block_cache_shared_by_threads)
{
	pthread_t th[3];
	void *rv;

	for (uintptr_t k = 0; k < 3; k++)
		ck_assert_int_eq(pthread_create(&th[k], NULL, block_user, (void *)(k + 1)), 0);
	for (int k = 0; k < 3; k++) {
		ck_assert_int_eq(pthread_join(th[k], &rv), 0);
		ck_assert_ptr_null(rv);
	}
	uhmm_block_cache_fini(&shared_bc);
}
END_TEST

int main(void)
{
	TCase *tc = T_TCASE("calloc_huge", NULL, NULL, calloc_huge_zeroed_and_aligned,
			    calloc_huge_overflow_is_null);
	TCase *tm = T_TCASE("map_aligned", NULL, NULL, map_aligned_modes,
			    map_aligned_too_big_is_null);
	TCase *tb = T_TCASE("block_cache", NULL, NULL, block_reused_when_big_enough,
			    block_without_cache_and_edges, block_cache_shared_by_threads);

	return t_run_suite("util", tc, tm, tb, NULL);
}
