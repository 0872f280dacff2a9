// SPDX-License-Identifier: MIT
/* cmd_demo.c - `uhmm demo`: placeholder until the simulated device lands. */
#include <stdio.h>
#include "cli.h"

int cli_cmd_demo(int argc, char **argv)
{
	printf("uhmm demo: not built yet\n");
	return CLI_OK;
}
