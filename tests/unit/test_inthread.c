// SPDX-License-Identifier: MIT
/* test_inthread.c - UHMM_MM_INTHREAD: CPU faults served in the faulting
 * thread (userfaultfd SIGBUS mode), uhmm_mm_populate(), SIGBUS chaining. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uhmm.h>
#include "t_util.h"

#define NPAGES 64
#define LEN (NPAGES * T_PAGE)
#define ADDR(p, i) ((uint64_t)(uintptr_t)(p) + (uint64_t)(i) * T_PAGE)

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static char *mem;

static void open_mm(unsigned int flags)
{
	UHMM_OPTS(mm_opts, o, .flags = flags);

	ck_assert_int_eq(uhmm_mm_open(&mm, &o), 0);
	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 0, (void **)&mem), 0);
}

static void setup(void)
{
	open_mm(UHMM_MM_INTHREAD);
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &sim), 0);
}

static void teardown(void)
{
	uhmm_sim_destroy(sim);
	sim = NULL;
	ck_assert_int_eq(uhmm_mm_free(mm, mem, LEN), 0);
	uhmm_mm_close(mm);
	mm = NULL;
}

/* First touch: reads see zeros, writes stick, all served in this thread. */
START_TEST(first_touch_read_and_write)
{
	struct uhmm_mm_stat st;

	for (int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(mem[i * T_PAGE + 7], 0);
	t_fill_pattern(mem, LEN, 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 1), -1);
	ck_assert_int_eq(uhmm_mm_stat(mm, &st), 0);
	ck_assert_uint_ge(st.faults, 1);
	ck_assert_uint_ge(st.filled_pages, NPAGES);
}
END_TEST

/* A write as the first touch of a page (fault-around 1 page). */
START_TEST(first_touch_write_each_page)
{
	struct uhmm_mm *m2;
	char *p;
	UHMM_OPTS(mm_opts, o, .flags = UHMM_MM_INTHREAD, .fault_around_pages = 1);

	ck_assert_int_eq(uhmm_mm_open(&m2, &o), 0);
	ck_assert_int_eq(uhmm_mm_alloc(m2, LEN, 0, (void **)&p), 0);
	for (int i = 0; i < NPAGES; i++)
		p[i * T_PAGE + 1] = (char)(i + 1);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(p[i * T_PAGE + 1], (char)(i + 1));
	ck_assert_int_eq(uhmm_mm_free(m2, p, LEN), 0);
	uhmm_mm_close(m2);
}
END_TEST

/* Device-private pages come back on a CPU read or write. */
START_TEST(device_fault_back)
{
	struct uhmm_mm_stat st;
	uint8_t prot[NPAGES];

	t_fill_pattern(mem, LEN, 2);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), NPAGES, prot), 0);
	ck_assert_uint_eq(prot[0] & 0xF0, UHMM_SIM_PROT_DEV_PRIVATE_LOCAL);
	ck_assert_int_eq(t_check_pattern(mem, LEN / 2, 2), -1);	/* reads */
	mem[LEN - 1] = 0x11;						/* a write */
	ck_assert_int_eq(mem[LEN - 1], 0x11);
	mem[LEN - 1] = (char)0;
	ck_assert_int_eq(uhmm_mm_stat(mm, &st), 0);
	ck_assert_uint_ge(st.device_faults, 2);
}
END_TEST

/* What the device wrote is what the CPU reads back. */
START_TEST(device_writes_visible)
{
	char *buf = malloc(LEN);

	t_fill_pattern(mem, LEN, 3);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
	t_fill_pattern(buf, LEN, 4);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), NPAGES, buf), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 4), -1);
	free(buf);
}
END_TEST

static void *reader(void *arg)
{
	(void)arg;
	ck_assert_int_eq(t_check_pattern(mem, LEN, 5), -1);
	return NULL;
}

/* Four threads fault on the same device pages at once. */
START_TEST(threads_fault_same_pages)
{
	for (int r = 0; r < 20; r++) {
		t_fill_pattern(mem, LEN, 5);
		ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
		t_threads_run(4, reader, NULL, 0);
	}
}
END_TEST

struct churn {
	atomic_bool stop;
	int moved;
};

static void *migrator(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load(&c->stop)) {
		int n = uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES);

		ck_assert_int_ge(n, 0);
		c->moved += n;
		ck_assert_int_ge(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), NPAGES), 0);
	}
	return NULL;
}

/* CPU writes racing migrations both ways (in-flight pages make the access
 * fault again until the migration is over): nothing is lost. */
