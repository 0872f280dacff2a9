// SPDX-License-Identifier: MIT
/* First touch of managed memory after uhmm_mprotect() split its VMA. */
#include <stdio.h>
#include <sys/mman.h>
#include <uhmm.h>
int main(int argc, char **argv)
{
	struct uhmm_mm *mm; char *p;
	uhmm_mm_open(&mm, NULL);
	uhmm_mm_alloc(mm, 64 * 4096, 0, (void **)&p);
	printf("mprotect: %d\n", uhmm_mprotect(p + 10 * 4096, 10 * 4096, PROT_READ)); fflush(stdout);
	printf("read p[0]: %d\n", p[0]); fflush(stdout);
	p[4096] = 1;
	printf("wrote p[4096]\n"); fflush(stdout);
	printf("read ro page: %d\n", p[12 * 4096]); fflush(stdout);
	uhmm_mm_close(mm);
	return 0;
}
