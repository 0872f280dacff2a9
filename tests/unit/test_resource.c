// SPDX-License-Identifier: MIT
/* Unit tests for the device address space: uhmm_resource_create/destroy,
 * uhmm_request_region, uhmm_request_free_region, uhmm_release_region. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <uhmm/pagemap.h>
#include "t_util.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TB0 (1ULL << 32)		/* start of the private test trees */

static struct uhmm_resource *res;	/* [TB0, TB0 + 1 GiB) */

static void setup(void)
{
	ck_assert_int_eq(uhmm_resource_create(TB0, TB0 + GiB, &res), 0);
	ck_assert_ptr_nonnull(res);
}

static void teardown(void)
{
	uhmm_resource_destroy(res);
	res = NULL;
}

/* ---- uhmm_resource_create / uhmm_resource_destroy ---- */

/* A fresh tree hands out its lowest page first. */
START_TEST(resource_create_spans_requested_range)
{
	struct uhmm_resource *r;
	uint64_t start = 0;

	ck_assert_int_eq(uhmm_resource_create(0x10000, 0x20000, &r), 0);
	ck_assert_int_eq(uhmm_request_free_region(r, T_PAGE, 0, &start), 0);
	ck_assert_uint_eq(start, 0x10000);
	ck_assert_int_eq(uhmm_request_region(r, 0x1f000, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(r, 0x20000, T_PAGE), -EINVAL);
	uhmm_resource_destroy(r);
}
END_TEST

/* Empty, reversed and unaligned spans and a NULL out pointer are -EINVAL. */
START_TEST(resource_create_bad_span_is_einval)
{
	struct uhmm_resource *r = NULL;

	ck_assert_int_eq(uhmm_resource_create(TB0, TB0, &r), -EINVAL);
	ck_assert_int_eq(uhmm_resource_create(TB0 + GiB, TB0, &r), -EINVAL);
	ck_assert_int_eq(uhmm_resource_create(TB0 + 1, TB0 + GiB, &r), -EINVAL);
	ck_assert_int_eq(uhmm_resource_create(TB0, TB0 + GiB - 1, &r), -EINVAL);
	ck_assert_int_eq(uhmm_resource_create(TB0, TB0 + GiB, NULL), -EINVAL);
	ck_assert_ptr_null(r);
}
END_TEST

/* destroy(NULL) does nothing; destroying a tree with claims frees them (ASan checks). */
START_TEST(resource_destroy_null_and_with_claims)
{
	uint64_t s;

	uhmm_resource_destroy(NULL);
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, &s), 0);
}
END_TEST

/* ---- uhmm_request_region ---- */

/* Claims at fixed bases succeed, including back-to-back and at both ends. */
START_TEST(request_region_fixed_adjacent_and_edges)
{
	ck_assert_int_eq(uhmm_request_region(res, TB0, 2 * MiB), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 2 * MiB, 2 * MiB), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + GiB - T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 8 * MiB, 4 * MiB), 0);
}
END_TEST

