// SPDX-License-Identifier: MIT
/* Unit tests for include/uhmm/sim.h: the simulated device's commands, one and
 * two sims, private and coherent memory, CPU fault-back, threads, syscalls,
 * fork, munmap/mprotect, exhaustion and teardown. Byte-exact checks. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include <uhmm/mm.h>
#include <uhmm/sim.h>
#include "t_util.h"

#define NP 32
#define LEN (NP * T_PAGE)
#define ADDR(p, i) ((uint64_t)(uintptr_t)((uint8_t *)(p) + (size_t)(i) * T_PAGE))

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static uint8_t *mem;		/* NP managed anonymous pages */

static struct uhmm_sim *mk_sim(enum uhmm_sim_mem_type type, uint64_t cap, int evict)
{
	UHMM_OPTS(sim_opts, o, .mem_type = type, .capacity_pages = cap,
		  .evict_when_full = evict);
	struct uhmm_sim *s = NULL;

	ck_assert_int_eq(uhmm_sim_create(mm, &o, &s), 0);
	ck_assert_ptr_nonnull(s);
	return s;
}

static uint8_t *map_managed(size_t len)
{
	uint8_t *p = t_map_anon(len);

	ck_assert_int_eq(uhmm_mm_manage(mm, p, len), 0);
	return p;
}

static void base_setup(void)
{
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	mem = map_managed(LEN);
}

static void setup(void)
{
	base_setup();
	sim = mk_sim(UHMM_SIM_PRIVATE, 0, 0);
}

static void setup_coherent(void)
{
	base_setup();
	sim = mk_sim(UHMM_SIM_COHERENT, 0, 0);
}

static void teardown(void)
{
	uhmm_sim_destroy(sim);
	sim = NULL;
	uhmm_mm_close(mm);
	mm = NULL;
	munmap(mem, LEN);
}

static struct uhmm_sim_counters counters(struct uhmm_sim *s)
{
	struct uhmm_sim_counters c;

	ck_assert_int_eq(uhmm_sim_counters(s, &c), 0);
	return c;
}

/* dev_pages drops when the fault handler puts its page reference, which
 * may be just after the faulting thread resumed: poll briefly. */
static uint64_t wait_dev_pages(struct uhmm_sim *s, uint64_t want)
{
	struct uhmm_sim_counters c = counters(s);

	for (int i = 0; i < 1000 && c.dev_pages != want; i++) {
		usleep(1000);
		c = counters(s);
	}
	return c.dev_pages;
}

static uint8_t snap1(struct uhmm_sim *s, const void *p)
{
	uint8_t b = 0xAA;

	ck_assert_int_eq(uhmm_sim_snapshot(s, (uint64_t)(uintptr_t)p, 1, &b), 0);
	return b;
}

/* Fill mem with pattern @seed and move all of it to @s's memory. */
static void fill_and_migrate(struct uhmm_sim *s, uint64_t seed)
{
	t_fill_pattern(mem, LEN, seed);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(s, ADDR(mem, 0), NP), NP);
}

/* ---------------------------------------------------------------------- */
/* uhmm_sim_create / uhmm_sim_destroy                                      */

/* NULL options create a private device that mirrors the mm. */
START_TEST(create_null_opts_is_private)
{
	struct uhmm_sim *s = NULL;

	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &s), 0);
	ck_assert_ptr_nonnull(s);
	mem[0] = 1;
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(s, ADDR(mem, 0), 1), 1);
	ck_assert_uint_eq(snap1(s, mem), UHMM_SIM_PROT_DEV_PRIVATE_LOCAL | UHMM_SIM_PROT_WRITE);
	uhmm_sim_destroy(s);
	ck_assert_uint_eq(mem[0], 1);
}
END_TEST

/* NULL mm or out pointer is -EINVAL. */
START_TEST(create_null_args_einval)
{
	struct uhmm_sim *s = NULL;

	ck_assert_int_eq(uhmm_sim_create(NULL, NULL, &s), -EINVAL);
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, NULL), -EINVAL);
}
END_TEST

/* Bad opts: size, memory type, capacity. */
START_TEST(create_bad_opts_einval)
{
	struct uhmm_sim *s = NULL;
	struct uhmm_sim_opts o = { .sz = 0 };

	ck_assert_int_eq(uhmm_sim_create(mm, &o, &s), -EINVAL);
	o.sz = sizeof(o) + 8;
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &s), -EINVAL);
	o.sz = sizeof(o);
	o.mem_type = 3;
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &s), -EINVAL);
	o.mem_type = UHMM_SIM_PRIVATE;
	o.capacity_pages = 1ULL << 40;
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &s), -EINVAL);
	ck_assert_ptr_null(s);
}
END_TEST

/* destroy(NULL) does nothing. */
START_TEST(destroy_null_is_noop)
{
	uhmm_sim_destroy(NULL);
}
END_TEST

/* Destroying a sim holding pages brings their data back to RAM. */
START_TEST(destroy_with_pages_on_device_keeps_data)
{
	fill_and_migrate(sim, 11);
	uhmm_sim_destroy(sim);
	sim = NULL;
	ck_assert_int_eq(t_check_pattern(mem, LEN, 11), -1);
}
END_TEST

