// SPDX-License-Identifier: MIT
/* Unit tests for include/uhmm/mirror.h: interval notifiers, the read_begin /
 * read_retry protocol, the invalidation sources and uhmm_range_fault(). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include <uhmm/mm.h>
#include <uhmm/mirror.h>
#include "t_util.h"

#define NPAGES 16
#define LEN (NPAGES * T_PAGE)
static struct uhmm_mm *mm;
static char *buf;		/* NPAGES managed pages */
static struct t_rec *rc;	/* notifier over buf */

static bool frames_on;	/* mm opened with UHMM_MM_FRAMES */

static void setup_opts(unsigned int fa, unsigned int flags)
{
	UHMM_OPTS(mm_opts, o, .fault_around_pages = fa, .flags = flags);

	frames_on = flags & UHMM_MM_FRAMES;

	ck_assert_int_eq(uhmm_mm_open(&mm, &o), 0);
	buf = t_map_anon(LEN);
	ck_assert_int_eq(uhmm_mm_manage(mm, buf, LEN), 0);
	rc = t_rec_new();
	t_rec_insert(rc, mm, buf, LEN);
}

static void setup(void)
{
	setup_opts(0, 0);
}

/* One page per fault, so that range_fault's effect is visible page by page. */
static void setup_fa1(void)
{
	setup_opts(1, 0);
}

/* Same, with physical frames: range_fault takes its general walk. */
static void setup_fa1_frames(void)
{
	setup_opts(1, UHMM_MM_FRAMES);
}

static void teardown(void)
{
	if (rc && rc->n.mm)
		uhmm_interval_notifier_remove(&rc->n);
	uhmm_mm_close(mm);
	mm = NULL;
	free(rc);
	rc = NULL;
	if (buf)
		munmap(buf, LEN);
	buf = NULL;
}

static uint64_t A(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

#define ck_log(r, i, e, s, en)                                               \
	do {                                                                 \
		ck_assert_int_eq((r)->log[i].ev, (e));                       \
		ck_assert_uint_eq((r)->log[i].start, (s));                   \
		ck_assert_uint_eq((r)->log[i].end, (en));                    \
		ck_assert_uint_eq((r)->log[i].flags, UHMM_RANGE_BLOCKABLE);  \
		ck_assert_uint_eq((r)->log[i].seq & 1, 1);                   \
	} while (0)

/* ---------------------------------------------------------------------- */
/* uhmm_interval_notifier_insert                                           */

/* An inserted notifier receives invalidations of its range. */
START_TEST(insert_then_invalidation_reaches_callback)
{
	ck_assert_uint_eq(rc->n.start, A(buf));
	ck_assert_uint_eq(rc->n.end, A(buf) + LEN);
	ck_assert_int_eq(uhmm_madvise(buf, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_log(rc, 0, UHMM_EVENT_CLEAR, A(buf), A(buf) + T_PAGE);
}
END_TEST

/* NULL arguments or missing invalidate op: -EINVAL; empty/wrapping: -EOVERFLOW. */
START_TEST(insert_bad_args)
{
	struct uhmm_interval_notifier_ops noop = { 0 };
	struct t_rec *r = t_rec_new();

	ck_assert_int_eq(uhmm_interval_notifier_insert(NULL, mm, A(buf), LEN, &t_rec_ops),
			 -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, NULL, A(buf), LEN, &t_rec_ops),
			 -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, mm, A(buf), LEN, NULL),
			 -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, mm, A(buf), LEN, &noop),
			 -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, mm, A(buf), 0, &t_rec_ops),
			 -EOVERFLOW);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&r->n, mm, ~0ULL - 10, 4096,
						       &t_rec_ops), -EOVERFLOW);
	free(r);
}
END_TEST

/* Inserting the same notifier twice is -EINVAL; the first stays active. */
START_TEST(insert_twice_is_einval)
{
	ck_assert_int_eq(uhmm_interval_notifier_insert(&rc->n, mm, A(buf), LEN, &t_rec_ops),
			 -EINVAL);
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(t_rec_count(rc), 1);
}
END_TEST

/* A notifier over unmanaged (even unmapped) space is allowed. */
START_TEST(insert_unmanaged_range_ok)
{
	struct t_rec *r = t_rec_new();
	char *p = t_map_anon(LEN);

	t_rec_insert(r, mm, p, LEN);
	ck_assert_int_eq(uhmm_mprotect(p, LEN, PROT_READ), 0);
	ck_assert_int_eq(t_rec_count(r), 1);
	ck_log(r, 0, UHMM_EVENT_PROTECTION, A(p), A(p) + LEN);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), 0);
	munmap(p, LEN);
	free(r);
}
END_TEST

struct hook_arg {
	struct t_rec *other;
	int ret;
};

static void hook_insert(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	struct hook_arg *h = r->arg;

	h->ret = uhmm_interval_notifier_insert(&h->other->n, mm, A(buf), LEN, &t_rec_ops);
}

/* Inserting from inside a callback is refused (-EDEADLK). */
START_TEST(insert_from_callback_is_edeadlk)
{
	struct hook_arg h = { t_rec_new(), 0 };

	__atomic_store_n(&rc->hook, hook_insert, __ATOMIC_RELEASE);
	rc->arg = &h;
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(h.ret, -EDEADLK);
	__atomic_store_n(&rc->hook, NULL, __ATOMIC_RELEASE);
	free(h.other);
}
END_TEST

#define MANY 10000

