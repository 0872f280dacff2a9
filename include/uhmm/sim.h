/* SPDX-License-Identifier: MIT */
/* uhmm/sim.h - placeholder, being written. */
#ifndef UHMM_SIM_H
#define UHMM_SIM_H
#include <uhmm/common.h>
#endif
