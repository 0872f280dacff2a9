// SPDX-License-Identifier: MIT
/* Unit tests for dax regions and devices: label persistence and crash
 * safety, seed, resize, ranges, align, mapping, pagemap, several openers. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uhmm/dax.h>
#include <uhmm/pagemap.h>
#include "t_util.h"

#define MiB (1ULL << 20)
#define LABEL_BLOCK (64 << 10)

static char path[64];
static struct uhmm_dax_region *R;

static void new_path(void)
{
	int fd;

	strcpy(path, "/dev/shm/uhmm-dax-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	close(fd);
}

/* 64 MiB region, 4 KiB align, on a tmpfs file. */
static void setup(void)
{
	new_path();
	ck_assert_int_eq(uhmm_dax_region_create(path, 64 * MiB, UHMM_DAX_ALIGN_4K, &R), 0);
}

/* 64 MiB region, 2 MiB align. */
static void setup_2m(void)
{
	new_path();
	ck_assert_int_eq(uhmm_dax_region_create(path, 64 * MiB, UHMM_DAX_ALIGN_2M, &R), 0);
}

static void teardown(void)
{
	uhmm_dax_region_close(R);
	R = NULL;
	unlink(path);
}

static struct uhmm_dax_dev *seed_of(struct uhmm_dax_region *r)
{
	struct uhmm_dax_dev *d;

	ck_assert_int_eq(uhmm_dax_region_seed(r, &d), 0);
	return d;
}

static struct uhmm_dax_dev *new_dev(struct uhmm_dax_region *r, uint64_t size)
{
	struct uhmm_dax_dev *d = seed_of(r);

	ck_assert_int_eq(uhmm_dax_dev_resize(d, size), 0);
	return d;
}

static uint64_t dev_size(struct uhmm_dax_dev *d)
{
	struct uhmm_dax_dev_info info;

	ck_assert_int_eq(uhmm_dax_dev_info(d, &info), 0);
	return info.size;
}

static uint64_t avail(struct uhmm_dax_region *r)
{
	struct uhmm_dax_region_info info;

	ck_assert_int_eq(uhmm_dax_region_info(r, &info), 0);
	return info.available;
}

static int ranges(struct uhmm_dax_dev *d, struct uhmm_dax_range *out)
{
	return uhmm_dax_dev_ranges(d, out, 64);
}

/* Every device's ranges lie inside the region, do not overlap, sizes add up. */
static void check_layout(struct uhmm_dax_region *r)
{
	struct uhmm_dax_region_info info;
	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	struct uhmm_dax_range all[512];
	int n, na = 0, seeds = 0;
	uint64_t used = 0;

	ck_assert_int_eq(uhmm_dax_region_info(r, &info), 0);
	n = uhmm_dax_region_devices(r, devs, UHMM_DAX_MAX_DEVICES);
	ck_assert_int_eq(n, (int)info.nr_devices);
	for (int i = 0; i < n; i++) {
		struct uhmm_dax_dev_info di;
		int k = uhmm_dax_dev_ranges(devs[i], all + na, 512 - na);

		ck_assert_int_ge(k, 0);
		ck_assert_int_eq(uhmm_dax_dev_info(devs[i], &di), 0);
		if (di.flags & UHMM_DAX_DEV_SEED) {
			seeds++;
			ck_assert_uint_eq(di.size, 0);
		}
		na += k;
		used += di.size;
	}
	ck_assert_int_eq(seeds, 1);
	for (int i = 0; i < na; i++) {
		ck_assert_uint_lt(all[i].start, all[i].end);
		ck_assert_uint_le(all[i].end, info.size);
		for (int j = 0; j < i; j++)
			ck_assert(all[i].end <= all[j].start || all[j].end <= all[i].start);
	}
	ck_assert_uint_eq(info.available, info.size - used);
}

/* ---------------------------------------------------------------------- */

/* A new region has one device, its zero-size seed, and all space free. */
START_TEST(region_create_has_only_seed)
{
	struct uhmm_dax_region_info info;
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_region_info(R, &info), 0);
	ck_assert_uint_eq(info.size, 64 * MiB);
	ck_assert_uint_eq(info.available, 64 * MiB);
	ck_assert_uint_eq(info.nr_devices, 1);
	ck_assert_uint_eq(info.persistent, 1);
	ck_assert_int_eq(uhmm_dax_dev_info(seed_of(R), &di), 0);
	ck_assert_uint_eq(di.size, 0);
	ck_assert(di.flags & UHMM_DAX_DEV_SEED);
	ck_assert_uint_eq(di.id, info.seed_id);
}
END_TEST

/* Bad align, unaligned or zero size and NULL out are -EINVAL. */
START_TEST(region_create_bad_args_einval)
{
	struct uhmm_dax_region *r;

	ck_assert_int_eq(uhmm_dax_region_create(NULL, 4 * MiB, 8192, &r), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_create(NULL, 3 * MiB, UHMM_DAX_ALIGN_2M, &r), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_create(NULL, 0, UHMM_DAX_ALIGN_4K, &r), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_create(NULL, 4 * MiB, UHMM_DAX_ALIGN_4K, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_create("/dev/null", 4 * MiB, UHMM_DAX_ALIGN_4K, &r), -EINVAL);
}
END_TEST

/* Formatting a backing that already holds a valid label is -EEXIST. */
START_TEST(region_create_existing_label_eexist)
{
	struct uhmm_dax_region *r;

	ck_assert_int_eq(uhmm_dax_region_create(path, 4 * MiB, UHMM_DAX_ALIGN_4K, &r), -EEXIST);
}
END_TEST

/* NULL path: an anonymous memfd region, not persistent. */
START_TEST(region_create_memfd)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_region_info info;

	ck_assert_int_eq(uhmm_dax_region_create(NULL, 8 * MiB, UHMM_DAX_ALIGN_2M, &r), 0);
	ck_assert_int_eq(uhmm_dax_region_info(r, &info), 0);
	ck_assert_uint_eq(info.persistent, 0);
	ck_assert_uint_eq(info.align, UHMM_DAX_ALIGN_2M);
	new_dev(r, 4 * MiB);
	check_layout(r);
	ck_assert_int_eq(uhmm_dax_region_close(r), 0);
	ck_assert_int_eq(uhmm_dax_region_create("memfd:named", 8 * MiB, UHMM_DAX_ALIGN_4K, &r), 0);
	ck_assert_int_eq(uhmm_dax_region_close(r), 0);
}
END_TEST