/* 10,000 one-page notifiers: an invalidation hits exactly the overlapping ones. */
START_TEST(insert_10000_notifiers_hits_only_overlapping)
{
	size_t len = (size_t)MANY * T_PAGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct t_rec *r = calloc(MANY, sizeof(*r));
	struct t_rec *big = t_rec_new();

	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_ptr_nonnull(r);
	/* insert in a scrambled order */
	for (unsigned int k = 0; k < MANY; k++) {
		unsigned int i = (k * 7919U) % MANY;

		pthread_mutex_init(&r[i].lock, NULL);
		t_rec_insert(&r[i], mm, p + (size_t)i * T_PAGE, T_PAGE);
	}
	t_rec_insert(big, mm, p, len);
	/* (speed of the lookup is bench/mirror's business, not a test's) */
	ck_assert_int_eq(uhmm_madvise(p + 5000 * T_PAGE, 10 * T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(uhmm_mprotect(p + 9990 * T_PAGE, 10 * T_PAGE, PROT_READ), 0);
	for (unsigned int i = 0; i < MANY; i++) {
		bool in1 = i >= 5000 && i < 5010, in2 = i >= 9990;

		ck_assert_int_eq(r[i].count, in1 || in2);
		if (in1)
			ck_log(&r[i], 0, UHMM_EVENT_CLEAR, A(p) + i * T_PAGE,
			       A(p) + (i + 1) * T_PAGE);
		if (in2)
			ck_log(&r[i], 0, UHMM_EVENT_PROTECTION, A(p) + i * T_PAGE,
			       A(p) + (i + 1) * T_PAGE);
	}
	ck_assert_int_eq(big->count, 2);
	ck_log(big, 0, UHMM_EVENT_CLEAR, A(p) + 5000 * T_PAGE, A(p) + 5010 * T_PAGE);
	/* remove every other one; the rest still work */
	for (unsigned int i = 0; i < MANY; i += 2)
		ck_assert_int_eq(uhmm_interval_notifier_remove(&r[i].n), 0);
	ck_assert_int_eq(uhmm_madvise(p + 5000 * T_PAGE, 4 * T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(r[5000].count, 1);
	ck_assert_int_eq(r[5001].count, 2);
	ck_assert_int_eq(r[5002].count, 1);
	ck_assert_int_eq(r[5003].count, 2);
	for (unsigned int i = 1; i < MANY; i += 2)
		ck_assert_int_eq(uhmm_interval_notifier_remove(&r[i].n), 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&big->n), 0);
	ck_assert_int_eq(uhmm_madvise(p, len, MADV_DONTNEED), 0);
	ck_assert_int_eq(r[5001].count, 2);
	ck_assert_int_eq(big->count, 3);
	munmap(p, len);
	free(r);
	free(big);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_interval_notifier_remove                                           */

/* After remove returns, no callback runs for that notifier. */
START_TEST(remove_stops_callbacks)
{
	ck_assert_int_eq(uhmm_interval_notifier_remove(&rc->n), 0);
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(munmap(buf, LEN), 0);
	buf = NULL;
	ck_assert_int_eq(t_rec_wait(rc, 0), 0);
}
END_TEST

/* NULL, never inserted, or removed twice: -EINVAL. */
START_TEST(remove_bad_args)
{
	struct t_rec *r = t_rec_new();

	ck_assert_int_eq(uhmm_interval_notifier_remove(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), -EINVAL);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&rc->n), 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&rc->n), -EINVAL);
	free(r);
}
END_TEST

static void hook_remove_self(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	__atomic_store_n(&r->hook_ret, uhmm_interval_notifier_remove(&r->n), __ATOMIC_RELEASE);
}

/* Remove from inside a callback is -EDEADLK (and does not hang). */
START_TEST(remove_from_callback_is_edeadlk)
{
	__atomic_store_n(&rc->hook, hook_remove_self, __ATOMIC_RELEASE);
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), -EDEADLK);
	/* from the handler thread too (plain madvise -> REMOVE event) */
	__atomic_store_n(&rc->hook_ret, 0, __ATOMIC_RELEASE);
	buf[0] = 1;
	ck_assert_int_eq(madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(t_rec_wait(rc, 2), 2);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), -EDEADLK);
	__atomic_store_n(&rc->hook, NULL, __ATOMIC_RELEASE);
}
END_TEST

/* A callback that blocks; the test releases it or it times out. */
struct slow {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int entered, done;
	unsigned int delay_us;
};

static struct slow slow = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0,
			    200000 };

static void hook_slow(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	pthread_mutex_lock(&slow.lock);
	slow.entered++;
	pthread_cond_broadcast(&slow.cond);
	pthread_mutex_unlock(&slow.lock);
	/* atomic: the test sets it before a munmap whose event TSan cannot order */
	usleep(__atomic_load_n(&slow.delay_us, __ATOMIC_RELAXED));
	pthread_mutex_lock(&slow.lock);
	slow.done++;
	pthread_mutex_unlock(&slow.lock);
}

static void slow_wait_entered(void)
{
	pthread_mutex_lock(&slow.lock);
	while (!slow.entered)
		pthread_cond_wait(&slow.cond, &slow.lock);
	pthread_mutex_unlock(&slow.lock);
}

static int slow_done(void)
{
	int d;

	pthread_mutex_lock(&slow.lock);
	d = slow.done;
	pthread_mutex_unlock(&slow.lock);
	return d;
}

static void *thr_madvise(void *arg)
{
	(void)arg;
	uhmm_madvise(buf, LEN, MADV_DONTNEED);
	return NULL;
}

