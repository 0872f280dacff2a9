// SPDX-License-Identifier: MIT
/* Unit tests for include/uhmm/mm.h: open/close, manage/unmanage, alloc/free,
 * stat, features and the mapping wrappers. Managed memory must behave like
 * ordinary memory. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include <uhmm/mm.h>
#include "t_util.h"

#define NPAGES 64
#define LEN (NPAGES * T_PAGE)

static struct uhmm_mm *mm;

static void mm_setup(void)
{
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	ck_assert_ptr_nonnull(mm);
}

static void mm_teardown(void)
{
	uhmm_mm_close(mm);
	mm = NULL;
}

/* Map anonymous memory and bring it under management. */
static char *map_managed(size_t len)
{
	char *p = t_map_anon(len);

	ck_assert_int_eq(uhmm_mm_manage(mm, p, len), 0);
	return p;
}

static bool all_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* The first half of @p holds pattern @seed, the second half still reads zero. */
static void assert_half_pattern(const char *p, uint64_t seed)
{
	ck_assert_int_eq(t_check_pattern(p, LEN / 2, seed), -1);
	ck_assert(all_zero(p + LEN / 2, LEN / 2));
}

/* Fresh memory reads zero, and a pattern written over it reads back. */
static void assert_zero_then_pattern(char *p, size_t len, uint64_t seed)
{
	ck_assert(all_zero(p, len));
	t_fill_pattern(p, len, seed);
	ck_assert_int_eq(t_check_pattern(p, len, seed), -1);
}

/* ---------------------------------------------------------------------- */
/* uhmm_mm_open / uhmm_mm_close                                            */

/* Default options open an mm that can be closed again. */
START_TEST(open_default_opts_succeeds)
{
	struct uhmm_mm *m = NULL;

	ck_assert_int_eq(uhmm_mm_open(&m, NULL), 0);
	ck_assert_ptr_nonnull(m);
	uhmm_mm_close(m);
}
END_TEST

/* Valid explicit options (2 handlers, spinning, small fault-around) work. */
START_TEST(open_explicit_opts_succeeds)
{
	UHMM_OPTS(mm_opts, o, .nr_handlers = 2, .spin_usec = 50,
		  .fault_around_pages = 16);
	struct uhmm_mm *m = NULL;
	struct uhmm_mm_stat st;
	char *p, *a;

	ck_assert_int_eq(uhmm_mm_open(&m, &o), 0);
	p = t_map_anon(2 * LEN);
	/* a 64 KiB aligned page: its 16-page window lies inside the range */
	a = (char *)(((uintptr_t)p + LEN - 1) & ~(16 * T_PAGE - 1));
	ck_assert_int_eq(uhmm_mm_manage(m, p, 2 * LEN), 0);
	ck_assert_int_eq(a[1], 0);
	ck_assert_int_eq(uhmm_mm_stat(m, &st), 0);
	ck_assert_uint_eq(st.filled_pages, 16);
	ck_assert_uint_eq(t_resident_pages(p, 2 * LEN), 16);
	uhmm_mm_close(m);
	munmap(p, 2 * LEN);
}
END_TEST

/* NULL out pointer is -EINVAL. */
START_TEST(open_null_out_is_einval)
{
	ck_assert_int_eq(uhmm_mm_open(NULL, NULL), -EINVAL);
}
END_TEST

/* Every invalid option field is -EINVAL and leaves *out NULL. */
START_TEST(open_bad_opts_are_einval)
{
	struct uhmm_mm *m = (struct uhmm_mm *)1;
	struct uhmm_mm_opts o;

	memset(&o, 0, sizeof(o));
	o.sz = 1;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	ck_assert_ptr_null(m);
	o.sz = sizeof(o) + 8;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	o.sz = sizeof(o);
	o.nr_handlers = 17;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	o.nr_handlers = 0;
	o.fault_around_pages = 3;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	o.fault_around_pages = 1024;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	o.fault_around_pages = 0;
	o.spin_usec = 2000000;
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
	o.spin_usec = 0;
	o.flags = 1U << 9;	/* unknown flag */
	ck_assert_int_eq(uhmm_mm_open(&m, &o), -EINVAL);
}
END_TEST