/*
 * hugetlbfs set up for the test (we are root in tests and CI): huge pages
 * reserved through nr_hugepages and a hugetlbfs mounted on a temporary
 * directory. Unchecked fixtures do both in the test runner, so the teardown
 * runs there even when the forked test fails or crashes.
 */
static struct {
	char knob[96];		/* nr_hugepages file of the page size */
	long saved;		/* its value before the test; -1: untouched */
	char dir[64];		/* mount point; "" when none */
	bool mounted;
	char file[96];		/* region file in the mount; "" when none */
	const char *why;	/* why the setup failed: the tests skip */
} hp_env = { .saved = -1 };

static long knob_read(const char *knob)
{
	FILE *f = fopen(knob, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static bool knob_write(const char *knob, long v)
{
	FILE *f = fopen(knob, "w");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

static void hp_env_cleanup(void)
{
	if (hp_env.file[0])
		unlink(hp_env.file);	/* gives the pages back */
	hp_env.file[0] = 0;
	if (hp_env.mounted && !umount2(hp_env.dir, MNT_DETACH))
		hp_env.mounted = false;
	if (hp_env.dir[0] && !hp_env.mounted)
		rmdir(hp_env.dir);
	hp_env.dir[0] = 0;
	if (hp_env.saved >= 0)
		knob_write(hp_env.knob, hp_env.saved);
	hp_env.saved = -1;
}

/*
 * Reserve @n more huge pages of @kib KiB and mount hugetlbfs for that size;
 * fills hp_env.file with a path inside the mount. Returns NULL, or why not
 * (with everything undone).
 */
static const char *hp_env_setup(unsigned long kib, long n)
{
	static char why[256];
	static bool registered;
	char opts[32];


	if (!registered && !atexit(hp_env_cleanup))
		registered = true;
	snprintf(hp_env.knob, sizeof(hp_env.knob),
		 "/sys/kernel/mm/hugepages/hugepages-%lukB/nr_hugepages", kib);
	if (access(hp_env.knob, F_OK) && kib == 2048)
		snprintf(hp_env.knob, sizeof(hp_env.knob), "/proc/sys/vm/nr_hugepages");
	hp_env.saved = knob_read(hp_env.knob);
	if (hp_env.saved < 0) {
		snprintf(why, sizeof(why), "no %lu KiB huge pages in this kernel (%s)",
			 kib, hp_env.knob);
		return why;
	}
	errno = 0;
	if (!knob_write(hp_env.knob, hp_env.saved + n) ||
	    knob_read(hp_env.knob) < hp_env.saved + n) {
		snprintf(why, sizeof(why), "could not reserve %ld %lu KiB huge pages via %s: %s",
			 n, kib, hp_env.knob,
			 errno ? strerror(errno) : "not enough contiguous free memory");
		hp_env_cleanup();
		return why;
	}
	/* A private namespace drops the mount even if the runner dies. */
	if (!unshare(CLONE_NEWNS))
		mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	strcpy(hp_env.dir, "/tmp/uhmm-hugetlbfs-XXXXXX");
	if (!mkdtemp(hp_env.dir)) {
		snprintf(why, sizeof(why), "mkdtemp: %s", strerror(errno));
		hp_env.dir[0] = 0;
		hp_env_cleanup();
		return why;
	}
	snprintf(opts, sizeof(opts), "pagesize=%luK", kib);
	if (mount("uhmm-hugetlbfs", hp_env.dir, "hugetlbfs", 0, opts)) {
		snprintf(why, sizeof(why), "mount(hugetlbfs, %s): %s", opts, strerror(errno));
		hp_env_cleanup();
		return why;
	}
	hp_env.mounted = true;
	snprintf(hp_env.file, sizeof(hp_env.file), "%s/region", hp_env.dir);
	return NULL;
}

/* 2 MiB label area + 4 MiB of data, and one page to spare. */
static void hp2m_setup(void)
{
	hp_env.why = hp_env_setup(2048, 4);
}

/* The label area rounds up to one 1 GiB page; the data is another. */
static void hp1g_setup(void)
{
	hp_env.why = hp_env_setup(1024 * 1024, 2);
}

/* hugetlbfs backing with 2 MiB align: created, mapped, and a 4 KiB align
 * refused; skipped only when huge pages or the mount cannot be set up. */
START_TEST(region_create_hugetlbfs)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_dev *d;
	char *p;

	if (hp_env.why) {
		t_skip("%s", hp_env.why);
		return;
	}
	ck_assert_int_eq(uhmm_dax_region_create(hp_env.file, 4 * MiB, UHMM_DAX_ALIGN_2M, &r), 0);
	ck_assert_int_eq(uhmm_dax_region_seed(r, &d), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(d, 2 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(d), 0);
	ck_assert_int_eq(uhmm_dax_map(d, PROT_READ | PROT_WRITE, (void **)&p), 0);
	ck_assert_uint_eq((uintptr_t)p % (2 * MiB), 0);
	memset(p, 0x5a, 2 * MiB);
	ck_assert_int_eq(p[2 * MiB - 1], 0x5a);
	ck_assert_int_eq(uhmm_dax_unmap(d, p), 0);
	ck_assert_int_eq(uhmm_dax_region_close(r), 0);
	/* Not 2 MiB aligned: refused on hugetlbfs. */
	unlink(hp_env.file);
	ck_assert_int_eq(uhmm_dax_region_create(hp_env.file, 4 * MiB, UHMM_DAX_ALIGN_4K, &r), -EINVAL);
}
END_TEST

/* On 1 GiB hugetlbfs pages only a 1 GiB align is accepted. */
START_TEST(region_create_hugetlbfs_1g_align)
{
	struct uhmm_dax_region *r;

	if (hp_env.why) {
		t_skip("%s", hp_env.why);
		return;
	}
	ck_assert_int_eq(uhmm_dax_region_create(hp_env.file, 1024 * MiB, UHMM_DAX_ALIGN_2M, &r), -EINVAL);
	unlink(hp_env.file);
	ck_assert_int_eq(uhmm_dax_region_create(hp_env.file, 1024 * MiB, UHMM_DAX_ALIGN_1G, &r), 0);
	ck_assert_int_eq(uhmm_dax_region_close(r), 0);
}
END_TEST

/* The layout survives close and reopen. */
START_TEST(region_open_persists_layout)
{
	struct uhmm_dax_dev *d, *e;
	struct uhmm_dax_range rg[8];

	d = new_dev(R, 8 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(d, UHMM_DAX_MODE_KMEM), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(d, UHMM_DAX_MODE_DEVDAX), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(d), 0);
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	ck_assert_int_eq(uhmm_dax_region_open(path, &R), 0);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "2", &e), 0); /* the seed */
	ck_assert_int_eq(uhmm_dax_dev_find(R, "1", &e), 0);
	ck_assert_uint_eq(dev_size(e), 8 * MiB);
	ck_assert_int_eq(ranges(e, rg), 1);
	ck_assert_uint_eq(rg[0].start, 0);
	ck_assert_uint_eq(avail(R), 56 * MiB);
	check_layout(R);
}
END_TEST

/* Opening a missing file, an unformatted file or NULL fails cleanly. */
START_TEST(region_open_errors)
{
	struct uhmm_dax_region *r;
	char p2[64];
	int fd;

	ck_assert_int_eq(uhmm_dax_region_open("/dev/shm/uhmm-no-such-file", &r), -ENOENT);
	ck_assert_int_eq(uhmm_dax_region_open(NULL, &r), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_open(path, NULL), -EINVAL);
	strcpy(p2, "/dev/shm/uhmm-dax-XXXXXX");
	fd = mkstemp(p2);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(uhmm_dax_region_open(p2, &r), -ENODATA);
	ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
	ck_assert_int_eq(uhmm_dax_region_open(p2, &r), -ENODATA);
	close(fd);
	unlink(p2);
}
END_TEST

static void corrupt(const char *p, off_t off)
{
	int fd = open(p, O_RDWR);
	char junk[16];

	memset(junk, 0x5a, sizeof(junk));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), off), (ssize_t)sizeof(junk));
	close(fd);
}

