// SPDX-License-Identifier: MIT
/* fault_inject.c - the UHMM_FI schedule behind uhmm_fi_fail(); built only
 * with -DUHMM_FAULT_INJECT (see fault_inject.h for the syntax). */
#include "fault_inject.h"

#ifdef UHMM_FAULT_INJECT
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum fi_kind { FI_OFF, FI_EVERY, FI_AFTER, FI_ONCE, FI_PERCENT };

/* Atomic (relaxed): tests reconfigure while handler threads run hooks. */
struct fi_rule {
	_Atomic int kind;	/* enum fi_kind */
	_Atomic uint64_t n;	/* N, or percent */
	_Atomic int err;	/* 0: the site's natural errno */
	_Atomic uint64_t calls;
	_Atomic uint64_t injected;
};

static const char *const fi_names[UHMM_FI_NR] = {
	[UHMM_FI_PAGE_ALLOC] = "page_alloc",	[UHMM_FI_UFFD_COPY] = "uffd_copy",
	[UHMM_FI_UFFD_ZEROPAGE] = "uffd_zeropage", [UHMM_FI_UFFD_MOVE] = "uffd_move",
	[UHMM_FI_UFFD_WP] = "uffd_wp",		[UHMM_FI_UFFD_REGISTER] = "uffd_register",
	[UHMM_FI_MMAP] = "mmap",		[UHMM_FI_MALLOC] = "malloc",
	[UHMM_FI_THREAD] = "thread",		[UHMM_FI_LABEL_WRITE] = "label_write",
	[UHMM_FI_LABEL_SYNC] = "label_sync",	[UHMM_FI_PROCESS_VM] = "process_vm",
};

static const struct { const char *name; int err; } fi_errnos[] = {
	{ "ENOMEM", ENOMEM }, { "EAGAIN", EAGAIN }, { "EIO", EIO }, { "EBUSY", EBUSY },
	{ "EFAULT", EFAULT }, { "ENOSPC", ENOSPC }, { "EINTR", EINTR }, { "EEXIST", EEXIST },
	{ "ENOENT", ENOENT }, { "EINVAL", EINVAL },
};

static struct fi_rule fi_rules[UHMM_FI_NR];
static _Atomic uint64_t fi_rng = 0x853c49e6748fea9bULL;
static pthread_once_t fi_once = PTHREAD_ONCE_INIT;

static int fi_parse_errno(const char *s)
{
	for (size_t i = 0; i < UHMM_ARRAY_SIZE(fi_errnos); i++)
		if (!strcmp(s, fi_errnos[i].name))
			return fi_errnos[i].err;
	return atoi(s) > 0 ? atoi(s) : 0;
}

/* "site:spec[:errno]" */
static void fi_parse_one(char *item)
{
	char *site = strtok(item, ":"), *spec = strtok(NULL, ":"), *err = strtok(NULL, ":");
	struct {
		enum fi_kind kind;
		uint64_t n;
		int err;
	} r = { FI_OFF, 0, 0 };

	if (!site || !spec)
		return;
	if (!strncmp(spec, "every-", 6))
		r.kind = FI_EVERY, r.n = strtoull(spec + 6, NULL, 10);
	else if (!strncmp(spec, "after-", 6))
		r.kind = FI_AFTER, r.n = strtoull(spec + 6, NULL, 10);
	else if (!strncmp(spec, "once-", 5))
		r.kind = FI_ONCE, r.n = strtoull(spec + 5, NULL, 10);
	else if (spec[strlen(spec) - 1] == '%')
		r.kind = FI_PERCENT, r.n = strtoull(spec, NULL, 10);
	if ((r.kind == FI_EVERY || r.kind == FI_ONCE) && !r.n)
		return;
	r.err = err ? fi_parse_errno(err) : 0;
	for (int i = 0; i < UHMM_FI_NR; i++)
		if (!strcmp(site, "all") || !strcmp(site, fi_names[i])) {
			atomic_store_explicit(&fi_rules[i].n, r.n, memory_order_relaxed);
			atomic_store_explicit(&fi_rules[i].err, r.err, memory_order_relaxed);
			atomic_store_explicit(&fi_rules[i].kind, (int)r.kind, memory_order_relaxed);
		}
}

