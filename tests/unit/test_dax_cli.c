// SPDX-License-Identifier: MIT
/* Tests for `uhmm dax`: runs tests/cli_dax.sh against the built CLI, which
 * checks the JSON of `list` and `create-device`, errors and exit codes. */
#include <check.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "t_util.h"

/*
 * The CLI is BUILD/uhmm next to BUILD/tests/ (UHMM_BIN overrides it); the
 * script is tests/cli_dax.sh beside BUILD/ (UHMM_CLI_SCRIPT overrides it).
 */
static int cli_path(char *out, size_t len, char *script, size_t slen)
{
	char exe[PATH_MAX - 64];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		return -1;
	exe[n] = 0;
	dirname(exe);
	if (getenv("UHMM_BIN"))
		snprintf(out, len, "%s", getenv("UHMM_BIN"));
	else
		snprintf(out, len, "%s/../uhmm", exe);
	if (getenv("UHMM_CLI_SCRIPT"))
		snprintf(script, slen, "%s", getenv("UHMM_CLI_SCRIPT"));
	else
		snprintf(script, slen, "%s/../../tests/cli_dax.sh", exe);
	return 0;
}

/* Every dax subcommand, its JSON and its errors, as one scripted session. */
START_TEST(cli_dax_json_session)
{
	char bin[PATH_MAX], script[PATH_MAX], cmd[2 * PATH_MAX + 64];
	int st;

	ck_assert_int_eq(cli_path(bin, sizeof(bin), script, sizeof(script)), 0);
	if (access(bin, X_OK)) {
		t_skip("CLI %s not built (make all)", bin);
		return;
	}
	if (system("python3 -c 'import json' >/dev/null 2>&1")) {
		t_skip("python3 is needed to parse the CLI's JSON");
		return;
	}
	snprintf(cmd, sizeof(cmd), "bash '%s' '%s'", script, bin);
	st = system(cmd);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed: %d", cmd, st);
}
END_TEST

int main(void)
{
	TCase *tc = tcase_create("cli_dax");

	tcase_add_test(tc, cli_dax_json_session);
	return t_run_suite("dax_cli", tc, NULL);
}