static uint64_t label_seq(const char *p, int blk)
{
	uint64_t seq = 0;
	int fd = open(p, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, &seq, 8, blk * LABEL_BLOCK + 16), 8);
	close(fd);
	return seq;
}

/* A torn newest label block falls back to the previous layout. */
START_TEST(region_open_torn_label_uses_previous)
{
	struct uhmm_dax_dev *d;
	uint64_t s0, s1;

	d = new_dev(R, 4 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_resize(d, 12 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	s0 = label_seq(path, 0);
	s1 = label_seq(path, 1);
	corrupt(path, (s1 > s0 ? LABEL_BLOCK : 0) + 200);
	ck_assert_int_eq(uhmm_dax_region_open(path, &R), 0);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "1", &d), 0);
	ck_assert_uint_eq(dev_size(d), 4 * MiB);
	check_layout(R);
}
END_TEST

/* Both blocks corrupt: -EUCLEAN, never trusted. */
START_TEST(region_open_corrupt_euclean)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_dev *d;

	new_dev(R, 4 * MiB);
	corrupt(path, 40);
	corrupt(path, LABEL_BLOCK + 40);
	ck_assert_int_eq(uhmm_dax_region_open(path, &r), -EUCLEAN);
	/* The open handle re-reads the label too and refuses it. */
	ck_assert_int_eq(uhmm_dax_region_seed(R, &d), -EUCLEAN);
}
END_TEST

/* close(NULL) is a no-op; a mapped device keeps the region open. */
START_TEST(region_close_busy_while_mapped)
{
	struct uhmm_dax_dev *d = new_dev(R, 4 * MiB);
	void *p;

	ck_assert_int_eq(uhmm_dax_region_close(NULL), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(d), 0);
	ck_assert_int_eq(uhmm_dax_map(d, PROT_READ | PROT_WRITE, &p), 0);
	ck_assert_int_eq(uhmm_dax_region_close(R), -EBUSY);
	ck_assert_int_eq(uhmm_dax_unmap(d, p), 0);
}
END_TEST

