// SPDX-License-Identifier: MIT
/*
 * Regression tests for races the stress driver found, each forced into its
 * bad order deterministically:
 *  - a migration that lets go of a page shared with a fork child (-EBUSY)
 *    must not clear the CPU entry if another migration took the page
 *    meanwhile (the device page's reference and data were lost, and the
 *    sim's teardown then waited for that reference forever);
 *  - fork() while the handler thread runs a callback that allocates: glibc's
 *    fork holds the malloc arena locks while the kernel waits for a handler
 *    to read the FORK event (a deadlock before the handlers parked for forks);
 *  - a page present where a plain MADV_DONTNEED's zap may still come is not
 *    taken by a migration (it carried the dropped data to the device), nor
 *    taken again after its sharing with a fork child was broken;
 *  - a device read after a plain MADV_DONTNEED returned sees the pages
 *    dropped, though the handler may not have applied the REMOVE yet;
 *  - a page whose entry a REMOVE cleared between a migration's setup taking
 *    it and moving it, and which the CPU wrote again meanwhile, is not moved
 *    away (its new data was lost).
 * The program interposes madvise() to stop migration A at a chosen point,
 * and read() to hold the handler between reading a REMOVE and applying it;
 * the interposers are inert unless a test arms them.
 */
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uhmm.h>
#include "t_util.h"

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static uint8_t *mem;

/* 0: inert; 1: armed; 2: A stopped after its populate; 3: B done */
static atomic_int phase;

int madvise(void *addr, size_t len, int advice)
{
	long r = syscall(SYS_madvise, addr, len, advice);
	int armed = 1;

	if (advice == MADV_POPULATE_WRITE && (uint8_t *)addr == mem &&
	    atomic_compare_exchange_strong(&phase, &armed, 2))
		while (atomic_load(&phase) != 3)
			usleep(1000);
	return (int)r;
}

/* armed: the handler sleeps 50 ms after it read a REMOVE, before applying it */
static atomic_int hold_remove;

ssize_t read(int fd, void *buf, size_t n)
{
	long r = syscall(SYS_read, fd, buf, n);

	if (r > 0 && r % (long)sizeof(struct uffd_msg) == 0 && atomic_load(&hold_remove)) {
		const struct uffd_msg *m = buf;

		for (long k = 0; k < r / (long)sizeof(*m); k++)
			if (m[k].event == UFFD_EVENT_REMOVE && atomic_exchange(&hold_remove, 0))
				usleep(50000);
	}
	return (ssize_t)r;
}

static void *migrate_b(void *arg)
{
	int *ret = arg;

	while (atomic_load(&phase) != 2)
		usleep(1000);
	*ret = uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, 1);
	atomic_store(&phase, 3);
	return NULL;
}

static struct uhmm_interval_notifier watch;
static atomic_int seen[32];		/* invalidations seen, per event */

static bool count_cb(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
		     unsigned long seq)
{
	uhmm_interval_set_seq(s, seq);
	if ((unsigned int)r->event < 32)
		atomic_fetch_add(&seen[r->event], 1);
	return true;
}

static const struct uhmm_interval_notifier_ops count_ops = { .invalidate = count_cb };

/* Wait until an invalidation of kind @ev has reached @w and is over. */
static void wait_invalidation(struct uhmm_interval_notifier *w, enum uhmm_event ev)
{
	while (!atomic_load(&seen[ev]))
		usleep(100);
	(void)uhmm_interval_read_begin(w);
}

static uint64_t env_pages;

/* An mm with @npages of managed memory at mem and a sim (64 pages) on it. */
static void env_open(uint64_t npages)
{
	UHMM_OPTS(sim_opts, o, .capacity_pages = 64);

	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	ck_assert_int_eq(uhmm_mm_alloc(mm, npages * T_PAGE, 0, (void **)&mem), 0);
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &sim), 0);
	env_pages = npages;
}

/* A child that only waits: every page of the parent is now shared with it,
 * so moving one fails -EBUSY until the sharing is broken. */
static pid_t fork_waiting_child(void)
{
	pid_t child;

	fflush(NULL);
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		pause();
		_exit(0);
	}
	return child;
}

