// SPDX-License-Identifier: MIT
/* Bounded runs of the stress driver (tests/stress/stress.c, built as
 * $(BUILD)/stress next to the tests directory): a fixed seed, ~12 s of
 * concurrent operations with shadow verification, and a few seconds of the
 * dax driver. `make stress SECONDS=600` is the long run. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include "t_util.h"

/*
 * Every operation runs, plain madvise(MADV_DONTNEED) included. To leave
 * some out while chasing a bug: UHMM_STRESS_SKIP="op,op" (names as the
 * driver prints them).
 */

static char stress_bin[PATH_MAX];

static void find_stress(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	ck_assert_int_gt(n, 0);
	self[n] = 0;
	/* $(BUILD)/tests/test_stress -> $(BUILD)/stress */
	snprintf(stress_bin, sizeof(stress_bin), "%s/../stress", dirname(self));
	if (access(stress_bin, X_OK))
		ck_abort_msg("%s not built (make all)", stress_bin);
}

/* Run the driver, echo its output, return its exit status; *out gets the output. */
static int run_stress(const char *args, char *out, size_t outlen)
{
	char cmd[PATH_MAX + 512];
	size_t used = 0;
	FILE *f;
	int st;

	find_stress();
	snprintf(cmd, sizeof(cmd), "UHMM_SEED=${UHMM_SEED:-20240601} %s %s 2>&1", stress_bin, args);
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	out[0] = 0;
	while (fgets(out + used, (int)(outlen - used), f)) {
		fputs(out + used, stdout);
		used += strlen(out + used);
		if (outlen - used < 512)
			used = 0;	/* keep the tail: the result line is last */
	}
	st = pclose(f);
	fflush(stdout);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Random mm/sim operations for 12 s: no mismatch, no hang, no leaked device page. */
START_TEST(stress_mm_bounded_run_has_no_mismatch)
{
	static char out[1 << 16];
	const char *skip = getenv("UHMM_STRESS_SKIP");
	char args[512];
	int rc;

	if (!skip)
		skip = "";
	snprintf(args, sizeof(args), "--duration 12 --hang 20 --chunks 8%s%s%s",
		 *skip ? " --skip '" : "", skip, *skip ? "'" : "");
	rc = run_stress(args, out, sizeof(out));
	ck_assert_msg(strstr(out, "mismatches 0 ") != NULL, "stress reported mismatches");
	ck_assert_msg(strstr(out, "hangs 0 ") != NULL, "stress reported a hang");
	ck_assert_int_eq(rc, 0);
}
END_TEST

/* Random dax operations for 5 s: content and layout checks all pass. */
START_TEST(stress_dax_bounded_run_has_no_mismatch)
{
	static char out[1 << 16];
	int rc = run_stress("--dax --duration 5", out, sizeof(out));

	ck_assert_msg(strstr(out, "mismatches 0 unexpected 0") != NULL,
		      "dax stress reported mismatches or unexpected results");
	ck_assert_int_eq(rc, 0);
}
END_TEST

int main(void)
{
	TCase *mm = tcase_create("stress_mm");
	TCase *dax = tcase_create("stress_dax");

	tcase_add_test(mm, stress_mm_bounded_run_has_no_mismatch);
	tcase_add_test(dax, stress_dax_bounded_run_has_no_mismatch);
	return t_run_suite("stress", mm, dax, NULL);
}