/* remove waits for a callback running on another thread to return. */
START_TEST(remove_waits_for_running_callback)
{
	pthread_t t;

	__atomic_store_n(&rc->hook, hook_slow, __ATOMIC_RELEASE);
	ck_assert_int_eq(pthread_create(&t, NULL, thr_madvise, NULL), 0);
	slow_wait_entered();
	ck_assert_int_eq(uhmm_interval_notifier_remove(&rc->n), 0);
	ck_assert_int_eq(slow_done(), 1);
	pthread_join(t, NULL);
	ck_assert_int_eq(t_rec_count(rc), 1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_interval_read_begin / read_retry / check_retry / set_seq           */

/* With nothing happening, read_begin is stable and read_retry is false. */
START_TEST(read_begin_stable_when_idle)
{
	unsigned long s1 = uhmm_interval_read_begin(&rc->n);
	unsigned long s2 = uhmm_interval_read_begin(&rc->n);

	ck_assert_uint_eq(s1, s2);
	ck_assert(!uhmm_interval_read_retry(&rc->n, s1));
	ck_assert(!uhmm_interval_check_retry(&rc->n, s1));
}
END_TEST

/* read_begin waits while an invalidation of the notifier is in flight. */
START_TEST(read_begin_waits_for_invalidation_in_flight)
{
	pthread_t t;
	unsigned long seq;

	__atomic_store_n(&rc->hook, hook_slow, __ATOMIC_RELEASE);
	ck_assert_int_eq(pthread_create(&t, NULL, thr_madvise, NULL), 0);
	slow_wait_entered();
	seq = uhmm_interval_read_begin(&rc->n);
	ck_assert_int_eq(slow_done(), 1);
	pthread_join(t, NULL);
	/* the section that began after the invalidation is valid */
	ck_assert(!uhmm_interval_read_retry(&rc->n, seq));
}
END_TEST

/* An invalidation between snapshot and commit makes read_retry true. */
START_TEST(read_retry_detects_invalidation_after_snapshot)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = { .notifier = &rc->n, .start = A(buf),
				.end = A(buf) + LEN, .hmm_pfns = pfns,
				.default_flags = UHMM_PFN_REQ_FAULT };

	r.notifier_seq = uhmm_interval_read_begin(&rc->n);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_int_eq(uhmm_madvise(buf, T_PAGE, MADV_DONTNEED), 0);
	ck_assert(uhmm_interval_check_retry(&rc->n, r.notifier_seq));
	pthread_mutex_lock(&rc->lock);
	ck_assert(uhmm_interval_read_retry(&rc->n, r.notifier_seq));
	pthread_mutex_unlock(&rc->lock);
	/* a fresh section is clean again */
	r.notifier_seq = uhmm_interval_read_begin(&rc->n);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	pthread_mutex_lock(&rc->lock);
	ck_assert(!uhmm_interval_read_retry(&rc->n, r.notifier_seq));
	pthread_mutex_unlock(&rc->lock);
}
END_TEST

/* A second thread invalidating during the snapshot is always caught: either
 * range_fault says -EBUSY or read_retry is true. */
START_TEST(read_retry_detects_racing_thread)
{
	for (int i = 0; i < 50; i++) {
		uint64_t pfns[NPAGES] = { 0 };
		struct uhmm_range r = { .notifier = &rc->n, .start = A(buf),
					.end = A(buf) + LEN, .hmm_pfns = pfns,
					.default_flags = UHMM_PFN_REQ_FAULT };
		pthread_t t;
		bool caught;
		int ret;

		r.notifier_seq = uhmm_interval_read_begin(&rc->n);
		ck_assert_int_eq(pthread_create(&t, NULL, thr_madvise, NULL), 0);
		ret = uhmm_range_fault(&r);
		pthread_join(t, NULL);
		ck_assert(ret == 0 || ret == -EBUSY);
		pthread_mutex_lock(&rc->lock);
		caught = ret == -EBUSY || uhmm_interval_read_retry(&rc->n, r.notifier_seq);
		pthread_mutex_unlock(&rc->lock);
		ck_assert(caught);
	}
}
END_TEST

/* The full protocol converges while another thread keeps invalidating. */
static int stop_churn;

static void *thr_churn(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop_churn, __ATOMIC_ACQUIRE)) {
		uhmm_madvise(buf, T_PAGE, MADV_DONTNEED);
		usleep(200);
	}
	return NULL;
}

START_TEST(read_retry_protocol_converges_under_churn)
{
	pthread_t t;
	int tries = 0;

	__atomic_store_n(&stop_churn, 0, __ATOMIC_RELEASE);
	ck_assert_int_eq(pthread_create(&t, NULL, thr_churn, NULL), 0);
	for (int done = 0; done < 20; tries++) {
		uint64_t pfns[NPAGES] = { 0 };
		struct uhmm_range r = { .notifier = &rc->n, .start = A(buf),
					.end = A(buf) + LEN, .hmm_pfns = pfns,
					.default_flags = UHMM_PFN_REQ_FAULT |
							 UHMM_PFN_REQ_WRITE };
		int ret;

		ck_assert_int_lt(tries, 100000);
		r.notifier_seq = uhmm_interval_read_begin(&rc->n);
		ret = uhmm_range_fault(&r);
		if (ret == -EBUSY)
			continue;
		ck_assert_int_eq(ret, 0);
		pthread_mutex_lock(&rc->lock);
		if (!uhmm_interval_read_retry(&rc->n, r.notifier_seq)) {
			for (int i = 0; i < NPAGES; i++)
				ck_assert(pfns[i] & UHMM_PFN_WRITE);
			done++;
		}
		pthread_mutex_unlock(&rc->lock);
	}
	__atomic_store_n(&stop_churn, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
}
END_TEST

/* set_seq stores the value read_retry/check_retry compare against. */
START_TEST(set_seq_is_what_retry_compares)
{
	unsigned long s = uhmm_interval_read_begin(&rc->n);

	uhmm_interval_set_seq(&rc->n, s + 2);
	ck_assert(uhmm_interval_read_retry(&rc->n, s));
	ck_assert(uhmm_interval_check_retry(&rc->n, s));
	ck_assert(!uhmm_interval_read_retry(&rc->n, s + 2));
	ck_assert(!uhmm_interval_check_retry(&rc->n, s + 2));
	uhmm_interval_set_seq(&rc->n, s);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* invalidation sources                                                     */

/* munmap of managed memory: one UNMAP, clipped to the notifier. */
START_TEST(event_munmap_is_one_unmap_clipped)
{
	struct t_rec *r = t_rec_new();

	t_rec_insert(r, mm, buf + 4 * T_PAGE, 8 * T_PAGE);
	ck_assert_int_eq(munmap(buf, LEN), 0);
	buf = NULL;
	ck_assert_int_eq(t_rec_wait(r, 1), 1);
	ck_log(r, 0, UHMM_EVENT_UNMAP, rc->n.start + 4 * T_PAGE,
	       rc->n.start + 12 * T_PAGE);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_log(rc, 0, UHMM_EVENT_UNMAP, rc->n.start, rc->n.end);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), 0);
	free(r);
}
END_TEST