/* Same for a coherent sim. */
START_TEST(destroy_coherent_with_pages_keeps_data)
{
	fill_and_migrate(sim, 12);
	uhmm_sim_destroy(sim);
	sim = NULL;
	ck_assert_int_eq(t_check_pattern(mem, LEN, 12), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_read                                                           */

/* The device reads what the CPU wrote, faulting the mirror once. */
START_TEST(read_sees_cpu_data_and_counts_fault)
{
	uint8_t *buf = malloc(LEN);

	t_fill_pattern(mem, LEN, 21);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, LEN, 21), -1);
	ck_assert_uint_ge(counters(sim).faults, 1);
	/* mirror now populated: no further fault */
	memset(buf, 0, LEN);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, LEN, 21), -1);
	ck_assert_uint_eq(counters(sim).faults, 0);
	free(buf);
}
END_TEST

/* Never-touched memory reads as zeros. */
START_TEST(read_untouched_is_zero)
{
	uint8_t *buf = malloc(LEN);

	memset(buf, 0x5a, LEN);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_first_nonzero(buf, LEN), -1);
	free(buf);
}
END_TEST

/* A CPU write after a device read is seen by the next device read. */
START_TEST(read_after_cpu_write_sees_new_data)
{
	uint8_t buf[T_PAGE];

	t_fill_pattern(mem, T_PAGE, 1);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	t_fill_pattern(mem, T_PAGE, 2);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, T_PAGE, 2), -1);
}
END_TEST

/* Device-resident pages are read from device memory with no fault-back. */
START_TEST(read_device_pages_stays_on_device)
{
	uint8_t *buf = malloc(LEN);

	fill_and_migrate(sim, 22);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, LEN, 22), -1);
	ck_assert_uint_eq(counters(sim).cpu_faults, 0);
	ck_assert_uint_eq(counters(sim).dev_pages, NP);
	free(buf);
}
END_TEST

/* Bad arguments: NULL sim/buf, unaligned, addr 0, npages 0, wrap. */
START_TEST(read_bad_args_einval)
{
	uint8_t buf[T_PAGE];

	ck_assert_int_eq(uhmm_sim_read(NULL, ADDR(mem, 0), 1, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0) + 1, 1, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_read(sim, 0, 1, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 0, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_read(sim, ~0xfffULL, 2, buf), -EINVAL);
}
END_TEST

/* An unmapped address is -EFAULT. */
START_TEST(read_unmapped_is_efault)
{
	uint8_t buf[2 * T_PAGE];
	uint8_t *hole = t_map_anon(T_PAGE);

	munmap(hole, T_PAGE);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(hole, 0), 1, buf), -EFAULT);
	/* a range running into a hole */
	ck_assert_int_eq(uhmm_munmap(mem + (NP - 1) * T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, NP - 2), 2, buf), -EFAULT);
}
END_TEST

/* PROT_NONE memory is -EFAULT. */
START_TEST(read_prot_none_is_efault)
{
	uint8_t buf[T_PAGE];

	ck_assert_int_eq(uhmm_mprotect(mem, T_PAGE, PROT_NONE), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), -EFAULT);
}
END_TEST

/* After munmap of mirrored pages the stale mirror is not used: -EFAULT. */
START_TEST(read_after_munmap_is_efault)
{
	uint8_t buf[T_PAGE];

	mem[0] = 7;
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	ck_assert_int_eq(munmap(mem, LEN), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), -EFAULT);
}
END_TEST

/*
 * The device's page table splits addresses at 2 MiB (a leaf) and 1 GiB (a
 * node): pages on both sides of such a boundary stay mirrored when the
 * CPU unmaps one page next to it, and only that page is forgotten.
 */
static void check_boundary_invalidation(uint64_t align)
{
	size_t resv = 2 * align + 8 * T_PAGE;
	uint8_t *r = mmap(NULL, resv, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			  -1, 0);
	uint8_t *b, *p, buf[4 * T_PAGE];

	ck_assert_ptr_ne(r, MAP_FAILED);
	b = (uint8_t *)(((uintptr_t)r + 4 * T_PAGE + align - 1) & ~(uintptr_t)(align - 1));
	p = b - 2 * T_PAGE;	/* pages p..p+3, the boundary between 1 and 2 */
	ck_assert_ptr_eq(mmap(p, 4 * T_PAGE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), p);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, 4 * T_PAGE), 0);
	t_fill_pattern(p, 4 * T_PAGE, 77);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 0), 4, buf), 0);
	ck_assert_uint_ge(counters(sim).faults, 1);
	ck_assert_int_eq(munmap(p + T_PAGE, T_PAGE), 0);	/* last page below */
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 1), 1, buf), -EFAULT);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 0), 1, buf), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 2), 2, buf + T_PAGE), 0);
	ck_assert_uint_eq(counters(sim).faults, 0);	/* still mirrored */
	ck_assert_int_eq(t_check_pattern(buf, T_PAGE, 77), -1);
	ck_assert_int_eq(memcmp(buf + T_PAGE, p + 2 * T_PAGE, 2 * T_PAGE), 0);
	/* unmapping the first page above forgets it, not its neighbour */
	ck_assert_int_eq(munmap(p + 2 * T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 2), 1, buf), -EFAULT);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 3), 1, buf), 0);
	ck_assert_uint_eq(counters(sim).faults, 0);
	ck_assert_int_eq(memcmp(buf, p + 3 * T_PAGE, T_PAGE), 0);
	munmap(r, resv);
}

START_TEST(read_mirror_across_table_boundaries)
{
	check_boundary_invalidation(2UL << 20);
	check_boundary_invalidation(1UL << 30);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_write                                                          */

/* Device writes are seen by the CPU. */
START_TEST(write_visible_to_cpu)
{
	uint8_t *buf = malloc(LEN);

	t_fill_pattern(buf, LEN, 31);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 31), -1);
	free(buf);
}
END_TEST

