// SPDX-License-Identifier: MIT
/* Two threads migrate the same range to and from one sim while a third
 * writes through the device and reads back through the CPU. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <uhmm.h>
#define NP 32
static struct uhmm_mm *mm; static struct uhmm_sim *sim; static char *p;
static atomic_bool stop;
static void *to_dev(void *a) { while (!atomic_load(&stop)) uhmm_sim_migrate_to_dev(sim, (uintptr_t)p, NP); return NULL; }
static void *to_sys(void *a) { while (!atomic_load(&stop)) uhmm_sim_migrate_to_sys(sim, (uintptr_t)p, NP); return NULL; }
int main(void)
{
	static char buf[4096], back[4096];
	pthread_t t1, t2; int bad = 0;
	uhmm_mm_open(&mm, NULL);
	uhmm_mm_alloc(mm, NP * 4096, 0, (void **)&p);
	memset(p, 0, NP * 4096);
	UHMM_OPTS(sim_opts, o, .mem_type = UHMM_SIM_PRIVATE);
	uhmm_sim_create(mm, &o, &sim);
	pthread_create(&t1, NULL, to_dev, NULL);
	pthread_create(&t2, NULL, to_sys, NULL);
	for (int it = 1; it < 20000 && bad < 5; it++) {
		int pg = it % NP;
		memset(buf, it & 0xff ? it & 0xff : 1, sizeof(buf));
		if (uhmm_sim_write(sim, (uintptr_t)(p + pg * 4096), 1, buf)) continue;
		if (uhmm_sim_read(sim, (uintptr_t)(p + pg * 4096), 1, back)) continue;
		if (memcmp(buf, back, 4096) || memcmp(buf, p + pg * 4096, 4096)) {
			printf("iteration %d page %d: wrote %#x, device reads %#x, cpu reads %#x\n",
			       it, pg, buf[0] & 0xff, back[0] & 0xff, p[pg * 4096] & 0xff);
			bad++;
		}
	}
	atomic_store(&stop, 1); pthread_join(t1, NULL); pthread_join(t2, NULL);
	uhmm_sim_destroy(sim); uhmm_mm_close(mm);
	printf("%d bad\n", bad);
	return !!bad;
}
