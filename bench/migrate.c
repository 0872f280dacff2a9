// SPDX-License-Identifier: MIT
/* bench/migrate.c - CPU fault-back latency of device-private pages against a
 * bare userfaultfd round trip measured in the same run, migrate-to-device
 * bandwidth against memcpy, and fault throughput with 1 and 2 threads. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uhmm/mm.h>
#include <uhmm/sim.h>
#include "bench_util.h"
#include "../src/compat.h"	/* UFFDIO_MOVE on Debian 12 headers */

#define PG 4096UL
#define LAT_PAGES 2048			/* faults per latency sample */
#define BW_PAGES 262144UL		/* 1 GiB per bandwidth sample: beyond any cache */

static int reps;

/* ---------------------------------------------------------------------- */
/* bare userfaultfd baselines                                              */

static int uffd_new(uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev < 0)
			return -1;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
		if (fd < 0)
			return -1;
	}
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int uffd_reg(int fd, void *p, size_t len)
{
	struct uffdio_register r = {
		.range = { (uint64_t)(uintptr_t)p, len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	return ioctl(fd, UFFDIO_REGISTER, &r);
}

static void *src_page;			/* data every baseline fault copies */
static int sigbus_fd;

static void sigbus_handler(int sig, siginfo_t *si, void *uc)
{
	struct uffdio_copy c = {
		.dst = (uint64_t)(uintptr_t)si->si_addr & ~(PG - 1),
		.src = (uint64_t)(uintptr_t)src_page,
		.len = PG,
	};

	(void)sig;
	(void)uc;
	if (ioctl(sigbus_fd, UFFDIO_COPY, &c) && errno != EEXIST)
		abort();
}

static void touch_all(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		(void)*(volatile char *)(p + i * PG);
}

/* MISSING fault resolved by UFFDIO_COPY in the faulting thread (SIGBUS mode). */
static double bare_sigbus_ns(void)
{
	struct sigaction sa = { .sa_sigaction = sigbus_handler, .sa_flags = SA_SIGINFO }, old;
	size_t len = LAT_PAGES * PG;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	double v[64];

	sigbus_fd = uffd_new(UFFD_FEATURE_SIGBUS);
	if (sigbus_fd < 0 || p == MAP_FAILED || uffd_reg(sigbus_fd, p, len))
		return -1;
	sigaction(SIGBUS, &sa, &old);
	for (int r = 0; r < reps; r++) {
		uint64_t t0;

		madvise(p, len, MADV_DONTNEED);
		t0 = bench_now_ns();
		touch_all(p, LAT_PAGES);
		v[r] = (double)(bench_now_ns() - t0) / LAT_PAGES;
	}
	sigaction(SIGBUS, &old, NULL);
	close(sigbus_fd);
	munmap(p, len);
	return bench_median(v, reps);
}

struct blocked {
	int fd;
	atomic_bool stop;
};

static void *blocked_main(void *arg)
{
	struct blocked *b = arg;
	struct uffd_msg msg;

	while (!atomic_load(&b->stop)) {
		struct pollfd pf = { .fd = b->fd, .events = POLLIN };

		if (poll(&pf, 1, 10) <= 0)
			continue;
		if (read(b->fd, &msg, sizeof(msg)) != sizeof(msg) ||
		    msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = {
			.dst = msg.arg.pagefault.address & ~(PG - 1),
			.src = (uint64_t)(uintptr_t)src_page,
			.len = PG,
		};
		ioctl(b->fd, UFFDIO_COPY, &c);
	}
	return NULL;
}

/* Same fault served by a handler thread blocked in poll (it must be woken). */
static double bare_thread_ns(void)
{
	size_t len = LAT_PAGES * PG;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct blocked b = { .fd = uffd_new(0) };
	pthread_t th;
	double v[64];

	if (b.fd < 0 || p == MAP_FAILED || uffd_reg(b.fd, p, len))
		return -1;
	pthread_create(&th, NULL, blocked_main, &b);
	for (int r = 0; r < reps; r++) {
		uint64_t t0;

		madvise(p, len, MADV_DONTNEED);
		t0 = bench_now_ns();
		touch_all(p, LAT_PAGES);
		v[r] = (double)(bench_now_ns() - t0) / LAT_PAGES;
	}
	atomic_store(&b.stop, true);
	pthread_join(th, NULL);
	close(b.fd);
	munmap(p, len);
	return bench_median(v, reps);
}

/* ---------------------------------------------------------------------- */
/* uhmm                                                                    */

/* 2 MiB-aligned anonymous memory of @len (THP-backed if @thp); *raw to unmap. */
static char *map_aligned(size_t len, int thp, char **raw)
{
	size_t huge = 2UL << 20;
	char *p;

	*raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*raw == MAP_FAILED)
		return NULL;
	p = (char *)(((uintptr_t)*raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (thp)
		madvise(p, len, MADV_HUGEPAGE);
	return p;
}

/* Unmap what map_aligned() gave (nothing if @p is NULL). */
static void unmap_aligned(char *p, char *raw, size_t len)
{
	if (p)
		munmap(raw, len + (2UL << 20));
}

/* One bare UFFDIO_MOVE of @len bytes from @from to @to: 0, or -1. */
static int uffd_move_bytes(int fd, char *to, char *from, size_t len)
{
	struct uffdio_move m = { .dst = (uint64_t)(uintptr_t)to,
				 .src = (uint64_t)(uintptr_t)from, .len = len };

	return ioctl(fd, UFFDIO_MOVE, &m);
}

struct env {
	struct uhmm_mm *mm;
	struct uhmm_sim *sim;
	char *p;
	size_t n;
	char *raw;		/* THP-backed: the mapping behind p */
};

/* 2 MiB-aligned memory filled as transparent huge pages, then managed. */
static int env_thp(struct env *e, size_t n)
{
	size_t len = n * PG;

	e->p = map_aligned(len, 1, &e->raw);
	if (!e->p)
		return -ENOMEM;
	memset(e->p, 0x5a, len);
	return uhmm_mm_manage(e->mm, e->p, len);
}

/* fault-handling modes measured */
enum { MODE_BLOCKED, MODE_SPIN, MODE_INTHREAD, NR_MODES };
static const char *const mode_name[NR_MODES] = {
	"handler thread blocked (spin 0)", "handler spinning (spin_usec 200)",
	"in-thread (UHMM_MM_INTHREAD)",
};

static int env_open_path(struct env *e, int mode, size_t n, int copy, int thp)
{
	UHMM_OPTS(mm_opts, mo, .spin_usec = mode == MODE_SPIN ? 200 : 0,
		  .flags = mode == MODE_INTHREAD ? UHMM_MM_INTHREAD : 0);
	UHMM_OPTS(sim_opts, so, .mem_type = UHMM_SIM_PRIVATE, .capacity_pages = n,
		  .copy_path = copy);
	int err;

	e->n = n;
	e->raw = NULL;
	err = uhmm_mm_open(&e->mm, &mo);
	if (!err && thp)
		return env_thp(e, n) ?: uhmm_sim_create(e->mm, &so, &e->sim);
	if (!err)
		err = uhmm_mm_alloc(e->mm, n * PG, 0, (void **)&e->p);
	if (!err)
		err = uhmm_sim_create(e->mm, &so, &e->sim);
	if (!err)
		memset(e->p, 0x5a, n * PG);
	return err;
}

static int env_open(struct env *e, int mode, size_t n)
{
	return env_open_path(e, mode, n, 0, 0);
}

static void env_close(struct env *e)
{
	uhmm_sim_destroy(e->sim);
	if (e->raw) {
		uhmm_mm_unmanage(e->mm, e->p, e->n * PG);
		unmap_aligned(e->p, e->raw, e->n * PG);
	} else {
		uhmm_mm_free(e->mm, e->p, e->n * PG);
	}
	uhmm_mm_close(e->mm);
}

/* CPU fault-back latency of one device-private page (one thread reads). */
static double uhmm_faultback_ns(int mode)
{
	struct env e;
	double v[64];

	if (env_open(&e, mode, LAT_PAGES))
		return -1;
	for (int r = 0; r < reps; r++) {
		uint64_t t0;

		if (uhmm_sim_migrate_to_dev(e.sim, (uint64_t)(uintptr_t)e.p, LAT_PAGES) !=
		    LAT_PAGES)
			return -1;
		t0 = bench_now_ns();
		touch_all(e.p, LAT_PAGES);
		v[r] = (double)(bench_now_ns() - t0) / LAT_PAGES;
	}
	env_close(&e);
	return bench_median(v, reps);
}

/*
 * The kernel floor of the move path: 1 GiB moved by bare UFFDIO_MOVE in
 * 2 MiB batches between two areas registered with one userfaultfd, in a
 * single-threaded process with nothing to bookkeep (so no other CPU's TLB
 * to flush). The sim moves each page once, 16 MiB per migration. GB/s,
 * median.
 */
static double floor_move(int thp)
{
	size_t len = BW_PAGES * PG, huge = 2UL << 20;
	char *ra, *rb, *a = map_aligned(len, thp, &ra), *b = map_aligned(len, thp, &rb);
	int fd = uffd_new(0);
	double v[64], ret = -1;

	if (!a || !b || fd < 0)
		goto out;
	memset(a, 0x5a, len);
	if (uffd_reg(fd, a, len) || uffd_reg(fd, b, len))
		goto out;
	for (int r = 0; r < reps; r++) {
		char *from = r % 2 ? b : a, *to = r % 2 ? a : b;
		uint64_t t0 = bench_now_ns();

		for (size_t off = 0; off < len; off += huge)
			if (uffd_move_bytes(fd, to + off, from + off, huge))
				goto out;
		v[r] = (double)len / (double)(bench_now_ns() - t0);
	}
	ret = bench_median(v, reps);
out:
	if (fd >= 0)
		close(fd);
	unmap_aligned(a, ra, len);
	unmap_aligned(b, rb, len);
	return ret;
}

/*
 * The copy path's floor with bare system calls: the three steps any copy
 * path takes per page, 2 MiB at a time, in a single-threaded process with
 * nothing to bookkeep: take the pages from the process (UFFDIO_MOVE into a
 * staging area), copy them (process_vm_readv into THP-backed memory, as
 * the sim's copy-path pool is) and free them (MADV_DONTNEED). The source
 * is refilled between reps, untimed. GB/s, median.
 */
static double floor_copy(void)
{
	size_t len = BW_PAGES * PG, huge = 2UL << 20;
	char *ra, *rs, *rd;
	char *a = map_aligned(len, 0, &ra), *st = map_aligned(len, 0, &rs);
	char *d = map_aligned(len, 1, &rd);
	int fd = uffd_new(0);
	double v[64], ret = -1;

	if (!a || !st || !d || fd < 0)
		goto out;
	memset(a, 0x5a, len);
	memset(d, 1, len);
	if (uffd_reg(fd, a, len) || uffd_reg(fd, st, len))
		goto out;
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = bench_now_ns();

		for (size_t off = 0; off < len; off += huge) {
			struct iovec l = { d + off, huge }, rm = { st + off, huge };

			if (uffd_move_bytes(fd, st + off, a + off, huge) ||
			    process_vm_readv(getpid(), &l, 1, &rm, 1, 0) != (ssize_t)huge ||
			    madvise(st + off, huge, MADV_DONTNEED))
				goto out;
		}
		v[r] = (double)len / (double)(bench_now_ns() - t0);
		for (size_t off = 0; off < len; off += huge) {
			struct uffdio_copy c = { .dst = (uint64_t)(uintptr_t)(a + off),
						 .src = (uint64_t)(uintptr_t)(d + off),
						 .len = huge };

			if (ioctl(fd, UFFDIO_COPY, &c))
				goto out;
		}
	}
	ret = bench_median(v, reps);
out:
	if (fd >= 0)
		close(fd);
	unmap_aligned(a, ra, len);
	unmap_aligned(st, rs, len);
	unmap_aligned(d, rd, len);
	return ret;
}

/*
 * migrate_to_dev bandwidth (GB/s) and, in the same reps, memcpy of the same
 * size: 4 KiB at a time (LIMITS.md's "memcpy, 4 KiB pages, cold 1 GiB", the
 * reference of the targets) and in one call. Both memcpy buffers are
 * populated first: only the copy is timed, as only the migration is. The
 * best rep of each is printed too: on the project VM some reps of a
 * migration take twice as long with the same work done, the extra time
 * outside the guest (README, "Performance").
 */
struct bw {
	double mig, cpy4k, cpy1;
	double mig_best, cpy4k_best;	/* the best rep of each */
	double pvr;		/* process_vm_readv 2 MiB at a time: the copy alone */
	double floor;		/* the path's kernel floor (copy: floor_copy()) */
};

static void bandwidth(struct bw *out, int copy, int thp)
{
	struct env e;
	double v[64], w[64], x[64], y[64];
	size_t len = BW_PAGES * PG;
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	out->mig = out->cpy4k = out->cpy1 = out->pvr = out->floor = -1;
	out->mig_best = out->cpy4k_best = -1;
	if (a == MAP_FAILED || b == MAP_FAILED || env_open_path(&e, 0, BW_PAGES, copy, thp))
		return;
	memset(a, 1, len);
	memset(b, 2, len);
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = bench_now_ns();
		int moved = uhmm_sim_migrate_to_dev(e.sim, (uint64_t)(uintptr_t)e.p, BW_PAGES);
		uint64_t t1 = bench_now_ns();

		if (moved != (int)BW_PAGES)
			return;
		v[r] = (double)len / (double)(t1 - t0);
		uhmm_sim_migrate_to_sys(e.sim, (uint64_t)(uintptr_t)e.p, BW_PAGES);
		t0 = bench_now_ns();
		for (size_t off = 0; off < len; off += PG)
			memcpy((r % 2 ? a : b) + off, (r % 2 ? b : a) + off, PG);
		w[r] = (double)len / (double)(bench_now_ns() - t0);
		t0 = bench_now_ns();
		memcpy(r % 2 ? b : a, r % 2 ? a : b, len);
		x[r] = (double)len / (double)(bench_now_ns() - t0);
		/* the copy's floor, in the copy group only: on this kernel a
		 * process_vm_readv between moves slowed the next migration
		 * (THP: 32 GB/s without it, 18.6 with it) */
		y[r] = -1;
		if (!copy)
			continue;
		t0 = bench_now_ns();
		for (size_t off = 0; off < len; off += 2UL << 20) {
			struct iovec l = { (r % 2 ? a : b) + off, 2UL << 20 };
			struct iovec rm = { (r % 2 ? b : a) + off, 2UL << 20 };

			if (process_vm_readv(getpid(), &l, 1, &rm, 1, 0) != (ssize_t)l.iov_len)
				return;
		}
		y[r] = (double)len / (double)(bench_now_ns() - t0);
	}
	out->mig = bench_median(v, reps);
	out->cpy4k = bench_median(w, reps);
	out->mig_best = bench_max(v, reps);
	out->cpy4k_best = bench_max(w, reps);
	out->cpy1 = bench_median(x, reps);
	out->pvr = bench_median(y, reps);
	env_close(&e);
	out->floor = copy ? floor_copy() : floor_move(thp);
	munmap(a, len);
	munmap(b, len);
}

struct toucher {
	char *p;
	size_t n;
	pthread_barrier_t *bar;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	pthread_barrier_wait(t->bar);
	touch_all(t->p, t->n);
	return NULL;
}

/* Fault-back throughput (pages/s) with @nthr application threads. */
static double throughput(int mode, int nthr)
{
	struct env e;
	double v[64];

	if (env_open(&e, mode, LAT_PAGES))
		return -1;
	for (int r = 0; r < reps; r++) {
		pthread_t th[2];
		struct toucher t[2];
		pthread_barrier_t bar;
		uint64_t t0;

		if (uhmm_sim_migrate_to_dev(e.sim, (uint64_t)(uintptr_t)e.p, LAT_PAGES) !=
		    LAT_PAGES)
			return -1;
		pthread_barrier_init(&bar, NULL, (unsigned int)nthr + 1);
		for (int i = 0; i < nthr; i++) {
			t[i] = (struct toucher){ e.p + (size_t)i * (LAT_PAGES / nthr) * PG,
						 LAT_PAGES / (size_t)nthr, &bar };
			pthread_create(&th[i], NULL, toucher_main, &t[i]);
		}
		pthread_barrier_wait(&bar);
		t0 = bench_now_ns();
		for (int i = 0; i < nthr; i++)
			pthread_join(th[i], NULL);
		v[r] = LAT_PAGES / ((double)(bench_now_ns() - t0) / 1e9);
		pthread_barrier_destroy(&bar);
	}
	env_close(&e);
	return bench_median(v, reps);
}

int main(void)
{
	static const char *const bw_name[3] = { "copy path", "move path",
						"move path, THP-backed" };
	double sig, thr, fb[NR_MODES];
	double tp[NR_MODES][2];
	struct bw bw[3];

	reps = bench_reps(5);
	if (reps > 64)
		reps = 64;
	src_page = aligned_alloc(PG, PG);
	memset(src_page, 0x5a, PG);
	sig = bare_sigbus_ns();
	thr = bare_thread_ns();
	for (int m = 0; m < NR_MODES; m++)
		fb[m] = uhmm_faultback_ns(m);
	for (int k = 0; k < 3; k++)
		bandwidth(&bw[k], k == 0, k == 2);
	for (int m = 0; m < NR_MODES; m++)
		for (int n = 1; n <= 2; n++)
			tp[m][n - 1] = throughput(m, n);

	printf("bench/migrate: medians of %d reps (bandwidth: also the best rep), 4 KiB pages\n",
	       reps);
	printf("%-60s %14s %10s\n", "measurement", "value", "ratio");
	printf("%-60s %11.2f us %10s\n",
	       "bare uffd MISSING+COPY, SIGBUS mode (in-thread)", sig / 1e3, "1.00x");
	printf("%-60s %11.2f us %9.2fx\n",
	       "bare uffd MISSING+COPY, handler thread blocked", thr / 1e3, thr / sig);
	for (int m = 0; m < NR_MODES; m++) {
		char name[96];

		snprintf(name, sizeof(name), "uhmm fault-back, %s", mode_name[m]);
		printf("%-60s %11.2f us %9.2fx\n", name, fb[m] / 1e3, fb[m] / sig);
	}
	for (int k = 0; k < 3; k++) {
		char name[96];

		printf("%-60s %9.2f GB/s %10s\n", "memcpy 1 GiB, 4 KiB at a time (target base)",
		       bw[k].cpy4k, "1.00x");
		printf("%-60s %9.2f GB/s %9.2fx\n", "memcpy 1 GiB, one call", bw[k].cpy1,
		       bw[k].cpy1 / bw[k].cpy4k);
		if (k == 0)
			printf("%-60s %9.2f GB/s %9.2fx\n",
			       "kernel's copy alone: process_vm_readv 1 GiB, 2 MiB at a time",
			       bw[k].pvr, bw[k].pvr / bw[k].cpy4k);
		printf("%-60s %9.2f GB/s %9.2fx\n", k == 0 ? "kernel floor: bare move out + process_vm_readv + DONTNEED"
			       : k == 1 ? "kernel floor: bare UFFDIO_MOVE 1 GiB, 2 MiB batches"
			       : "kernel floor: bare UFFDIO_MOVE 1 GiB of THPs, 2 MiB each",
		       bw[k].floor, bw[k].floor / bw[k].cpy4k);
		snprintf(name, sizeof(name), "uhmm sim migrate_to_dev 1 GiB (%s)", bw_name[k]);
		printf("%-60s %9.2f GB/s %9.2fx (%.2fx one call, %.2fx floor)\n", name, bw[k].mig,
		       bw[k].mig / bw[k].cpy4k, bw[k].mig / bw[k].cpy1, bw[k].mig / bw[k].floor);
		snprintf(name, sizeof(name), "  same, best rep (against memcpy's best rep, %.2f GB/s)",
			 bw[k].cpy4k_best);
		printf("%-60s %9.2f GB/s %9.2fx\n", name, bw[k].mig_best,
		       bw[k].mig_best / bw[k].cpy4k_best);
	}
	for (int m = 0; m < NR_MODES; m++)
		for (int n = 1; n <= 2; n++) {
			char name[96];

			snprintf(name, sizeof(name), "fault-back throughput, %d thr, %s", n,
				 mode_name[m]);
			printf("%-60s %8.0f pg/s %9.2fx\n", name, tp[m][n - 1],
			       tp[m][n - 1] / tp[m][0]);
		}
	printf("target: fault-back <= 1.5x the in-thread baseline; copy path >= 0.9x memcpy; move path >= 5x memcpy\n"
	       "(memcpy: 4 KiB at a time over 1 GiB, as in LIMITS.md)\n");
	return 0;
}