/* info tracks available space; NULL arguments are -EINVAL. */
START_TEST(region_info_available)
{
	struct uhmm_dax_region_info info;

	new_dev(R, 10 * MiB);
	new_dev(R, 6 * MiB);
	ck_assert_int_eq(uhmm_dax_region_info(R, &info), 0);
	ck_assert_uint_eq(info.available, 48 * MiB);
	ck_assert_uint_eq(info.nr_devices, 3);
	ck_assert_int_eq(uhmm_dax_region_info(NULL, &info), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_info(R, NULL), -EINVAL);
}
END_TEST

/* devices() lists in id order and returns the full count. */
START_TEST(region_devices_lists_all)
{
	struct uhmm_dax_dev *devs[4];
	struct uhmm_dax_dev_info di;

	new_dev(R, 4 * MiB);
	new_dev(R, 4 * MiB);
	ck_assert_int_eq(uhmm_dax_region_devices(R, devs, 1), 3);
	ck_assert_int_eq(uhmm_dax_region_devices(R, NULL, 0), 3);
	ck_assert_int_eq(uhmm_dax_region_devices(R, devs, 4), 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(uhmm_dax_dev_info(devs[i], &di), 0);
		ck_assert_uint_eq(di.id, (unsigned)i + 1);
	}
	ck_assert_int_eq(uhmm_dax_region_devices(R, NULL, 2), -EINVAL);
	ck_assert_int_eq(uhmm_dax_region_devices(NULL, devs, 1), -EINVAL);
}
END_TEST

/* Sizing the seed makes it a device and creates exactly one new seed. */
START_TEST(region_seed_sizing_creates_new_seed)
{
	struct uhmm_dax_dev *s1 = seed_of(R), *s2;
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_resize(s1, 4 * MiB), 0);
	s2 = seed_of(R);
	ck_assert_ptr_ne(s1, s2);
	ck_assert_int_eq(uhmm_dax_dev_info(s1, &di), 0);
	ck_assert(!(di.flags & UHMM_DAX_DEV_SEED));
	ck_assert_int_eq(uhmm_dax_dev_info(s2, &di), 0);
	ck_assert(di.flags & UHMM_DAX_DEV_SEED);
	ck_assert_uint_eq(di.size, 0);
	/* Shrinking a device to 0 does not make another seed. */
	ck_assert_int_eq(uhmm_dax_dev_resize(s1, 0), 0);
	ck_assert_ptr_eq(seed_of(R), s2);
	ck_assert_int_eq(uhmm_dax_region_seed(NULL, &s2), -EINVAL);
	check_layout(R);
}
END_TEST

/* Names "dax<region>.<id>" and bare ids find devices; others do not. */
START_TEST(dev_find_by_name_and_id)
{
	struct uhmm_dax_dev *d = new_dev(R, 4 * MiB), *e;
	struct uhmm_dax_dev_info di;
	char other[40];

	ck_assert_int_eq(uhmm_dax_dev_info(d, &di), 0);
	ck_assert_int_eq(uhmm_dax_dev_find(R, di.name, &e), 0);
	ck_assert_ptr_eq(d, e);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "1", &e), 0);
	ck_assert_ptr_eq(d, e);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "77", &e), -ENOENT);
	snprintf(other, sizeof(other), "dax%u.1", 1000 + 1);
	ck_assert_int_eq(uhmm_dax_dev_find(R, other, &e), -ENOENT);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "dax", &e), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_find(R, NULL, &e), -EINVAL);
}
END_TEST

/* info and ranges reject NULL; a destroyed device answers -ENODEV. */
START_TEST(dev_info_errors)
{
	struct uhmm_dax_dev *d = new_dev(R, 4 * MiB);
	struct uhmm_dax_dev_info di;
	struct uhmm_dax_range rg[2];

	ck_assert_int_eq(uhmm_dax_dev_info(NULL, &di), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_info(d, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_ranges(d, NULL, 1), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_ranges(d, NULL, 0), 1);
	ck_assert_int_eq(uhmm_dax_dev_destroy(d), 0);
	ck_assert_int_eq(uhmm_dax_dev_info(d, &di), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_ranges(d, rg, 2), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_resize(d, 4 * MiB), -ENODEV);
}
END_TEST

/* Grow around a neighbour gives two ranges; shrinking goes back to one. */
START_TEST(dev_resize_discontiguous_and_back)
{
	struct uhmm_dax_dev *a, *b;
	struct uhmm_dax_range rg[8];

	a = new_dev(R, 8 * MiB);
	b = new_dev(R, 8 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 20 * MiB), 0);
	ck_assert_int_eq(ranges(a, rg), 2);
	ck_assert_uint_eq(rg[0].start, 0);
	ck_assert_uint_eq(rg[0].end, 8 * MiB);
	ck_assert_uint_eq(rg[1].start, 16 * MiB);
	ck_assert_uint_eq(rg[1].end, 28 * MiB);
	check_layout(R);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 6 * MiB), 0);
	ck_assert_int_eq(ranges(a, rg), 1);
	ck_assert_uint_eq(rg[0].end, 6 * MiB);
	/* The freed space before b is reused by growth in place. */
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 8 * MiB), 0);
	ck_assert_int_eq(ranges(a, rg), 1);
	ck_assert_int_eq(uhmm_dax_dev_resize(b, 10 * MiB), 0);
	ck_assert_int_eq(ranges(b, rg), 1);
	ck_assert_uint_eq(rg[0].end, 18 * MiB);
	check_layout(R);
}
END_TEST

