// SPDX-License-Identifier: MIT
/* Unit tests for the two data paths of migration: UHMM_MIGRATE_PFN_MOVE
 * (the sim's default: pages move with UFFDIO_MOVE) and the driver's own copy
 * (uhmm_sim_opts.copy_path), each byte-exact in both directions. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>
#include "t_util.h"

#define NPAGES 1536	/* three 512-page pieces back to RAM (one migration in) */

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static uint8_t *mem;

static void open_sim(int copy, uint64_t cap)
{
	UHMM_OPTS(sim_opts, o, .capacity_pages = cap, .copy_path = copy);

	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	ck_assert_int_eq(uhmm_mm_alloc(mm, NPAGES * T_PAGE, 0, (void **)&mem), 0);
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &sim), 0);
}

static void close_sim(void)
{
	uhmm_sim_destroy(sim);
	ck_assert_int_eq(uhmm_mm_free(mm, mem, NPAGES * T_PAGE), 0);
	uhmm_mm_close(mm);
}

/* Round trip: migrate, CPU touch (fault-back), migrate, migrate back. */
static void round_trip(int copy)
{
	struct uhmm_sim_counters c;

	open_sim(copy, NPAGES);
	t_fill_pattern(mem, NPAGES * T_PAGE, 11);
	for (int r = 0; r < 3; r++) {
		ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
		ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
		ck_assert_uint_eq(c.dev_pages, NPAGES);
		ck_assert_int_eq(t_check_pattern(mem, NPAGES * T_PAGE, 11), -1);
		ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
		ck_assert_uint_eq(c.cpu_faults, NPAGES);
		ck_assert_uint_eq(c.dev_pages, 0);	/* counted before the wake */
	}
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, (uintptr_t)mem, NPAGES), NPAGES);
	ck_assert_int_eq(t_check_pattern(mem, NPAGES * T_PAGE, 11), -1);
	close_sim();
}

/* Move path: data survives repeated moves in and out of the pool. */
START_TEST(move_path_round_trip_is_byte_exact)
{
	round_trip(0);
}
END_TEST

/* Copy path: the same round trip when the driver copies the data. */
START_TEST(copy_path_round_trip_is_byte_exact)
{
	round_trip(1);
}
END_TEST

/*
 * A device that runs full: the pages that do not fit go back to the process
 * in runs (split by a hole, by the 512-page limit, by the pieces), each
 * with its own data, the hole still a hole; the next migration, once the
 * device has room, takes them.
 */
static void full_device(int copy)
{
	struct uhmm_sim_counters c;

	open_sim(copy, 100);
	t_fill_pattern(mem, NPAGES * T_PAGE, 12);
	ck_assert_int_eq(madvise(mem + 700 * T_PAGE, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), 100);
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.dev_pages, 100);
	ck_assert_uint_eq(t_resident_pages(mem, NPAGES * T_PAGE), NPAGES - 100 - 1);
	ck_assert_int_eq(t_check_pattern(mem + 100 * T_PAGE, 600 * T_PAGE,
					 12 + 100 * T_PAGE / 8), -1);
	ck_assert_int_eq(t_first_nonzero(mem + 700 * T_PAGE, T_PAGE), -1);
	ck_assert_int_eq(t_check_pattern(mem + 701 * T_PAGE, (NPAGES - 701) * T_PAGE,
					 12 + 701 * T_PAGE / 8), -1);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, (uintptr_t)mem, 100), 100);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem + 1000 * T_PAGE, 100), 100);
	ck_assert_int_eq(t_check_pattern(mem, 700 * T_PAGE, 12), -1);
	ck_assert_int_eq(t_check_pattern(mem + 701 * T_PAGE, (NPAGES - 701) * T_PAGE,
					 12 + 701 * T_PAGE / 8), -1);
	close_sim();
}

START_TEST(move_path_full_device_keeps_the_rest)
{
	full_device(0);
}
END_TEST

START_TEST(copy_path_full_device_keeps_the_rest)
{
	full_device(1);
}
END_TEST

/*
 * Full after the first 16 MiB of a bigger range (no eviction policy): the
 * rest is left alone, not taken from the process and given back (no
 * MIGRATE invalidation reaches it), and keeps its data.
 */