/* MADV_DONTNEED of managed memory: one CLEAR for the range. */
START_TEST(event_madv_dontneed_is_one_clear)
{
	t_fill_pattern(buf, LEN, 1);
	ck_assert_int_eq(madvise(buf + T_PAGE, 2 * T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_log(rc, 0, UHMM_EVENT_CLEAR, A(buf) + T_PAGE, A(buf) + 3 * T_PAGE);
}
END_TEST

/* mremap moving managed memory: REMAP (with the destination), then UNMAP of
 * the old range. */
START_TEST(event_mremap_is_remap_then_unmap)
{
	char *dst = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *q;

	ck_assert_ptr_ne(dst, MAP_FAILED);
	buf[0] = 7;
	q = mremap(buf, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(q, dst);
	ck_assert_int_eq(t_rec_wait(rc, 2), 2);
	ck_log(rc, 0, UHMM_EVENT_REMAP, A(buf), A(buf) + LEN);
	ck_assert_uint_eq(rc->log[0].new_start, A(dst));
	ck_log(rc, 1, UHMM_EVENT_UNMAP, A(buf), A(buf) + LEN);
	ck_assert_int_eq(q[0], 7);
	ck_assert_int_eq(q[T_PAGE], 0);
	buf = q;
}
END_TEST

/* fork: one PROTECTION over the managed part of the notifier (parent pages
 * became copy-on-write). */
START_TEST(event_fork_is_protection)
{
	struct t_rec *r = t_rec_new();
	pid_t pid;
	int st;

	t_rec_insert(r, mm, buf - 4 * T_PAGE, 8 * T_PAGE);
	buf[0] = 1;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(buf[0] == 1 ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_log(rc, 0, UHMM_EVENT_PROTECTION, A(buf), A(buf) + LEN);
	ck_assert_int_eq(t_rec_wait(r, 1), 1);
	ck_log(r, 0, UHMM_EVENT_PROTECTION, A(buf), A(buf) + 4 * T_PAGE);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), 0);
	free(r);
}
END_TEST

/* Is the page at @p writable right now, per /proc/self/maps? */
static int maps_writable(const void *p)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int w = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char perms[8];

		if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3 &&
		    s <= (uintptr_t)p && (uintptr_t)p < e) {
			w = perms[1] == 'w';
			break;
		}
	}
	fclose(f);
	return w;
}

static void hook_check_writable(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	__atomic_store_n(&r->hook_ret, maps_writable((void *)(uintptr_t)range->start), __ATOMIC_RELEASE);
}

/* uhmm_mprotect: one PROTECTION, delivered before the protection changes. */
START_TEST(event_uhmm_mprotect_is_protection_before_change)
{
	__atomic_store_n(&rc->hook, hook_check_writable, __ATOMIC_RELEASE);
	ck_assert_int_eq(uhmm_mprotect(buf + T_PAGE, T_PAGE, PROT_READ), 0);
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_log(rc, 0, UHMM_EVENT_PROTECTION, A(buf) + T_PAGE, A(buf) + 2 * T_PAGE);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), 1);
	ck_assert_int_eq(maps_writable(buf + T_PAGE), 0);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
}
END_TEST

static void hook_check_data(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	unsigned char vec;
	const char *p = (const char *)(uintptr_t)range->start;

	__atomic_store_n(&r->hook_ret, mincore((void *)p, T_PAGE, &vec) == 0 && p[5] == 42, __ATOMIC_RELEASE);
}

/* uhmm_munmap: exactly one UNMAP (the uffd event is suppressed), before the
 * memory goes away. */
START_TEST(event_uhmm_munmap_is_one_unmap_before_change)
{
	buf[5] = 42;
	__atomic_store_n(&rc->hook, hook_check_data, __ATOMIC_RELEASE);
	ck_assert_int_eq(uhmm_munmap(buf, LEN), 0);
	buf = NULL;
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), 1);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_log(rc, 0, UHMM_EVENT_UNMAP, rc->n.start, rc->n.end);
}
END_TEST

/* uhmm_madvise(DONTNEED): exactly one CLEAR, before the pages are dropped. */
START_TEST(event_uhmm_madvise_is_one_clear_before_change)
{
	buf[5] = 42;
	__atomic_store_n(&rc->hook, hook_check_data, __ATOMIC_RELEASE);
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), 1);
	ck_assert_int_eq(buf[5], 0);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_log(rc, 0, UHMM_EVENT_CLEAR, A(buf), A(buf) + LEN);
}
END_TEST

