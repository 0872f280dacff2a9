// SPDX-License-Identifier: MIT
/* t_util.c - shared helpers for the unit tests (see t_util.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
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

TCase *t_tcase(const char *name, SFun setup, SFun teardown,
	       const TTest *const *tests)
{
	TCase *tc = tcase_create(name);

	if (setup || teardown)
		tcase_add_checked_fixture(tc, setup, teardown);
	for (; *tests; tests++)
		tcase_add_test(tc, *tests);
	return tc;
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

long t_first_nonzero(const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i])
			return (long)i;
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

void t_threads_start(pthread_t *th, unsigned n, void *(*fn)(void *), void *arg,
		     size_t stride)
{
	for (unsigned i = 0; i < n; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, fn,
					       stride ? (char *)arg + i * stride : arg), 0);
}

void t_threads_join(pthread_t *th, unsigned n, void **rets)
{
	for (unsigned i = 0; i < n; i++)
		ck_assert_int_eq(pthread_join(th[i], rets ? &rets[i] : NULL), 0);
}

void t_threads_run(unsigned n, void *(*fn)(void *), void *arg, size_t stride)
{
	pthread_t th[T_MAX_THREADS];
	void *rets[T_MAX_THREADS];

	ck_assert_uint_le(n, T_MAX_THREADS);
	t_threads_start(th, n, fn, arg, stride);
	t_threads_join(th, n, rets);
	for (unsigned i = 0; i < n; i++)
		ck_assert_ptr_null(rets[i]);
}

#define T_NR_HP "/proc/sys/vm/nr_hugepages"
#define T_HUGE (2UL << 20)

static long t_hp_saved = -1;	/* nr_hugepages before t_hugetlb_map */

static long t_read_nr_hp(void)
{
	FILE *f = fopen(T_NR_HP, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static bool t_write_nr_hp(long v)
{
	FILE *f = fopen(T_NR_HP, "w");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

static void t_hp_restore(void)
{
	if (t_hp_saved >= 0)
		t_write_nr_hp(t_hp_saved);
	t_hp_saved = -1;
}

void *t_hugetlb_map(size_t len, const char **why)
{
	static char reason[160];
	long n = (long)(len / T_HUGE);
	void *p;

	t_hp_saved = t_read_nr_hp();
	if (t_hp_saved < 0 || !t_write_nr_hp(t_hp_saved + n) ||
	    t_read_nr_hp() < t_hp_saved + n) {
		t_hp_restore();
		*why = "no 2 MiB hugetlb pages could be reserved via " T_NR_HP;
		return NULL;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED) {
		snprintf(reason, sizeof(reason), "MAP_HUGETLB failed: %s", strerror(errno));
		t_hp_restore();
		*why = reason;
		return NULL;
	}
	return p;
}

void t_hugetlb_unmap(void *p, size_t len)
{
	munmap(p, len);
	t_hp_restore();
}

static bool t_rec_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	struct t_rec *r = (struct t_rec *)((char *)sub - offsetof(struct t_rec, n));
	void (*hook)(struct t_rec *, const struct uhmm_notifier_range *);

	pthread_mutex_lock(&r->lock);
	if (r->count < T_REC_MAX) {
		r->log[r->count].ev = range->event;
		r->log[r->count].start = range->start;
		r->log[r->count].end = range->end;
		r->log[r->count].new_start = range->new_start;
		r->log[r->count].flags = range->flags;
		r->log[r->count].seq = cur_seq;
		r->log[r->count].owner = range->owner;
	}
	r->count++;
	uhmm_interval_set_seq(sub, cur_seq);
	pthread_mutex_unlock(&r->lock);
	hook = __atomic_load_n(&r->hook, __ATOMIC_ACQUIRE);
	if (hook)
		hook(r, range);
	return true;
}

const struct uhmm_interval_notifier_ops t_rec_ops = {
	.invalidate = t_rec_invalidate,
};

struct t_rec *t_rec_new(void)
{
	struct t_rec *r = calloc(1, sizeof(*r));

	ck_assert_ptr_nonnull(r);
	pthread_mutex_init(&r->lock, NULL);
	return r;
}

void t_rec_insert(struct t_rec *r, struct uhmm_mm *mm, const void *p, size_t len)
{
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, mm, (uintptr_t)p, len,
						       &t_rec_ops), 0);
}

void t_rec_free(struct t_rec *r)
{
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), 0);
	free(r);
}

int t_rec_count(struct t_rec *r)
{
	int c;

	pthread_mutex_lock(&r->lock);
	c = r->count;
	pthread_mutex_unlock(&r->lock);
	return c;
}

int t_rec_wait(struct t_rec *r, int n)
{
	uint64_t end = t_now_ns() + 5000000000ULL;

	while (t_rec_count(r) < n && t_now_ns() < end)
		usleep(1000);
	usleep(30000);
	return t_rec_count(r);
}

bool t_rec_has(struct t_rec *r, enum uhmm_event ev, void *owner)
{
	bool hit = false;

	pthread_mutex_lock(&r->lock);
	for (int i = 0; i < r->count && i < T_REC_MAX; i++)
		hit |= r->log[i].ev == ev && r->log[i].owner == owner;
	pthread_mutex_unlock(&r->lock);
	return hit;
}
