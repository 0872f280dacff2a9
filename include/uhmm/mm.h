/* SPDX-License-Identifier: MIT */
/* uhmm/mm.h - placeholder, being written. */
#ifndef UHMM_MM_H
#define UHMM_MM_H
#include <uhmm/common.h>
#endif
