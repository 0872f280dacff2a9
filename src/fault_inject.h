/* SPDX-License-Identifier: MIT */
/*
 * fault_inject.h - make chosen internal calls fail on a schedule, to test
 * that every failure surfaces as a negative errno or a retry, never as lost
 * data, a leak or a hang. Compiled in with -DUHMM_FAULT_INJECT; without it
 * every hook is the constant false and costs nothing.
 *
 * A hook goes right before the call it simulates failing:
 *
 *	if (uhmm_fi_fail(UHMM_FI_UFFD_COPY)) {
 *		errno = uhmm_fi_errno(UHMM_FI_UFFD_COPY, EAGAIN);
 *		rc = -1;
 *	} else {
 *		rc = ioctl(mm->uffd, UFFDIO_COPY, &c);
 *	}
 *
 * Schedule: the environment variable UHMM_FI, read once at the first hook:
 *	UHMM_FI="site:spec[:errno],site:spec..."
 * where spec is "every-N" (calls N, 2N, ... fail), "after-N" (every call
 * after the first N), "once-N" (only call N), or "P%" (each call with
 * probability P, seeded by UHMM_FI_SEED). errno is a number or a name
 * (ENOMEM, EAGAIN, EIO, ...); default is the site's natural errno.
 * Site "all" applies to every site. Example:
 *	UHMM_FI="page_alloc:every-7,uffd_copy:5%:EAGAIN,label_write:once-3"
 * uhmm_fi_stats() reports calls and injected failures per site.
 */
#ifndef UHMM_FAULT_INJECT_H
#define UHMM_FAULT_INJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "internal.h"

enum uhmm_fi_site {
	UHMM_FI_PAGE_ALLOC,	/* device page allocation: -ENOSPC / -ENOMEM */
	UHMM_FI_UFFD_COPY,	/* UFFDIO_COPY: EAGAIN, ENOMEM */
	UHMM_FI_UFFD_ZEROPAGE,	/* UFFDIO_ZEROPAGE: EAGAIN, ENOMEM */
	UHMM_FI_UFFD_MOVE,	/* UFFDIO_MOVE: EAGAIN, EBUSY, ENOMEM */
	UHMM_FI_UFFD_WP,	/* UFFDIO_WRITEPROTECT: EAGAIN */
	UHMM_FI_UFFD_REGISTER,	/* UFFDIO_REGISTER: ENOMEM */
	UHMM_FI_MMAP,		/* mmap of staging/pool/direct-map memory: ENOMEM */
	UHMM_FI_MALLOC,		/* internal malloc/calloc/realloc: ENOMEM */
	UHMM_FI_THREAD,		/* pthread_create: EAGAIN */
	UHMM_FI_LABEL_WRITE,	/* dax label write: short write (EIO) */
	UHMM_FI_LABEL_SYNC,	/* msync of the label: EIO */
	UHMM_FI_PROCESS_VM,	/* process_vm_readv/writev in sim: EFAULT */
	UHMM_FI_NR,
};

#ifdef UHMM_FAULT_INJECT
/* True when this call of @site must fail. Thread-safe, lock-free. */
UHMM_HIDDEN bool uhmm_fi_fail(enum uhmm_fi_site site);
/* The errno to report for @site: the schedule's (with @natural's sign), else @natural. */
UHMM_HIDDEN int uhmm_fi_errno(enum uhmm_fi_site site, int natural);
/* Re-read UHMM_FI (tests change it between cases); resets the counters. */
UHMM_HIDDEN void uhmm_fi_configure(const char *spec);
/* Print "site calls injected" per site to @f; returns failures injected. */
UHMM_HIDDEN uint64_t uhmm_fi_stats(FILE *f);
/*
 * The library's own malloc/calloc/realloc: a FAULT_INJECT build renames the
 * library objects' references to these (objcopy --redefine-sym, see the
 * Makefile), so tests, libc and this file keep the real allocator. They
 * return NULL with errno ENOMEM when the "malloc" site fails.
 */
UHMM_HIDDEN void *uhmm_fi_malloc(size_t size);
UHMM_HIDDEN void *uhmm_fi_calloc(size_t nmemb, size_t size);
UHMM_HIDDEN void *uhmm_fi_realloc(void *ptr, size_t size);
#else
static inline bool uhmm_fi_fail(enum uhmm_fi_site site)
{
	(void)site;
	return false;
}
static inline int uhmm_fi_errno(enum uhmm_fi_site site, int natural)
{
	(void)site;
	return natural;
}
static inline void uhmm_fi_configure(const char *spec)
{
	(void)spec;
}
static inline uint64_t uhmm_fi_stats(FILE *f)
{
	(void)f;
	return 0;
}
#endif

#endif