/* A device write to device-resident pages, then a CPU read, sees the write. */
START_TEST(write_device_pages_then_cpu_read)
{
	uint8_t *buf = malloc(LEN);

	fill_and_migrate(sim, 1);
	t_fill_pattern(buf, LEN, 32);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), NP, buf), 0);
	ck_assert_uint_eq(counters(sim).cpu_faults, 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 32), -1);
	ck_assert_uint_eq(counters(sim).cpu_faults, NP);
	free(buf);
}
END_TEST

/* Writing read-only memory is -EPERM and changes nothing. */
START_TEST(write_readonly_is_eperm)
{
	uint8_t buf[T_PAGE];

	t_fill_pattern(mem, T_PAGE, 3);
	ck_assert_int_eq(uhmm_mprotect(mem, T_PAGE, PROT_READ), 0);
	memset(buf, 0, sizeof(buf));
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), 1, buf), -EPERM);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 3), -1);
}
END_TEST

/* After a read mirrored the page read-only-capable, a write still works. */
START_TEST(write_after_read_upgrades_mirror)
{
	uint8_t buf[T_PAGE];

	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	t_fill_pattern(buf, T_PAGE, 33);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), 1, buf), 0);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 33), -1);
}
END_TEST

/* Bad arguments and unmapped memory. */
START_TEST(write_bad_args_and_unmapped)
{
	uint8_t buf[T_PAGE] = { 0 };
	uint8_t *hole = t_map_anon(T_PAGE);

	munmap(hole, T_PAGE);
	ck_assert_int_eq(uhmm_sim_write(NULL, ADDR(mem, 0), 1, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), 1, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0) + 8, 1, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), 0, buf), -EINVAL);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(hole, 0), 1, buf), -EFAULT);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_migrate_to_dev                                                 */

/* Migration moves every page; CPU reads fault each page back intact. */
START_TEST(to_dev_then_cpu_read_faults_back)
{
	struct uhmm_sim_counters c;

	fill_and_migrate(sim, 41);
	c = counters(sim);
	ck_assert_uint_eq(c.cpages, NP);
	ck_assert_uint_eq(c.dev_pages, NP);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 41), -1);
	c = counters(sim);
	ck_assert_uint_eq(c.cpu_faults, NP);
	ck_assert_uint_eq(wait_dev_pages(sim, 0), 0);
	ck_assert_uint_eq(snap1(sim, mem), UHMM_SIM_PROT_WRITE);
}
END_TEST

/* A CPU write to a device page faults it back and keeps the other bytes. */
START_TEST(to_dev_then_cpu_write_faults_back)
{
	fill_and_migrate(sim, 42);
	counters(sim);
	mem[5 * T_PAGE + 100] ^= 0xff;
	ck_assert_uint_eq(counters(sim).cpu_faults, 1);
	mem[5 * T_PAGE + 100] ^= 0xff;
	ck_assert_int_eq(t_check_pattern(mem, LEN, 42), -1);
}
END_TEST

/* Never-touched pages migrate as zero pages. */
START_TEST(to_dev_untouched_pages_are_zero)
{
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(t_first_nonzero(mem, LEN), -1);
}
END_TEST

/* Pages already on the device are not migrated twice. */
START_TEST(to_dev_twice_moves_nothing)
{
	fill_and_migrate(sim, 43);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 43), -1);
}
END_TEST

/* Bad args, and ranges that are not managed memory, are -EINVAL. */
START_TEST(to_dev_bad_args_einval)
{
	uint8_t *plain = t_map_anon(T_PAGE);

	ck_assert_int_eq(uhmm_sim_migrate_to_dev(NULL, ADDR(mem, 0), 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0) + 1, 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 0), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, 0, 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(plain, 0), 1), -EINVAL);
	munmap(plain, T_PAGE);
}
END_TEST

/* Device memory full: fewer pages move, all data stays intact. */
START_TEST(to_dev_capacity_limit_moves_fewer)
{
	struct uhmm_sim *small = mk_sim(UHMM_SIM_PRIVATE, 8, 0);

	t_fill_pattern(mem, LEN, 44);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(small, ADDR(mem, 0), NP), 8);
	ck_assert_uint_eq(counters(small).dev_pages, 8);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 44), -1);
	uhmm_sim_destroy(small);
}
END_TEST

/* evict_when_full: a full device evicts old pages to take new ones. */
START_TEST(to_dev_evict_when_full_makes_room)
{
	struct uhmm_sim *small = mk_sim(UHMM_SIM_PRIVATE, 8, 1);
	int r;

	t_fill_pattern(mem, LEN, 45);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(small, ADDR(mem, 0), 8), 8);
	r = uhmm_sim_migrate_to_dev(small, ADDR(mem, 16), 8);
	ck_assert_int_gt(r, 0);
	ck_assert_uint_le(counters(small).dev_pages, 8);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 45), -1);
	uhmm_sim_destroy(small);
}
END_TEST

