// SPDX-License-Identifier: MIT
/* bench/mirror.c - uhmm_mm + mirror against raw-kernel baselines measured in
 * the same run: range_fault snapshot vs PAGEMAP_SCAN, range_fault fault-in vs
 * MADV_POPULATE_WRITE, munmap->callback vs a bare userfaultfd UNMAP read, and
 * first touch of managed vs unmanaged memory. Medians over BENCH_REPS (5). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uhmm/mm.h>
#include <uhmm/mirror.h>
#include "bench_util.h"

#ifndef PAGEMAP_SCAN
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
struct page_region {
	uint64_t start, end, categories;
};
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
		category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PG 4096UL
#define SNAP_LEN (256UL << 20)
#define FAULT_LEN (64UL << 20)
#define TOUCH_LEN (64UL << 20)
#define LAT_ITERS 200
#define MAXREPS 64

static void die(const char *what, int err)
{
	fprintf(stderr, "bench/mirror: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		die("mmap", errno);
	return p;
}

static void touch(char *p, size_t len)
{
	for (size_t i = 0; i < len; i += PG)
		p[i] = 1;
}

/* A notifier that only records when it last ran. */
struct tnote {
	struct uhmm_interval_notifier n;
	_Atomic uint64_t when;
	_Atomic unsigned int hits;
};

static bool tnote_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	struct tnote *t = (struct tnote *)sub;

	atomic_store(&t->when, bench_now_ns());
	atomic_fetch_add(&t->hits, 1);
	uhmm_interval_set_seq(sub, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops tnote_ops = {
	.invalidate = tnote_invalidate,
};

/* ---- 1. snapshot: range_fault without REQ_FAULT vs raw PAGEMAP_SCAN ---- */

static double raw_scan(int fd, uint64_t start, uint64_t end)
{
	struct page_region vec[256];
	uint64_t t0 = bench_now_ns(), at = start;

	while (at < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a), .start = at, .end = end,
			.vec = (uint64_t)(uintptr_t)vec, .vec_len = 256,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		};
		long n = ioctl(fd, PAGEMAP_SCAN, &a);

		if (n < 0)
			die("PAGEMAP_SCAN", errno);
		at = n < 256 || a.walk_end <= at ? end : a.walk_end;
	}
	return (double)((end - start) / PG) / ((double)(bench_now_ns() - t0) / 1e9);
}

static void bench_snapshot(struct uhmm_mm *mm, int reps, double *uh, double *raw)
{
	double a[MAXREPS], b[MAXREPS];
	char *p = map_anon(SNAP_LEN);
	size_t n = SNAP_LEN / PG;
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	struct tnote t = { 0 };
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0 || !pfns)
		die("setup snapshot", errno);
	if (uhmm_mm_manage(mm, p, SNAP_LEN))
		die("manage", EINVAL);
	touch(p, SNAP_LEN);
	if (uhmm_interval_notifier_insert(&t.n, mm, (uintptr_t)p, SNAP_LEN, &tnote_ops))
		die("insert", EINVAL);
	for (int r = 0; r < reps; r++) {
		struct uhmm_range range = {
			.notifier = &t.n, .start = (uintptr_t)p,
			.end = (uintptr_t)p + SNAP_LEN, .hmm_pfns = pfns,
		};
		uint64_t t0;
		int err;

		b[r] = raw_scan(fd, (uintptr_t)p, (uintptr_t)p + SNAP_LEN);
		range.notifier_seq = uhmm_interval_read_begin(&t.n);
		t0 = bench_now_ns();
		err = uhmm_range_fault(&range);
		a[r] = (double)n / ((double)(bench_now_ns() - t0) / 1e9);
		if (err || !(pfns[n - 1] & UHMM_PFN_WRITE))
			die("range_fault snapshot", err ? err : EIO);
	}
	*uh = bench_median(a, reps);
	*raw = bench_median(b, reps);
	uhmm_interval_notifier_remove(&t.n);
	uhmm_munmap(p, SNAP_LEN);
	free(pfns);
	close(fd);
}

