// SPDX-License-Identifier: MIT
/* Unit tests for the kmem heap: malloc, calloc, realloc, free, usable_size,
 * growth, busy rules and a two-thread stress with content checks. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm/dax.h>
#include "t_util.h"

#define MiB (1ULL << 20)

/*
 * ThreadSanitizer does not see inside Debian's (uninstrumented) jemalloc and
 * misreads its internal mutex use as "double lock"; the heap's own code is
 * still checked. Read by TSan at start-up, unused otherwise.
 */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
	return "mutex:libjemalloc.so.2\n";
}

static struct uhmm_dax_region *R;
static struct uhmm_dax_dev *D;		/* 16 MiB, kmem mode */

static void setup(void)
{
	ck_assert_int_eq(uhmm_dax_region_create(NULL, 64 * MiB, UHMM_DAX_ALIGN_2M, &R), 0);
	ck_assert_int_eq(uhmm_dax_region_seed(R, &D), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 16 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), 0);
}

static void teardown(void)
{
	uhmm_dax_region_close(R);
	R = NULL;
}

static bool in_dev(const void *p)
{
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	return p != NULL;
}

/* Allocations of many sizes are usable, distinct and freeable. */
START_TEST(kmem_malloc_sizes)
{
	void *p[64];

	for (int i = 0; i < 64; i++) {
		size_t sz = (size_t)1 << (i % 17);

		p[i] = uhmm_kmem_malloc(D, sz);
		ck_assert(in_dev(p[i]));
		ck_assert_uint_ge(uhmm_kmem_usable_size(D, p[i]), sz);
		memset(p[i], i, sz);
	}
	for (int i = 0; i < 64; i++) {
		size_t sz = (size_t)1 << (i % 17);

		ck_assert_int_eq(((unsigned char *)p[i])[sz - 1], i);
		uhmm_kmem_free(D, p[i]);
	}
	p[0] = uhmm_kmem_malloc(D, 0);
	ck_assert_ptr_nonnull(p[0]);
	uhmm_kmem_free(D, p[0]);
}
END_TEST

/* Memory runs out at the device size; NULL device gives NULL. */
START_TEST(kmem_malloc_exhausts_device)
{
	void *p[32];
	int n = 0;

	ck_assert_ptr_null(uhmm_kmem_malloc(NULL, 16));
	ck_assert_ptr_null(uhmm_kmem_malloc(D, 64 * MiB));
	while (n < 32 && (p[n] = uhmm_kmem_malloc(D, 1 * MiB)))
		n++;
	ck_assert_int_ge(n, 8);
	ck_assert_int_lt(n, 17);
	for (int i = 0; i < n; i++)
		uhmm_kmem_free(D, p[i]);
}
END_TEST

/* A devdax device has no heap: NULL. */
START_TEST(kmem_malloc_devdax_null)
{
	struct uhmm_dax_dev *e;

	ck_assert_int_eq(uhmm_dax_region_seed(R, &e), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(e, 4 * MiB), 0);
	ck_assert_ptr_null(uhmm_kmem_malloc(e, 16));
	ck_assert_ptr_null(uhmm_kmem_calloc(e, 1, 16));
}
END_TEST

/* calloc zeroes even reused, dirtied memory; overflow gives NULL. */
START_TEST(kmem_calloc_zeroes)
{
	unsigned char *p = uhmm_kmem_malloc(D, 4096);

	memset(p, 0xff, 4096);
	uhmm_kmem_free(D, p);
	p = uhmm_kmem_calloc(D, 512, 8);
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < 4096; i++)
		ck_assert_int_eq(p[i], 0);
	uhmm_kmem_free(D, p);
	ck_assert_ptr_null(uhmm_kmem_calloc(D, SIZE_MAX / 2, 4));
}
END_TEST

/* realloc keeps the contents; NULL acts as malloc; size 0 frees. */
START_TEST(kmem_realloc_keeps_contents)
{
	char *p = uhmm_kmem_realloc(D, NULL, 100);

	ck_assert_ptr_nonnull(p);
	t_fill_pattern(p, 96, 5);
	p = uhmm_kmem_realloc(D, p, 200000);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(t_check_pattern(p, 96, 5), -1);
	p = uhmm_kmem_realloc(D, p, 40);
	ck_assert_int_eq(t_check_pattern(p, 32, 5), -1);
	ck_assert_ptr_null(uhmm_kmem_realloc(D, p, 0));
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
}
END_TEST

