// SPDX-License-Identifier: MIT
/* bench/pagemap.c - pfn -> page lookups and uhmm_get/put_dev_pagemap pairs per
 * second, 1 and 2 threads, against raw baselines measured in the same run. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uhmm/pagemap.h>
#include "bench_util.h"

#define NR_PGMAPS 32			/* each with 2 ranges: 64 lookup entries */
#define RANGE_PAGES 4096ULL		/* 16 MiB per range */
#define NR_PFNS (1U << 16)		/* random pfn stream, cycled */
#define MAX_THREADS 2

static struct uhmm_pagemap pgmaps[NR_PGMAPS];
static struct uhmm_dev_range ranges[NR_PGMAPS][2];

/* The baseline's copy of the registry: same layout, no synchronisation. */
struct ent {
	uint64_t start, end;
	struct uhmm_page *pages;
	atomic_long *shared;		/* naive design: one refcount per pagemap */
};
static struct ent ents[2 * NR_PGMAPS];
static atomic_long shared_ref[NR_PGMAPS] __attribute__((aligned(64)));
static uint64_t pfns_all[NR_PFNS];	/* random pfns over every pagemap */
static uint64_t pfns_one[NR_PFNS];	/* random pfns of pagemap 0 only */

static void t_page_free(struct uhmm_page *page) { (void)page; }
static int t_migrate(struct uhmm_fault *f) { (void)f; return 0; }
static const struct uhmm_pagemap_ops ops = { .page_free = t_page_free,
					     .migrate_to_ram = t_migrate };
static int owner;

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static const struct ent *base_find(uint64_t pfn)
{
	size_t lo = 0, hi = 2 * NR_PGMAPS;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ents[mid].end <= pfn)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < 2 * NR_PGMAPS && ents[lo].start <= pfn ? &ents[lo] : NULL;
}

enum op { OP_LOOKUP, OP_BASE_LOOKUP, OP_GETPUT, OP_BASE_GETPUT, OP_NAIVE_GETPUT };

struct worker {
	pthread_t th;
	enum op op;
	const uint64_t *pfns;
	unsigned offset;
	uint64_t ops;
	uintptr_t sink;
	atomic_long own_ref __attribute__((aligned(64)));	/* uncontended counter */
} __attribute__((aligned(64)));

static struct worker workers[MAX_THREADS];
static pthread_barrier_t start_bar;
static atomic_bool stop;

static void *worker_fn(void *p)
{
	struct worker *w = p;
	uint64_t n = 0, i = w->offset;
	uintptr_t sink = 0;

	pthread_barrier_wait(&start_bar);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		for (int k = 0; k < 256; k++, i++) {
			uint64_t pfn = w->pfns[i % NR_PFNS];
			struct uhmm_pagemap *pg;
			const struct ent *e;

			switch (w->op) {
			case OP_LOOKUP:
				sink += (uintptr_t)uhmm_pfn_to_page(pfn);
				break;
			case OP_BASE_LOOKUP:
				e = base_find(pfn);
				sink += (uintptr_t)(e ? e->pages + (pfn - e->start) : NULL);
				break;
			case OP_GETPUT:
				if (uhmm_get_dev_pagemap(pfn, &pg) == 0)
					sink += (uintptr_t)uhmm_put_dev_pagemap(pg) + 1;
				break;
			case OP_BASE_GETPUT:
				e = base_find(pfn);
				atomic_fetch_add(&w->own_ref, 1);
				sink += (uintptr_t)e->pages;
				atomic_fetch_sub(&w->own_ref, 1);
				break;
			case OP_NAIVE_GETPUT:
				e = base_find(pfn);
				atomic_fetch_add(e->shared, 1);
				sink += (uintptr_t)e->pages;
				atomic_fetch_sub(e->shared, 1);
				break;
			}
		}
		n += 256;
	}
	w->ops = n;
	w->sink = sink;
	return NULL;
}

/* Millions of operations per second, all threads together. */
static double run(enum op op, int nthreads, const uint64_t *pfns, unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	uint64_t t0, t1, total = 0;

	atomic_store(&stop, false);
	pthread_barrier_init(&start_bar, NULL, (unsigned)nthreads + 1);
	for (int t = 0; t < nthreads; t++) {
		workers[t].op = op;
		workers[t].pfns = pfns;
		workers[t].offset = (unsigned)t * (NR_PFNS / MAX_THREADS);
		if (pthread_create(&workers[t].th, NULL, worker_fn, &workers[t])) {
			fprintf(stderr, "bench_pagemap: pthread_create failed\n");
			exit(1);
		}
	}
	pthread_barrier_wait(&start_bar);
	t0 = bench_now_ns();
	nanosleep(&ts, NULL);
	atomic_store(&stop, true);
	for (int t = 0; t < nthreads; t++) {
		pthread_join(workers[t].th, NULL);
		total += workers[t].ops;
	}
	t1 = bench_now_ns();
	pthread_barrier_destroy(&start_bar);
	return (double)total / ((double)(t1 - t0) / 1e9) / 1e6;
}