START_TEST(cpu_writes_race_migrations)
{
	struct churn c = { .moved = 0 };
	pthread_t th;
	uint32_t *w = (uint32_t *)(void *)mem;

	atomic_init(&c.stop, false);
	memset(mem, 0, LEN);
	t_threads_start(&th, 1, migrator, &c, 0);
	for (uint32_t round = 1; round <= 200; round++)
		for (int i = 0; i < NPAGES; i++) {
			uint32_t *slot = w + (size_t)i * (T_PAGE / 4) + (round % 1024);

			*slot = round;
			ck_assert_uint_eq(*slot, round);
		}
	atomic_store(&c.stop, true);
	t_threads_join(&th, 1, NULL);
	for (uint32_t round = 1; round <= 200; round++)
		for (int i = 0; i < NPAGES; i++)
			ck_assert_uint_eq(w[(size_t)i * (T_PAGE / 4) + round], round);
	ck_assert_int_gt(c.moved, 0);
}
END_TEST

/* Exclusive pages: the device's atomics survive, a CPU access revokes. */
START_TEST(exclusive_revoked_by_cpu)
{
	t_fill_pattern(mem, LEN, 6);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 4), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 6), -1);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 0);
}
END_TEST

/* The documented cost: a system call into a page that is not present fails
 * with EFAULT; uhmm_mm_populate() first makes it work. */
START_TEST(syscall_needs_populate)
{
	int fd[2];
	char out[64];

	ck_assert_int_eq(pipe(fd), 0);
	t_fill_pattern(mem, LEN, 7);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
	/* write(2) reading a device-resident buffer */
	ck_assert_int_eq(write(fd[1], mem, 64), -1);
	ck_assert_int_eq(errno, EFAULT);
	ck_assert_int_eq(uhmm_mm_populate(mm, mem, T_PAGE, false), 0);
	ck_assert_int_eq(write(fd[1], mem, 64), 64);
	ck_assert_int_eq(read(fd[0], out, 64), 64);
	ck_assert_int_eq(memcmp(out, mem, 64), 0);
	/* read(2) into a device-resident page, after a writable populate */
	ck_assert_int_eq(write(fd[1], "hello", 5), 5);
	ck_assert_int_eq(uhmm_mm_populate(mm, mem + T_PAGE, T_PAGE, true), 0);
	ck_assert_int_eq(read(fd[0], mem + T_PAGE, 5), 5);
	ck_assert_int_eq(memcmp(mem + T_PAGE, "hello", 5), 0);
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, LEN - 2 * T_PAGE,
					 7 + 2 * T_PAGE / 8), -1);
	close(fd[0]);
	close(fd[1]);
}
END_TEST

/* uhmm_mm_populate in both modes, and its bad input. */
START_TEST(populate_args_and_modes)
{
	struct uhmm_mm *m2;
	char *p;
	void *hole = mmap(NULL, T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_int_eq(uhmm_mm_populate(NULL, mem, T_PAGE, false), -EINVAL);
	ck_assert_int_eq(uhmm_mm_populate(mm, NULL, T_PAGE, false), -EINVAL);
	ck_assert_int_eq(uhmm_mm_populate(mm, mem, 0, false), -EINVAL);
	ck_assert_int_eq(uhmm_mm_populate(mm, mem + 1, T_PAGE, false), -EINVAL);
	ck_assert_int_eq(uhmm_mm_populate(mm, mem, T_PAGE + 1, false), -EINVAL);
	ck_assert_ptr_ne(hole, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_populate(mm, hole, T_PAGE, false), -EFAULT);
	munmap(hole, T_PAGE);
	ck_assert_int_eq(uhmm_mm_populate(mm, hole, T_PAGE, false), -EFAULT);
	/* in-thread mode: all present afterwards, zeros */
	ck_assert_int_eq(uhmm_mm_populate(mm, mem, LEN, true), 0);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), NPAGES);
	for (int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(mem[i * T_PAGE], 0);
	/* default mode: the same call */
	ck_assert_int_eq(uhmm_mm_open(&m2, NULL), 0);
	ck_assert_int_eq(uhmm_mm_alloc(m2, LEN, 0, (void **)&p), 0);
	ck_assert_int_eq(uhmm_mm_populate(m2, p, LEN, false), 0);
	ck_assert_uint_eq(t_resident_pages(p, LEN), NPAGES);
	ck_assert_int_eq(uhmm_mm_free(m2, p, LEN), 0);
	uhmm_mm_close(m2);
}
END_TEST

static sigjmp_buf jb;
static volatile sig_atomic_t app_handler_calls;

static void app_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	app_handler_calls++;
	siglongjmp(jb, 1);
}