/* free(NULL) and a foreign pointer are ignored; usable_size says 0. */
START_TEST(kmem_free_foreign_ignored)
{
	char local[16];
	void *m = malloc(32);

	uhmm_kmem_free(D, NULL);
	uhmm_kmem_free(D, local);
	uhmm_kmem_free(D, m);
	uhmm_kmem_free(NULL, m);
	ck_assert_uint_eq(uhmm_kmem_usable_size(D, m), 0);
	ck_assert_uint_eq(uhmm_kmem_usable_size(D, NULL), 0);
	ck_assert_uint_eq(uhmm_kmem_usable_size(NULL, m), 0);
	ck_assert_ptr_null(uhmm_kmem_realloc(D, local, 8));
	free(m);
	/* Nothing was counted: devdax switch works. */
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
}
END_TEST

/* usable_size covers the request and matches the size class. */
START_TEST(kmem_usable_size_classes)
{
	for (size_t sz = 1; sz <= 65536; sz = sz * 3 + 1) {
		void *p = uhmm_kmem_malloc(D, sz);
		size_t u = uhmm_kmem_usable_size(D, p);

		ck_assert_uint_ge(u, sz);
		memset(p, 1, u);
		uhmm_kmem_free(D, p);
	}
}
END_TEST

/* Switching back to devdax is -EBUSY while allocations live. */
START_TEST(kmem_reconfigure_busy_with_live)
{
	void *p = uhmm_kmem_malloc(D, 64);

	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), -EBUSY);
	ck_assert_int_eq(uhmm_dax_region_close(R), -EBUSY);
	uhmm_kmem_free(D, p);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
	/* And the heap comes back, empty, when switched again. */
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), 0);
	p = uhmm_kmem_malloc(D, 64);
	ck_assert_ptr_nonnull(p);
	uhmm_kmem_free(D, p);
}
END_TEST

/* Growing a kmem device hands the new memory to the heap. */
START_TEST(kmem_resize_grow_adds_memory)
{
	void *p[64];
	int n = 0, m;

	while (n < 64 && (p[n] = uhmm_kmem_malloc(D, 1 * MiB)))
		n++;
	ck_assert_int_lt(n, 17);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 48 * MiB), 0);
	m = n;
	while (m < 64 && (p[m] = uhmm_kmem_malloc(D, 1 * MiB)))
		m++;
	ck_assert_int_ge(m - n, 16);
	for (int i = 0; i < m; i++) {
		memset(p[i], i, 1 * MiB);
		uhmm_kmem_free(D, p[i]);
	}
}
END_TEST

/* Shrinking over memory the heap used is -EBUSY; untouched tail is fine. */
START_TEST(kmem_resize_shrink_in_use_ebusy)
{
	void *p = uhmm_kmem_malloc(D, 64);

	ck_assert_int_eq(uhmm_dax_dev_resize(D, 32 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 16 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 0), -EBUSY);
	uhmm_kmem_free(D, p);
}
END_TEST

#define STRESS_OPS 200000
#define STRESS_SLOTS 256

struct stress_arg {
	unsigned int seed;
	long errors;
};

/* Random malloc/realloc/free with a per-block pattern checked on every free. */
static void *stress_thread(void *arg)
{
	struct stress_arg *a = arg;
	uint64_t *slot[STRESS_SLOTS] = { 0 };
	size_t len[STRESS_SLOTS] = { 0 };
	unsigned int s = a->seed;

	for (int i = 0; i < STRESS_OPS; i++) {
		int k = rand_r(&s) % STRESS_SLOTS;

		if (slot[k]) {
			for (size_t j = 0; j < len[k] / 8; j++)
				if (slot[k][j] != (uint64_t)(uintptr_t)&slot[k][j] + a->seed)
					a->errors++;
			uhmm_kmem_free(D, slot[k]);
			slot[k] = NULL;
			continue;
		}
		len[k] = 16u << (rand_r(&s) % 12);	/* 16 B .. 32 KiB */
		slot[k] = rand_r(&s) & 1 ? uhmm_kmem_malloc(D, len[k]) :
					   uhmm_kmem_calloc(D, 1, len[k]);
		if (!slot[k]) {
			a->errors++;
			continue;
		}
		for (size_t j = 0; j < len[k] / 8; j++)
			slot[k][j] = (uint64_t)(uintptr_t)&slot[k][j] + a->seed;
	}
	for (int k = 0; k < STRESS_SLOTS; k++)
		uhmm_kmem_free(D, slot[k]);
	return NULL;
}

/* Two threads allocate, fill, check and free at once; contents never clash. */
START_TEST(kmem_stress_two_threads)
{
	struct stress_arg a[2] = { { .seed = 1 }, { .seed = 2 } };
	pthread_t t[2];

	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, stress_thread, &a[i]), 0);
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	ck_assert_int_eq(a[0].errors, 0);
	ck_assert_int_eq(a[1].errors, 0);
	/* Every block was freed, the exited threads' counts included. */
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
}
END_TEST