/* An older, shorter opts struct (only sz + nr_handlers) is accepted. */
START_TEST(open_short_opts_struct_is_accepted)
{
	/* garbage past sz must be ignored */
	struct uhmm_mm_opts o = { .sz = offsetof(struct uhmm_mm_opts, spin_usec),
				  .nr_handlers = 1, .spin_usec = ~0U,
				  .fault_around_pages = 3, .flags = ~0U };
	struct uhmm_mm *m = NULL;

	ck_assert_int_eq(uhmm_mm_open(&m, &o), 0);
	uhmm_mm_close(m);
}
END_TEST

/* Two mms can be open at once and each serves its own ranges. */
START_TEST(open_two_mms_coexist)
{
	struct uhmm_mm *a, *b;
	char *p = t_map_anon(LEN), *q = t_map_anon(LEN);

	ck_assert_int_eq(uhmm_mm_open(&a, NULL), 0);
	ck_assert_int_eq(uhmm_mm_open(&b, NULL), 0);
	ck_assert_int_eq(uhmm_mm_manage(a, p, LEN), 0);
	ck_assert_int_eq(uhmm_mm_manage(b, q, LEN), 0);
	p[5] = 1;
	q[5] = 2;
	ck_assert_int_eq(p[5] + q[5], 3);
	uhmm_mm_close(a);
	uhmm_mm_close(b);
}
END_TEST

/* close(NULL) does nothing. */
START_TEST(close_null_is_noop)
{
	uhmm_mm_close(NULL);
}
END_TEST

/* After close, formerly managed memory stays mapped as ordinary memory. */
START_TEST(close_leaves_memory_mapped_and_usable)
{
	struct uhmm_mm *m;
	char *p = t_map_anon(LEN);

	ck_assert_int_eq(uhmm_mm_open(&m, NULL), 0);
	ck_assert_int_eq(uhmm_mm_manage(m, p, LEN), 0);
	t_fill_pattern(p, LEN / 2, 7);
	uhmm_mm_close(m);
	assert_half_pattern(p, 7);	/* untouched half: plain faults */
	p[LEN - 1] = 9;
	ck_assert_int_eq(p[LEN - 1], 9);
	munmap(p, LEN);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_mm_manage                                                          */

/* First touch of managed anonymous memory reads zeros; writes stick. */
START_TEST(manage_anon_first_touch_zero_and_writes_stick)
{
	char *p = map_managed(LEN);

	assert_zero_then_pattern(p, LEN, 1);
	munmap(p, LEN);
}
END_TEST

/* A first write (not read) to a missing page also lands. */
START_TEST(manage_anon_first_write_sticks)
{
	char *p = map_managed(LEN);

	for (size_t i = 0; i < LEN; i += T_PAGE)
		p[i + 17] = (char)(i / T_PAGE + 1);
	for (size_t i = 0; i < LEN; i += T_PAGE) {
		ck_assert_int_eq(p[i + 17], (char)(i / T_PAGE + 1));
		ck_assert_int_eq(p[i], 0);
	}
	munmap(p, LEN);
}
END_TEST

/* Pages present before manage keep their data. */
START_TEST(manage_keeps_present_pages)
{
	char *p = t_map_anon(LEN);

	t_fill_pattern(p, LEN / 2, 3);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	assert_half_pattern(p, 3);
	munmap(p, LEN);
}
END_TEST

/* MADV_DONTNEED on managed memory zeroes it, and it refills on touch. */
START_TEST(manage_madv_dontneed_zeroes)
{
	char *p = map_managed(LEN);

	t_fill_pattern(p, LEN, 4);
	ck_assert_int_eq(madvise(p, LEN, MADV_DONTNEED), 0);
	ck_assert(all_zero(p, LEN));
	p[100] = 5;
	ck_assert_int_eq(p[100], 5);
	munmap(p, LEN);
}
END_TEST

/* A syscall writing into a missing managed page (read from a pipe) works. */
START_TEST(manage_syscall_into_missing_page_works)
{
	char *p = map_managed(LEN);
	int fds[2];

	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_eq(write(fds[1], "hello", 5), 5);
	ck_assert_int_eq(read(fds[0], p + 3 * T_PAGE, 5), 5);
	ck_assert_int_eq(memcmp(p + 3 * T_PAGE, "hello", 5), 0);
	close(fds[0]);
	close(fds[1]);
	munmap(p, LEN);
}
END_TEST

/* memfd (shmem) shared mappings can be managed; data reaches the file. */
START_TEST(manage_memfd_shared_works)
{
	int fd = memfd_create("t", MFD_CLOEXEC);
	char *p, buf[4];

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, LEN), 0);
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	ck_assert(all_zero(p, LEN));
	memcpy(p + 2 * T_PAGE, "abc", 4);
	ck_assert_int_eq(pread(fd, buf, 4, 2 * T_PAGE), 4);
	ck_assert_str_eq(buf, "abc");
	ck_assert_int_eq(madvise(p, LEN, MADV_DONTNEED), 0);
	/* shmem keeps the data in the file: DONTNEED only drops the mapping */
	ck_assert_str_eq(p + 2 * T_PAGE, "abc");
	munmap(p, LEN);
	close(fd);
}
END_TEST