/* ---- 2. fault-in: range_fault REQ_FAULT|REQ_WRITE vs MADV_POPULATE_WRITE ---- */

static void bench_faultin(struct uhmm_mm *mm, int reps, double *uh, double *raw)
{
	double a[MAXREPS], b[MAXREPS];
	size_t n = FAULT_LEN / PG;
	uint64_t *pfns = calloc(n, sizeof(*pfns));

	if (!pfns)
		die("calloc", ENOMEM);
	for (int r = 0; r < reps; r++) {
		struct tnote t = { 0 };
		struct uhmm_range range;
		uint64_t t0;
		void *p;
		char *q = map_anon(FAULT_LEN);
		int err;

		t0 = bench_now_ns();
		if (madvise(q, FAULT_LEN, MADV_POPULATE_WRITE))
			die("MADV_POPULATE_WRITE", errno);
		b[r] = (double)n / ((double)(bench_now_ns() - t0) / 1e9);
		munmap(q, FAULT_LEN);

		if ((err = uhmm_mm_alloc(mm, FAULT_LEN, 0, &p)))
			die("uhmm_mm_alloc", err);
		if (uhmm_interval_notifier_insert(&t.n, mm, (uintptr_t)p, FAULT_LEN,
						  &tnote_ops))
			die("insert", EINVAL);
		range = (struct uhmm_range){
			.notifier = &t.n, .start = (uintptr_t)p,
			.end = (uintptr_t)p + FAULT_LEN, .hmm_pfns = pfns,
			.default_flags = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE,
		};
		range.notifier_seq = uhmm_interval_read_begin(&t.n);
		t0 = bench_now_ns();
		err = uhmm_range_fault(&range);
		a[r] = (double)n / ((double)(bench_now_ns() - t0) / 1e9);
		if (err)
			die("range_fault fault-in", err);
		uhmm_interval_notifier_remove(&t.n);
		uhmm_mm_free(mm, p, FAULT_LEN);
	}
	*uh = bench_median(a, reps);
	*raw = bench_median(b, reps);
	free(pfns);
}

/* ---- 3. munmap -> callback latency vs bare uffd UNMAP event read ---- */

static void bench_unmap_latency(struct uhmm_mm *mm, int reps, double *uh)
{
	double a[MAXREPS], s[LAT_ITERS];

	for (int r = 0; r < reps; r++) {
		for (int i = 0; i < LAT_ITERS; i++) {
			struct tnote t = { 0 };
			void *p;
			uint64_t t0;

			if (uhmm_mm_alloc(mm, PG, 0, &p))
				die("alloc", ENOMEM);
			((char *)p)[0] = 1;
			if (uhmm_interval_notifier_insert(&t.n, mm, (uintptr_t)p, PG,
							  &tnote_ops))
				die("insert", EINVAL);
			t0 = bench_now_ns();
			munmap(p, PG);
			while (!atomic_load(&t.hits))
				;
			s[i] = (double)(atomic_load(&t.when) - t0) / 1e3;
			uhmm_interval_notifier_remove(&t.n);
			uhmm_mm_unmanage(mm, p, PG);	/* already gone: -ENOENT */
		}
		a[r] = bench_median(s, LAT_ITERS);
	}
	*uh = bench_median(a, reps);
}

struct bare {
	int uffd;
	_Atomic uint64_t when;
	_Atomic int stop;
};

static void *bare_reader(void *arg)
{
	struct bare *b = arg;
	struct uffd_msg m;

	while (!atomic_load(&b->stop)) {
		struct pollfd pf = { .fd = b->uffd, .events = POLLIN };

		if (poll(&pf, 1, 100) <= 0)
			continue;
		if (read(b->uffd, &m, sizeof(m)) == sizeof(m) &&
		    m.event == UFFD_EVENT_UNMAP)
			atomic_store(&b->when, bench_now_ns());
	}
	return NULL;
}