/* memfd (shared) memory: the device reads and writes it, nothing migrates. */
START_TEST(to_dev_memfd_skips_rw_works)
{
	int fd = memfd_create("sim", MFD_CLOEXEC);
	uint8_t *p, buf[4 * T_PAGE];

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 4 * T_PAGE), 0);
	p = mmap(NULL, 4 * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, 4 * T_PAGE), 0);
	t_fill_pattern(p, 4 * T_PAGE, 46);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(p, 0), 4), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(p, 0), 4, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, sizeof(buf), 46), -1);
	t_fill_pattern(buf, sizeof(buf), 47);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(p, 0), 4, buf), 0);
	ck_assert_int_eq(t_check_pattern(p, 4 * T_PAGE, 47), -1);
	ck_assert_int_eq(pread(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	ck_assert_int_eq(t_check_pattern(buf, sizeof(buf), 47), -1);
	munmap(p, 4 * T_PAGE);
	close(fd);
}
END_TEST

/* Read-only memory does not migrate (returns 0), data intact. */
START_TEST(to_dev_readonly_skips)
{
	t_fill_pattern(mem, LEN, 48);
	ck_assert_int_eq(uhmm_mprotect(mem, LEN, PROT_READ), 0);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 48), -1);
}
END_TEST

/*
 * A range of several migration pieces (the move path takes 4096 pages at a
 * time) migrates in one call, a page already on the device in the middle
 * of it; with too little device memory the pieces fill it and stop.
 */
START_TEST(to_dev_large_range)
{
	size_t n = 2 * 4096 + 300, len = n * T_PAGE;
	uint8_t *p = map_managed(len);
	struct uhmm_sim *small = mk_sim(UHMM_SIM_PRIVATE, 5000, 0);

	t_fill_pattern(p, len, 49);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(p, 5000), 1), 1);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(p, 0), n), (int)n - 1);
	ck_assert_uint_eq(counters(sim).dev_pages, n);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(p, 0), n), (int)n);
	ck_assert_uint_eq(counters(sim).dev_pages, 0);
	ck_assert_int_eq(t_check_pattern(p, len, 49), -1);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(small, ADDR(p, 0), n), 5000);
	ck_assert_uint_eq(counters(small).dev_pages, 5000);
	ck_assert_int_eq(t_check_pattern(p, len, 49), -1);
	uhmm_sim_destroy(small);
	munmap(p, len);
}
END_TEST

/* Coherent sim: migrate, snapshot local, CPU fault-back intact. */
START_TEST(to_dev_coherent_faults_back)
{
	fill_and_migrate(sim, 50);
	ck_assert_uint_eq(snap1(sim, mem),
			  UHMM_SIM_PROT_DEV_COHERENT_LOCAL | UHMM_SIM_PROT_WRITE);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 50), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_migrate_to_sys                                                 */

/* Pages come back with their data and no CPU fault. */
START_TEST(to_sys_brings_pages_back)
{
	fill_and_migrate(sim, 51);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), NP), NP);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 51), -1);
	ck_assert_uint_eq(counters(sim).cpu_faults, 0);
}
END_TEST

/* Nothing on the device: 0 pages. Pages of another sim are not taken. */
START_TEST(to_sys_nothing_or_other_device_is_zero)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_PRIVATE, 0, 0);

	t_fill_pattern(mem, LEN, 52);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), NP), 0);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(b, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), NP), 0);
	ck_assert_uint_eq(counters(b).dev_pages, NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 52), -1);
	uhmm_sim_destroy(b);
}
END_TEST

/* Bad args are -EINVAL. */
START_TEST(to_sys_bad_args_einval)
{
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(NULL, ADDR(mem, 0), 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0) + 1, 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), 0), -EINVAL);
}
END_TEST

/* Coherent: to_sys brings pages back. */
START_TEST(to_sys_coherent)
{
	fill_and_migrate(sim, 53);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 53), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_snapshot                                                       */

/* Untouched memory reports NONE. */
START_TEST(snapshot_untouched_is_none)
{
	uint8_t prot[NP];

	memset(prot, 0xAA, sizeof(prot));
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), NP, prot), 0);
	for (int i = 0; i < NP; i++)
		ck_assert_uint_eq(prot[i], UHMM_SIM_PROT_NONE);
	ck_assert_uint_eq(t_resident_pages(mem, LEN), 0);
}
END_TEST

/* A CPU read maps the zero page: ZERO | READ. */
START_TEST(snapshot_cpu_read_is_zero_read)
{
	volatile uint8_t x = mem[0];

	(void)x;
	ck_assert_uint_eq(snap1(sim, mem), UHMM_SIM_PROT_ZERO | UHMM_SIM_PROT_READ);
}
END_TEST

/* A CPU write: WRITE; read-only after mprotect: READ. */
START_TEST(snapshot_write_and_readonly)
{
	mem[0] = 1;
	mem[T_PAGE] = 1;
	ck_assert_uint_eq(snap1(sim, mem), UHMM_SIM_PROT_WRITE);
	ck_assert_int_eq(uhmm_mprotect(mem + T_PAGE, T_PAGE, PROT_READ), 0);
	ck_assert_uint_eq(snap1(sim, mem + T_PAGE), UHMM_SIM_PROT_READ);
}
END_TEST

/* A THP-backed range reports PMD | WRITE. */
START_TEST(snapshot_thp_is_pmd)
{
	size_t hl = 2UL << 20;
	uint8_t *raw = t_map_anon(2 * hl);
	uint8_t *p = (uint8_t *)(((uintptr_t)raw + hl - 1) & ~(hl - 1));
	uint8_t prot[4];

	if (madvise(p, hl, MADV_HUGEPAGE) || madvise(p, hl, MADV_POPULATE_WRITE)) {
		t_skip("MADV_HUGEPAGE/POPULATE_WRITE: %s", strerror(errno));
		return;
	}
	ck_assert_int_eq(uhmm_mm_manage(mm, p, hl), 0);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(p, 0), 4, prot), 0);
	if (!(prot[0] & UHMM_SIM_PROT_PMD)) {
		t_skip("no THP backing the range (THP disabled or none free)");
		return;
	}
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(prot[i], UHMM_SIM_PROT_PMD | UHMM_SIM_PROT_WRITE);
}
END_TEST