/* Shared anonymous memory (shmem underneath) can be managed. */
START_TEST(manage_shared_anon_works)
{
	char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	assert_zero_then_pattern(p, LEN, 11);
	munmap(p, LEN);
}
END_TEST

/* hugetlbfs memory can be managed: zero on first touch, writes stick. */
START_TEST(manage_hugetlb_works)
{
	size_t len = 4UL << 20;
	const char *why;
	char *p = t_hugetlb_map(len, &why);

	if (!p) {
		t_skip("%s", why);
		return;
	}
	ck_assert_int_eq(uhmm_mm_manage(mm, p, len), 0);
	assert_zero_then_pattern(p, len, 21);
	/* unaligned to the huge page size: -EINVAL */
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, len), 0);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + T_PAGE, len - 2 * T_PAGE), -EINVAL);
	t_hugetlb_unmap(p, len);
}
END_TEST

/* NULL mm, NULL/unaligned addr, unaligned or empty length: -EINVAL. */
START_TEST(manage_bad_args_are_einval)
{
	char *p = t_map_anon(LEN);

	ck_assert_int_eq(uhmm_mm_manage(NULL, p, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_manage(mm, NULL, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + 1, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, T_PAGE + 1), -EINVAL);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, 0), -EINVAL);
	ck_assert_int_eq(uhmm_mm_manage(mm, (void *)(~0UL & ~(T_PAGE - 1)),
					2 * T_PAGE), -EINVAL);	/* wraps */
	munmap(p, LEN);
}
END_TEST

/* Managing a range again, or one overlapping it, is -EEXIST. */
START_TEST(manage_overlap_is_eexist)
{
	char *p = map_managed(LEN);

	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), -EEXIST);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + T_PAGE, T_PAGE), -EEXIST);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + LEN - T_PAGE, T_PAGE), -EEXIST);
	munmap(p, LEN);
}
END_TEST

/* Adjacent ranges are not overlaps. */
START_TEST(manage_adjacent_ranges_ok)
{
	char *p = t_map_anon(LEN);

	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN / 2), 0);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + LEN / 2, LEN / 2), 0);
	ck_assert(all_zero(p, LEN));
	munmap(p, LEN);
}
END_TEST

/* A range with an unmapped hole (or entirely unmapped) is -EFAULT. */
START_TEST(manage_unmapped_is_efault)
{
	char *p = t_map_anon(LEN);

	ck_assert_int_eq(munmap(p + T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), -EFAULT);
	ck_assert_int_eq(uhmm_mm_manage(mm, p + T_PAGE, T_PAGE), -EFAULT);
	/* the mapped part before the hole is still manageable */
	ck_assert_int_eq(uhmm_mm_manage(mm, p, T_PAGE), 0);
	munmap(p, LEN);
}
END_TEST

/* File-backed page cache (private or shared mapping of a real file): -EOPNOTSUPP. */
START_TEST(manage_file_backed_is_eopnotsupp)
{
	char path[] = "/var/tmp/uhmm-test-XXXXXX";
	int fd = mkstemp(path);
	char *p, *q;

	ck_assert_int_ge(fd, 0);
	unlink(path);
	ck_assert_int_eq(ftruncate(fd, LEN), 0);
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	q = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_ptr_ne(q, MAP_FAILED);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), -EOPNOTSUPP);
	ck_assert_int_eq(uhmm_mm_manage(mm, q, LEN), -EOPNOTSUPP);
	munmap(p, LEN);
	munmap(q, LEN);
	close(fd);
}
END_TEST

