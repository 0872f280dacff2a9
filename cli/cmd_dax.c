// SPDX-License-Identifier: MIT
/* cmd_dax.c - `uhmm dax`: placeholder until the dax subsystem lands. */
#include <stdio.h>
#include "cli.h"

int cli_cmd_dax(int argc, char **argv)
{
	fprintf(stderr, "uhmm: dax: not built yet\n");
	return CLI_FAIL;
}