static void setup(void)
{
	uint64_t s = 0x9e3779b97f4a7c15ULL;
	uint64_t dev;

	/* Two ranges per pagemap with a gap, pagemaps interleaved with holes. */
	if (uhmm_request_free_region(NULL, NR_PGMAPS * 4 * RANGE_PAGES * UHMM_PAGE_SIZE,
				     0, &dev)) {
		fprintf(stderr, "bench_pagemap: no device address space\n");
		exit(1);
	}
	for (int i = 0; i < NR_PGMAPS; i++) {
		uint64_t a = dev + (uint64_t)i * 4 * RANGE_PAGES * UHMM_PAGE_SIZE;

		ranges[i][0].start = a;
		ranges[i][0].end = a + RANGE_PAGES * UHMM_PAGE_SIZE;
		ranges[i][1].start = a + 2 * RANGE_PAGES * UHMM_PAGE_SIZE;
		ranges[i][1].end = a + 3 * RANGE_PAGES * UHMM_PAGE_SIZE;
		pgmaps[i] = (struct uhmm_pagemap){
			.type = UHMM_PAGEMAP_PRIVATE, .ops = &ops, .owner = &owner,
			.nr_range = 2, .ranges = ranges[i],
		};
		if (uhmm_memremap_pages(&pgmaps[i])) {
			fprintf(stderr, "bench_pagemap: memremap failed\n");
			exit(1);
		}
		for (int r = 0; r < 2; r++) {
			struct ent *e = &ents[2 * i + r];

			e->start = ranges[i][r].start >> UHMM_PAGE_SHIFT;
			e->end = ranges[i][r].end >> UHMM_PAGE_SHIFT;
			e->pages = uhmm_pfn_to_page(e->start);
			e->shared = &shared_ref[i];
		}
	}
	for (unsigned k = 0; k < NR_PFNS; k++) {
		const struct ent *e = &ents[rng(&s) % (2 * NR_PGMAPS)];

		pfns_all[k] = e->start + rng(&s) % RANGE_PAGES;
		pfns_one[k] = ents[rng(&s) % 2].start + rng(&s) % RANGE_PAGES;
	}
}

struct row {
	const char *name;
	enum op op, base, naive;	/* naive == op: no naive column */
	const uint64_t *pfns;
};

int main(void)
{
	const struct row rows[] = {
		{ "pfn_to_page, random pfn", OP_LOOKUP, OP_BASE_LOOKUP, OP_LOOKUP, pfns_all },
		{ "get+put, random pfn", OP_GETPUT, OP_BASE_GETPUT, OP_NAIVE_GETPUT, pfns_all },
		{ "get+put, one pagemap", OP_GETPUT, OP_BASE_GETPUT, OP_NAIVE_GETPUT, pfns_one },
	};
	const char *ms_env = getenv("BENCH_MS");
	unsigned ms = ms_env && atoi(ms_env) > 0 ? (unsigned)atoi(ms_env) : 60;
	int reps = bench_reps(5);
	double *u = calloc((size_t)reps, sizeof(double));
	double *b = calloc((size_t)reps, sizeof(double));
	double *n = calloc((size_t)reps, sizeof(double));

	if (!u || !b || !n)
		return 1;
	setup();
	printf("pagemap registry: %d pagemaps x 2 ranges (%d lookup entries), %llu pages each; "
	       "median of %d runs of %u ms\n", NR_PGMAPS, 2 * NR_PGMAPS,
	       2 * RANGE_PAGES, reps, ms);
	printf("baseline: lookups = plain binary search of the same sorted array, no sync;\n"
	       "          get+put = that search + uncontended atomic inc/dec (per-thread counter);\n"
	       "          naive   = that search + atomic inc/dec of one counter per pagemap\n\n");
	printf("%-26s %7s %12s %12s %8s %12s\n", "operation", "threads", "uhmm Mop/s",
	       "base Mop/s", "uhmm/base", "naive Mop/s");
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		for (int th = 1; th <= MAX_THREADS; th++) {
			bool has_naive = rows[r].naive != rows[r].op;

			for (int k = 0; k < reps; k++) {
				u[k] = run(rows[r].op, th, rows[r].pfns, ms);
				b[k] = run(rows[r].base, th, rows[r].pfns, ms);
				n[k] = has_naive ? run(rows[r].naive, th, rows[r].pfns, ms) : 0;
			}
			double mu = bench_median(u, reps), mb = bench_median(b, reps);
			double mn = bench_median(n, reps);

			printf("%-26s %7d %12.1f %12.1f %8.2f ", rows[r].name, th, mu, mb, mu / mb);
			if (has_naive)
				printf("%12.1f\n", mn);
			else
				printf("%12s\n", "-");
		}
	}
	for (int i = 0; i < NR_PGMAPS; i++)
		uhmm_memunmap_pages(&pgmaps[i]);
	free(u);
	free(b);
	free(n);
	return 0;
}
