// SPDX-License-Identifier: MIT
/* Build: cc -Iinclude -D_GNU_SOURCE -pthread FILE.c build/libuhmm.a -ljemalloc */
/* DONTNEED racing migrate_to_dev: data written before the DONTNEED comes back. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>
#define NP 64
static struct uhmm_mm *mm; static struct uhmm_sim *sim; static char *p;
static atomic_bool stop;
static void *mig(void *a)
{
	while (!atomic_load(&stop)) {
		uhmm_sim_migrate_to_dev(sim, (uintptr_t)p, NP);
		uhmm_sim_migrate_to_sys(sim, (uintptr_t)p, NP);
	}
	return NULL;
}
int main(int argc, char **argv)
{
	pthread_t t; int bad = 0, raw = argc > 1;
	uhmm_mm_open(&mm, NULL);
	uhmm_mm_alloc(mm, NP * 4096, 0, (void **)&p);
	UHMM_OPTS(sim_opts, o, .mem_type = UHMM_SIM_PRIVATE);
	uhmm_sim_create(mm, &o, &sim);
	pthread_create(&t, NULL, mig, NULL);
	for (int it = 0; it < 20000 && bad < 5; it++) {
		int pg = it % NP;
		char *q = p + pg * 4096;
		memset(q, 0x5a, 4096);
		if (raw) madvise(q, 4096, MADV_DONTNEED); else uhmm_madvise(q, 4096, MADV_DONTNEED);
		if (q[0] || q[4095]) { printf("iteration %d page %d: %#x after DONTNEED (want 0)\n", it, pg, q[0] & 0xff); bad++; }
	}
	atomic_store(&stop, 1); pthread_join(t, NULL);
	uhmm_sim_destroy(sim); uhmm_mm_close(mm);
	printf("%s: %d bad\n", raw ? "madvise" : "uhmm_madvise", bad);
	return !!bad;
}
