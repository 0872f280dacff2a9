// SPDX-License-Identifier: MIT
/* Replays every committed fuzz corpus file (tests/fuzz/corpus/<target>/)
 * through the gcc-built replay binaries ($(BUILD)/fuzz/replay_<target>), so
 * a fixed crash stays fixed without clang. `make fuzz SECONDS=N` fuzzes. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include "t_util.h"

/* Run replay_<target> over its corpus; its exit status. */
static int replay(const char *target)
{
	char self[PATH_MAX], cmd[3 * PATH_MAX], *dir;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	int st;

	ck_assert_int_gt(n, 0);
	self[n] = 0;
	dir = dirname(self);	/* $(BUILD)/tests */
	snprintf(cmd, sizeof(cmd), "%s/../fuzz/replay_%s %s/../../tests/fuzz/corpus/%s 2>&1",
		 dir, target, dir, target);
	st = system(cmd);
	fflush(stdout);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Corrupted or well-formed label areas: rejected or round-tripped, never a crash. */
START_TEST(fuzz_dax_label_corpus_replays_clean)
{
	ck_assert_int_eq(replay("fuzz_dax_label"), 0);
}
END_TEST

/* Size strings: no crash, no negative size accepted. */
START_TEST(fuzz_cli_size_corpus_replays_clean)
{
	ck_assert_int_eq(replay("fuzz_cli_size"), 0);
}
END_TEST

/* API call sequences: shadow checks and errno checks hold. */
START_TEST(fuzz_api_corpus_replays_clean)
{
	ck_assert_int_eq(replay("fuzz_api"), 0);
}
END_TEST

int main(void)
{
	TCase *label = tcase_create("fuzz_dax_label");
	TCase *size = tcase_create("fuzz_cli_size");
	TCase *api = tcase_create("fuzz_api");

	tcase_add_test(label, fuzz_dax_label_corpus_replays_clean);
	tcase_add_test(size, fuzz_cli_size_corpus_replays_clean);
	tcase_add_test(api, fuzz_api_corpus_replays_clean);
	return t_run_suite("fuzz_replay", label, size, api, NULL);
}