static void full_device_skips(int copy)
{
	size_t n = 8192, piece = 4096;
	struct t_rec *r = t_rec_new();
	uint8_t *big;

	open_sim(copy, 100);
	ck_assert_int_eq(uhmm_mm_alloc(mm, n * T_PAGE, 0, (void **)&big), 0);
	t_fill_pattern(big, n * T_PAGE, 13);
	t_rec_insert(r, mm, big + piece * T_PAGE, (n - piece) * T_PAGE);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)big, n), 100);
	ck_assert(!t_rec_has(r, UHMM_EVENT_MIGRATE, sim));
	ck_assert_uint_eq(t_resident_pages(big, n * T_PAGE), n - 100);
	ck_assert_int_eq(t_check_pattern(big, n * T_PAGE, 13), -1);
	t_rec_free(r);
	ck_assert_int_eq(uhmm_mm_free(mm, big, n * T_PAGE), 0);
	close_sim();
}

START_TEST(move_path_full_device_skips_the_rest)
{
	full_device_skips(0);
}
END_TEST

START_TEST(copy_path_full_device_skips_the_rest)
{
	full_device_skips(1);
}
END_TEST

/* Never-touched pages migrate as zero pages on both paths and read as zero. */
static void zero_pages(int copy)
{
	uint8_t *buf = malloc(NPAGES * T_PAGE);

	ck_assert_ptr_nonnull(buf);
	open_sim(copy, NPAGES);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	memset(buf, 0xff, NPAGES * T_PAGE);
	ck_assert_int_eq(uhmm_sim_read(sim, (uintptr_t)mem, NPAGES, buf), 0);
	ck_assert_int_eq(t_first_nonzero(buf, NPAGES * T_PAGE), -1);
	for (size_t i = 0; i < NPAGES * T_PAGE; i += T_PAGE)
		ck_assert_uint_eq(mem[i], 0);
	close_sim();
	free(buf);
}

START_TEST(move_path_untouched_pages_read_zero)
{
	zero_pages(0);
}
END_TEST

START_TEST(copy_path_untouched_pages_read_zero)
{
	zero_pages(1);
}
END_TEST

/* Pool pages are reused after moving out: stale data never shows through. */
START_TEST(move_path_reused_pool_pages_hold_new_data)
{
	open_sim(0, NPAGES);
	t_fill_pattern(mem, NPAGES * T_PAGE, 1);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, (uintptr_t)mem, NPAGES), NPAGES);
	/* half the pages untouched again (zero), half new data */
	ck_assert_int_eq(madvise(mem, NPAGES / 2 * T_PAGE, MADV_DONTNEED), 0);
	t_fill_pattern(mem + NPAGES / 2 * T_PAGE, NPAGES / 2 * T_PAGE, 2);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	for (size_t i = 0; i < NPAGES / 2 * T_PAGE; i += 512)
		ck_assert_uint_eq(mem[i], 0);
	ck_assert_int_eq(t_check_pattern(mem + NPAGES / 2 * T_PAGE, NPAGES / 2 * T_PAGE, 2), -1);
	close_sim();
}
END_TEST

/* Device writes land in the pool and come back with the page on either path. */
static void device_write(int copy)
{
	uint8_t *buf = malloc(64 * T_PAGE);

	ck_assert_ptr_nonnull(buf);
	open_sim(copy, NPAGES);
	t_fill_pattern(mem, NPAGES * T_PAGE, 3);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	t_fill_pattern(buf, 64 * T_PAGE, 4);
	ck_assert_int_eq(uhmm_sim_write(sim, (uintptr_t)mem + 100 * T_PAGE, 64, buf), 0);
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, (uintptr_t)mem, NPAGES), NPAGES);
	ck_assert_int_eq(t_check_pattern(mem + 100 * T_PAGE, 64 * T_PAGE, 4), -1);
	ck_assert_int_eq(t_check_pattern(mem, 100 * T_PAGE, 3), -1);
	close_sim();
	free(buf);
}

START_TEST(move_path_device_write_comes_back)
{
	device_write(0);
}
END_TEST

START_TEST(copy_path_device_write_comes_back)
{
	device_write(1);
}
END_TEST

/* Byte of page k of the fragmented-pool test: holes (k % 4 == 1) read 0. */
static uint8_t frag_byte(size_t k)
{
	return k % 4 == 1 ? 0 : (uint8_t)(k * 7 + 1) | 1;
}

/*
 * Copy path into a fragmented pool, with holes among the sources: the
 * driver's batched copy splits its runs where either side stops being
 * contiguous, and every page still lands in its own device page.
 */