/* uhmm_mremap: exactly one callback for the old range, before the move. */
START_TEST(event_uhmm_mremap_is_one_callback_before_change)
{
	void *q;

	buf[5] = 42;
	__atomic_store_n(&rc->hook, hook_check_data, __ATOMIC_RELEASE);
	ck_assert_int_eq(uhmm_mremap(buf, LEN, 2 * LEN, MREMAP_MAYMOVE, NULL, &q), 0);
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_assert_int_eq(__atomic_load_n(&rc->hook_ret, __ATOMIC_ACQUIRE), 1);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	ck_assert_uint_eq(rc->log[0].start, A(buf));
	ck_assert_uint_eq(rc->log[0].end, A(buf) + LEN);
	ck_assert_int_eq(((char *)q)[5], 42);
	if (q != buf) {
		munmap(q, 2 * LEN);
		buf = NULL;
	} else {
		munmap(buf + LEN, LEN);
	}
}
END_TEST

/* Non-dropping advice passes through without a callback. */
START_TEST(event_uhmm_madvise_willneed_is_silent)
{
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_WILLNEED), 0);
	ck_assert_int_eq(t_rec_wait(rc, 0), 0);
}
END_TEST

/* uhmm_mm_close: one RELEASE per notifier, clipped to the notifier. */
START_TEST(event_close_is_release)
{
	struct t_rec *r = t_rec_new();

	t_rec_insert(r, mm, (void *)0x10000, 3 * T_PAGE);
	uhmm_mm_close(mm);
	mm = NULL;
	ck_assert_int_eq(t_rec_count(rc), 1);
	ck_log(rc, 0, UHMM_EVENT_RELEASE, A(buf), A(buf) + LEN);
	ck_assert_int_eq(t_rec_count(r), 1);
	ck_log(r, 0, UHMM_EVENT_RELEASE, 0x10000, 0x10000 + 3 * T_PAGE);
	/* the notifiers are gone with the mm */
	ck_assert_int_eq(uhmm_interval_notifier_remove(&rc->n), -EINVAL);
	rc->n.mm = NULL;
	free(r);
}
END_TEST

static void *thr_munmap(void *arg)
{
	(void)arg;
	munmap(buf, LEN);
	return NULL;
}

/* close while a callback is running on the handler thread: the callback
 * finishes, RELEASE is delivered, close returns. */
START_TEST(event_close_with_callback_in_flight)
{
	pthread_t t;

	__atomic_store_n(&rc->hook, hook_slow, __ATOMIC_RELEASE);
	__atomic_store_n(&slow.delay_us, 300000, __ATOMIC_RELAXED);
	ck_assert_int_eq(pthread_create(&t, NULL, thr_munmap, NULL), 0);
	slow_wait_entered();
	uhmm_mm_close(mm);
	mm = NULL;
	ck_assert_int_eq(slow_done(), 2);	/* UNMAP and RELEASE both ran */
	pthread_join(t, NULL);
	buf = NULL;
	ck_assert_int_eq(t_rec_count(rc), 2);
	ck_assert_int_eq(rc->log[0].ev == UHMM_EVENT_UNMAP ||
			 rc->log[1].ev == UHMM_EVENT_UNMAP, 1);
	ck_assert_int_eq(rc->log[0].ev == UHMM_EVENT_RELEASE ||
			 rc->log[1].ev == UHMM_EVENT_RELEASE, 1);
	rc->n.mm = NULL;
}
END_TEST

/* A notifier that does not overlap the change hears nothing. */
START_TEST(event_disjoint_notifier_is_silent)
{
	struct t_rec *r = t_rec_new();

	t_rec_insert(r, mm, buf + LEN, LEN);
	ck_assert_int_eq(uhmm_madvise(buf, LEN, MADV_DONTNEED), 0);
	ck_assert_int_eq(munmap(buf, LEN), 0);
	buf = NULL;
	ck_assert_int_eq(t_rec_wait(rc, 2), 2);
	ck_assert_int_eq(t_rec_count(r), 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&r->n), 0);
	free(r);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_range_fault                                                        */

static struct uhmm_range mk_range(struct t_rec *r, const void *p, size_t npages,
				  uint64_t *pfns, uint64_t def, uint64_t mask)
{
	struct uhmm_range range = {
		.notifier = &r->n,
		.start = A(p),
		.end = A(p) + npages * T_PAGE,
		.hmm_pfns = pfns,
		.default_flags = def,
		.pfn_flags_mask = mask,
	};

	range.notifier_seq = uhmm_interval_read_begin(&r->n);
	return range;
}

#define FLAGS(e) ((e) & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ERROR | \
			 UHMM_PFN_ZERO | UHMM_PFN_DEVICE))

/* Snapshot of never-touched memory: every entry 0, nothing faulted in. */
START_TEST(range_fault_missing_without_req_fault_is_zero)
{
	uint64_t pfns[NPAGES];
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, 0, 0);

	memset(pfns, 0xff, sizeof(pfns));	/* input ignored: mask 0 */
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pfns[i], 0);
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 0);
}
END_TEST

/* default REQ_FAULT: every page ends VALID (read: the zero page, not WRITE). */
START_TEST(range_fault_default_req_fault_makes_valid)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT, 0);

	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++) {
		ck_assert(pfns[i] & UHMM_PFN_VALID);
		ck_assert(!(pfns[i] & (UHMM_PFN_ERROR | UHMM_PFN_WRITE)));
		ck_assert(pfns[i] & UHMM_PFN_ZERO);
		ck_assert_uint_eq(uhmm_pfn_to_map_order(pfns[i]), 0);
	}
	ck_assert_int_eq(buf[0], 0);
}
END_TEST