static void fi_parse(const char *spec)
{
	char *copy, *save = NULL;

	for (int i = 0; i < UHMM_FI_NR; i++) {
		atomic_store_explicit(&fi_rules[i].kind, FI_OFF, memory_order_relaxed);
		atomic_store(&fi_rules[i].calls, 0);
		atomic_store(&fi_rules[i].injected, 0);
	}
	if (getenv("UHMM_FI_SEED"))
		atomic_store(&fi_rng, strtoull(getenv("UHMM_FI_SEED"), NULL, 0) | 1);
	if (!spec || !*spec)
		return;
	copy = strdup(spec);
	if (!copy)
		return;
	/* strtok_r for the list, strtok inside an item: items never nest */
	for (char *it = strtok_r(copy, ",", &save); it; it = strtok_r(NULL, ",", &save))
		fi_parse_one(it);
	free(copy);
}

static void fi_init(void)
{
	fi_parse(getenv("UHMM_FI"));
}

void uhmm_fi_configure(const char *spec)
{
	/* UHMM_FI first, so it cannot replace @spec at the first hook */
	pthread_once(&fi_once, fi_init);
	fi_parse(spec);
}

static uint64_t fi_next_random(void)
{
	uint64_t x = atomic_fetch_add(&fi_rng, 0x9e3779b97f4a7c15ULL);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

bool uhmm_fi_fail(enum uhmm_fi_site site)
{
	struct fi_rule *r;
	uint64_t call, n;
	bool fail = false;
	int kind;

	pthread_once(&fi_once, fi_init);
	if ((unsigned int)site >= UHMM_FI_NR)
		return false;
	r = &fi_rules[site];
	kind = atomic_load_explicit(&r->kind, memory_order_relaxed);
	if (kind == FI_OFF)
		return false;
	n = atomic_load_explicit(&r->n, memory_order_relaxed);
	call = atomic_fetch_add_explicit(&r->calls, 1, memory_order_relaxed) + 1;
	switch (kind) {
	case FI_EVERY: fail = n && call % n == 0; break;
	case FI_AFTER: fail = call > n; break;
	case FI_ONCE: fail = call == n; break;
	case FI_PERCENT: fail = fi_next_random() % 100 < n; break;
	default: break;
	}
	if (fail)
		atomic_fetch_add_explicit(&r->injected, 1, memory_order_relaxed);
	return fail;
}

int uhmm_fi_errno(enum uhmm_fi_site site, int natural)
{
	int err;

	if ((unsigned int)site >= UHMM_FI_NR)
		return natural;
	err = atomic_load_explicit(&fi_rules[site].err, memory_order_relaxed);
	if (!err)
		return natural;
	/* the schedule names a positive errno: give it the caller's sign */
	err = err < 0 ? -err : err;
	return natural < 0 ? -err : err;
}

uint64_t uhmm_fi_stats(FILE *f)
{
	uint64_t total = 0;

	pthread_once(&fi_once, fi_init);
	for (int i = 0; i < UHMM_FI_NR; i++) {
		uint64_t c = atomic_load(&fi_rules[i].calls), n = atomic_load(&fi_rules[i].injected);

		total += n;
		if (f && c)
			fprintf(f, "  fault %-14s %10llu calls %8llu injected\n", fi_names[i],
				(unsigned long long)c, (unsigned long long)n);
	}
	return total;
}

/* Not renamed here: these call the real allocator. */
static bool fi_malloc_fails(void)
{
	if (!uhmm_fi_fail(UHMM_FI_MALLOC))
		return false;
	errno = ENOMEM;
	return true;
}

void *uhmm_fi_malloc(size_t size)
{
	return fi_malloc_fails() ? NULL : malloc(size);
}

void *uhmm_fi_calloc(size_t nmemb, size_t size)
{
	return fi_malloc_fails() ? NULL : calloc(nmemb, size);
}

void *uhmm_fi_realloc(void *ptr, size_t size)
{
	return fi_malloc_fails() ? NULL : realloc(ptr, size);
}
#else
/* ISO C forbids an empty translation unit. */
typedef int uhmm_fault_inject_disabled;
#endif