/*
 * Phase 1: @fn races migration A of the first @n pages of mem to the
 * device; join it and end @child. Return: A's result.
 */
static int race_migration(void *(*fn)(void *), void *arg, uint64_t n, pid_t child)
{
	pthread_t th;
	int ret;

	atomic_store(&phase, 1);
	ck_assert_int_eq(pthread_create(&th, NULL, fn, arg), 0);
	ret = uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, n);
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return ret;
}

static void env_close(void)
{
	uhmm_sim_destroy(sim);
	ck_assert_int_eq(uhmm_mm_free(mm, mem, env_pages * T_PAGE), 0);
	uhmm_mm_close(mm);
}

/*
 * A migrates 4 pages shared with a fork child; it lets go of page 0 to break
 * the sharing, and B takes page 0 to the device then. A must leave B's entry
 * alone: page 0 keeps its data and the sim's teardown returns.
 */
START_TEST(unshare_retry_leaves_another_migrations_page_alone)
{
	struct uhmm_sim_counters c;
	pid_t child;
	int ret_b = -1, ret_a;

	env_open(4);
	memset(mem, 0x5a, 4 * T_PAGE);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&watch, mm, (uintptr_t)mem, 4 * T_PAGE,
						       &count_ops), 0);
	child = fork_waiting_child();	/* every page shared: moves fail -EBUSY */
	/*
	 * Let the handler finish the fork's PROTECTION invalidation first: were
	 * it still open when A starts, B's read_begin would wait for it while A
	 * waits for B (an order only this test imposes).
	 */
	wait_invalidation(&watch, UHMM_EVENT_PROTECTION);
	uhmm_interval_notifier_remove(&watch);
	ret_a = race_migration(migrate_b, &ret_b, 4, child);
	ck_assert_int_eq(atomic_load(&phase), 3);	/* the race was forced */
	ck_assert_int_eq(ret_b, 1);
	ck_assert_int_ge(ret_a, 0);
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.dev_pages, (uint64_t)ret_a + 1);	/* no page lost */
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(mem[i * T_PAGE], 0x5a);
	env_close();		/* hung here (test timeout) before the fix */
}
END_TEST

static struct uhmm_interval_notifier sub;
static atomic_int in_cb;

/* Runs on the handler thread for the raw madvise's REMOVE: sleeps while the
 * test forks, then allocates (needs an arena lock fork() would hold). */
static bool alloc_cb(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
		     unsigned long seq)
{
	uhmm_interval_set_seq(s, seq);
	if (r->event == UHMM_EVENT_CLEAR) {
		char *volatile p;

		atomic_store(&in_cb, 1);
		usleep(50000);
		p = malloc(64 << 10);
		if (p)
			memset(p, 1, 64 << 10);
		free(p);
		atomic_store(&in_cb, 0);
	}
	return true;
}

static const struct uhmm_interval_notifier_ops alloc_ops = { .invalidate = alloc_cb };

/* fork() while the handler is in a callback that allocates: no deadlock, and
 * the callback ran to the end before the fork went on. */
START_TEST(fork_while_handler_callback_allocates)
{
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	ck_assert_int_eq(uhmm_mm_alloc(mm, 64 * T_PAGE, 0, (void **)&mem), 0);
	memset(mem, 7, 64 * T_PAGE);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&sub, mm, (uintptr_t)mem,
						       64 * T_PAGE, &alloc_ops), 0);
	for (int it = 0; it < 3; it++) {
		int st;
		pid_t pid;

		ck_assert_int_eq(madvise(mem + it * T_PAGE, T_PAGE, MADV_DONTNEED), 0);
		while (!atomic_load(&in_cb))
			usleep(100);
		fflush(NULL);
		pid = fork();	/* deadlocked here (test timeout) before the fix */
		ck_assert_int_ge(pid, 0);
		if (pid == 0)
			_exit(mem[63 * T_PAGE] == 7 ? 0 : 1);
		ck_assert_int_eq(atomic_load(&in_cb), 0);	/* the fork waited for it */
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	uhmm_interval_notifier_remove(&sub);
	ck_assert_int_eq(uhmm_mm_free(mm, mem, 64 * T_PAGE), 0);
	uhmm_mm_close(mm);
}
END_TEST