/* Device-private pages of this sim: DEV_PRIVATE_LOCAL; of another: REMOTE. */
START_TEST(snapshot_private_local_and_remote)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_PRIVATE, 0, 0);

	mem[0] = 1;
	mem[T_PAGE] = 2;
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 1), 1);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(b, ADDR(mem, 1), 1), 1);
	ck_assert_uint_eq(snap1(sim, mem),
			  UHMM_SIM_PROT_DEV_PRIVATE_LOCAL | UHMM_SIM_PROT_WRITE);
	ck_assert_uint_eq(snap1(sim, mem + T_PAGE),
			  UHMM_SIM_PROT_DEV_PRIVATE_REMOTE | UHMM_SIM_PROT_WRITE);
	ck_assert_uint_eq(snap1(b, mem + T_PAGE),
			  UHMM_SIM_PROT_DEV_PRIVATE_LOCAL | UHMM_SIM_PROT_WRITE);
	/* the snapshot faulted nothing back */
	ck_assert_uint_eq(counters(sim).cpu_faults + counters(b).cpu_faults, 0);
	ck_assert_uint_eq(mem[0], 1);
	ck_assert_uint_eq(mem[T_PAGE], 2);
	uhmm_sim_destroy(b);
}
END_TEST

/* Coherent pages: DEV_COHERENT_LOCAL for the owner, REMOTE for another sim. */
START_TEST(snapshot_coherent_local_and_remote)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_PRIVATE, 0, 0);

	mem[0] = 1;
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 1), 1);
	ck_assert_uint_eq(snap1(sim, mem),
			  UHMM_SIM_PROT_DEV_COHERENT_LOCAL | UHMM_SIM_PROT_WRITE);
	ck_assert_uint_eq(snap1(b, mem),
			  UHMM_SIM_PROT_DEV_COHERENT_REMOTE | UHMM_SIM_PROT_WRITE);
	ck_assert_uint_eq(mem[0], 1);
	uhmm_sim_destroy(b);
}
END_TEST

/* PROT_NONE and unmapped pages report ERROR. */
START_TEST(snapshot_prot_none_and_hole_are_error)
{
	uint8_t prot[3];

	ck_assert_int_eq(uhmm_mprotect(mem, T_PAGE, PROT_NONE), 0);
	ck_assert_int_eq(uhmm_munmap(mem + T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), 3, prot), 0);
	ck_assert_uint_eq(prot[0], UHMM_SIM_PROT_ERROR);
	ck_assert_uint_eq(prot[1], UHMM_SIM_PROT_ERROR);
	ck_assert_uint_eq(prot[2], UHMM_SIM_PROT_NONE);
}
END_TEST

/* Device page made read-only by mprotect: LOCAL | READ, data intact. */
START_TEST(snapshot_device_page_after_mprotect_read)
{
	fill_and_migrate(sim, 54);
	ck_assert_int_eq(uhmm_mprotect(mem, LEN, PROT_READ), 0);
	ck_assert_uint_eq(snap1(sim, mem) & ~UHMM_SIM_PROT_DEV_PRIVATE_LOCAL,
			  UHMM_SIM_PROT_READ);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 54), -1);
}
END_TEST

/* Bad args are -EINVAL. */
START_TEST(snapshot_bad_args_einval)
{
	uint8_t prot[2];

	ck_assert_int_eq(uhmm_sim_snapshot(NULL, ADDR(mem, 0), 1, prot), -EINVAL);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), 1, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0) + 4, 1, prot), -EINVAL);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), 0, prot), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_exclusive / uhmm_sim_check_exclusive                           */

/* Exclusive holds until the CPU touches; device changes are then visible. */
START_TEST(exclusive_until_cpu_touch_keeps_device_writes)
{
	uint8_t buf[4 * T_PAGE];

	t_fill_pattern(mem, LEN, 61);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 4), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 1);
	t_fill_pattern(buf, sizeof(buf), 62);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 0), 4, buf), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 1);
	memset(buf, 0, sizeof(buf));
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 4, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, sizeof(buf), 62), -1);
	/* CPU touch of page 0 revokes exclusive for page 0 only */
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 62), -1);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 1), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 1), 3), 1);
	ck_assert_int_eq(t_check_pattern(mem, 4 * T_PAGE, 62), -1);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 4), 0);
	ck_assert_int_eq(t_check_pattern(mem + 4 * T_PAGE, LEN - 4 * T_PAGE, 61 + 4 * T_PAGE / 8), -1);
}
END_TEST

/* A CPU write to an exclusive page lands on top of the device's data. */
START_TEST(exclusive_cpu_write_revokes)
{
	t_fill_pattern(mem, T_PAGE, 63);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 1), 0);
	mem[8] ^= 0xff;
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 1), 0);
	mem[8] ^= 0xff;
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 63), -1);
}
END_TEST

/* Exclusive on device-resident pages brings them back first. */
START_TEST(exclusive_on_device_pages)
{
	int rc;

	fill_and_migrate(sim, 64);
	rc = uhmm_sim_exclusive(sim, ADDR(mem, 0), 2);
	ck_assert(rc == 0 || rc == -EBUSY);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 64), -1);
}
END_TEST

