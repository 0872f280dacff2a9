/* SPDX-License-Identifier: MIT */
/* cli.h - subcommands of the uhmm command line; public API only. */
#ifndef UHMM_CLI_H
#define UHMM_CLI_H

/* Exit codes: 0 ok, 1 the operation failed, 2 usage error. */
#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

/* Each takes argv with argv[0] = the subcommand name. */
int cli_cmd_demo(int argc, char **argv);
int cli_cmd_dax(int argc, char **argv);

/* Print "uhmm: <cmd>: <object>: <strerror(-err)>" on stderr. */
void cli_error(const char *cmd, const char *object, int err);

#endif