static void *alloc_thread(void *arg)
{
	void **out = arg;

	for (int i = 0; i < 100; i++)
		out[i] = uhmm_kmem_malloc(D, 100);
	return NULL;
}

/* Blocks allocated by an exited thread are freed by another; counts balance. */
START_TEST(kmem_free_cross_thread)
{
	void *p[100];
	pthread_t t;

	ck_assert_int_eq(pthread_create(&t, NULL, alloc_thread, p), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), -EBUSY);
	for (int i = 0; i < 100; i++) {
		ck_assert_ptr_nonnull(p[i]);
		uhmm_kmem_free(D, p[i]);
	}
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
}
END_TEST

/* Mallocs @n blocks of 16 B to 4 KiB, checks they are distinct device
 * memory, frees them (into this thread's front cache). */
static void churn_small(int n)
{
	void *p[300];

	for (int i = 0; i < n; i++) {
		size_t sz = 16U << (i % 9);

		p[i] = uhmm_kmem_malloc(D, sz);
		ck_assert_ptr_nonnull(p[i]);
		ck_assert_uint_ge(uhmm_kmem_usable_size(D, p[i]), sz);
		memset(p[i], i & 0xff, sz);
	}
	for (int i = 0; i < n; i++) {
		size_t sz = 16U << (i % 9);

		for (int j = 0; j < i; j++)
			ck_assert_ptr_ne(p[i], p[j]);
		ck_assert_uint_eq(((unsigned char *)p[i])[sz - 1], i & 0xff);
	}
	for (int i = 0; i < n; i++)
		uhmm_kmem_free(D, p[i]);
}

static pthread_barrier_t churn_bar;

static void *churn_thread(void *arg)
{
	churn_small(300);
	pthread_barrier_wait(&churn_bar);	/* main switches modes */
	pthread_barrier_wait(&churn_bar);
	churn_small(300);
	return NULL;
}

/* Freed blocks a live thread still caches do not block a switch to devdax,
 * and are never handed out again by the next heap. */
START_TEST(kmem_reconfigure_with_cached_frees)
{
	pthread_t t;

	ck_assert_int_eq(pthread_barrier_init(&churn_bar, NULL, 2), 0);
	ck_assert_int_eq(pthread_create(&t, NULL, churn_thread, NULL), 0);
	churn_small(300);
	pthread_barrier_wait(&churn_bar);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), 0);
	pthread_barrier_wait(&churn_bar);
	churn_small(300);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
	pthread_barrier_destroy(&churn_bar);
}
END_TEST

/* kmem memory is the device's: it is not the process heap. */
START_TEST(kmem_memory_is_device_memory)
{
	struct uhmm_dax_dev_info di;
	char *p = uhmm_kmem_malloc(D, 1000);
	void *m = malloc(1000);

	ck_assert_uint_eq(uhmm_kmem_usable_size(D, m), 0);
	ck_assert_uint_ge(uhmm_kmem_usable_size(D, p), 1000);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert(di.flags & UHMM_DAX_DEV_KMEM_ONLINE);
	free(m);
	uhmm_kmem_free(D, p);
}
END_TEST

int main(void)
{
	TCase *mal = tcase_create("kmem_malloc");
	TCase *cal = tcase_create("kmem_calloc");
	TCase *real = tcase_create("kmem_realloc");
	TCase *fr = tcase_create("kmem_free");
	TCase *us = tcase_create("kmem_usable_size");
	TCase *rec = tcase_create("kmem_reconfigure");
	TCase *rsz = tcase_create("kmem_resize");
	TCase *st = tcase_create("kmem_stress");
	TCase *all[] = { mal, cal, real, fr, us, rec, rsz, st };

	for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		tcase_add_checked_fixture(all[i], setup, teardown);
	tcase_add_test(mal, kmem_malloc_sizes);
	tcase_add_test(mal, kmem_malloc_exhausts_device);
	tcase_add_test(mal, kmem_malloc_devdax_null);
	tcase_add_test(mal, kmem_memory_is_device_memory);
	tcase_add_test(cal, kmem_calloc_zeroes);
	tcase_add_test(real, kmem_realloc_keeps_contents);
	tcase_add_test(fr, kmem_free_foreign_ignored);
	tcase_add_test(fr, kmem_free_cross_thread);
	tcase_add_test(us, kmem_usable_size_classes);
	tcase_add_test(rec, kmem_reconfigure_busy_with_live);
	tcase_add_test(rec, kmem_reconfigure_with_cached_frees);
	tcase_add_test(rsz, kmem_resize_grow_adds_memory);
	tcase_add_test(rsz, kmem_resize_shrink_in_use_ebusy);
	tcase_add_test(st, kmem_stress_two_threads);
	return t_run_suite("kmem", mal, cal, real, fr, us, rec, rsz, st, NULL);
}
