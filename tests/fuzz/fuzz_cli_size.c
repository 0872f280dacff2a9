// SPDX-License-Identifier: MIT
/* fuzz_cli_size.c - the CLI's human size parser ("2G", "512M", "0x1000").
 * parse_size() is static in cli/cmd_dax.c, so this file includes it. Checks:
 * no crash, and an accepted string is never negative and never exceeds 2^64. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../cli/cmd_dax.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* cmd_dax.c calls this; the real one lives in cli/uhmm.c */
void cli_error(const char *cmd, const char *object, int err)
{
	(void)cmd;
	(void)object;
	(void)err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char s[64];
	uint64_t v = 0;
	size_t n = size < sizeof(s) - 1 ? size : sizeof(s) - 1;

	memcpy(s, data, n);
	s[n] = 0;
	if (parse_size(s, &v))
		return 0;
	/* strtoull() skips blanks and accepts a sign: " -1" must not parse as 2^64-1 */
	if (strchr(s, '-')) {
		fprintf(stderr, "parse_size accepted a negative size: \"%s\" -> %llu\n", s,
			(unsigned long long)v);
		abort();
	}
	return 0;
}
