// SPDX-License-Identifier: MIT
/* Unit tests for the allocation, thread and label-write failures of the public
 * API (docs/errors.md), made to happen with the fault-injection library. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm.h>
#include "fault_inject.h"	/* uhmm_fi_configure/_stats: hidden, linked statically */
#include "t_util.h"

#define MiB (1ULL << 20)
#define NP 16			/* managed pages of the mm fixture */
#define LEN (NP * T_PAGE)
#define ADDR(p, i) ((uint64_t)(uintptr_t)((uint8_t *)(p) + (size_t)(i) * T_PAGE))
/* more allocations than any call under test makes */
#define MAX_CALLS 400

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static uint8_t *mem;
static char path[64];
static struct uhmm_dax_region *R;

__attribute__((format(printf, 1, 2))) static void fi_set(const char *fmt, ...)
{
	char spec[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(spec, sizeof(spec), fmt, ap);
	va_end(ap);
	uhmm_fi_configure(spec);
}

/*
 * The call under test, run once per schedule: call() returns 0 or -errno;
 * undo() releases what a successful call made; same() checks that a failed
 * call left everything as before (NULL: nothing to check).
 */
struct fi_case {
	int (*call)(void *arg);
	void (*undo)(void *arg);
	void (*same)(void *arg);
	void *arg;
};

/*
 * Fail the 1st, 2nd, ... call of @site until the call under test no longer
 * reaches it: every failure must be @want and change nothing. Returns how
 * many failures were seen (at least one, or the test fails).
 */
static int fail_each(const char *site, int want, const struct fi_case *c)
{
	int n, failures = 0;

	for (n = 1; n < MAX_CALLS; n++) {
		uint64_t injected;
		int ret;

		fi_set("%s:once-%d", site, n);
		ret = c->call(c->arg);
		injected = uhmm_fi_stats(NULL);
		uhmm_fi_configure(NULL);
		if (!ret) {
			c->undo(c->arg);
			if (!injected)
				break;	/* the call made fewer than n */
			continue;	/* absorbed (a retry, another thread) */
		}
		ck_assert_msg(ret == want, "%s:once-%d: got %d, want %d", site, n, ret, want);
		ck_assert_uint_eq(injected, 1);
		if (c->same)
			c->same(c->arg);
		failures++;
	}
	ck_assert_int_lt(n, MAX_CALLS);
	ck_assert_int_gt(failures, 0);
	/* schedule cleared: the call works, twice (a leak shows under ASan) */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(c->call(c->arg), 0);
		c->undo(c->arg);
	}
	return failures;
}

static void mm_setup(void)
{
	uhmm_fi_configure(NULL);
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	mem = t_map_anon(LEN);
	ck_assert_int_eq(uhmm_mm_manage(mm, mem, LEN), 0);
	t_fill_pattern(mem, LEN, 7);
}

static void mm_teardown(void)
{
	uhmm_fi_configure(NULL);
	uhmm_sim_destroy(sim);
	sim = NULL;
	uhmm_mm_close(mm);
	mm = NULL;
	munmap(mem, LEN);
}

static void sim_setup(void)
{
	mm_setup();
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &sim), 0);
}

/* ------------------------------------------------------------------------ */
/* uhmm_mm_open                                                             */

static int mm_open_call(void *arg)
{
	return uhmm_mm_open(arg, NULL);
}

static void mm_open_undo(void *arg)
{
	uhmm_mm_close(*(struct uhmm_mm **)arg);
}

