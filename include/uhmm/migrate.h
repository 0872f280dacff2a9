/* SPDX-License-Identifier: MIT */
/* uhmm/migrate.h - placeholder, being written. */
#ifndef UHMM_MIGRATE_H
#define UHMM_MIGRATE_H
#include <uhmm/common.h>
#endif