START_TEST(copy_path_fragmented_pool_is_byte_exact)
{
	size_t n = NPAGES / 3;
	uint8_t *mem2, *buf = malloc(n * T_PAGE);
	struct uhmm_sim_counters c;

	ck_assert_ptr_nonnull(buf);
	open_sim(1, NPAGES);
	t_fill_pattern(mem, NPAGES * T_PAGE, 5);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem, NPAGES), NPAGES);
	/* the CPU takes back every third page: one free pool page in three */
	for (size_t i = 0; i < NPAGES; i += 3)
		(void)((volatile uint8_t *)mem)[i * T_PAGE];
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.dev_pages, NPAGES - n);
	ck_assert_int_eq(uhmm_mm_alloc(mm, n * T_PAGE, 0, (void **)&mem2), 0);
	for (size_t k = 0; k < n; k++)
		if (frag_byte(k))
			memset(mem2 + k * T_PAGE, frag_byte(k), T_PAGE);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)mem2, n), (int)n);
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.dev_pages, NPAGES);		/* the pool is full again */
	/* the device's copy, read from device memory, then the CPU's */
	ck_assert_int_eq(uhmm_sim_read(sim, (uintptr_t)mem2, n, buf), 0);
	for (size_t k = 0; k < n; k++)
		for (size_t b = 0; b < T_PAGE; b += 511)
			ck_assert_uint_eq(buf[k * T_PAGE + b], frag_byte(k));
	for (size_t k = 0; k < n; k++)
		for (size_t b = 0; b < T_PAGE; b += 511)
			ck_assert_uint_eq(mem2[k * T_PAGE + b], frag_byte(k));
	ck_assert_int_eq(t_check_pattern(mem, NPAGES * T_PAGE, 5), -1);
	ck_assert_int_eq(uhmm_mm_free(mm, mem2, n * T_PAGE), 0);
	close_sim();
	free(buf);
}
END_TEST

/*
 * A mirror larger than the device page table's first size (4096 buckets,
 * grown x4 past 2 entries a bucket): every entry survives the rehashes.
 */
START_TEST(large_mirror_survives_page_table_growth)
{
	size_t n = 40000;
	uint8_t *big, *buf = malloc(n * T_PAGE);
	UHMM_OPTS(sim_opts, o, .capacity_pages = n);
	struct uhmm_sim_counters c;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	ck_assert_int_eq(uhmm_mm_alloc(mm, n * T_PAGE, 0, (void **)&big), 0);
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &sim), 0);
	t_fill_pattern(big, n * T_PAGE, 21);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, (uintptr_t)big, n), (int)n);
	ck_assert_int_eq(uhmm_sim_read(sim, (uintptr_t)big, n, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, n * T_PAGE, 21), -1);
	ck_assert_int_eq(uhmm_sim_counters(sim, &c), 0);
	ck_assert_uint_eq(c.faults, 0);		/* every page found in the table */
	ck_assert_int_eq(uhmm_sim_migrate_to_sys(sim, (uintptr_t)big, n), (int)n);
	ck_assert_int_eq(t_check_pattern(big, n * T_PAGE, 21), -1);
	uhmm_sim_destroy(sim);
	ck_assert_int_eq(uhmm_mm_free(mm, big, n * T_PAGE), 0);
	uhmm_mm_close(mm);
	free(buf);
}
END_TEST

int main(void)
{
	TCase *mv = tcase_create("move_path"), *cp = tcase_create("copy_path");

	tcase_add_test(mv, move_path_round_trip_is_byte_exact);
	tcase_add_test(mv, move_path_full_device_keeps_the_rest);
	tcase_add_test(mv, move_path_full_device_skips_the_rest);
	tcase_add_test(mv, move_path_untouched_pages_read_zero);
	tcase_add_test(mv, move_path_reused_pool_pages_hold_new_data);
	tcase_add_test(mv, move_path_device_write_comes_back);
	tcase_add_test(cp, copy_path_round_trip_is_byte_exact);
	tcase_add_test(cp, copy_path_full_device_keeps_the_rest);
	tcase_add_test(cp, copy_path_full_device_skips_the_rest);
	tcase_add_test(cp, copy_path_untouched_pages_read_zero);
	tcase_add_test(cp, copy_path_device_write_comes_back);
	tcase_add_test(cp, copy_path_fragmented_pool_is_byte_exact);
	tcase_add_test(mv, large_mirror_survives_page_table_growth);
	return t_run_suite("sim_paths", mv, cp, NULL);
}