/* Managed memory spanning two kernel VMAs (different protections) works. */
START_TEST(manage_spanning_two_vmas_works)
{
	char *p = t_map_anon(LEN);

	ck_assert_int_eq(mprotect(p, LEN / 2, PROT_READ), 0);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	ck_assert(all_zero(p, LEN));
	p[LEN / 2] = 1;
	ck_assert_int_eq(p[LEN / 2], 1);
	munmap(p, LEN);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_mm_unmanage                                                        */

/* Unmanaging keeps data and the memory keeps working as plain memory. */
START_TEST(unmanage_keeps_data)
{
	char *p = map_managed(LEN);

	t_fill_pattern(p, LEN / 2, 8);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, LEN), 0);
	assert_half_pattern(p, 8);
	/* and it can be managed again */
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	ck_assert_int_eq(t_check_pattern(p, LEN / 2, 8), -1);
	munmap(p, LEN);
}
END_TEST

/* A range never managed, or reaching beyond the managed range: -ENOENT. */
START_TEST(unmanage_not_managed_is_enoent)
{
	char *p = t_map_anon(2 * LEN);

	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, LEN), -ENOENT);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, 2 * LEN), -ENOENT);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, LEN), 0);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, LEN), -ENOENT);
	munmap(p, 2 * LEN);
}
END_TEST

/* NULL mm, NULL or unaligned addr, bad length: -EINVAL. */
START_TEST(unmanage_bad_args_are_einval)
{
	char *p = map_managed(LEN);

	ck_assert_int_eq(uhmm_mm_unmanage(NULL, p, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, NULL, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p + 8, T_PAGE), -EINVAL);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, 0), -EINVAL);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, p, 100), -EINVAL);
	munmap(p, LEN);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_mm_alloc / uhmm_mm_free                                            */

/* alloc returns page-aligned managed memory reading zero. */
START_TEST(alloc_returns_zeroed_managed_memory)
{
	void *v = NULL;
	char *p;

	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 0, &v), 0);
	p = v;
	ck_assert_uint_eq((uintptr_t)p % T_PAGE, 0);
	assert_zero_then_pattern(p, LEN, 12);
	/* it is managed: managing it again overlaps */
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), -EEXIST);
	ck_assert_int_eq(uhmm_mm_free(mm, p, LEN), 0);
}
END_TEST

/* UHMM_ALLOC_HUGE returns a 2 MiB aligned range. */
START_TEST(alloc_huge_is_2m_aligned)
{
	void *v = NULL;

	ck_assert_int_eq(uhmm_mm_alloc(mm, 4UL << 20, UHMM_ALLOC_HUGE, &v), 0);
	ck_assert_uint_eq((uintptr_t)v % (2UL << 20), 0);
	ck_assert(all_zero(v, 4UL << 20));
	ck_assert_int_eq(uhmm_mm_free(mm, v, 4UL << 20), 0);
}
END_TEST

/* Bad mm/len/flags/out: -EINVAL. */
START_TEST(alloc_bad_args_are_einval)
{
	void *v;

	ck_assert_int_eq(uhmm_mm_alloc(NULL, LEN, 0, &v), -EINVAL);
	ck_assert_int_eq(uhmm_mm_alloc(mm, 0, 0, &v), -EINVAL);
	ck_assert_int_eq(uhmm_mm_alloc(mm, 100, 0, &v), -EINVAL);
	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 1U << 7, &v), -EINVAL);
	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 0, NULL), -EINVAL);
}
END_TEST

/* free unmaps: the range is no longer mapped afterwards. */
START_TEST(free_unmaps)
{
	void *v;
	unsigned char vec;

	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 0, &v), 0);
	((char *)v)[0] = 1;
	ck_assert_int_eq(uhmm_mm_free(mm, v, LEN), 0);
	ck_assert_int_eq(mincore(v, T_PAGE, &vec), -1);
	ck_assert_int_eq(errno, ENOMEM);
}
END_TEST