/*
 * A plain MADV_DONTNEED's zap runs after its REMOVE event is read, at a
 * moment user space cannot see; a page present in the range meanwhile may
 * be about to lose its data, so migrations leave it alone until it is absent
 * or the record expires (2 s). Here the page is written again right after
 * the DONTNEED: it stays in RAM with its new data, then migrates.
 */
START_TEST(raw_dontneed_page_is_not_taken_before_its_zap)
{
	env_open(4);
	memset(mem, 0x11, 4 * T_PAGE);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&watch, mm, (uintptr_t)mem, 4 * T_PAGE,
						       &count_ops), 0);
	ck_assert_int_eq(madvise(mem, T_PAGE, MADV_DONTNEED), 0);
	wait_invalidation(&watch, UHMM_EVENT_CLEAR);	/* the handler has noted it */
	uhmm_interval_notifier_remove(&watch);
	ck_assert_uint_eq(mem[1], 0);		/* zapped */
	memset(mem, 0x22, T_PAGE);		/* present again, new data */
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, 4), 3);
	ck_assert_uint_eq(mem[0], 0x22);
	usleep(2100 * 1000);			/* the record expires */
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, 1), 1);
	ck_assert_uint_eq(mem[T_PAGE - 1], 0x22);	/* fault-back */
	ck_assert_uint_eq(mem[T_PAGE], 0x11);
	env_close();
}
END_TEST

/* D: while A is stopped, a plain DONTNEED of page 0, then page 0 written again */
static void *dontneed_d(void *arg)
{
	int *ret = arg;

	while (atomic_load(&phase) != 2)
		usleep(1000);
	*ret = madvise(mem, T_PAGE, MADV_DONTNEED);
	/* the handler has noted it (no read_begin: A's invalidation is open) */
	while (!atomic_load(&seen[UHMM_EVENT_CLEAR]))
		usleep(100);
	memset(mem, 0x44, T_PAGE);
	atomic_store(&phase, 3);
	return NULL;
}

/*
 * The zap window again, on the path that takes a page a second time: A's
 * move of page 0 fails -EBUSY (shared with a fork child), A lets go of it to
 * break the sharing, and meanwhile a plain DONTNEED of page 0 is read and
 * applied. When A takes the page again, the zap may still be to come (user
 * space cannot tell; here it is over and the page written again, the state
 * A sees either way): A must leave the page in RAM, as setup does. Before
 * the fix A moved it, and when the zap came after the move, the dropped
 * data went to the device and came back later (the stress driver's fork
 * child holding a page's pre-DONTNEED version).
 */
START_TEST(unshare_retry_does_not_retake_a_page_a_raw_dontneed_may_zap)
{
	struct uhmm_sim_counters c;
	pid_t child;
	int ret_d = -1, ret_a;

	env_open(1);
	memset(mem, 0x33, T_PAGE);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&watch, mm, (uintptr_t)mem, T_PAGE,
						       &count_ops), 0);
	child = fork_waiting_child();	/* page 0 shared: its move fails -EBUSY */
	wait_invalidation(&watch, UHMM_EVENT_PROTECTION);	/* see the first test */
	ret_a = race_migration(dontneed_d, &ret_d, 1, child);
	uhmm_interval_notifier_remove(&watch);
	ck_assert_int_eq(atomic_load(&phase), 3);	/* the race was forced */
	ck_assert_int_eq(ret_d, 0);
	ck_assert_int_eq(ret_a, 0);		/* was 1: taken to the device */
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.dev_pages, 0);
	ck_assert_uint_eq(mem[0], 0x44);
	ck_assert_uint_eq(mem[T_PAGE - 1], 0x44);
	env_close();
}
END_TEST

/*
 * madvise(MADV_DONTNEED) returns once the handler has read the REMOVE; here
 * the handler then waits 50 ms before applying it. A device read right
 * after the call must not return the page's old data from device memory
 * (it did before read_begin waited for read REMOVEs to be applied).
 */
