/* SPDX-License-Identifier: MIT */
/* uhmm/dax.h - placeholder, being written. */
#ifndef UHMM_DAX_H
#define UHMM_DAX_H
#include <uhmm/common.h>
#endif
