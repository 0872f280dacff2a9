// SPDX-License-Identifier: MIT
/* uhmm.c - the uhmm command line: dispatch to subcommands (demo, dax). */
#include <stdio.h>
#include <string.h>
#include <uhmm.h>
#include "cli.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: uhmm [-v] <command> [args]\n"
		   "commands:\n"
		   "  demo                 migrate memory to a simulated device and back\n"
		   "  dax <subcommand>     manage dax regions and devices (uhmm dax --help)\n");
}

static void log_stderr(enum uhmm_log_level level, const char *msg)
{
	fprintf(stderr, "uhmm: [%d] %s\n", (int)level, msg);
}

void cli_error(const char *cmd, const char *object, int err)
{
	fprintf(stderr, "uhmm: %s: %s: %s\n", cmd, object, strerror(err < 0 ? -err : err));
}

int main(int argc, char **argv)
{
	int i = 1;

	if (i < argc && !strcmp(argv[i], "-v")) {
		uhmm_set_log(log_stderr, UHMM_LOG_DEBUG);
		i++;
	}
	if (i >= argc) {
		usage(stderr);
		return CLI_USAGE;
	}
	if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
		usage(stdout);
		return CLI_OK;
	}
	if (!strcmp(argv[i], "demo"))
		return cli_cmd_demo(argc - i, argv + i);
	if (!strcmp(argv[i], "dax"))
		return cli_cmd_dax(argc - i, argv + i);
	fprintf(stderr, "uhmm: unknown command '%s'\n", argv[i]);
	usage(stderr);
	return CLI_USAGE;
}