/* free of memory uhmm does not manage is -ENOENT; bad args -EINVAL. */
START_TEST(free_errors)
{
	char *p = t_map_anon(LEN);
	void *v;

	ck_assert_int_eq(uhmm_mm_free(mm, p, LEN), -ENOENT);
	ck_assert_int_eq(uhmm_mm_alloc(mm, LEN, 0, &v), 0);
	ck_assert_int_eq(uhmm_mm_free(NULL, v, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_free(mm, (char *)v + 1, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_mm_free(mm, v, 0), -EINVAL);
	ck_assert_int_eq(uhmm_mm_free(mm, v, LEN), 0);
	munmap(p, LEN);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_mm_stat / uhmm_mm_features                                         */

/* One first touch is one fault filling a whole fault-around window. */
START_TEST(stat_counts_fault_around)
{
	struct uhmm_mm_stat st;
	char *p = t_map_anon(4UL << 20);
	char *a = (char *)(((uintptr_t)p + (2UL << 20) - 1) & ~((2UL << 20) - 1));

	ck_assert_int_eq(uhmm_mm_manage(mm, a, 2UL << 20), 0);
	ck_assert_int_eq(uhmm_mm_stat(mm, &st), 0);
	ck_assert_uint_eq(st.faults, 0);
	ck_assert_int_eq(a[12345], 0);
	ck_assert_int_eq(uhmm_mm_stat(mm, &st), 0);
	ck_assert_uint_eq(st.faults, 1);
	ck_assert_uint_eq(st.fills, 1);
	ck_assert_uint_eq(st.filled_pages, 512);
	ck_assert_uint_eq(t_resident_pages(a, 2UL << 20), 512);
	munmap(p, 4UL << 20);
}
END_TEST

/* stat with NULL arguments is -EINVAL. */
START_TEST(stat_null_is_einval)
{
	struct uhmm_mm_stat st;

	ck_assert_int_eq(uhmm_mm_stat(NULL, &st), -EINVAL);
	ck_assert_int_eq(uhmm_mm_stat(mm, NULL), -EINVAL);
}
END_TEST

/* This kernel has PAGEMAP_SCAN, PROCMAP_QUERY, MOVE and WP; NULL gives 0. */
START_TEST(features_reports_kernel_features)
{
	unsigned int f = uhmm_mm_features(mm);

	ck_assert_uint_eq(uhmm_mm_features(NULL), 0);
	if (!(f & UHMM_FEAT_PAGEMAP_SCAN))
		t_skip("kernel without PAGEMAP_SCAN");
	ck_assert_uint_eq(f & ~(UHMM_FEAT_MOVE | UHMM_FEAT_PAGEMAP_SCAN |
				UHMM_FEAT_PROCMAP_QUERY | UHMM_FEAT_WP), 0);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* wrappers                                                                */

/* uhmm_mprotect changes protection like mprotect; bad args -EINVAL. */
START_TEST(mprotect_wrapper_changes_protection)
{
	char *p = map_managed(LEN);
	unsigned char vec;

	p[0] = 1;
	ck_assert_int_eq(uhmm_mprotect(p, LEN, PROT_READ), 0);
	ck_assert_int_eq(p[0], 1);
	ck_assert_int_eq(uhmm_mprotect(p, LEN, PROT_READ | PROT_WRITE), 0);
	p[1] = 2;
	ck_assert_int_eq(uhmm_mprotect(p + 1, T_PAGE, PROT_READ), -EINVAL);
	ck_assert_int_eq(uhmm_mprotect(p, 0, PROT_READ), -EINVAL);
	munmap(p, LEN);
	ck_assert_int_eq(uhmm_mprotect(p, LEN, PROT_READ), -ENOMEM);
	(void)vec;
}
END_TEST

/* uhmm_munmap unmaps managed memory; the range can be mapped again. */
START_TEST(munmap_wrapper_unmaps)
{
	char *p = map_managed(LEN);
	unsigned char vec;

	p[0] = 1;
	ck_assert_int_eq(uhmm_munmap(p, LEN), 0);
	ck_assert_int_eq(mincore(p, T_PAGE, &vec), -1);
	ck_assert_int_eq(uhmm_munmap(p + 1, LEN), -EINVAL);
	ck_assert_int_eq(uhmm_munmap(p, 0), -EINVAL);
	/* not managed any more: managing a new mapping there works */
	ck_assert_ptr_eq(mmap(p, LEN, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), p);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	ck_assert_int_eq(p[0], 0);
	munmap(p, LEN);
}
END_TEST

/* uhmm_madvise(DONTNEED) zeroes managed memory; other advice passes through. */
START_TEST(madvise_wrapper_dontneed_zeroes)
{
	char *p = map_managed(LEN);

	t_fill_pattern(p, LEN, 5);
	ck_assert_int_eq(uhmm_madvise(p, LEN, MADV_WILLNEED), 0);
	ck_assert_int_eq(t_check_pattern(p, LEN, 5), -1);
	ck_assert_int_eq(uhmm_madvise(p, LEN / 2, MADV_DONTNEED), 0);
	ck_assert(all_zero(p, LEN / 2));
	ck_assert_int_eq(t_check_pattern(p + LEN / 2, LEN / 2, 5 + LEN / 16), -1);
	ck_assert_int_eq(uhmm_madvise(p, LEN, 12345), -EINVAL);
	ck_assert_int_eq(uhmm_madvise(p + 1, LEN, MADV_DONTNEED), -EINVAL);
	munmap(p, LEN);
}
END_TEST

/* uhmm_mremap moves managed memory with its data; it stays managed. */
START_TEST(mremap_wrapper_moves_data)
{
	char *p = map_managed(LEN);
	void *q = NULL;

	t_fill_pattern(p, LEN / 2, 6);
	ck_assert_int_eq(uhmm_mremap(p, LEN, 2 * LEN, MREMAP_MAYMOVE, NULL, &q), 0);
	ck_assert_ptr_nonnull(q);
	assert_half_pattern(q, 6);
	ck_assert_int_eq(uhmm_mremap(q, LEN, LEN, 0, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_mremap((char *)q + 1, LEN, LEN, 0, NULL, &q), -EINVAL);
	munmap(q, 2 * LEN);
}
END_TEST

/* A forked child sees the parent's managed data and can touch missing pages. */
START_TEST(fork_child_sees_plain_memory)
{
	char *p = map_managed(LEN);
	pid_t pid;
	int status;

	t_fill_pattern(p, LEN / 2, 13);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		bool ok = t_check_pattern(p, LEN / 2, 13) == -1 &&
			  all_zero(p + LEN / 2, LEN / 2);

		p[LEN - 1] = 1;
		_exit(ok && p[LEN - 1] == 1 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* the parent's memory is unchanged and still managed */
	ck_assert_int_eq(t_check_pattern(p, LEN / 2, 13), -1);
	ck_assert_int_eq(p[LEN - 1], 0);
	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), -EEXIST);
	munmap(p, LEN);
}
END_TEST

int main(void)
{
	TCase *open = T_TCASE("mm_open", NULL, NULL, open_default_opts_succeeds,
			      open_explicit_opts_succeeds, open_null_out_is_einval,
			      open_bad_opts_are_einval, open_short_opts_struct_is_accepted,
			      open_two_mms_coexist);
	TCase *close_ = T_TCASE("mm_close", NULL, NULL, close_null_is_noop,
				close_leaves_memory_mapped_and_usable);
	TCase *manage = T_TCASE("mm_manage", mm_setup, mm_teardown,
				manage_anon_first_touch_zero_and_writes_stick,
				manage_anon_first_write_sticks, manage_keeps_present_pages,
				manage_madv_dontneed_zeroes, manage_syscall_into_missing_page_works,
				manage_memfd_shared_works, manage_shared_anon_works,
				manage_hugetlb_works, manage_bad_args_are_einval,
				manage_overlap_is_eexist, manage_adjacent_ranges_ok,
				manage_unmapped_is_efault, manage_file_backed_is_eopnotsupp,
				manage_spanning_two_vmas_works);
	TCase *unmanage = T_TCASE("mm_unmanage", mm_setup, mm_teardown, unmanage_keeps_data,
				  unmanage_not_managed_is_enoent, unmanage_bad_args_are_einval);
	TCase *alloc = T_TCASE("mm_alloc", mm_setup, mm_teardown,
			       alloc_returns_zeroed_managed_memory, alloc_huge_is_2m_aligned,
			       alloc_bad_args_are_einval);
	TCase *free_ = T_TCASE("mm_free", mm_setup, mm_teardown, free_unmaps, free_errors);
	TCase *stat = T_TCASE("mm_stat", mm_setup, mm_teardown, stat_counts_fault_around,
			      stat_null_is_einval);
	TCase *feat = T_TCASE("mm_features", mm_setup, mm_teardown,
			      features_reports_kernel_features);
	TCase *mprot = T_TCASE("mprotect", mm_setup, mm_teardown,
			       mprotect_wrapper_changes_protection);
	TCase *unmap = T_TCASE("munmap", mm_setup, mm_teardown, munmap_wrapper_unmaps);
	TCase *madv = T_TCASE("madvise", mm_setup, mm_teardown, madvise_wrapper_dontneed_zeroes);
	TCase *remap = T_TCASE("mremap", mm_setup, mm_teardown, mremap_wrapper_moves_data);
	TCase *fork_ = T_TCASE("fork", mm_setup, mm_teardown, fork_child_sees_plain_memory);

	return t_run_suite("mm", open, close_, manage, unmanage, alloc, free_,
			   stat, feat, mprot, unmap, madv, remap, fork_, NULL);
}