/* default REQ_FAULT|REQ_WRITE: VALID|WRITE with a real frame, not ZERO. */
START_TEST(range_fault_default_req_write_makes_writable)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns,
				       UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);

	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++) {
		ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
		if (frames_on && geteuid() == 0)
			ck_assert_uint_ne(uhmm_pfn_frame(pfns[i]), 0);
		if (!frames_on)
			ck_assert_uint_eq(uhmm_pfn_frame(pfns[i]), 0);
	}
	ck_assert_uint_eq(t_resident_pages(buf, LEN), NPAGES);
	ck_assert_int_eq(buf[100], 0);
}
END_TEST

/* Without UHMM_MM_FRAMES the frame of a system page is 0 (use the address). */
START_TEST(range_fault_no_frames_by_default)
{
	struct uhmm_mm *m;
	struct t_rec *n = t_rec_new();
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;
	struct uhmm_mm *saved = mm;

	ck_assert_int_eq(uhmm_mm_open(&m, NULL), 0);
	memset(buf, 1, LEN);
	mm = m;
	t_rec_insert(n, mm, buf, LEN);
	r = mk_range(n, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pfns[i], UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&n->n), 0);
	mm = saved;
	uhmm_mm_close(m);
	free(n);
}
END_TEST

/* Per-page REQ bits under pfn_flags_mask: only the requested pages fault, and
 * only the REQ_WRITE one is writable. */
START_TEST(range_fault_per_page_flags_with_mask)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, 0,
				       UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE);

	pfns[3] = UHMM_PFN_REQ_FAULT;
	pfns[5] = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	pfns[7] = UHMM_PFN_REQ_WRITE;	/* write without fault: no fault */
	pfns[9] = 0x1234;		/* not a request bit: ignored */
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++) {
		if (i == 3)
			ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_ZERO);
		else if (i == 5)
			ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
		else
			ck_assert_uint_eq(pfns[i], 0);
	}
	/* mincore counts the zero page mapped at 3 as resident */
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 2);
}
END_TEST

/* pfn_flags_mask 0: per-page bits are ignored; default_flags alone decides. */
START_TEST(range_fault_mask_zero_ignores_per_page)
{
	uint64_t pfns[NPAGES];
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, 0, 0);

	for (int i = 0; i < NPAGES; i++)
		pfns[i] = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pfns[i], 0);
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 0);
}
END_TEST

/* The kernel's "readable everywhere, writable at k": default REQ_FAULT, mask
 * REQ_WRITE, pfns[k] = REQ_WRITE. */
START_TEST(range_fault_default_fault_mask_write_at_k)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT,
				       UHMM_PFN_REQ_WRITE);

	pfns[6] = UHMM_PFN_REQ_WRITE;
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++) {
		ck_assert(pfns[i] & UHMM_PFN_VALID);
		ck_assert_int_eq(!!(pfns[i] & UHMM_PFN_WRITE), i == 6);
	}
}
END_TEST

/* Present written pages report VALID|WRITE without any request. */
START_TEST(range_fault_snapshot_of_written_pages)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	buf[2 * T_PAGE] = 1;
	(void)*(volatile char *)(buf + 4 * T_PAGE);
	r = mk_range(rc, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++) {
		if (i == 2)
			ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
		else if (i == 4)
			ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_ZERO);
		else
			ck_assert_uint_eq(pfns[i], 0);
	}
}
END_TEST

/* A read-filled managed page is the shared zero page: VALID|ZERO, not WRITE,
 * all such pages share one frame; a write request replaces it. */
START_TEST(range_fault_zero_page_flagged)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	(void)*(volatile char *)buf;
	(void)*(volatile char *)(buf + T_PAGE);
	r = mk_range(rc, buf, 2, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(FLAGS(pfns[0]), UHMM_PFN_VALID | UHMM_PFN_ZERO);
	ck_assert_uint_eq(uhmm_pfn_frame(pfns[0]), uhmm_pfn_frame(pfns[1]));
	r = mk_range(rc, buf, 1, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(FLAGS(pfns[0]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ck_assert_int_eq(buf[0], 0);
}
END_TEST

/* Read-only mapping: REQ_WRITE is -EPERM and faults nothing; a read request
 * gives VALID without WRITE. */
START_TEST(range_fault_write_on_readonly_is_eperm)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	ck_assert_int_eq(mprotect(buf, LEN, PROT_READ), 0);
	r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), -EPERM);
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 0);
	memset(pfns, 0, sizeof(pfns));
	r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(FLAGS(pfns[i]) & ~UHMM_PFN_ZERO, UHMM_PFN_VALID);
}
END_TEST

/* Written pages that became read-only report VALID without WRITE. */
START_TEST(range_fault_readonly_present_not_writable)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	memset(buf, 1, LEN);
	ck_assert_int_eq(uhmm_mprotect(buf, LEN, PROT_READ), 0);
	r = mk_range(rc, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID);
}
END_TEST

/* PROT_NONE: snapshot gives ERROR entries; REQ_FAULT is -EFAULT. */
START_TEST(range_fault_prot_none)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	buf[0] = 1;
	ck_assert_int_eq(mprotect(buf + 4 * T_PAGE, 4 * T_PAGE, PROT_NONE), 0);
	r = mk_range(rc, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(pfns[i] == UHMM_PFN_ERROR, i >= 4 && i < 8);
	ck_assert(pfns[0] & UHMM_PFN_VALID);
	r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), -EFAULT);
	/* requesting only around the hole works */
	memset(pfns, 0, sizeof(pfns));
	pfns[9] = UHMM_PFN_REQ_FAULT;
	r = mk_range(rc, buf, NPAGES, pfns, 0, UHMM_PFN_REQ_FAULT);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(pfns[5], UHMM_PFN_ERROR);
	ck_assert(pfns[9] & UHMM_PFN_VALID);
}
END_TEST

