// SPDX-License-Identifier: MIT
/* dax.c - benchmark: kmem malloc/free vs glibc malloc and jemalloc's default
 * arena; map + first touch of a 1 GiB dax device vs a plain mmap of the file. */
#include <fcntl.h>
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm/dax.h>
#include "bench_util.h"

#define BATCH 256
#define RUN_NS 40000000ULL	/* each measurement runs >= 40 ms */
#define GiB (1ULL << 30)

enum which { GLIBC, JE_DEFAULT, KMEM };

static struct uhmm_dax_dev *kdev;

/* Allocate BATCH blocks, touch each, free them; repeat for RUN_NS. */
static double run_alloc(enum which w, size_t sz)
{
	void *p[BATCH];
	uint64_t t0 = bench_now_ns(), ops = 0;

	while (bench_now_ns() - t0 < RUN_NS) {
		ops += 2 * BATCH;
		for (int i = 0; i < BATCH; i++) {
			p[i] = w == GLIBC ? malloc(sz) :
			       w == JE_DEFAULT ? mallocx(sz, 0) : uhmm_kmem_malloc(kdev, sz);
			if (!p[i])
				abort();
			*(volatile char *)p[i] = 1;
		}
		for (int i = 0; i < BATCH; i++) {
			if (w == GLIBC)
				free(p[i]);
			else if (w == JE_DEFAULT)
				dallocx(p[i], 0);
			else
				uhmm_kmem_free(kdev, p[i]);
		}
	}
	return (double)ops / ((double)(bench_now_ns() - t0) / 1e9);
}

/* Medians of @reps runs of each allocator, interleaved so that load changes
 * on the machine hit all three alike. */
static void median_alloc(size_t sz, int reps, double out[3])
{
	double v[3][32];

	for (int i = 0; i < reps; i++)
		for (int w = GLIBC; w <= KMEM; w++)
			v[w][i] = run_alloc((enum which)w, sz);
	for (int w = GLIBC; w <= KMEM; w++)
		out[w] = bench_median(v[w], reps);
}

/* Map (or uhmm_dax_map) 1 GiB and write one byte per page; seconds. */
static double run_touch(int use_dax, struct uhmm_dax_dev *dev, int fd, off_t off)
{
	uint64_t t0;
	char *p;

	/* Punch the data out so each run touches fresh memory. */
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)GiB))
		abort();
	t0 = bench_now_ns();
	if (use_dax) {
		if (uhmm_dax_map(dev, PROT_READ | PROT_WRITE, (void **)&p))
			abort();
	} else {
		p = mmap(NULL, GiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
		if (p == MAP_FAILED)
			abort();
	}
	for (size_t i = 0; i < GiB; i += 4096)
		p[i] = 1;
	t0 = bench_now_ns() - t0;
	if (use_dax)
		uhmm_dax_unmap(dev, p);
	else
		munmap(p, GiB);
	return (double)t0 / 1e9;
}

int main(void)
{
	static const size_t sizes[] = { 16, 64, 256, 1024, 4096, 16384, 65536 };
	int reps = bench_reps(5), treps = reps > 2 ? 2 : reps;
	struct uhmm_dax_region *r, *big;
	struct uhmm_dax_dev *dev;
	char path[] = "/dev/shm/uhmm-bench-dax-XXXXXX";
	double tv[2][8];
	int fd;

	if (reps > 32)
		reps = 32;
	if (uhmm_dax_region_create(NULL, 256ULL << 20, UHMM_DAX_ALIGN_2M, &r) ||
	    uhmm_dax_region_seed(r, &kdev) || uhmm_dax_dev_resize(kdev, 128ULL << 20) ||
	    uhmm_dax_dev_reconfigure(kdev, UHMM_DAX_MODE_KMEM)) {
		fprintf(stderr, "bench dax: cannot set up a kmem device\n");
		return 1;
	}
	printf("%-28s %12s %12s %12s %9s %9s\n", "kmem malloc+free (ops/s)", "glibc",
	       "jemalloc", "uhmm_kmem", "vs glibc", "vs jemal.");
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		double m[3], g, j, k;
		char name[32];

		median_alloc(sizes[i], reps, m);
		g = m[GLIBC];
		j = m[JE_DEFAULT];
		k = m[KMEM];
		snprintf(name, sizeof(name), "  %zu B", sizes[i]);
		printf("%-28s %12.3g %12.3g %12.3g %8.2fx %8.2fx\n", name, g, j, k, k / g, k / j);
	}
	uhmm_dax_dev_reconfigure(kdev, UHMM_DAX_MODE_DEVDAX);
	uhmm_dax_region_close(r);

	fd = mkstemp(path);
	if (fd < 0 || uhmm_dax_region_create(path, GiB, UHMM_DAX_ALIGN_2M, &big) ||
	    uhmm_dax_region_seed(big, &dev) || uhmm_dax_dev_resize(dev, GiB) ||
	    uhmm_dax_dev_enable(dev)) {
		fprintf(stderr, "bench dax: cannot set up a 1 GiB device in /dev/shm\n");
		unlink(path);
		return 1;
	}
	for (int i = 0; i < treps; i++) {
		/* The data area starts at the align-rounded label area: 2 MiB. */
		tv[0][i] = run_touch(0, NULL, fd, 2 << 20);
		tv[1][i] = run_touch(1, dev, fd, 2 << 20);
	}
	printf("%-28s %12s %12s %12s %9s\n", "map + touch 1 GiB (s)", "plain mmap", "", "uhmm_dax_map",
	       "ratio");
	{
		double m = bench_median(tv[0], treps), d = bench_median(tv[1], treps);

		printf("%-28s %12.3f %12s %12.3f %8.2fx\n", "  tmpfs file, 4 KiB pages", m, "", d, d / m);
	}
	printf("(medians of %d interleaved runs for malloc, %d for map; ratios >1 = uhmm faster"
	       " for ops/s, slower for time;\n jemalloc's default heap and glibc purge freed pages"
	       " and fault them in again, device memory stays resident)\n", reps, treps);
	uhmm_dax_region_close(big);
	close(fd);
	unlink(path);
	return 0;
}