/* Three-way fragmentation, then shrink releases from the last range back. */
START_TEST(dev_resize_shrink_from_last_range)
{
	struct uhmm_dax_dev *a, *b, *c;
	struct uhmm_dax_range rg[8];

	a = new_dev(R, 4 * MiB);
	b = new_dev(R, 4 * MiB);
	c = new_dev(R, 4 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_destroy(b), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 16 * MiB), 0);
	/* a: [0,4) + [4,8) merged in place, then [12, 20). */
	ck_assert_int_eq(ranges(a, rg), 2);
	ck_assert_uint_eq(rg[0].end, 8 * MiB);
	ck_assert_uint_eq(rg[1].start, 12 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 5 * MiB), 0);
	ck_assert_int_eq(ranges(a, rg), 1);
	ck_assert_uint_eq(rg[0].end, 5 * MiB);
	ck_assert_uint_eq(dev_size(c), 4 * MiB);
	check_layout(R);
}
END_TEST

/* A size not a multiple of the align is -EINVAL; no room is -ENOSPC. */
START_TEST(dev_resize_einval_enospc)
{
	struct uhmm_dax_dev *a;

	a = new_dev(R, 4 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 4 * MiB + 100), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 65 * MiB), -ENOSPC);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 64 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(seed_of(R), 4096), -ENOSPC);
	ck_assert_uint_eq(avail(R), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(NULL, 0), -EINVAL);
	check_layout(R);
}
END_TEST

/* With 2 MiB align, growth skips holes smaller than the align. */
START_TEST(dev_resize_honours_align)
{
	struct uhmm_dax_dev *a, *b;
	struct uhmm_dax_range rg[8];

	a = seed_of(R);
	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 4096, 4096), 0);
	b = seed_of(R);
	ck_assert_int_eq(uhmm_dax_dev_set_align(b, UHMM_DAX_ALIGN_2M), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(b, 1 * MiB), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_resize(b, 4 * MiB), 0);
	ck_assert_int_eq(ranges(b, rg), 1);
	ck_assert_uint_eq(rg[0].start, 2 * MiB);
	ck_assert_uint_eq(rg[0].end % (2 * MiB), 0);
	check_layout(R);
}
END_TEST

/* Shrinking a mapped device is -EBUSY; growing it is allowed. */
START_TEST(dev_resize_mapped_shrink_ebusy)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	void *p;

	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ | PROT_WRITE, &p), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 2 * MiB), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 8 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 2 * MiB), 0);
}
END_TEST

/* Explicit placement works, keeps order, and merges touching ranges. */
START_TEST(dev_add_range_explicit)
{
	struct uhmm_dax_dev *a = seed_of(R);
	struct uhmm_dax_range rg[8];

	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 32 * MiB, 4 * MiB), 0);
	ck_assert_ptr_ne(seed_of(R), a);
	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 8 * MiB, 4 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 12 * MiB, 4 * MiB), 0);
	ck_assert_int_eq(ranges(a, rg), 2);
	ck_assert_uint_eq(rg[0].start, 32 * MiB);
	ck_assert_uint_eq(rg[1].start, 8 * MiB);
	ck_assert_uint_eq(rg[1].end, 16 * MiB);
	ck_assert_uint_eq(dev_size(a), 12 * MiB);
	check_layout(R);
}
END_TEST

/* Overlapping any device's range is -EBUSY; unaligned or outside -EINVAL. */
START_TEST(dev_add_range_overlap_ebusy)
{
	struct uhmm_dax_dev *a = new_dev(R, 8 * MiB);
	struct uhmm_dax_dev *s = seed_of(R);

	ck_assert_int_eq(uhmm_dax_dev_add_range(s, 4 * MiB, 8 * MiB), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 0, 4096), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_add_range(s, 100, 4096), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_add_range(s, 8 * MiB, 0), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_add_range(s, 60 * MiB, 8 * MiB), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_add_range(s, UINT64_MAX - 4095, 8192), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_add_range(NULL, 0, 4096), -EINVAL);
	check_layout(R);
}
END_TEST

/* Align: only 4K/2M/1G, not below the region's, ranges must fit it. */
START_TEST(dev_set_align_rules)
{
	struct uhmm_dax_dev *a = seed_of(R);
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_set_align(a, 8192), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_set_align(a, UHMM_DAX_ALIGN_1G), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 2 * MiB), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 1ULL << 30), -ENOSPC);
	ck_assert_int_eq(uhmm_dax_dev_set_align(a, UHMM_DAX_ALIGN_4K), 0);
	ck_assert_int_eq(uhmm_dax_dev_add_range(a, 4096, 4096), 0);
	ck_assert_int_eq(uhmm_dax_dev_set_align(a, UHMM_DAX_ALIGN_2M), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_info(a, &di), 0);
	ck_assert_uint_eq(di.align, UHMM_DAX_ALIGN_4K);
}
END_TEST

/* A 2 MiB region refuses a 4 KiB device align. */
START_TEST(dev_set_align_below_region_einval)
{
	ck_assert_int_eq(uhmm_dax_dev_set_align(seed_of(R), UHMM_DAX_ALIGN_4K), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_resize(seed_of(R), 1 * MiB), -EINVAL);
}
END_TEST

/* Destroy frees the space; the seed cannot be destroyed; busy if mapped. */
START_TEST(dev_destroy_rules)
{
	struct uhmm_dax_dev *a = new_dev(R, 8 * MiB);
	void *p;

	ck_assert_int_eq(uhmm_dax_dev_destroy(seed_of(R)), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), 0);
	ck_assert_int_eq(uhmm_dax_dev_destroy(a), -EBUSY);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_destroy(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_destroy(a), -ENODEV);
	ck_assert_uint_eq(avail(R), 64 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_destroy(NULL), -EINVAL);
	check_layout(R);
}
END_TEST