/* An unmapped hole: ERROR entries in a snapshot; -EFAULT with REQ_FAULT. */
START_TEST(range_fault_unmapped_hole)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r;

	buf[0] = 1;
	ck_assert_int_eq(munmap(buf + 2 * T_PAGE, 2 * T_PAGE), 0);
	ck_assert_int_eq(t_rec_wait(rc, 1), 1);
	r = mk_range(rc, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(pfns[i] == UHMM_PFN_ERROR, i == 2 || i == 3);
	r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), -EFAULT);
	/* past the end of every mapping as well */
	ck_assert_int_eq(munmap(buf + 4 * T_PAGE, LEN - 4 * T_PAGE), 0);
	r = mk_range(rc, buf, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(pfns[NPAGES - 1], UHMM_PFN_ERROR);
}
END_TEST

/* THP: a populated 2 MiB huge page reports order 9 and contiguous frames. */
START_TEST(range_fault_thp_order_9)
{
	size_t hl = 2UL << 20;
	char *raw = t_map_anon(2 * hl);
	char *p = (char *)(((uintptr_t)raw + hl - 1) & ~(hl - 1));
	uint64_t *pfns = calloc(512, sizeof(*pfns));
	struct t_rec *n = t_rec_new();
	struct uhmm_range r;

	if (madvise(p, hl, MADV_HUGEPAGE) ||
	    madvise(p, hl, MADV_POPULATE_WRITE)) {
		t_skip("MADV_HUGEPAGE/POPULATE_WRITE: %s", strerror(errno));
		return;
	}
	t_rec_insert(n, mm, p, hl);
	r = mk_range(n, p, 512, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	if (uhmm_pfn_to_map_order(pfns[0]) != 9) {
		t_skip("no THP backing the range (THP disabled or no huge page free)");
		return;
	}
	for (int i = 0; i < 512; i++) {
		ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ck_assert_uint_eq(uhmm_pfn_to_map_order(pfns[i]), 9);
		if (frames_on && geteuid() == 0)
			ck_assert_uint_eq(uhmm_pfn_frame(pfns[i]),
					  uhmm_pfn_frame(pfns[0]) + (uint64_t)i);
	}
	/* a sub-range still reports the huge order */
	r = mk_range(n, p + 100 * T_PAGE, 4, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(uhmm_pfn_to_map_order(pfns[3]), 9);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&n->n), 0);
	free(n);
	free(pfns);
	munmap(raw, 2 * hl);
}
END_TEST