/* Bad args -EINVAL; unmapped or read-only memory -EFAULT. */
START_TEST(exclusive_errors)
{
	uint8_t *hole = t_map_anon(T_PAGE);

	munmap(hole, T_PAGE);
	ck_assert_int_eq(uhmm_sim_exclusive(NULL, ADDR(mem, 0), 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0) + 1, 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 0), -EINVAL);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(hole, 0), 1), -EFAULT);
	ck_assert_int_eq(uhmm_mprotect(mem, T_PAGE, PROT_READ), 0);
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 1), -EFAULT);
}
END_TEST

/* Pages never taken exclusive are not; bad args -EINVAL. */
START_TEST(check_exclusive_never_taken_and_bad_args)
{
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 1), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(NULL, ADDR(mem, 0), 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0) + 1, 1), -EINVAL);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 0), -EINVAL);
}
END_TEST

/* munmap of an exclusive page ends exclusivity. */
START_TEST(check_exclusive_false_after_munmap)
{
	ck_assert_int_eq(uhmm_sim_exclusive(sim, ADDR(mem, 0), 2), 0);
	ck_assert_int_eq(uhmm_munmap(mem, 2 * T_PAGE), 0);
	ck_assert_int_eq(uhmm_sim_check_exclusive(sim, ADDR(mem, 0), 2), 0);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_release / uhmm_sim_counters                                    */

/* release evicts every device page; data intact; sim stays usable. */
START_TEST(release_evicts_everything)
{
	struct uhmm_sim_counters c;

	fill_and_migrate(sim, 71);
	(void)counters(sim);
	ck_assert_int_eq(uhmm_sim_release(sim), NP);
	c = counters(sim);
	ck_assert_uint_eq(c.dev_pages, 0);
	ck_assert_uint_eq(c.cpu_faults, 1);	/* the run came back in one migration */
	ck_assert_uint_eq(t_resident_pages(mem, LEN), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 71), -1);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 71), -1);
}
END_TEST

/* Nothing to release: 0; NULL: -EINVAL. */
START_TEST(release_empty_and_null)
{
	ck_assert_int_eq(uhmm_sim_release(sim), 0);
	ck_assert_int_eq(uhmm_sim_release(NULL), -EINVAL);
}
END_TEST

/* Counters reset on read, except dev_pages. */
START_TEST(counters_reset_on_read)
{
	struct uhmm_sim_counters c;
	uint8_t buf[T_PAGE];
	uint64_t cpu = 0;

	mem[0] = 1;
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	c = counters(sim);
	ck_assert_uint_eq(c.faults, 1);
	ck_assert_uint_eq(c.cpages + c.cpu_faults + c.dev_pages, 0);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 2), 2);
	c = counters(sim);
	ck_assert_uint_eq(c.cpages, 2);
	ck_assert_uint_eq(c.dev_pages, 2);
	c = counters(sim);
	ck_assert_uint_eq(c.faults + c.cpages + c.cpu_faults, 0);
	ck_assert_uint_eq(c.dev_pages, 2);	/* not reset */
	(void)*(volatile uint8_t *)mem;
	for (int i = 0; i < 1000; i++) {
		c = counters(sim);
		cpu += c.cpu_faults;
		if (c.dev_pages == 1)
			break;
		usleep(1000);
	}
	ck_assert_uint_eq(cpu, 1);
	ck_assert_uint_eq(c.dev_pages, 1);
	ck_assert_int_eq(uhmm_sim_counters(NULL, &c), -EINVAL);
	ck_assert_int_eq(uhmm_sim_counters(sim, NULL), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* two sims                                                                */

/* A page on sim A read through sim B comes back to RAM first. */
START_TEST(two_sims_read_through_other_migrates_back)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_PRIVATE, 0, 0);
	uint8_t *buf = malloc(LEN);

	fill_and_migrate(sim, 81);
	counters(sim);
	ck_assert_int_eq(uhmm_sim_read(b, ADDR(mem, 0), NP, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, LEN, 81), -1);
	ck_assert_uint_eq(counters(sim).dev_pages, 0);
	ck_assert_uint_eq(snap1(sim, mem), UHMM_SIM_PROT_WRITE);
	/* B can now take them */
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(b, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 81), -1);
	uhmm_sim_destroy(b);
	free(buf);
}
END_TEST

/* A page on sim A written through sim B lands in RAM; A's copy is gone. */
START_TEST(two_sims_write_through_other)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_COHERENT, 0, 0);
	uint8_t buf[T_PAGE];

	fill_and_migrate(sim, 82);
	t_fill_pattern(buf, T_PAGE, 83);
	ck_assert_int_eq(uhmm_sim_write(b, ADDR(mem, 3), 1, buf), 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 3), 1, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, T_PAGE, 83), -1);
	ck_assert_int_eq(t_check_pattern(mem + 3 * T_PAGE, T_PAGE, 83), -1);
	ck_assert_int_eq(t_check_pattern(mem, 3 * T_PAGE, 82), -1);
	uhmm_sim_destroy(b);
}
END_TEST

/* Two sims taking alternate pages; destroy both; data intact. */
START_TEST(two_sims_interleaved_destroy)
{
	struct uhmm_sim *b = mk_sim(UHMM_SIM_COHERENT, 0, 0);

	t_fill_pattern(mem, LEN, 84);
	for (int i = 0; i < NP; i++)
		ck_assert_int_eq(uhmm_sim_migrate_to_dev(i % 2 ? b : sim, ADDR(mem, i), 1), 1);
	ck_assert_uint_eq(counters(sim).dev_pages, NP / 2);
	ck_assert_uint_eq(counters(b).dev_pages, NP / 2);
	uhmm_sim_destroy(b);
	ck_assert_int_eq(uhmm_sim_release(sim), NP / 2);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 84), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* threads, syscalls, fork                                                 */