/* Every kind of overlap with a claimed region is -EBUSY. */
START_TEST(request_region_overlap_is_ebusy)
{
	uint64_t b = TB0 + 16 * MiB;

	ck_assert_int_eq(uhmm_request_region(res, b, 4 * MiB), 0);
	ck_assert_int_eq(uhmm_request_region(res, b, 4 * MiB), -EBUSY);	/* same */
	ck_assert_int_eq(uhmm_request_region(res, b - MiB, 2 * MiB), -EBUSY);	/* left */
	ck_assert_int_eq(uhmm_request_region(res, b + 3 * MiB, 2 * MiB), -EBUSY); /* right */
	ck_assert_int_eq(uhmm_request_region(res, b + MiB, T_PAGE), -EBUSY);	/* inside */
	ck_assert_int_eq(uhmm_request_region(res, b - MiB, 8 * MiB), -EBUSY);	/* around */
	ck_assert_int_eq(uhmm_request_region(res, b + 4 * MiB - T_PAGE, 2 * T_PAGE), -EBUSY);
	/* The neighbours on both sides are still free. */
	ck_assert_int_eq(uhmm_request_region(res, b - T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(res, b + 4 * MiB, T_PAGE), 0);
}
END_TEST

/* Size 0, unaligned start or size, and ranges outside the tree are -EINVAL. */
START_TEST(request_region_bad_args_is_einval)
{
	ck_assert_int_eq(uhmm_request_region(res, TB0, 0), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 1, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0, T_PAGE + 1), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0 - T_PAGE, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0 - T_PAGE, 2 * T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + GiB - T_PAGE, 2 * T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + GiB, T_PAGE), -EINVAL);
	/* start + size wraps around 2^64 */
	ck_assert_int_eq(uhmm_request_region(res, TB0 + T_PAGE, UINT64_MAX - T_PAGE + 1), -EINVAL);
	/* Nothing was claimed by the failures. */
	ck_assert_int_eq(uhmm_request_region(res, TB0, GiB), 0);
}
END_TEST

/* NULL selects the global tree: [UHMM_DEVADDR_MIN, UHMM_DEVADDR_MAX). */
START_TEST(request_region_null_is_global_tree)
{
	uint64_t b = UHMM_DEVADDR_MAX - 4 * MiB;

	ck_assert_int_eq(uhmm_request_region(NULL, b, 4 * MiB), 0);
	ck_assert_int_eq(uhmm_request_region(NULL, b, T_PAGE), -EBUSY);
	ck_assert_int_eq(uhmm_request_region(NULL, UHMM_DEVADDR_MIN - T_PAGE, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_request_region(NULL, UHMM_DEVADDR_MAX, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_release_region(NULL, b), 0);
	/* Private trees are independent of the global one. */
	ck_assert_int_eq(uhmm_request_region(res, TB0, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(NULL, UHMM_DEVADDR_MIN, T_PAGE), 0);
	ck_assert_int_eq(uhmm_release_region(NULL, UHMM_DEVADDR_MIN), 0);
}
END_TEST

/* ---- uhmm_request_free_region ---- */

/* Successive requests are placed lowest first, back to back. */
START_TEST(request_free_region_lowest_fit)
{
	uint64_t a, b, c;

	ck_assert_int_eq(uhmm_request_free_region(res, 3 * T_PAGE, 0, &a), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, &b), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * T_PAGE, T_PAGE, &c), 0);
	ck_assert_uint_eq(a, TB0);
	ck_assert_uint_eq(b, TB0 + 3 * T_PAGE);
	ck_assert_uint_eq(c, TB0 + 4 * T_PAGE);
}
END_TEST

/* The result is aligned as asked (2 MiB, 1 GiB in the global tree). */
START_TEST(request_free_region_honours_alignment)
{
	uint64_t a, b, g;

	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, &a), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * MiB, 2 * MiB, &b), 0);
	ck_assert_uint_eq(a, TB0);
	ck_assert_uint_eq(b, TB0 + 2 * MiB);
	/* The gap left below b is still used by a page-aligned request. */
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, &a), 0);
	ck_assert_uint_eq(a, TB0 + T_PAGE);
	ck_assert_int_eq(uhmm_request_free_region(NULL, GiB, GiB, &g), 0);
	ck_assert_uint_eq(g % GiB, 0);
	ck_assert_uint_ge(g, UHMM_DEVADDR_MIN);
	ck_assert_int_eq(uhmm_release_region(NULL, g), 0);
}
END_TEST