/* SIGBUS that is not uhmm's goes to the handler installed before it. */
START_TEST(foreign_sigbus_chains)
{
	struct sigaction sa = { .sa_sigaction = app_sigbus, .sa_flags = SA_SIGINFO };
	char path[] = "/tmp/uhmm-inthread-XXXXXX";
	int fd = mkstemp(path);
	volatile char *f;

	/* the app's handler first, then uhmm's on top */
	teardown();
	sigemptyset(&sa.sa_mask);
	ck_assert_int_eq(sigaction(SIGBUS, &sa, NULL), 0);
	setup();
	ck_assert_int_ge(fd, 0);
	unlink(path);
	ck_assert_int_eq(ftruncate(fd, T_PAGE), 0);
	f = mmap(NULL, 2 * T_PAGE, PROT_READ, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne((void *)f, MAP_FAILED);
	if (sigsetjmp(jb, 1) == 0)
		(void)f[T_PAGE];	/* past EOF: a real SIGBUS */
	ck_assert_int_eq(app_handler_calls, 1);
	/* managed memory still works in-thread */
	t_fill_pattern(mem, LEN, 8);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 8), -1);
	ck_assert_int_eq(app_handler_calls, 1);
	munmap((void *)f, 2 * T_PAGE);
	close(fd);
}
END_TEST

/* Under AddressSanitizer the handler before uhmm's is ASan's: it reports
 * and aborts. */
#if defined(__SANITIZE_ADDRESS__)
#define FOREIGN_SIGBUS_DEATH(sig) ((sig) == SIGBUS || (sig) == SIGABRT)
#else
#define FOREIGN_SIGBUS_DEATH(sig) ((sig) == SIGBUS)
#endif

/* With no handler before uhmm's, a foreign SIGBUS keeps its default action. */
START_TEST(foreign_sigbus_default_kills)
{
	pid_t pid = fork();
	int status;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char path[] = "/tmp/uhmm-inthread-XXXXXX";
		int fd = mkstemp(path);
		volatile char *f;

		unlink(path);
		if (fd < 0 || ftruncate(fd, T_PAGE))
			_exit(2);
		f = mmap(NULL, 2 * T_PAGE, PROT_READ, MAP_SHARED, fd, 0);
		(void)f[T_PAGE];
		_exit(3);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status));
	ck_assert_msg(FOREIGN_SIGBUS_DEATH(WTERMSIG(status)), "signal %d", WTERMSIG(status));
	/* and a sent SIGBUS, too */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		raise(SIGBUS);
		_exit(3);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status));
	ck_assert_msg(FOREIGN_SIGBUS_DEATH(WTERMSIG(status)), "signal %d", WTERMSIG(status));
}
END_TEST

/* A child forked with pages on the device reads the parent's data. */
START_TEST(fork_with_device_pages)
{
	pid_t pid;
	int status;

	t_fill_pattern(mem, LEN, 9);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES / 2), NPAGES / 2);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(t_check_pattern(mem, LEN, 9) == -1 ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 9), -1);
}
END_TEST

/* Two in-thread mms at once, and one closed while the other works on. */
START_TEST(two_mms)
{
	struct uhmm_mm *m2;
	char *p;
	UHMM_OPTS(mm_opts, o, .flags = UHMM_MM_INTHREAD);

	ck_assert_int_eq(uhmm_mm_open(&m2, &o), 0);
	ck_assert_int_eq(uhmm_mm_alloc(m2, LEN, 0, (void **)&p), 0);
	t_fill_pattern(p, LEN, 10);
	t_fill_pattern(mem, LEN, 11);
	ck_assert_int_eq(t_check_pattern(p, LEN, 10), -1);
	ck_assert_int_eq(uhmm_mm_free(m2, p, LEN), 0);
	uhmm_mm_close(m2);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NPAGES), NPAGES);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 11), -1);
}
END_TEST

/* Unknown flags are still refused. */
START_TEST(open_flags)
{
	struct uhmm_mm *m2 = (void *)1;
	UHMM_OPTS(mm_opts, o, .flags = UHMM_MM_INTHREAD | (1U << 7));

	ck_assert_int_eq(uhmm_mm_open(&m2, &o), -EINVAL);
	ck_assert_ptr_null(m2);
	o.flags = UHMM_MM_INTHREAD | UHMM_MM_FRAMES;
	ck_assert_int_eq(uhmm_mm_open(&m2, &o), 0);
	uhmm_mm_close(m2);
}
END_TEST

int main(void)
{
	return t_run_suite("inthread",
			   T_TCASE("faults", setup, teardown, first_touch_read_and_write,
				   first_touch_write_each_page, device_fault_back,
				   device_writes_visible, threads_fault_same_pages,
				   cpu_writes_race_migrations, exclusive_revoked_by_cpu,
				   fork_with_device_pages, two_mms),
			   T_TCASE("populate", setup, teardown, syscall_needs_populate,
				   populate_args_and_modes),
			   T_TCASE("signals", setup, teardown, foreign_sigbus_chains,
				   foreign_sigbus_default_kills),
			   T_TCASE("open", NULL, NULL, open_flags), NULL);
}