/* Managed hugetlbfs memory: REQ_FAULT|REQ_WRITE gives order 9 entries. */
START_TEST(range_fault_hugetlb_order_9)
{
	size_t hl = 2UL << 20;
	uint64_t *pfns = calloc(512, sizeof(*pfns));
	struct t_rec *n = t_rec_new();
	struct uhmm_range r;
	const char *why;
	char *p = t_hugetlb_map(hl, &why);

	if (!p) {
		t_skip("%s", why);
		return;
	}
	ck_assert_int_eq(uhmm_mm_manage(mm, p, hl), 0);
	t_rec_insert(n, mm, p, hl);
	r = mk_range(n, p, 512, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(pfns[0], 0);
	r = mk_range(n, p, 512, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < 512; i++) {
		ck_assert_uint_eq(FLAGS(pfns[i]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ck_assert_uint_eq(uhmm_pfn_to_map_order(pfns[i]), 9);
	}
	ck_assert_int_eq(p[12345], 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&n->n), 0);
	t_hugetlb_unmap(p, hl);
	free(n);
	free(pfns);
}
END_TEST

/* After mremap the new range snapshots with the moved data's pages. */
START_TEST(range_fault_after_mremap)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct t_rec *n = t_rec_new();
	struct uhmm_range r;
	char *dst = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *q;

	ck_assert_ptr_ne(dst, MAP_FAILED);
	buf[3 * T_PAGE] = 3;
	ck_assert_int_eq(uhmm_mremap(buf, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED,
				     dst, &q), 0);
	ck_assert_ptr_eq(q, dst);
	buf = q;
	t_rec_insert(n, mm, q, LEN);
	r = mk_range(n, q, NPAGES, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(FLAGS(pfns[i]),
				  i == 3 ? UHMM_PFN_VALID | UHMM_PFN_WRITE : 0);
	/* the moved range is still managed: faulting reads zero */
	r = mk_range(n, q, NPAGES, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_int_eq(((char *)q)[3 * T_PAGE], 3);
	ck_assert_int_eq(((char *)q)[5 * T_PAGE], 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&n->n), 0);
	free(n);
}
END_TEST

/* A sequence that moved before the call is -EBUSY and faults nothing. */
START_TEST(range_fault_stale_seq_is_ebusy)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, UHMM_PFN_REQ_FAULT, 0);

	ck_assert_int_eq(uhmm_madvise(buf, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(uhmm_range_fault(&r), -EBUSY);
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 0);
}
END_TEST

/* Bad ranges, flags or notifier: -EINVAL. */
START_TEST(range_fault_bad_args_are_einval)
{
	uint64_t pfns[NPAGES] = { 0 };
	struct uhmm_range r = mk_range(rc, buf, NPAGES, pfns, 0, 0), b;
	struct t_rec *n = t_rec_new();

	ck_assert_int_eq(uhmm_range_fault(NULL), -EINVAL);
	b = r, b.notifier = NULL;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.notifier = &n->n;	/* never inserted */
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.hmm_pfns = NULL;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.end = b.start;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.end = b.start - T_PAGE;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.start += 1;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.end -= 1;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.end += T_PAGE;		/* beyond the notifier */
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.start -= T_PAGE;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.default_flags = UHMM_PFN_ERROR;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	b = r, b.pfn_flags_mask = 1;
	ck_assert_int_eq(uhmm_range_fault(&b), -EINVAL);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	free(n);
}
END_TEST

/* A sub-range of the notifier is fine, and only its entries are written. */
START_TEST(range_fault_subrange)
{
	uint64_t pfns[NPAGES + 1];
	struct uhmm_range r = mk_range(rc, buf + 4 * T_PAGE, 4, pfns,
				       UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0);

	pfns[4] = 0xdead;
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (int i = 0; i < 4; i++)
		ck_assert(pfns[i] & UHMM_PFN_WRITE);
	ck_assert_uint_eq(pfns[4], 0xdead);
	ck_assert_uint_eq(t_resident_pages(buf, LEN), 4);
}
END_TEST

/* A range larger than one internal walk chunk (4096 pages) with a fault in the
 * second chunk reports every page correctly. */
START_TEST(range_fault_spans_walk_chunks)
{
	size_t np = 10000, len = np * T_PAGE;
	char *p = t_map_anon(len);
	uint64_t *pfns = calloc(np, sizeof(*pfns));
	struct t_rec *n = t_rec_new();
	struct uhmm_range r;

	ck_assert_int_eq(uhmm_mm_manage(mm, p, len), 0);
	for (size_t i = 0; i < np; i += 3)
		p[i * T_PAGE] = 1;
	t_rec_insert(n, mm, p, len);
	r = mk_range(n, p, np, pfns, 0, 0);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	for (size_t i = 0; i < np; i++)
		ck_assert_uint_eq(FLAGS(pfns[i]), i % 3 ? 0 : UHMM_PFN_VALID | UHMM_PFN_WRITE);
	memset(pfns, 0, np * sizeof(*pfns));
	pfns[5000] = pfns[9998] = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	r = mk_range(n, p, np, pfns, 0, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE);
	ck_assert_int_eq(uhmm_range_fault(&r), 0);
	ck_assert_uint_eq(FLAGS(pfns[5000]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ck_assert_uint_eq(FLAGS(pfns[9998]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ck_assert_uint_eq(pfns[5002], 0);
	ck_assert_uint_eq(pfns[9997], 0);
	ck_assert_uint_eq(FLAGS(pfns[4998]), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&n->n), 0);
	munmap(p, len);
	free(pfns);
	free(n);
}
END_TEST

int main(void)
{
	/* the same tests with and without physical frames */
	const TTest *const range_fault[] = {
		range_fault_missing_without_req_fault_is_zero,
		range_fault_default_req_fault_makes_valid,
		range_fault_default_req_write_makes_writable, range_fault_no_frames_by_default,
		range_fault_per_page_flags_with_mask, range_fault_mask_zero_ignores_per_page,
		range_fault_default_fault_mask_write_at_k, range_fault_snapshot_of_written_pages,
		range_fault_zero_page_flagged, range_fault_write_on_readonly_is_eperm,
		range_fault_readonly_present_not_writable, range_fault_prot_none,
		range_fault_unmapped_hole, range_fault_thp_order_9, range_fault_hugetlb_order_9,
		range_fault_after_mremap, range_fault_stale_seq_is_ebusy,
		range_fault_bad_args_are_einval, range_fault_subrange,
		range_fault_spans_walk_chunks, NULL
	};
	TCase *ins = T_TCASE("interval_notifier_insert", setup, teardown,
			     insert_then_invalidation_reaches_callback, insert_bad_args,
			     insert_twice_is_einval, insert_unmanaged_range_ok,
			     insert_from_callback_is_edeadlk,
			     insert_10000_notifiers_hits_only_overlapping);
	TCase *rem = T_TCASE("interval_notifier_remove", setup, teardown, remove_stops_callbacks,
			     remove_bad_args, remove_from_callback_is_edeadlk,
			     remove_waits_for_running_callback);
	TCase *rb = T_TCASE("interval_read_begin", setup, teardown, read_begin_stable_when_idle,
			    read_begin_waits_for_invalidation_in_flight);
	TCase *rr = T_TCASE("interval_read_retry", setup, teardown,
			    read_retry_detects_invalidation_after_snapshot,
			    read_retry_detects_racing_thread,
			    read_retry_protocol_converges_under_churn);
	TCase *ss = T_TCASE("interval_set_seq", setup, teardown, set_seq_is_what_retry_compares);
	TCase *ev = T_TCASE("invalidation_sources", setup, teardown,
			    event_munmap_is_one_unmap_clipped, event_madv_dontneed_is_one_clear,
			    event_mremap_is_remap_then_unmap, event_fork_is_protection,
			    event_uhmm_mprotect_is_protection_before_change,
			    event_uhmm_munmap_is_one_unmap_before_change,
			    event_uhmm_madvise_is_one_clear_before_change,
			    event_uhmm_mremap_is_one_callback_before_change,
			    event_uhmm_madvise_willneed_is_silent, event_close_is_release,
			    event_close_with_callback_in_flight, event_disjoint_notifier_is_silent);
	TCase *rf = t_tcase("range_fault", setup_fa1, teardown, range_fault);
	TCase *rff = t_tcase("range_fault_frames", setup_fa1_frames, teardown, range_fault);

	return t_run_suite("mirror", ins, rem, rb, rr, ss, ev, rf, rff, NULL);
}
