/* SPDX-License-Identifier: MIT */
/* uhmm/mirror.h - placeholder, being written. */
#ifndef UHMM_MIRROR_H
#define UHMM_MIRROR_H
#include <uhmm/common.h>
#endif