static double bench_bare_unmap(int reps)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_UNMAP };
	double a[MAXREPS], s[LAT_ITERS];
	struct bare b = { 0 };
	pthread_t th;

	b.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (b.uffd < 0 || ioctl(b.uffd, UFFDIO_API, &api))
		die("userfaultfd", errno);
	pthread_create(&th, NULL, bare_reader, &b);
	for (int r = 0; r < reps; r++) {
		for (int i = 0; i < LAT_ITERS; i++) {
			char *p = map_anon(PG);
			struct uffdio_register reg = {
				.range = { .start = (uintptr_t)p, .len = PG },
				.mode = UFFDIO_REGISTER_MODE_MISSING,
			};
			uint64_t t0;

			p[0] = 1;
			if (ioctl(b.uffd, UFFDIO_REGISTER, &reg))
				die("UFFDIO_REGISTER", errno);
			atomic_store(&b.when, 0);
			t0 = bench_now_ns();
			munmap(p, PG);
			while (!atomic_load(&b.when))
				;
			s[i] = (double)(atomic_load(&b.when) - t0) / 1e3;
		}
		a[r] = bench_median(s, LAT_ITERS);
	}
	atomic_store(&b.stop, 1);
	pthread_join(th, NULL);
	close(b.uffd);
	return bench_median(a, reps);
}

/* ---- 4. first touch: managed vs unmanaged ---- */

static void bench_first_touch(struct uhmm_mm *mm, int reps, double *uh, double *raw)
{
	double a[MAXREPS], b[MAXREPS];
	size_t n = TOUCH_LEN / PG;

	for (int r = 0; r < reps; r++) {
		char *q = map_anon(TOUCH_LEN);
		uint64_t t0 = bench_now_ns();
		void *p;

		touch(q, TOUCH_LEN);
		b[r] = (double)(bench_now_ns() - t0) / (double)n;
		munmap(q, TOUCH_LEN);
		if (uhmm_mm_alloc(mm, TOUCH_LEN, 0, &p))
			die("alloc", ENOMEM);
		t0 = bench_now_ns();
		touch(p, TOUCH_LEN);
		a[r] = (double)(bench_now_ns() - t0) / (double)n;
		uhmm_mm_free(mm, p, TOUCH_LEN);
	}
	*uh = bench_median(a, reps);
	*raw = bench_median(b, reps);
}

int main(void)
{
	int reps = bench_reps(5);
	double s_uh, s_raw, f_uh, f_raw, l_uh, l_raw, t_uh, t_raw;
	struct uhmm_mm *mm;
	int err;

	if (reps > MAXREPS)
		reps = MAXREPS;
	if ((err = uhmm_mm_open(&mm, NULL)))
		die("uhmm_mm_open", err);
	bench_snapshot(mm, reps, &s_uh, &s_raw);
	bench_faultin(mm, reps, &f_uh, &f_raw);
	bench_unmap_latency(mm, reps, &l_uh);
	l_raw = bench_bare_unmap(reps);
	bench_first_touch(mm, reps, &t_uh, &t_raw);
	uhmm_mm_close(mm);

	printf("bench/mirror: medians of %d reps (BENCH_REPS)\n", reps);
	printf("%-44s %14s %14s %8s %s\n", "measure", "uhmm", "baseline", "ratio",
	       "baseline / target");
	printf("%-44s %14.3g %14.3g %7.2fx %s\n", "snapshot 256 MiB resident (pages/s)",
	       s_uh, s_raw, s_uh / s_raw, "raw PAGEMAP_SCAN / >= 0.8x");
	printf("%-44s %14.3g %14.3g %7.2fx %s\n", "fault-in 64 MiB REQ_FAULT|WRITE (pages/s)",
	       f_uh, f_raw, f_uh / f_raw, "MADV_POPULATE_WRITE unmanaged");
	printf("%-44s %14.1f %14.1f %7.2fx %s\n", "munmap -> callback latency (us)",
	       l_uh, l_raw, l_uh / l_raw, "bare uffd UNMAP read");
	printf("%-44s %14.1f %14.1f %7.2fx %s\n", "first touch 64 MiB (ns/page)",
	       t_uh, t_raw, t_uh / t_raw, "unmanaged / <= 1.5x");
	return 0;
}
