// SPDX-License-Identifier: MIT
/* cmd_demo.c - `uhmm demo`: managed memory mirrored into a simulated device,
 * half migrated to device memory, updated by the device, touched by the CPU
 * (transparent fault-back), every byte verified. Public API only. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uhmm.h>
#include "cli.h"

#define PAGE 4096UL

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t expect(uint64_t word, uint64_t gen)
{
	return word * 0x9E3779B97F4A7C15ULL + gen;
}

static long verify(const uint64_t *p, size_t words, uint64_t split, uint64_t gen_lo,
		   uint64_t gen_hi)
{
	for (size_t i = 0; i < words; i++)
		if (p[i] != expect(i, i < split ? gen_lo : gen_hi))
			return (long)i;
	return -1;
}

int cli_cmd_demo(int argc, char **argv)
{
	bool inthread = argc > 1 && !strcmp(argv[1], "--inthread");
	UHMM_OPTS(mm_opts, mo, .flags = inthread ? UHMM_MM_INTHREAD : 0);
	size_t mib = argc > 1 + inthread ? strtoul(argv[1 + inthread], NULL, 0) : 64;
	size_t len = mib << 20, npages = len / PAGE, words = len / 8;
	struct uhmm_sim_counters sc;
	struct uhmm_mm_stat st;
	struct uhmm_sim *sim;
	struct uhmm_mm *mm;
	uint64_t *p, *dbuf;
	uint64_t a, half;
	double t0, t_fill, t_mirror, t_todev, t_devupd, t_touch, t_verify;
	long bad;
	int err, moved;

	if (!mib || mib > 4096 || argc > 2 + inthread) {
		fprintf(stderr, "usage: uhmm demo [--inthread] [MiB (1..4096, default 64)]\n");
		return CLI_USAGE;
	}
	err = uhmm_mm_open(&mm, &mo);
	if (err) {
		cli_error("demo", "mm", err);
		return CLI_FAIL;
	}
	err = uhmm_mm_alloc(mm, len, 0, (void **)&p);
	if (!err) {
		UHMM_OPTS(sim_opts, o, .mem_type = UHMM_SIM_PRIVATE,
			  .capacity_pages = npages);
		err = uhmm_sim_create(mm, &o, &sim);
	}
	dbuf = malloc(len / 2);
	if (err || !dbuf) {
		cli_error("demo", "setup", err ? err : -12);
		uhmm_mm_close(mm);
		return CLI_FAIL;
	}
	a = (uint64_t)(uintptr_t)p;
	half = npages / 2;

	t0 = now_s();
	for (size_t i = 0; i < words; i++)	/* first touch: managed faults */
		p[i] = expect(i, 1);
	t_fill = now_s() - t0;

	t0 = now_s();
	err = uhmm_sim_read(sim, a, npages / 2, dbuf);	/* device mirrors it */
	t_mirror = now_s() - t0;
	if (err || memcmp(dbuf, p, len / 2)) {
		fprintf(stderr, "uhmm: demo: device read mismatch (%d)\n", err);
		return CLI_FAIL;
	}

	t0 = now_s();
	moved = uhmm_sim_migrate_to_dev(sim, a + half * PAGE, npages - half);
	t_todev = now_s() - t0;

	/* the device updates the upper half in its own memory */
	t0 = now_s();
	for (size_t off = 0; off < npages - half; off += 1024) {
		size_t n = npages - half - off < 1024 ? npages - half - off : 1024;
		uint64_t *w = dbuf;

		for (size_t i = 0; i < n * PAGE / 8; i++)
			w[i] = expect((half + off) * PAGE / 8 + i, 2);
		err = uhmm_sim_write(sim, a + (half + off) * PAGE, n, dbuf);
		if (err)
			break;
	}
	t_devupd = now_s() - t0;
	uhmm_sim_counters(sim, &sc);

	/* the CPU touches everything: the device pages come back on demand */
	t0 = now_s();
	bad = verify(p, words, half * PAGE / 8, 1, 2);
	t_touch = now_s() - t0;
	t0 = now_s();
	if (bad < 0)
		bad = verify(p, words, half * PAGE / 8, 1, 2);
	t_verify = now_s() - t0;
	uhmm_sim_counters(sim, &sc);
	uhmm_mm_stat(mm, &st);

	printf("uhmm demo: %zu MiB managed, simulated device-private memory, faults %s\n",
	       mib, inthread ? "in-thread (SIGBUS mode)" : "on a handler thread");
	printf("%-34s %10s %10s %12s\n", "step", "pages", "ms", "GB/s");
	printf("%-34s %10zu %10.2f %12.2f\n", "CPU first touch (managed fill)",
	       npages, t_fill * 1e3, len / t_fill / 1e9);
	printf("%-34s %10zu %10.2f %12.2f\n", "device read through mirror",
	       npages / 2, t_mirror * 1e3, len / 2 / t_mirror / 1e9);
	printf("%-34s %10d %10.2f %12.2f\n", "migrate to device", moved,
	       t_todev * 1e3, moved * (double)PAGE / t_todev / 1e9);
	printf("%-34s %10zu %10.2f %12.2f\n", "device writes its pages",
	       npages - half, t_devupd * 1e3, (npages - half) * (double)PAGE / t_devupd / 1e9);
	printf("%-34s %10" PRIu64 " %10.2f %12.2f\n", "CPU touch (fault-back to RAM)",
	       sc.cpu_faults, t_touch * 1e3, len / t_touch / 1e9);
	printf("%-34s %10zu %10.2f %12.2f\n", "CPU re-read (all in RAM)", npages,
	       t_verify * 1e3, len / t_verify / 1e9);
	printf("handler faults %" PRIu64 ", fills %" PRIu64 ", device faults %" PRIu64
	       ", invalidations %" PRIu64 "\n",
	       st.faults, st.fills, st.device_faults, st.invalidations);
	printf("fault-back latency %.1f us/page\n",
	       sc.cpu_faults ? t_touch * 1e6 / (double)sc.cpu_faults : 0.0);
	uhmm_sim_destroy(sim);
	uhmm_mm_free(mm, p, len);
	uhmm_mm_close(mm);
	free(dbuf);
	if (bad >= 0 || moved <= 0 || err) {
		printf("verify: FAILED at word %ld (moved %d, err %d)\n", bad, moved, err);
		return CLI_FAIL;
	}
	printf("verify: every byte correct\n");
	return CLI_OK;
}