/* A gap between claims is filled when big enough and skipped when not. */
START_TEST(request_free_region_fills_gaps_that_fit)
{
	uint64_t s;

	ck_assert_int_eq(uhmm_request_region(res, TB0, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 3 * T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 8 * T_PAGE, T_PAGE), 0);
	/* 3 pages: the 2-page gap is skipped, the 4-page gap is used */
	ck_assert_int_eq(uhmm_request_free_region(res, 3 * T_PAGE, 0, &s), 0);
	ck_assert_uint_eq(s, TB0 + 4 * T_PAGE);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * T_PAGE, 0, &s), 0);
	ck_assert_uint_eq(s, TB0 + T_PAGE);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * T_PAGE, 0, &s), 0);
	ck_assert_uint_eq(s, TB0 + 9 * T_PAGE);
}
END_TEST

/* A full tree, or a request larger than the tree or than any aligned gap, is -ENOSPC. */
START_TEST(request_free_region_no_room_is_enospc)
{
	uint64_t s = 0;

	ck_assert_int_eq(uhmm_request_free_region(res, 2 * GiB, 0, &s), -ENOSPC);
	ck_assert_int_eq(uhmm_request_free_region(res, GiB, GiB, &s), 0);
	ck_assert_uint_eq(s, TB0);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, &s), -ENOSPC);
	ck_assert_int_eq(uhmm_release_region(res, TB0), 0);
	/* Only the 2 MiB-aligned slot at TB0 + 2 MiB would fit: it is taken. */
	ck_assert_int_eq(uhmm_request_region(res, TB0, 2 * MiB), 0);
	ck_assert_int_eq(uhmm_request_region(res, TB0 + 4 * MiB, GiB - 4 * MiB), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * MiB, 4 * MiB, &s), -ENOSPC);
	ck_assert_int_eq(uhmm_request_free_region(res, 2 * MiB, 2 * MiB, &s), 0);
	ck_assert_uint_eq(s, TB0 + 2 * MiB);
}
END_TEST

/* Size 0 or unaligned, alignment not a power of two or below a page, NULL out: -EINVAL. */
START_TEST(request_free_region_bad_args_is_einval)
{
	uint64_t s = 0;

	ck_assert_int_eq(uhmm_request_free_region(res, 0, 0, &s), -EINVAL);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE + 8, 0, &s), -EINVAL);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 3 * T_PAGE, &s), -EINVAL);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 2048, &s), -EINVAL);
	ck_assert_int_eq(uhmm_request_free_region(res, T_PAGE, 0, NULL), -EINVAL);
	ck_assert_uint_eq(s, 0);
}
END_TEST

/* A huge alignment whose round-up overflows is -ENOSPC, not a wrong answer. */
START_TEST(request_free_region_alignment_overflow_is_enospc)
{
	struct uhmm_resource *r;
	uint64_t s = 0;

	ck_assert_int_eq(uhmm_resource_create(UINT64_MAX - GiB - T_PAGE + 1,
					      UINT64_MAX - T_PAGE + 1, &r), 0);
	ck_assert_int_eq(uhmm_request_free_region(r, T_PAGE, 1ULL << 63, &s), -ENOSPC);
	ck_assert_int_eq(uhmm_request_free_region(r, T_PAGE, 0, &s), 0);
	ck_assert_uint_eq(s, UINT64_MAX - GiB - T_PAGE + 1);
	uhmm_resource_destroy(r);
}
END_TEST

#define CONC_THREADS 4
#define CONC_EACH 200

struct conc_arg {
	struct uhmm_resource *res;
	uint64_t got[CONC_EACH];
	int err;
};

static void *conc_worker(void *p)
{
	struct conc_arg *a = p;

	for (int i = 0; i < CONC_EACH; i++) {
		uint64_t size = (uint64_t)(i % 3 + 1) * T_PAGE;

		if (uhmm_request_free_region(a->res, size, 0, &a->got[i]))
			a->err++;
		/* release every other one to churn the tree */
		if (i % 2 && uhmm_release_region(a->res, a->got[i]))
			a->err++;
	}
	return NULL;
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;

	return a < b ? -1 : a > b;
}