struct reader {
	uint8_t *p;
	size_t len;
	uint64_t seed;
	long bad;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->bad = t_check_pattern(r->p, r->len, r->seed);
	return NULL;
}

/* Four threads fault the same device pages: one migration per page. */
START_TEST(threads_fault_same_pages_once)
{
	pthread_t th[4];
	struct reader r[4];

	fill_and_migrate(sim, 91);
	counters(sim);
	for (int i = 0; i < 4; i++) {
		r[i] = (struct reader){ mem, LEN, 91, 0 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(r[i].bad, -1);
	}
	ck_assert_uint_eq(counters(sim).cpu_faults, NP);
}
END_TEST

/* write(2) from a device-resident buffer sends the right bytes. */
START_TEST(syscall_write_from_device_pages)
{
	int fds[2];
	uint8_t *out = malloc(LEN);
	size_t got = 0;

	fill_and_migrate(sim, 92);
	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_eq(fcntl(fds[1], F_SETPIPE_SZ, (int)LEN), (int)LEN);
	ck_assert_int_eq(write(fds[1], mem, LEN), (ssize_t)LEN);
	while (got < LEN) {
		ssize_t r = read(fds[0], out + got, LEN - got);

		ck_assert_int_gt(r, 0);
		got += (size_t)r;
	}
	ck_assert_int_eq(t_check_pattern(out, LEN, 92), -1);
	close(fds[0]);
	close(fds[1]);
	free(out);
}
END_TEST

/* read(2) into device-resident pages lands in RAM; the rest stays intact. */
START_TEST(syscall_read_into_device_pages)
{
	int fds[2];
	uint8_t src[T_PAGE];

	fill_and_migrate(sim, 93);
	t_fill_pattern(src, T_PAGE, 94);
	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_eq(write(fds[1], src, T_PAGE), (ssize_t)T_PAGE);
	ck_assert_int_eq(read(fds[0], mem + 2 * T_PAGE, T_PAGE), (ssize_t)T_PAGE);
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, T_PAGE, 94), -1);
	ck_assert_int_eq(t_check_pattern(mem, 2 * T_PAGE, 93), -1);
	ck_assert_int_eq(t_check_pattern(mem + 3 * T_PAGE, LEN - 3 * T_PAGE,
					 93 + 3 * T_PAGE / 8), -1);
	close(fds[0]);
	close(fds[1]);
}
END_TEST

/* process_vm_readv of device-resident pages reads the data. */
START_TEST(syscall_process_vm_readv_device_pages)
{
	uint8_t *out = malloc(LEN);
	struct iovec l = { out, LEN }, r = { mem, LEN };

	fill_and_migrate(sim, 95);
	ck_assert_int_eq(process_vm_readv(getpid(), &l, 1, &r, 1, 0), (ssize_t)LEN);
	ck_assert_int_eq(t_check_pattern(out, LEN, 95), -1);
	free(out);
}
END_TEST

/* fork with pages on the device: the child reads the parent's data; then
 * both diverge. */
START_TEST(fork_with_device_pages)
{
	int st;
	pid_t pid;

	fill_and_migrate(sim, 96);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		long bad = t_check_pattern(mem, LEN, 96);

		t_fill_pattern(mem, LEN, 97);	/* diverge */
		_exit(bad == -1 && t_check_pattern(mem, LEN, 97) == -1 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 96), -1);
	/* parent writes and migrates again: still works */
	t_fill_pattern(mem, LEN, 98);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), NP), NP);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 98), -1);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* munmap / mprotect around migration                                      */

/* uhmm_munmap of device-resident pages frees the device pages. */
START_TEST(unmap_wrapper_frees_device_pages)
{
	uint8_t buf[T_PAGE];

	fill_and_migrate(sim, 101);
	ck_assert_int_eq(uhmm_munmap(mem, LEN), 0);
	ck_assert_uint_eq(counters(sim).dev_pages, 0);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), -EFAULT);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 1), -EINVAL);
}
END_TEST

/* Plain munmap (seen through the UNMAP event) does the same. */
START_TEST(unmap_plain_frees_device_pages)
{
	uint8_t buf[T_PAGE];

	fill_and_migrate(sim, 102);
	ck_assert_int_eq(munmap(mem + T_PAGE, T_PAGE), 0);
	ck_assert_uint_eq(wait_dev_pages(sim, NP - 1), NP - 1);
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 1), 1, buf), -EFAULT);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 102), -1);
	ck_assert_int_eq(t_check_pattern(mem + 2 * T_PAGE, LEN - 2 * T_PAGE,
					 102 + 2 * T_PAGE / 8), -1);
}
END_TEST

struct churn {
	struct uhmm_sim *s;
	uint8_t *p;
	_Atomic int stop;
	int errors;
};

static void *churn_main(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load(&c->stop)) {
		int r1 = uhmm_sim_migrate_to_dev(c->s, ADDR(c->p, 0), NP);
		int r2 = uhmm_sim_migrate_to_sys(c->s, ADDR(c->p, 0), NP);

		if ((r1 < 0 && r1 != -EINVAL) || (r2 < 0 && r2 != -EINVAL))
			c->errors++;
	}
	return NULL;
}

/* munmap and mprotect while another thread migrates: no crash, no error
 * other than -EINVAL once the range is gone, other pages intact. */