/* Map needs an enabled, sized device; disable is busy while mapped. */
START_TEST(dev_enable_disable_rules)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	struct uhmm_dax_dev_info di;
	void *p;

	ck_assert_int_eq(uhmm_dax_dev_enable(seed_of(R)), -ENXIO);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), -ENXIO);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_info(a, &di), 0);
	ck_assert(di.flags & UHMM_DAX_DEV_ENABLED);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), 0);
	ck_assert_int_eq(uhmm_dax_dev_disable(a), -EBUSY);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_disable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_disable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_info(a, &di), 0);
	ck_assert(!(di.flags & UHMM_DAX_DEV_ENABLED));
	ck_assert_int_eq(uhmm_dax_dev_enable(NULL), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_disable(NULL), -EINVAL);
}
END_TEST

/* Mode switches: unknown mode -EINVAL, seed -ENXIO, mapped -EBUSY. */
START_TEST(dev_reconfigure_rules)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	struct uhmm_dax_dev_info di;
	void *p;

	ck_assert_int_eq(uhmm_dax_dev_reconfigure(a, (enum uhmm_dax_mode)7), -EINVAL);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(seed_of(R), UHMM_DAX_MODE_KMEM), -ENXIO);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(a, UHMM_DAX_MODE_KMEM), -EBUSY);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(a, UHMM_DAX_MODE_KMEM), 0);
	ck_assert_int_eq(uhmm_dax_dev_info(a, &di), 0);
	ck_assert_int_eq(di.mode, UHMM_DAX_MODE_KMEM);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(a, UHMM_DAX_MODE_DEVDAX), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, &p), 0);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
}
END_TEST

/* Two mappings of one device share memory; the span is align-aligned. */
START_TEST(dax_map_shared_and_aligned)
{
	struct uhmm_dax_dev *a = seed_of(R);
	char *p, *q;

	ck_assert_int_eq(uhmm_dax_dev_set_align(a, UHMM_DAX_ALIGN_2M), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 8 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ | PROT_WRITE, (void **)&p), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, (void **)&q), 0);
	ck_assert_uint_eq((uintptr_t)p % (2 * MiB), 0);
	t_fill_pattern(p, 8 * MiB, 42);
	ck_assert_int_eq(t_check_pattern(q, 8 * MiB, 42), -1);
	ck_assert_int_eq(uhmm_dax_unmap(a, q), 0);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
}
END_TEST

/* Data at an offset survives growth into a second, discontiguous range. */
START_TEST(dax_map_contents_survive_resize)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB), *b;
	char *p;

	b = new_dev(R, 4 * MiB);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ | PROT_WRITE, (void **)&p), 0);
	t_fill_pattern(p, 4 * MiB, 7);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 12 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_ranges(a, NULL, 0), 2);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ | PROT_WRITE, (void **)&p), 0);
	ck_assert_int_eq(t_check_pattern(p, 4 * MiB, 7), -1);
	t_fill_pattern(p + 4 * MiB, 8 * MiB, 9);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	/* Reopen: both ranges still hold their data. */
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	ck_assert_int_eq(uhmm_dax_region_open(path, &R), 0);
	ck_assert_int_eq(uhmm_dax_dev_find(R, "1", &a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, (void **)&p), 0);
	ck_assert_int_eq(t_check_pattern(p, 4 * MiB, 7), -1);
	ck_assert_int_eq(t_check_pattern(p + 4 * MiB, 8 * MiB, 9), -1);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	(void)b;
}
END_TEST

/* Bad prot or NULL out: -EINVAL. */
START_TEST(dax_map_bad_args)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	void *p;

	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_EXEC, &p), -EINVAL);
	ck_assert_int_eq(uhmm_dax_map(a, 0, &p), -EINVAL);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_dax_map(NULL, PROT_READ, &p), -EINVAL);
}
END_TEST

/* Unmapping something that is not a mapping of the device is -EINVAL. */
START_TEST(dax_unmap_bad_addr)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	char *p;

	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ, (void **)&p), 0);
	ck_assert_int_eq(uhmm_dax_unmap(a, p + 4096), -EINVAL);
	ck_assert_int_eq(uhmm_dax_unmap(seed_of(R), p), -EINVAL);
	ck_assert_int_eq(uhmm_dax_unmap(a, NULL), -EINVAL);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	ck_assert_int_eq(uhmm_dax_unmap(a, p), -EINVAL);
}
END_TEST