START_TEST(device_read_after_raw_dontneed_sees_zeros)
{
	uint8_t buf[T_PAGE];

	env_open(4);
	memset(mem, 0x66, 4 * T_PAGE);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, 1), 1);
	ck_assert_int_eq(uhmm_sim_read(sim, (uintptr_t)mem, 1, buf), 0);
	ck_assert_uint_eq(buf[0], 0x66);	/* from device memory */
	atomic_store(&hold_remove, 1);
	ck_assert_int_eq(madvise(mem, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, (uintptr_t)mem, 1, buf), 0);
	ck_assert_int_eq(atomic_load(&hold_remove), 0);	/* the handler was held */
	ck_assert_int_eq(t_first_nonzero(buf, T_PAGE), -1);
	ck_assert_uint_eq(mem[T_PAGE - 1], 0);
	ck_assert_uint_eq(mem[T_PAGE], 0x66);
	env_close();
}
END_TEST

/* T: a plain DONTNEED of page 0, then (once the handler applied it) a write */
static atomic_int t_done;

static void *dontneed_then_write(void *arg)
{
	(void)arg;
	if (madvise(mem, T_PAGE, MADV_DONTNEED) == 0) {
		while (!atomic_load(&seen[UHMM_EVENT_CLEAR]))
			usleep(100);
		usleep(20000);		/* the entry cleared after the callbacks */
		memset(mem, 0x77, T_PAGE);	/* faults: filled, then written */
	}
	atomic_store(&t_done, 1);
	return NULL;
}

static atomic_int stop_migrate;		/* armed: the next MIGRATE runs T first */

static bool stop_migrate_cb(struct uhmm_interval_notifier *s,
			    const struct uhmm_notifier_range *r, unsigned long seq)
{
	int armed = 1;

	uhmm_interval_set_seq(s, seq);
	if ((unsigned int)r->event < 32)
		atomic_fetch_add(&seen[r->event], 1);
	if (r->event == UHMM_EVENT_MIGRATE && atomic_compare_exchange_strong(&stop_migrate, &armed, 0)) {
		pthread_t t;

		/* between setup taking page 0 and moving it */
		if (pthread_create(&t, NULL, dontneed_then_write, NULL) == 0) {
			for (int i = 0; i < 500 && !atomic_load(&t_done); i++)
				usleep(1000);
			pthread_detach(t);
		}
	}
	return true;
}

static const struct uhmm_interval_notifier_ops stop_migrate_ops = { .invalidate = stop_migrate_cb };

/*
 * Migration A takes page 0 (absent); before A moves it, a plain DONTNEED's
 * REMOVE clears A's entry and the CPU writes the page again. A must leave
 * the page where it is: moved to the staging area, its entry no longer A's,
 * the new data was dropped and the CPU read zeros.
 */
START_TEST(page_rewritten_after_remove_is_not_moved_away)
{
	env_open(4);
	memset(mem + T_PAGE, 0x11, 3 * T_PAGE);	/* page 0 never touched */
	memset((void *)seen, 0, sizeof(seen));
	ck_assert_int_eq(uhmm_interval_notifier_insert(&watch, mm, (uintptr_t)mem, 4 * T_PAGE,
						       &stop_migrate_ops), 0);
	atomic_store(&stop_migrate, 1);
	ck_assert_int_ge(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, 4), 0);
	ck_assert_int_eq(atomic_load(&t_done), 1);	/* the race was forced */
	uhmm_interval_notifier_remove(&watch);
	ck_assert_uint_eq(mem[0], 0x77);
	ck_assert_uint_eq(mem[T_PAGE - 1], 0x77);
	ck_assert_uint_eq(mem[T_PAGE], 0x11);
	env_close();
}
END_TEST

int main(void)
{
	TCase *tc = T_TCASE("races", NULL, NULL,
			    unshare_retry_leaves_another_migrations_page_alone,
			    fork_while_handler_callback_allocates,
			    raw_dontneed_page_is_not_taken_before_its_zap,
			    unshare_retry_does_not_retake_a_page_a_raw_dontneed_may_zap,
			    device_read_after_raw_dontneed_sees_zeros,
			    page_rewritten_after_remove_is_not_moved_away);

	return t_run_suite("races", tc, NULL);
}