/* Concurrent requests and releases never hand out overlapping ranges. */
START_TEST(request_free_region_concurrent_no_overlap)
{
	static struct conc_arg args[CONC_THREADS];
	pthread_t th[CONC_THREADS];
	uint64_t kept[CONC_THREADS * CONC_EACH / 2][2];
	size_t n = 0;

	for (int t = 0; t < CONC_THREADS; t++)
		args[t].res = res;
	t_threads_start(th, CONC_THREADS, conc_worker, args, sizeof(args[0]));
	t_threads_join(th, CONC_THREADS, NULL);
	for (int t = 0; t < CONC_THREADS; t++) {
		ck_assert_int_eq(args[t].err, 0);
		for (int i = 0; i < CONC_EACH; i += 2) {
			kept[n][0] = args[t].got[i];
			kept[n][1] = args[t].got[i] + (uint64_t)(i % 3 + 1) * T_PAGE;
			n++;
		}
	}
	qsort(kept, n, sizeof(kept[0]), cmp_u64);
	for (size_t i = 1; i < n; i++)
		ck_assert_uint_le(kept[i - 1][1], kept[i][0]);
	/* Every kept range is still claimed: exactly one release each succeeds. */
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(uhmm_release_region(res, kept[i][0]), 0);
		ck_assert_int_eq(uhmm_release_region(res, kept[i][0]), -ENOENT);
	}
}
END_TEST

/* ---- uhmm_release_region ---- */

/* A released range can be claimed again, and is the lowest fit again. */
START_TEST(release_region_makes_range_reusable)
{
	uint64_t a, b, c;

	ck_assert_int_eq(uhmm_request_free_region(res, MiB, 0, &a), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, MiB, 0, &b), 0);
	ck_assert_int_eq(uhmm_release_region(res, a), 0);
	ck_assert_int_eq(uhmm_request_free_region(res, MiB, 0, &c), 0);
	ck_assert_uint_eq(c, a);
	ck_assert_int_eq(uhmm_release_region(res, b), 0);
	ck_assert_int_eq(uhmm_request_region(res, b, MiB), 0);
}
END_TEST

/* Releasing a non-start address, an unclaimed one, or twice is -ENOENT. */
START_TEST(release_region_not_a_start_is_enoent)
{
	ck_assert_int_eq(uhmm_request_region(res, TB0 + MiB, MiB), 0);
	ck_assert_int_eq(uhmm_release_region(res, TB0 + MiB + T_PAGE), -ENOENT);
	ck_assert_int_eq(uhmm_release_region(res, TB0), -ENOENT);
	ck_assert_int_eq(uhmm_release_region(res, 0), -ENOENT);
	ck_assert_int_eq(uhmm_release_region(res, TB0 + MiB), 0);
	ck_assert_int_eq(uhmm_release_region(res, TB0 + MiB), -ENOENT);
	ck_assert_int_eq(uhmm_release_region(NULL, UHMM_DEVADDR_MIN), -ENOENT);
}
END_TEST

int main(void)
{
	TCase *create = T_TCASE("resource_create", setup, teardown,
				resource_create_spans_requested_range,
				resource_create_bad_span_is_einval,
				resource_destroy_null_and_with_claims);
	TCase *req = T_TCASE("request_region", setup, teardown,
			     request_region_fixed_adjacent_and_edges,
			     request_region_overlap_is_ebusy, request_region_bad_args_is_einval,
			     request_region_null_is_global_tree);
	TCase *freereq = T_TCASE("request_free_region", setup, teardown,
				 request_free_region_lowest_fit,
				 request_free_region_honours_alignment,
				 request_free_region_fills_gaps_that_fit,
				 request_free_region_no_room_is_enospc,
				 request_free_region_bad_args_is_einval,
				 request_free_region_alignment_overflow_is_enospc,
				 request_free_region_concurrent_no_overlap);
	TCase *rel = T_TCASE("release_region", setup, teardown, release_region_makes_range_reusable,
			     release_region_not_a_start_is_enoent);

	return t_run_suite("resource", create, req, freereq, rel, NULL);
}