/* An enabled device is a GENERIC pagemap whose pages map its memory. */
START_TEST(dev_pagemap_lookups)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	struct uhmm_pagemap *pg;
	struct uhmm_page *page;
	char *p;

	ck_assert_int_eq(uhmm_dax_dev_pagemap(a, &pg), -ENXIO);
	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_pagemap(a, &pg), 0);
	ck_assert_int_eq(pg->type, UHMM_PAGEMAP_GENERIC);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(pg), (int64_t)(4 * MiB / 4096));
	page = uhmm_pfn_to_page((pg->ranges[0].start >> 12) + 3);
	ck_assert_ptr_nonnull(page);
	ck_assert_ptr_eq(page->pgmap, pg);
	ck_assert_int_eq(uhmm_dax_map(a, PROT_READ | PROT_WRITE, (void **)&p), 0);
	p[3 * 4096] = 'x';
	ck_assert_int_eq(((char *)uhmm_page_to_virt(page))[0], 'x');
	ck_assert_int_eq(uhmm_dax_unmap(a, p), 0);
	/* Growth re-registers the pagemap with the new size. */
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 8 * MiB), 0);
	ck_assert_int_eq(uhmm_dax_dev_pagemap(a, &pg), 0);
	ck_assert_int_eq(uhmm_pagemap_nr_pages(pg), (int64_t)(8 * MiB / 4096));
	ck_assert_int_eq(uhmm_dax_dev_disable(a), 0);
	ck_assert_int_eq(uhmm_dax_dev_pagemap(a, &pg), -ENXIO);
	ck_assert_int_eq(uhmm_dax_dev_pagemap(NULL, &pg), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Several openers                                                        */

static void child_make_devices(const char *p, int n)
{
	struct uhmm_dax_region *r;

	char lk[80];
	int lfd;

	/*
	 * Taking the seed and sizing it are two calls: without this lock both
	 * children can size the same seed, and the second call, finding the
	 * size already set, is a successful no-op (one device fewer).
	 */
	snprintf(lk, sizeof(lk), "%s.lock", p);
	lfd = open(lk, O_RDWR | O_CREAT, 0600);
	if (lfd < 0 || uhmm_dax_region_open(p, &r))
		_exit(2);
	for (int i = 0; i < n; i++) {
		struct uhmm_dax_dev *d;
		int ret;

		if (flock(lfd, LOCK_EX))
			_exit(4);
		ret = uhmm_dax_region_seed(r, &d) || uhmm_dax_dev_resize(d, 1 * MiB);
		flock(lfd, LOCK_UN);
		if (ret)
			_exit(3);
	}
	close(lfd);
	uhmm_dax_region_close(r);
	_exit(0);
}

/* Two processes creating devices at once: serialized, nothing overlaps. */
START_TEST(multi_two_processes_change_one_region)
{
	struct uhmm_dax_region_info info;
	char lk[80];
	pid_t pid[2];
	int st;

	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		ck_assert_int_ge(pid[i], 0);
		if (!pid[i])
			child_make_devices(path, 12);
	}
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(waitpid(pid[i], &st, 0), pid[i]);
		ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	snprintf(lk, sizeof(lk), "%s.lock", path);
	unlink(lk);
	/* The handle opened before the children sees their layout. */
	ck_assert_int_eq(uhmm_dax_region_info(R, &info), 0);
	ck_assert_uint_eq(info.nr_devices, 25);
	ck_assert_uint_eq(info.available, 40 * MiB);
	check_layout(R);
}
END_TEST

/* A device mapped in another process cannot be shrunk or destroyed here. */
START_TEST(multi_mapped_elsewhere_is_busy)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	int go[2], done[2], st;
	char c;
	pid_t pid;

	ck_assert_int_eq(uhmm_dax_dev_enable(a), 0);
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(done), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (!pid) {
		struct uhmm_dax_region *r;
		struct uhmm_dax_dev *d;
		void *p;

		if (uhmm_dax_region_open(path, &r) || uhmm_dax_dev_find(r, "1", &d) ||
		    uhmm_dax_map(d, PROT_READ, &p))
			_exit(2);
		if (write(go[1], "x", 1) != 1 || read(done[0], &c, 1) != 1)
			_exit(3);
		_exit(0);
	}
	ck_assert_int_eq(read(go[0], &c, 1), 1);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 2 * MiB), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_destroy(a), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(a, UHMM_DAX_MODE_KMEM), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 8 * MiB), 0);
	ck_assert_int_eq(write(done[1], "x", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* The child died: its mapping (and its lock) went with it. */
	ck_assert_int_eq(uhmm_dax_dev_resize(a, 2 * MiB), 0);
}
END_TEST

/* The sizes the crash child cycles its device through. */
static const uint64_t crash_sizes[] = { 4 * MiB, 12 * MiB, 8 * MiB, 20 * MiB };

static void crash_child(const char *p)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_dev *a, *s;

	struct uhmm_dax_dev *devs[UHMM_DAX_MAX_DEVICES];
	int n;

	if (uhmm_dax_region_open(p, &r) || uhmm_dax_dev_find(r, "1", &a))
		_exit(2);
	/* Drop what the previous, killed child left behind. */
	n = uhmm_dax_region_devices(r, devs, UHMM_DAX_MAX_DEVICES);
	for (int i = 0; i < n; i++) {
		if (devs[i] == a)
			continue;
		uhmm_dax_dev_reconfigure(devs[i], UHMM_DAX_MODE_DEVDAX);
		uhmm_dax_dev_destroy(devs[i]);
	}
	for (unsigned i = 0;; i++) {
		if (uhmm_dax_dev_resize(a, crash_sizes[i % 4]))
			_exit(3);
		/* A second device appears and disappears, fragmenting the first. */
		if (uhmm_dax_region_seed(r, &s) || uhmm_dax_dev_resize(s, 2 * MiB) ||
		    uhmm_dax_dev_reconfigure(s, i & 1 ? UHMM_DAX_MODE_KMEM : UHMM_DAX_MODE_DEVDAX) ||
		    uhmm_dax_dev_reconfigure(s, UHMM_DAX_MODE_DEVDAX) || uhmm_dax_dev_destroy(s))
			_exit(4);
	}
}