START_TEST(unmap_and_mprotect_during_migration)
{
	pthread_t th;
	struct churn c = { .s = sim, .p = mem };

	t_fill_pattern(mem, LEN, 103);
	ck_assert_int_eq(pthread_create(&th, NULL, churn_main, &c), 0);
	usleep(20000);
	ck_assert_int_eq(uhmm_mprotect(mem, 4 * T_PAGE, PROT_READ), 0);
	usleep(20000);
	ck_assert_int_eq(uhmm_munmap(mem + 8 * T_PAGE, 8 * T_PAGE), 0);
	usleep(20000);
	ck_assert_int_eq(munmap(mem + 24 * T_PAGE, 8 * T_PAGE), 0);
	usleep(20000);
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	ck_assert_int_eq(c.errors, 0);
	ck_assert_int_eq(t_check_pattern(mem, 8 * T_PAGE, 103), -1);
	ck_assert_int_eq(t_check_pattern(mem + 16 * T_PAGE, 8 * T_PAGE,
					 103 + 16 * T_PAGE / 8), -1);
}
END_TEST

int main(void)
{
	TCase *create = T_TCASE("sim_create", setup, teardown, create_null_opts_is_private,
				create_null_args_einval, create_bad_opts_einval);
	TCase *destroy = T_TCASE("sim_destroy", setup, teardown, destroy_null_is_noop,
				 destroy_with_pages_on_device_keeps_data);
	TCase *destroy_c = T_TCASE("sim_destroy_coherent", setup_coherent, teardown,
				   destroy_coherent_with_pages_keeps_data);
	TCase *rd = T_TCASE("sim_read", setup, teardown, read_sees_cpu_data_and_counts_fault,
				read_mirror_across_table_boundaries,
			    read_untouched_is_zero, read_after_cpu_write_sees_new_data,
			    read_device_pages_stays_on_device, read_bad_args_einval,
			    read_unmapped_is_efault, read_prot_none_is_efault,
			    read_after_munmap_is_efault);
	TCase *wr = T_TCASE("sim_write", setup, teardown, write_visible_to_cpu,
			    write_device_pages_then_cpu_read, write_readonly_is_eperm,
			    write_after_read_upgrades_mirror, write_bad_args_and_unmapped);
	TCase *todev = T_TCASE("sim_migrate_to_dev", setup, teardown,
			       to_dev_then_cpu_read_faults_back, to_dev_then_cpu_write_faults_back,
			       to_dev_untouched_pages_are_zero, to_dev_twice_moves_nothing,
			       to_dev_bad_args_einval, to_dev_capacity_limit_moves_fewer,
			       to_dev_evict_when_full_makes_room, to_dev_memfd_skips_rw_works,
			       to_dev_readonly_skips, to_dev_large_range);
	TCase *todev_c = T_TCASE("sim_migrate_to_dev_coherent", setup_coherent, teardown,
				 to_dev_coherent_faults_back);
	TCase *tosys = T_TCASE("sim_migrate_to_sys", setup, teardown, to_sys_brings_pages_back,
			       to_sys_nothing_or_other_device_is_zero, to_sys_bad_args_einval);
	TCase *tosys_c = T_TCASE("sim_migrate_to_sys_coherent", setup_coherent, teardown,
				 to_sys_coherent);
	TCase *snap = T_TCASE("sim_snapshot", setup, teardown, snapshot_untouched_is_none,
			      snapshot_cpu_read_is_zero_read, snapshot_write_and_readonly,
			      snapshot_thp_is_pmd, snapshot_private_local_and_remote,
			      snapshot_prot_none_and_hole_are_error,
			      snapshot_device_page_after_mprotect_read, snapshot_bad_args_einval);
	TCase *snap_c = T_TCASE("sim_snapshot_coherent", setup_coherent, teardown,
				snapshot_coherent_local_and_remote);
	TCase *excl = T_TCASE("sim_exclusive", setup, teardown,
			      exclusive_until_cpu_touch_keeps_device_writes,
			      exclusive_cpu_write_revokes, exclusive_on_device_pages,
			      exclusive_errors);
	TCase *chk = T_TCASE("sim_check_exclusive", setup, teardown,
			     check_exclusive_never_taken_and_bad_args,
			     check_exclusive_false_after_munmap);
	TCase *rel = T_TCASE("sim_release", setup, teardown, release_evicts_everything,
			     release_empty_and_null);
	TCase *cnt = T_TCASE("sim_counters", setup, teardown, counters_reset_on_read);
	TCase *two = T_TCASE("two_sims", setup, teardown, two_sims_read_through_other_migrates_back,
			     two_sims_write_through_other, two_sims_interleaved_destroy);
	TCase *thr = T_TCASE("threads", setup, teardown, threads_fault_same_pages_once);
	TCase *sys = T_TCASE("syscalls", setup, teardown, syscall_write_from_device_pages,
			     syscall_read_into_device_pages, syscall_process_vm_readv_device_pages);
	TCase *frk = T_TCASE("fork", setup, teardown, fork_with_device_pages);
	TCase *unm = T_TCASE("unmap", setup, teardown, unmap_wrapper_frees_device_pages,
			     unmap_plain_frees_device_pages, unmap_and_mprotect_during_migration);

	return t_run_suite("sim", create, destroy, destroy_c, rd, wr, todev, todev_c,
			   tosys, tosys_c, snap, snap_c, excl, chk, rel, cnt, two, thr,
			   sys, frk, unm, NULL);
}
