/* SPDX-License-Identifier: MIT */
/* uhmm.h - umbrella header: heterogeneous memory management in user space. */
#ifndef UHMM_H
#define UHMM_H

#include <uhmm/common.h>
#include <uhmm/pagemap.h>
#include <uhmm/mm.h>
#include <uhmm/mirror.h>
#include <uhmm/migrate.h>
#include <uhmm/sim.h>
#include <uhmm/dax.h>

#endif
