// SPDX-License-Identifier: MIT
/* t_util.c - shared helpers for the unit tests (see t_util.h). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "t_util.h"

int t_run_suite(const char *name, TCase *tc, ...)
{
	Suite *s = suite_create(name);
	SRunner *sr;
	va_list ap;
	int nfailed, nrun;

	va_start(ap, tc);
	for (TCase *t = tc; t; t = va_arg(ap, TCase *)) {
		/* tcase_set_timeout is scaled by CK_TIMEOUT_MULTIPLIER. */
		tcase_set_timeout(t, 30);
		suite_add_tcase(s, t);
	}
	va_end(ap);
	sr = srunner_create(s);
	if (!getenv("CK_FORK"))
		srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	nfailed = srunner_ntests_failed(sr);
	nrun = srunner_ntests_run(sr);
	srunner_free(sr);
	printf("T_RESULT %s run=%d failed=%d\n", name, nrun, nfailed);
	return nfailed ? 1 : 0;
}

void *t_map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static uint64_t t_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

void t_fill_pattern(void *p, size_t len, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = t_mix(seed + i);
}

long t_check_pattern(const void *p, size_t len, uint64_t seed)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != t_mix(seed + i))
			return (long)(i * 8);
	return -1;
}

uint64_t t_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

size_t t_resident_pages(const void *p, size_t len)
{
	size_t n = (len + T_PAGE - 1) / T_PAGE, res = 0;
	unsigned char *vec = calloc(n, 1);

	ck_assert_ptr_nonnull(vec);
	ck_assert_int_eq(mincore((void *)p, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		res += vec[i] & 1;
	free(vec);
	return res;
}
