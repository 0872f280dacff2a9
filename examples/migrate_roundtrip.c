// SPDX-License-Identifier: MIT
/* migrate_roundtrip.c - smallest useful uhmm program: manage memory, move it
 * into a simulated device, touch it from the CPU, check the bytes. */
#include <stdio.h>
#include <string.h>
#include <uhmm.h>

int main(void)
{
	struct uhmm_mm *mm;
	struct uhmm_sim *dev;
	size_t len = 1 << 20;
	char *p;
	int moved, err;

	err = uhmm_mm_open(&mm, NULL);
	if (err)
		return fprintf(stderr, "uhmm_mm_open: %s\n", strerror(-err)), 1;
	if (uhmm_mm_alloc(mm, len, 0, (void **)&p) || uhmm_sim_create(mm, NULL, &dev))
		return 1;
	memset(p, 0x42, len);
	moved = uhmm_sim_migrate_to_dev(dev, (uint64_t)(uintptr_t)p, len / 4096);
	for (size_t i = 0; i < len; i++)	/* CPU touch brings pages back */
		if (p[i] != 0x42)
			return fprintf(stderr, "byte %zu lost\n", i), 1;
	printf("moved %d pages to the device and back, data intact\n", moved);
	uhmm_sim_destroy(dev);
	uhmm_mm_free(mm, p, len);
	uhmm_mm_close(mm);
	return moved > 0 ? 0 : 1;
}