/* Each failed allocation of uhmm_mm_open() is -ENOMEM and leaves no mm. */
START_TEST(mm_open_alloc_failure_is_enomem)
{
	struct uhmm_mm *m = NULL;
	struct fi_case c = { .call = mm_open_call, .undo = mm_open_undo,
			     .same = NULL, .arg = &m };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* No handler thread: -EAGAIN, and the next open works. */
START_TEST(mm_open_thread_failure_is_eagain)
{
	struct uhmm_mm *m = NULL;
	struct fi_case c = { .call = mm_open_call, .undo = mm_open_undo,
			     .same = NULL, .arg = &m };

	ck_assert_int_eq(fail_each("thread", -EAGAIN, &c), 1);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_mm_manage / uhmm_mm_alloc                                           */

static int manage_call(void *arg)
{
	return uhmm_mm_manage(mm, arg, 4 * T_PAGE);
}

static void manage_undo(void *arg)
{
	ck_assert_int_eq(uhmm_mm_unmanage(mm, arg, 4 * T_PAGE), 0);
}

static void manage_same(void *arg)
{
	ck_assert_int_eq(uhmm_mm_unmanage(mm, arg, 4 * T_PAGE), -ENOENT);
	ck_assert_int_eq(t_check_pattern(arg, 4 * T_PAGE, 9), -1);
}

/* 15 more managed ranges: with the fixture's, the mm's range table is full. */
static uint8_t *manage_15(void)
{
	uint8_t *many = t_map_anon(30 * T_PAGE);

	for (int i = 0; i < 15; i++)
		ck_assert_int_eq(uhmm_mm_manage(mm, many + 2 * i * T_PAGE, T_PAGE), 0);
	return many;
}

/* A failed allocation in manage is -ENOMEM; the range stays unmanaged. */
START_TEST(mm_manage_alloc_failure_is_enomem)
{
	uint8_t *p = t_map_anon(4 * T_PAGE), *many = manage_15();
	struct fi_case c = { .call = manage_call, .undo = manage_undo,
			     .same = manage_same, .arg = p };

	t_fill_pattern(p, 4 * T_PAGE, 9);
	fail_each("malloc", -ENOMEM, &c);
	ck_assert_int_eq(t_check_pattern(p, 4 * T_PAGE, 9), -1);
	munmap(p, 4 * T_PAGE);
	munmap(many, 30 * T_PAGE);
}
END_TEST

static int alloc_call(void *arg)
{
	return uhmm_mm_alloc(mm, 8 * T_PAGE, 0, arg);
}

static void alloc_undo(void *arg)
{
	uint8_t *p = *(uint8_t **)arg;

	p[0] = 1;		/* managed and usable */
	ck_assert_int_eq(uhmm_mm_free(mm, p, 8 * T_PAGE), 0);
	*(void **)arg = NULL;
}

static void alloc_same(void *arg)
{
	ck_assert_ptr_null(*(void **)arg);
}

/* mmap failing in uhmm_mm_alloc() is -ENOMEM and nothing is returned. */
START_TEST(mm_alloc_mmap_failure_is_enomem)
{
	void *p = NULL;
	struct fi_case c = { .call = alloc_call, .undo = alloc_undo,
			     .same = alloc_same, .arg = &p };

	ck_assert_int_eq(fail_each("mmap", -ENOMEM, &c), 1);
}
END_TEST

/* Each failed allocation of uhmm_mm_alloc() is -ENOMEM. */
START_TEST(mm_alloc_malloc_failure_is_enomem)
{
	void *p = NULL;
	uint8_t *many = manage_15();
	struct fi_case c = { .call = alloc_call, .undo = alloc_undo,
			     .same = alloc_same, .arg = &p };

	fail_each("malloc", -ENOMEM, &c);
	munmap(many, 30 * T_PAGE);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_interval_notifier_insert                                            */

static int insert_call(void *arg)
{
	return uhmm_interval_notifier_insert(arg, mm, ADDR(mem, 0), LEN, &t_rec_ops);
}

static void insert_undo(void *arg)
{
	ck_assert_int_eq(uhmm_interval_notifier_remove(arg), 0);
}

static void insert_same(void *arg)
{
	ck_assert_int_eq(uhmm_interval_notifier_remove(arg), -EINVAL);
}

/* A failed insert is -ENOMEM and the notifier is not inserted. */
START_TEST(interval_notifier_insert_alloc_failure_is_enomem)
{
	struct t_rec *r = t_rec_new();
	struct fi_case c = { .call = insert_call, .undo = insert_undo,
			     .same = insert_same, .arg = &r->n };

	fail_each("malloc", -ENOMEM, &c);
	free(r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_resource_create / uhmm_request_region / uhmm_request_free_region    */

#define RES_START (UHMM_DEVADDR_MIN + (1ULL << 32))
#define RES_END (RES_START + 64 * MiB)
static struct uhmm_resource *res;

static int res_create_call(void *arg)
{
	return uhmm_resource_create(RES_START, RES_END, arg);
}

static void res_create_undo(void *arg)
{
	uhmm_resource_destroy(*(struct uhmm_resource **)arg);
}

/* A failed uhmm_resource_create() is -ENOMEM. */
START_TEST(resource_create_alloc_failure_is_enomem)
{
	struct uhmm_resource *r = NULL;
	struct fi_case c = { .call = res_create_call, .undo = res_create_undo,
			     .same = NULL, .arg = &r };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

static void res_setup(void)
{
	uhmm_fi_configure(NULL);
	ck_assert_int_eq(uhmm_resource_create(RES_START, RES_END, &res), 0);
	/* 16 regions claimed: the tree's array is full, the next claim grows it */
	for (int i = 0; i < 16; i++)
		ck_assert_int_eq(uhmm_request_region(res, RES_START + (8 + i) * MiB, MiB), 0);
}

static void res_teardown(void)
{
	uhmm_fi_configure(NULL);
	uhmm_resource_destroy(res);
	res = NULL;
}

static int request_call(void *arg)
{
	return uhmm_request_region(res, RES_START + 2 * MiB, MiB);
}

static void request_undo(void *arg)
{
	ck_assert_int_eq(uhmm_release_region(res, RES_START + 2 * MiB), 0);
}

static void request_same(void *arg)
{
	ck_assert_int_eq(uhmm_release_region(res, RES_START + 2 * MiB), -ENOENT);
}

/* A failed uhmm_request_region() is -ENOMEM and claims nothing. */
START_TEST(request_region_alloc_failure_is_enomem)
{
	struct fi_case c = { .call = request_call, .undo = request_undo,
			     .same = request_same, .arg = NULL };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

static int request_free_call(void *arg)
{
	uint64_t *start = arg;
	int ret = uhmm_request_free_region(res, MiB, MiB, start);

	if (!ret)
		ck_assert_uint_eq(*start, RES_START);	/* lowest fit */
	return ret;
}

static void request_free_undo(void *arg)
{
	ck_assert_int_eq(uhmm_release_region(res, *(uint64_t *)arg), 0);
}

static void request_free_same(void *arg)
{
	ck_assert_int_eq(uhmm_release_region(res, RES_START), -ENOENT);
}

/* A failed uhmm_request_free_region() is -ENOMEM and claims nothing. */
START_TEST(request_free_region_alloc_failure_is_enomem)
{
	uint64_t start = 0;
	struct fi_case c = { .call = request_free_call, .undo = request_free_undo,
			     .same = request_free_same, .arg = &start };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_memremap_pages                                                      */

static int t_to_ram(struct uhmm_fault *f)
{
	return 0;
}

static void t_page_free(struct uhmm_page *page)
{
}

static const struct uhmm_pagemap_ops pg_ops = {
	.page_free = t_page_free, .migrate_to_ram = t_to_ram,
};
static int pg_owner;

struct pg_arg {
	struct uhmm_pagemap pm;
	struct uhmm_dev_range rg;
};

static int memremap_call(void *arg)
{
	struct pg_arg *a = arg;

	a->pm = (struct uhmm_pagemap){
		.type = UHMM_PAGEMAP_PRIVATE, .ops = &pg_ops, .owner = &pg_owner,
		.nr_range = 1, .ranges = &a->rg,
	};
	return uhmm_memremap_pages(&a->pm);
}

static void memremap_undo(void *arg)
{
	struct pg_arg *a = arg;

	ck_assert_int_eq(uhmm_pagemap_nr_pages(&a->pm), 64);
	ck_assert_int_eq(uhmm_memunmap_pages(&a->pm), 0);
}

static void memremap_same(void *arg)
{
	struct pg_arg *a = arg;

	ck_assert_ptr_null(a->pm.priv);
	ck_assert_ptr_null(uhmm_pfn_to_page(a->rg.start / T_PAGE));
}

/* A failed uhmm_memremap_pages() is -ENOMEM and registers nothing. */
START_TEST(memremap_pages_alloc_failure_is_enomem)
{
	struct pg_arg a = { .rg = { RES_START, RES_START + 64 * T_PAGE } };
	struct fi_case c = { .call = memremap_call, .undo = memremap_undo,
			     .same = memremap_same, .arg = &a };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_migrate_setup                                                       */

struct mig_arg {
	struct uhmm_migrate m;
	uint64_t src[NP], dst[NP];
};

static int migrate_call(void *arg)
{
	struct mig_arg *a = arg;

	memset(a, 0, sizeof(*a));
	a->m = (struct uhmm_migrate){
		.mm = mm, .start = ADDR(mem, 0), .end = ADDR(mem, NP),
		.src = a->src, .dst = a->dst, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	return uhmm_migrate_setup(&a->m);
}

static void migrate_undo(void *arg)
{
	struct mig_arg *a = arg;

	ck_assert_uint_eq(a->m.cpages, NP);
	ck_assert_int_eq(uhmm_migrate_pages(&a->m), 0);
	ck_assert_int_eq(uhmm_migrate_finalize(&a->m), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
}

/* The pages are not left isolated: the CPU reads and writes them. */
static void migrate_same(void *arg)
{
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
	t_fill_pattern(mem, LEN, 7);
}

/* A failed uhmm_migrate_setup() is -ENOMEM and releases every page. */
START_TEST(migrate_setup_alloc_failure_is_enomem)
{
	struct mig_arg a;
	struct fi_case c = { .call = migrate_call, .undo = migrate_undo,
			     .same = migrate_same, .arg = &a };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* uhmm_sim_create / uhmm_sim_migrate_to_dev / uhmm_sim_exclusive           */

static int sim_create_call(void *arg)
{
	return uhmm_sim_create(mm, NULL, arg);
}

static void sim_create_undo(void *arg)
{
	struct uhmm_sim **s = arg;

	ck_assert_int_eq(uhmm_sim_migrate_to_dev(*s, ADDR(mem, 0), 1), 1);
	uhmm_sim_destroy(*s);
	*s = NULL;
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
}

/* A failed allocation in uhmm_sim_create() is -ENOMEM. */
START_TEST(sim_create_alloc_failure_is_enomem)
{
	struct uhmm_sim *s = NULL;
	struct fi_case c = { .call = sim_create_call, .undo = sim_create_undo,
			     .same = NULL, .arg = &s };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* The device pool's mmap failing in uhmm_sim_create() is -ENOMEM. */
START_TEST(sim_create_pool_mmap_failure_is_enomem)
{
	struct uhmm_sim *s = NULL;
	struct fi_case c = { .call = sim_create_call, .undo = sim_create_undo,
			     .same = NULL, .arg = &s };

	fail_each("mmap", -ENOMEM, &c);
}
END_TEST

static int to_dev_call(void *arg)
{
	int ret = uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP);

	return ret < 0 ? ret : ret == NP ? 0 : -ERANGE;
}

static void to_dev_undo(void *arg)
{
	struct uhmm_sim_counters cnt;

	ck_assert_int_eq(uhmm_sim_counters(sim, &cnt), 0);
	ck_assert_uint_eq(cnt.dev_pages, NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);	/* CPU faults them back */
	ck_assert_int_eq(uhmm_sim_release(sim), 0);
}

static void to_dev_same(void *arg)
{
	struct uhmm_sim_counters cnt;

	/* nothing left on the device, nothing lost */
	uhmm_sim_release(sim);
	ck_assert_int_eq(uhmm_sim_counters(sim, &cnt), 0);
	ck_assert_uint_eq(cnt.dev_pages, 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
}

/* A failed allocation in uhmm_sim_migrate_to_dev() is -ENOMEM; data intact. */
START_TEST(sim_migrate_to_dev_alloc_failure_is_enomem)
{
	struct fi_case c = { .call = to_dev_call, .undo = to_dev_undo,
			     .same = to_dev_same, .arg = NULL };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/*
 * The copy path's DMA engine (process_vm_readv) failing is no error: the CPU
 * copies instead, byte-exact. One injected failure per 512-page piece.
 */
START_TEST(sim_copy_path_dma_failure_falls_back_to_cpu_copy)
{
	UHMM_OPTS(sim_opts, o, .copy_path = 1);
	uint8_t buf[LEN];

	uhmm_sim_destroy(sim);
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &sim), 0);
	fi_set("process_vm:every-1");
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), NP);
	ck_assert_uint_eq(uhmm_fi_stats(NULL), 1);
	uhmm_fi_configure(NULL);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, LEN, 7), -1);	/* the device's copy */
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);	/* and back */
}
END_TEST

static int excl_call(void *arg)
{
	return uhmm_sim_exclusive(sim, ADDR(mem, 0), 4);
}

static void excl_undo(void *arg)
{
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);	/* CPU touch revokes */
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 0);
}

static void excl_same(void *arg)
{
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
	t_fill_pattern(mem, LEN, 7);
}

/* A failed allocation in uhmm_sim_exclusive() is -ENOMEM; the CPU keeps access. */
START_TEST(sim_exclusive_alloc_failure_is_enomem)
{
	struct fi_case c = { .call = excl_call, .undo = excl_undo,
			     .same = excl_same, .arg = NULL };

	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* dax: uhmm_dax_region_create / _devices / uhmm_dax_map, label writes      */

static void new_path(void)
{
	int fd;

	strcpy(path, "/dev/shm/uhmm-fi-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	close(fd);
}

static void dax_setup(void)
{
	struct uhmm_dax_dev *seed;

	uhmm_fi_configure(NULL);
	new_path();
	ck_assert_int_eq(uhmm_dax_region_create(path, 16 * MiB, UHMM_DAX_ALIGN_4K, &R), 0);
	/* dax<R>.1 with 1 MiB, enabled; dax<R>.2 is the new seed */
	ck_assert_int_eq(uhmm_dax_region_seed(R, &seed), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(seed, MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(seed), 0);
}

static void dax_teardown(void)
{
	uhmm_fi_configure(NULL);
	if (R)
		ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	R = NULL;
	unlink(path);
}

static struct uhmm_dax_dev *dev_of(struct uhmm_dax_region *r, uint32_t id)
{
	struct uhmm_dax_dev *d;
	char name[16];

	snprintf(name, sizeof(name), "%u", id);
	ck_assert_int_eq(uhmm_dax_dev_find(r, name, &d), 0);
	return d;
}

static uint64_t dev_size(struct uhmm_dax_region *r, uint32_t id)
{
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_info(dev_of(r, id), &di), 0);
	return di.size;
}

static int region_create_call(void *arg)
{
	return uhmm_dax_region_create(path, 16 * MiB, UHMM_DAX_ALIGN_4K, arg);
}

static void region_create_undo(void *arg)
{
	struct uhmm_dax_region_info ri;

	ck_assert_int_eq(uhmm_dax_region_info(*(struct uhmm_dax_region **)arg, &ri), 0);
	ck_assert_uint_eq(ri.size, 16 * MiB);
	ck_assert_int_eq(uhmm_dax_region_close(*(struct uhmm_dax_region **)arg), 0);
	/* formatted: start over */
	ck_assert_int_eq(truncate(path, 0), 0);
}

/* No region is left behind that could be opened. */
static void region_create_same(void *arg)
{
	struct uhmm_dax_region *r;

	ck_assert_int_eq(uhmm_dax_region_open(path, &r), -ENODATA);
}

/* A failed allocation in uhmm_dax_region_create() is -ENOMEM. */
START_TEST(dax_region_create_alloc_failure_is_enomem)
{
	struct uhmm_dax_region *r = NULL;
	struct fi_case c = { .call = region_create_call, .undo = region_create_undo,
			     .same = region_create_same, .arg = &r };

	new_path();
	fail_each("malloc", -ENOMEM, &c);
	unlink(path);
}
END_TEST

/* The first label write cut short: -EIO and no label (create again works). */
START_TEST(dax_region_create_label_short_write_is_eio)
{
	struct uhmm_dax_region *r = NULL;
	struct fi_case c = { .call = region_create_call, .undo = region_create_undo,
			     .same = region_create_same, .arg = &r };

	new_path();
	ck_assert_int_eq(fail_each("label_write", -EIO, &c), 1);
	ck_assert_int_eq(fail_each("label_sync", -EIO, &c), 1);
	unlink(path);
}
END_TEST

static int devices_call(void *arg)
{
	struct uhmm_dax_dev *devs[4] = { NULL };
	int ret = uhmm_dax_region_devices(R, devs, 4);

	if (ret < 0)
		return ret;
	ck_assert_int_eq(ret, 2);
	ck_assert_ptr_nonnull(devs[0]);
	ck_assert_ptr_nonnull(devs[1]);
	return 0;
}

static void nothing(void *arg)
{
}

/* A failed allocation in uhmm_dax_region_devices() is -ENOMEM. */
START_TEST(dax_region_devices_alloc_failure_is_enomem)
{
	struct uhmm_dax_region *r2;
	struct fi_case c = { .call = devices_call, .undo = nothing, .same = NULL, .arg = NULL };

	fail_each("malloc", -ENOMEM, &c);
	/* and with no handle made yet: a fresh opener */
	ck_assert_int_eq(uhmm_dax_region_open(path, &r2), 0);
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	R = r2;
	fail_each("malloc", -ENOMEM, &c);
}
END_TEST

static struct uhmm_dax_dev *dev1;

static int map_call(void *arg)
{
	return uhmm_dax_map(dev1, PROT_READ | PROT_WRITE, arg);
}

static void map_undo(void *arg)
{
	uint8_t *p = *(uint8_t **)arg;

	p[0] = 0x5a;
	ck_assert_int_eq(uhmm_dax_unmap(dev1, p), 0);
}

/* Not mapped: the device is not busy. */
static void map_same(void *arg)
{
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_info(dev1, &di), 0);
	ck_assert_uint_eq(di.flags & UHMM_DAX_DEV_MAPPED, 0);
}

/* A failed allocation in uhmm_dax_map() is -ENOMEM and maps nothing. */
START_TEST(dax_map_alloc_failure_is_enomem)
{
	void *p = NULL;
	struct fi_case c = { .call = map_call, .undo = map_undo, .same = map_same, .arg = &p };

	dev1 = dev_of(R, 1);
	fail_each("malloc", -ENOMEM, &c);
	/* nothing left mapped: shrinking is allowed */
	ck_assert_int_eq(uhmm_dax_dev_resize(dev1, MiB / 2), 0);
}
END_TEST

/*
 * A label write cut short (or an msync that fails) fails the call with -EIO;
 * this handle and a fresh opener both still see the label of before.
 */
static void label_failure_keeps_old_label(const char *site)
{
	struct uhmm_dax_region *r2;
	struct uhmm_dax_dev *d1 = dev_of(R, 1);
	uint64_t want = 2 * MiB;

	fi_set("%s:once-1", site);
	ck_assert_int_eq(uhmm_dax_dev_resize(d1, want), -EIO);
	ck_assert_uint_eq(uhmm_fi_stats(NULL), 1);
	uhmm_fi_configure(NULL);
	ck_assert_uint_eq(dev_size(R, 1), MiB);
	ck_assert_int_eq(uhmm_dax_region_open(path, &r2), 0);
	ck_assert_uint_eq(dev_size(r2, 1), MiB);
	ck_assert_int_eq(uhmm_dax_region_close(r2), 0);
	/* again, then with nothing failing */
	fi_set("%s:once-1", site);
	ck_assert_int_eq(uhmm_dax_dev_destroy(d1), -EIO);
	ck_assert_uint_eq(uhmm_fi_stats(NULL), 1);
	uhmm_fi_configure(NULL);
	ck_assert_int_eq(uhmm_dax_region_open(path, &r2), 0);
	ck_assert_uint_eq(dev_size(r2, 1), MiB);
	ck_assert_int_eq(uhmm_dax_region_close(r2), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(d1, want), 0);
	ck_assert_int_eq(uhmm_dax_region_open(path, &r2), 0);
	ck_assert_uint_eq(dev_size(r2, 1), want);
	ck_assert_int_eq(uhmm_dax_region_close(r2), 0);
}

START_TEST(dax_label_short_write_keeps_old_label)
{
	label_failure_keeps_old_label("label_write");
}
END_TEST

START_TEST(dax_label_sync_failure_keeps_old_label)
{
	label_failure_keeps_old_label("label_sync");
}
END_TEST

int main(void)
{
	TCase *mmc = T_TCASE("mm", NULL, NULL, mm_open_alloc_failure_is_enomem,
			     mm_open_thread_failure_is_eagain);
	TCase *mgc = T_TCASE("mm_managed", mm_setup, mm_teardown,
			     mm_manage_alloc_failure_is_enomem, mm_alloc_mmap_failure_is_enomem,
			     mm_alloc_malloc_failure_is_enomem,
			     interval_notifier_insert_alloc_failure_is_enomem,
			     migrate_setup_alloc_failure_is_enomem, sim_create_alloc_failure_is_enomem,
			     sim_create_pool_mmap_failure_is_enomem);
	TCase *sic = T_TCASE("sim", sim_setup, mm_teardown,
			     sim_migrate_to_dev_alloc_failure_is_enomem,
			     sim_copy_path_dma_failure_falls_back_to_cpu_copy,
			     sim_exclusive_alloc_failure_is_enomem);
	TCase *rsc = T_TCASE("resource", res_setup, res_teardown,
			     resource_create_alloc_failure_is_enomem,
			     request_region_alloc_failure_is_enomem,
			     request_free_region_alloc_failure_is_enomem,
			     memremap_pages_alloc_failure_is_enomem);
	TCase *dxc = T_TCASE("dax", dax_setup, dax_teardown,
			     dax_region_devices_alloc_failure_is_enomem, dax_map_alloc_failure_is_enomem,
			     dax_label_short_write_keeps_old_label,
			     dax_label_sync_failure_keeps_old_label);
	TCase *dxn = T_TCASE("dax_create", NULL, NULL, dax_region_create_alloc_failure_is_enomem,
			     dax_region_create_label_short_write_is_eio);

	return t_run_suite("errors_fi", mmc, mgc, sic, rsc, dxc, dxn, NULL);
}