/* kill -9 at random points of reconfigurations: old or new layout, never corrupt. */
START_TEST(crash_kill_during_reconfigure)
{
	struct uhmm_dax_dev *a = new_dev(R, 4 * MiB);
	unsigned int seed = (unsigned int)t_now_ns();

	printf("crash seed %u\n", seed);
	srand(seed);
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	R = NULL;
	for (int round = 0; round < 40; round++) {
		struct uhmm_dax_region *r;
		uint64_t sz;
		int st, ok = 0;
		pid_t pid;

		fflush(NULL);	/* the child must not inherit buffered output */
		pid = fork();

		ck_assert_int_ge(pid, 0);
		if (!pid)
			crash_child(path);
		usleep((useconds_t)(500 + rand() % 20000));
		kill(pid, SIGKILL);
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		ck_assert_msg(WIFSIGNALED(st), "crash child exited with %d", WEXITSTATUS(st));
		ck_assert_int_eq(uhmm_dax_region_open(path, &r), 0);
		check_layout(r);
		ck_assert_int_eq(uhmm_dax_dev_find(r, "1", &a), 0);
		sz = dev_size(a);
		for (int i = 0; i < 4; i++)
			ok |= sz == crash_sizes[i];
		ck_assert_msg(ok, "device 1 has size %llu", (unsigned long long)sz);
		ck_assert_int_eq(uhmm_dax_region_close(r), 0);
	}
}
END_TEST

int main(void)
{
	TCase *create = tcase_create("region_create");
	TCase *open_ = tcase_create("region_open");
	TCase *close_ = tcase_create("region_close");
	TCase *info = tcase_create("region_info");
	TCase *devs = tcase_create("region_devices");
	TCase *seed = tcase_create("region_seed");
	TCase *find = tcase_create("dev_find");
	TCase *dinfo = tcase_create("dev_info");
	TCase *resize = tcase_create("dev_resize");
	TCase *addr = tcase_create("dev_add_range");
	TCase *align = tcase_create("dev_set_align");
	TCase *align2m = tcase_create("dev_set_align_2m");
	TCase *destroy = tcase_create("dev_destroy");
	TCase *enable = tcase_create("dev_enable");
	TCase *reconf = tcase_create("dev_reconfigure");
	TCase *map = tcase_create("dax_map");
	TCase *unmap = tcase_create("dax_unmap");
	TCase *pgmap = tcase_create("dev_pagemap");
	TCase *multi = tcase_create("multi_opener");
	TCase *crash = tcase_create("crash");
	TCase *hp2m = tcase_create("region_create_hugetlbfs");
	TCase *hp1g = tcase_create("region_create_hugetlbfs_1g");
	TCase *all4k[] = { create, open_, close_, info, devs, seed, find, dinfo, resize,
			   addr, align, destroy, enable, reconf, map, unmap, pgmap, multi, crash };

	for (unsigned i = 0; i < sizeof(all4k) / sizeof(all4k[0]); i++)
		tcase_add_checked_fixture(all4k[i], setup, teardown);
	tcase_add_checked_fixture(align2m, setup_2m, teardown);
	tcase_add_unchecked_fixture(hp2m, hp2m_setup, hp_env_cleanup);
	tcase_add_unchecked_fixture(hp1g, hp1g_setup, hp_env_cleanup);

	tcase_add_test(create, region_create_has_only_seed);
	tcase_add_test(create, region_create_bad_args_einval);
	tcase_add_test(create, region_create_existing_label_eexist);
	tcase_add_test(create, region_create_memfd);
	tcase_add_test(hp2m, region_create_hugetlbfs);
	tcase_add_test(hp1g, region_create_hugetlbfs_1g_align);
	tcase_add_test(open_, region_open_persists_layout);
	tcase_add_test(open_, region_open_errors);
	tcase_add_test(open_, region_open_torn_label_uses_previous);
	tcase_add_test(open_, region_open_corrupt_euclean);
	tcase_add_test(close_, region_close_busy_while_mapped);
	tcase_add_test(info, region_info_available);
	tcase_add_test(devs, region_devices_lists_all);
	tcase_add_test(seed, region_seed_sizing_creates_new_seed);
	tcase_add_test(find, dev_find_by_name_and_id);
	tcase_add_test(dinfo, dev_info_errors);
	tcase_add_test(resize, dev_resize_discontiguous_and_back);
	tcase_add_test(resize, dev_resize_shrink_from_last_range);
	tcase_add_test(resize, dev_resize_einval_enospc);
	tcase_add_test(resize, dev_resize_honours_align);
	tcase_add_test(resize, dev_resize_mapped_shrink_ebusy);
	tcase_add_test(addr, dev_add_range_explicit);
	tcase_add_test(addr, dev_add_range_overlap_ebusy);
	tcase_add_test(align, dev_set_align_rules);
	tcase_add_test(align2m, dev_set_align_below_region_einval);
	tcase_add_test(destroy, dev_destroy_rules);
	tcase_add_test(enable, dev_enable_disable_rules);
	tcase_add_test(reconf, dev_reconfigure_rules);
	tcase_add_test(map, dax_map_shared_and_aligned);
	tcase_add_test(map, dax_map_contents_survive_resize);
	tcase_add_test(map, dax_map_bad_args);
	tcase_add_test(unmap, dax_unmap_bad_addr);
	tcase_add_test(pgmap, dev_pagemap_lookups);
	tcase_add_test(multi, multi_two_processes_change_one_region);
	tcase_add_test(multi, multi_mapped_elsewhere_is_busy);
	tcase_add_test(crash, crash_kill_during_reconfigure);
	return t_run_suite("dax", create, open_, close_, info, devs, seed, find, dinfo, resize,
			   addr, align, align2m, destroy, enable, reconf, map, unmap,
			   pgmap, multi, crash, hp2m, hp1g, NULL);
}
