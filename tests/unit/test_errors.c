// SPDX-License-Identifier: MIT
/* Unit tests for the rows of docs/errors.md that need a provoked environment:
 * userfaultfd denied by seccomp, mremap failures, device exclusivity, device
 * address space exhausted, handler-thread calls, endless invalidation, and
 * dax labels corrupted or devices destroyed behind a handle's back. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <jemalloc/jemalloc.h>
#include <check.h>
#include <uhmm/dax.h>
#include <uhmm/migrate.h>
#include <uhmm/mm.h>
#include <uhmm/pagemap.h>
#include <uhmm/sim.h>
#include "t_util.h"

#define NP 16
#define LEN (NP * T_PAGE)
#define ADDR(p, i) ((uint64_t)(uintptr_t)((uint8_t *)(p) + (size_t)(i) * T_PAGE))
#define MiB (1ULL << 20)
#define LABEL_BLOCK (64UL << 10)	/* one of the two label blocks */

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

static struct uhmm_mm *mm;
static struct uhmm_sim *sim;
static uint8_t *mem;		/* NP managed anonymous pages */

static void mm_setup(void)
{
	ck_assert_int_eq(uhmm_mm_open(&mm, NULL), 0);
	mem = t_map_anon(LEN);
	ck_assert_int_eq(uhmm_mm_manage(mm, mem, LEN), 0);
}

static void mm_teardown(void)
{
	uhmm_mm_close(mm);
	mm = NULL;
	munmap(mem, LEN);
}

static void sim_setup_type(enum uhmm_sim_mem_type type)
{
	UHMM_OPTS(sim_opts, o, .mem_type = type, .capacity_pages = 64);

	mm_setup();
	ck_assert_int_eq(uhmm_sim_create(mm, &o, &sim), 0);
}

static void sim_setup(void)
{
	sim_setup_type(UHMM_SIM_PRIVATE);
}

static void sim_setup_coherent(void)
{
	sim_setup_type(UHMM_SIM_COHERENT);
}

static void sim_teardown(void)
{
	uhmm_sim_destroy(sim);
	sim = NULL;
	mm_teardown();
}

/* ---------------------------------------------------------------------- */
/* uhmm_mm_open: userfaultfd taken away by a seccomp filter                */

#if defined(__x86_64__)
#define T_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define T_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* Fail syscall @nr (when @arg >= 0: only if the low word of args[@arg] is
 * @val) with errno @err; err 0 skips the call and returns 0. */
struct sc_rule {
	int nr;
	int arg;
	uint32_t val;
	int err;
};

/* Low 32 bits of args[i] in struct seccomp_data. */
static uint32_t sc_arg_off(int i)
{
	uint32_t off = (uint32_t)(offsetof(struct seccomp_data, args) + 8 * (size_t)i);

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	off += 4;
#endif
	return off;
}

/* Install the rules for every thread of the process; false if seccomp is unavailable. */
static bool seccomp_install(const struct sc_rule *rules, unsigned int n)
{
#ifdef T_AUDIT_ARCH
	struct sock_filter f[64];
	struct sock_fprog prog;
	unsigned int k = 0;

	ck_assert_uint_le(n * 5 + 4, 64);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, arch));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, T_AUDIT_ARCH, 1, 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	for (unsigned int i = 0; i < n; i++) {
		uint32_t ret = SECCOMP_RET_ERRNO | ((uint32_t)rules[i].err & SECCOMP_RET_DATA);

		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						      offsetof(struct seccomp_data, nr));
		if (rules[i].arg < 0) {
			f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							      (uint32_t)rules[i].nr, 0, 1);
		} else {
			f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							      (uint32_t)rules[i].nr, 0, 3);
			f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
							      sc_arg_off(rules[i].arg));
			f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							      rules[i].val, 0, 1);
		}
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
	}
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog = (struct sock_fprog){ .len = (unsigned short)k, .filter = f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return false;
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
		       &prog) == 0;
#else
	return false;
#endif
}

/* uhmm opens /dev/userfaultfd with exactly these flags (src/uffd.c). */
#define DEV_UFFD_FLAGS ((uint32_t)(O_RDWR | O_CLOEXEC))

/* Deny the userfaultfd syscall with @sys_err and the /dev/userfaultfd open with @open_err. */
static bool deny_uffd(int sys_err, int open_err)
{
	struct sc_rule rules[] = {
		{ SYS_userfaultfd, -1, 0, sys_err },
		{ SYS_openat, 2, DEV_UFFD_FLAGS, open_err },
#ifdef SYS_open
		{ SYS_open, 1, DEV_UFFD_FLAGS, open_err },
#endif
	};

	return seccomp_install(rules, sizeof(rules) / sizeof(rules[0]));
}

/* With the filter in place (else skip: no seccomp), uhmm_mm_open fails with
 * @want and leaves no mm behind. */
static void expect_open_fails(bool filtered, int want)
{
	struct uhmm_mm *m = (void *)1;

	if (!filtered) {
		t_skip("seccomp filters unavailable");
		return;
	}
	ck_assert_int_eq(uhmm_mm_open(&m, NULL), want);
	ck_assert_ptr_null(m);
}

/* Neither the syscall nor /dev/userfaultfd exists (an old or stripped kernel). */
START_TEST(mm_open_without_userfaultfd_is_enosys)
{
	expect_open_fails(deny_uffd(ENOSYS, ENOENT), -ENOSYS);
}
END_TEST

/* The syscall is refused and so is the device's USERFAULTFD_IOC_NEW. */
START_TEST(mm_open_userfaultfd_refused_is_eperm)
{
	struct sc_rule rules[] = {
		{ SYS_userfaultfd, -1, 0, EPERM },
		{ SYS_ioctl, 1, (uint32_t)USERFAULTFD_IOC_NEW, EPERM },
	};

	expect_open_fails(seccomp_install(rules, 2), -EPERM);
}
END_TEST

/* Both ways in are refused with EPERM (e.g. an LSM denies the device open). */
START_TEST(mm_open_userfaultfd_and_device_refused_is_eperm)
{
	expect_open_fails(deny_uffd(EPERM, EPERM), -EPERM);
}
END_TEST

/*
 * A kernel whose UFFDIO_API reports no features. The filter skips the ioctl
 * and returns 0, so the struct keeps the features = 0 uhmm passed in: what
 * a kernel without the UNMAP/REMOVE/REMAP/FORK events would answer.
 */
START_TEST(mm_open_uffd_without_features_is_eopnotsupp)
{
	struct sc_rule rules[] = {
		{ SYS_ioctl, 1, (uint32_t)UFFDIO_API, 0 },
	};

	expect_open_fails(seccomp_install(rules, 1), -EOPNOTSUPP);
}
END_TEST

/* vm.unprivileged_userfaultfd=0 on a kernel without /dev/userfaultfd: the
 * syscall's EPERM wins over the fallback's error. */
START_TEST(mm_open_not_permitted_no_device_is_eperm)
{
	expect_open_fails(deny_uffd(EPERM, ENOENT), -EPERM);
}
END_TEST

/* The real thing: an unprivileged process with vm.unprivileged_userfaultfd=0
 * (syscall EPERM) and the usual root-only /dev/userfaultfd (open EACCES). */
START_TEST(mm_open_unprivileged_is_eperm)
{
	struct uhmm_mm *m = (void *)1;
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
	int v = -1;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -1;
		fclose(f);
	}
	if (v != 0 || geteuid() != 0) {
		t_skip("needs root and vm.unprivileged_userfaultfd=0");
		return;
	}
	ck_assert_int_eq(setresgid(65534, 65534, 65534), 0);
	ck_assert_int_eq(setresuid(65534, 65534, 65534), 0);
	ck_assert_int_eq(uhmm_mm_open(&m, NULL), -EPERM);
	ck_assert_ptr_null(m);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_mremap                                                             */

/* Remapping an address that is not mapped is -EFAULT; managed memory is unaffected. */
START_TEST(mremap_unmapped_old_range_is_efault)
{
	void *out = (void *)1, *q;
	int rc = 0;

	t_fill_pattern(mem, LEN, 7);
	/*
	 * Another thread (the handler, a sanitizer) may map the freed hole
	 * again before the call: then the same-size, non-moving remap is a
	 * no-op that returns 0, and we try with a fresh hole.
	 */
	for (int tries = 0; tries < 10 && rc == 0; tries++) {
		void *hole = t_map_anon(T_PAGE);

		ck_assert_int_eq(munmap(hole, T_PAGE), 0);
		rc = uhmm_mremap(hole, T_PAGE, T_PAGE, 0, NULL, &out);
	}
	ck_assert_int_eq(rc, -EFAULT);
	ck_assert_ptr_eq(out, (void *)1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
	/* the wrapper still works on managed memory */
	ck_assert_int_eq(uhmm_mremap(mem, LEN, LEN, 0, NULL, &q), 0);
	ck_assert_ptr_eq(q, mem);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 7), -1);
}
END_TEST

/* An old range that runs past the end of its mapping is -EFAULT too (the
 * kernel does not remap across mappings), and nothing moves. */
START_TEST(mremap_old_range_past_mapping_is_efault)
{
	void *out = (void *)1;

	t_fill_pattern(mem, LEN, 8);
	/* the last managed page becomes a mapping of its own */
	ck_assert_int_eq(uhmm_mprotect(mem + LEN - T_PAGE, T_PAGE, PROT_READ), 0);
	ck_assert_int_eq(uhmm_mremap(mem, LEN, 2 * LEN, MREMAP_MAYMOVE, NULL, &out), -EFAULT);
	ck_assert_ptr_eq(out, (void *)1);
	ck_assert_int_eq(t_check_pattern(mem, LEN, 8), -1);
}
END_TEST

/* Growing in place (no MREMAP_MAYMOVE) into a mapped neighbour is -ENOMEM;
 * the managed data stays, and a moving mremap still works afterwards. */
START_TEST(mremap_grow_into_neighbour_is_enomem)
{
	/* LEN managed pages, then one ordinary page of the same mapping */
	uint8_t *p = t_map_anon(LEN + T_PAGE);
	void *out = (void *)1, *q = NULL;

	ck_assert_int_eq(uhmm_mm_manage(mm, p, LEN), 0);
	t_fill_pattern(p, LEN, 11);
	p[LEN] = 0x77;
	ck_assert_int_eq(uhmm_mremap(p, LEN, LEN + T_PAGE, 0, NULL, &out), -ENOMEM);
	ck_assert_ptr_eq(out, (void *)1);
	ck_assert_int_eq(t_check_pattern(p, LEN, 11), -1);
	ck_assert_uint_eq(p[LEN], 0x77);
	ck_assert_int_eq(uhmm_mremap(p, LEN, 2 * LEN, MREMAP_MAYMOVE, NULL, &q), 0);
	ck_assert_ptr_ne(q, p);
	ck_assert_int_eq(t_check_pattern(q, LEN, 11), -1);
	ck_assert_int_eq(uhmm_munmap(q, 2 * LEN), 0);
	munmap(p + LEN, T_PAGE);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_make_device_exclusive                                              */

/*
 * A page pinned for I/O (io_uring fixed buffer: FOLL_PIN | FOLL_LONGTERM)
 * cannot be taken with UFFDIO_MOVE: -EBUSY, and the CPU keeps the page.
 * Unpinned, the same call succeeds.
 */
START_TEST(make_exclusive_pinned_page_is_ebusy)
{
	struct io_uring_params params;
	struct iovec iov = { mem, T_PAGE };
	void *pages[1] = { NULL };
	int ring;

	if (!(uhmm_mm_features(mm) & UHMM_FEAT_MOVE)) {
		t_skip("no UFFDIO_MOVE");
		return;
	}
	t_fill_pattern(mem, T_PAGE, 3);
	memset(&params, 0, sizeof(params));
	ring = (int)syscall(SYS_io_uring_setup, 1, &params);
	if (ring < 0) {
		t_skip("io_uring unavailable: %s", strerror(errno));
		return;
	}
	ck_assert_int_eq(syscall(SYS_io_uring_register, ring, IORING_REGISTER_BUFFERS, &iov, 1), 0);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 1, mm, pages), -EBUSY);
	ck_assert_ptr_null(pages[0]);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 3), -1);
	ck_assert_int_eq(syscall(SYS_io_uring_register, ring, IORING_UNREGISTER_BUFFERS, NULL, 0), 0);
	close(ring);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 1, mm, pages), 0);
	ck_assert_ptr_nonnull(pages[0]);
	ck_assert_int_eq(t_check_pattern(pages[0], T_PAGE, 3), -1);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 3), -1);	/* CPU takes it back */
}
END_TEST

/* Known bug (documentation): a device-resident page is not -EBUSY, the
 * populate step faults it back to system memory first, and the call succeeds. */
/* As in the kernel (whose GUP faults a device page back first), a page on a
 * device is brought back to RAM and then made exclusive: no -EBUSY. */
START_TEST(make_exclusive_device_page_comes_back)
{
	void *pages[1] = { NULL };
	uint8_t prot[1];

	t_fill_pattern(mem, T_PAGE, 3);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(sim, ADDR(mem, 0), 1), 1);
	ck_assert_int_eq(uhmm_sim_snapshot(sim, ADDR(mem, 0), 1, prot), 0);
	ck_assert_uint_eq(prot[0] & 0xF0, UHMM_SIM_PROT_DEV_COHERENT_LOCAL);
	ck_assert_int_eq(uhmm_make_device_exclusive(mm, ADDR(mem, 0), 1, mm, pages), 0);
	ck_assert_ptr_nonnull(pages[0]);
	ck_assert_int_eq(t_check_pattern(pages[0], T_PAGE, 3), -1);
	t_fill_pattern(pages[0], T_PAGE, 4);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 4), -1);	/* CPU revokes */
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_create                                                         */

#define MAX_CLAIMS 128

/* With the global device address space claimed, a sim gets -ENOSPC. */
START_TEST(sim_create_without_device_space_is_enospc)
{
	uint64_t claims[MAX_CLAIMS], start;
	unsigned int n = 0;
	struct uhmm_sim *s = (void *)1;

	/* greedy: the largest free block first, down to one page */
	for (uint64_t size = UHMM_DEVADDR_MAX - UHMM_DEVADDR_MIN; size >= T_PAGE; size /= 2)
		while (n < MAX_CLAIMS && uhmm_request_free_region(NULL, size, 0, &start) == 0)
			claims[n++] = start;
	ck_assert_uint_lt(n, MAX_CLAIMS);
	ck_assert_int_eq(uhmm_request_free_region(NULL, T_PAGE, 0, &start), -ENOSPC);
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &s), -ENOSPC);
	ck_assert_ptr_null(s);
	/* a failed create leaves nothing managed behind: it can be repeated */
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &s), -ENOSPC);
	for (unsigned int i = 0; i < n; i++)
		ck_assert_int_eq(uhmm_release_region(NULL, claims[i]), 0);
	ck_assert_int_eq(uhmm_sim_create(mm, NULL, &s), 0);
	ck_assert_ptr_nonnull(s);
	t_fill_pattern(mem, T_PAGE, 5);
	ck_assert_int_eq(uhmm_sim_migrate_to_dev(s, ADDR(mem, 0), 1), 1);
	ck_assert_int_eq(t_check_pattern(mem, T_PAGE, 5), -1);
	uhmm_sim_destroy(s);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_read / _write on a handler thread                              */

struct deadlk {
	atomic_int armed;		/* 1: the next callback calls the sim */
	atomic_int done;
	int rd, wr;			/* what sim_read / sim_write returned */
	pthread_t thread;		/* where the callback ran */
	uint8_t buf[T_PAGE];
};

static void hook_sim_rw(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	struct deadlk *d = r->arg;
	int one = 1;

	if (range->event != UHMM_EVENT_CLEAR ||
	    !atomic_compare_exchange_strong(&d->armed, &one, 0))
		return;
	d->thread = pthread_self();
	d->rd = uhmm_sim_read(sim, ADDR(mem, 0), 1, d->buf);
	d->wr = uhmm_sim_write(sim, ADDR(mem, 0), 1, d->buf);
	atomic_store(&d->done, 1);
}

/* A plain MADV_DONTNEED reaches notifiers from the handler thread: a sim
 * command issued there is refused with -EDEADLK instead of hanging. */
START_TEST(sim_read_on_handler_thread_is_edeadlk)
{
	static struct deadlk d;
	struct t_rec *r = t_rec_new();
	uint8_t buf[T_PAGE];

	t_fill_pattern(mem, LEN, 9);
	r->arg = &d;
	__atomic_store_n(&r->hook, hook_sim_rw, __ATOMIC_RELEASE);
	t_rec_insert(r, mm, mem, LEN);
	atomic_store(&d.armed, 1);
	/* not uhmm_madvise: that would invalidate on this thread */
	ck_assert_int_eq(madvise(mem + (NP - 1) * T_PAGE, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_ge(t_rec_wait(r, 1), 1);
	ck_assert_int_eq(atomic_load(&d.done), 1);
	ck_assert(!pthread_equal(d.thread, pthread_self()));
	ck_assert_int_eq(d.rd, -EDEADLK);
	ck_assert_int_eq(d.wr, -EDEADLK);
	__atomic_store_n(&r->hook, NULL, __ATOMIC_RELEASE);
	/* from an application thread the same commands work */
	ck_assert_int_eq(uhmm_sim_read(sim, ADDR(mem, 0), 1, buf), 0);
	ck_assert_int_eq(t_check_pattern(buf, T_PAGE, 9), -1);
	ck_assert_int_eq(uhmm_sim_write(sim, ADDR(mem, 1), 1, buf), 0);
	ck_assert_int_eq(t_check_pattern(mem + T_PAGE, T_PAGE, 9), -1);
	t_rec_free(r);
}
END_TEST

/* What mm calls return from inside a notifier callback on the handler thread. */
struct deadlk_mm {
	atomic_int armed;
	atomic_int done;
	int populate, fault, insert, remove;
	pthread_t thread;
};

static bool nop_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range, unsigned long seq)
{
	(void)range;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops nop_ops = { .invalidate = nop_invalidate };

static void hook_mm_calls(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	struct deadlk_mm *d = r->arg;
	struct uhmm_interval_notifier sub = { 0 };
	uint64_t pfns[1] = { UHMM_PFN_REQ_FAULT };
	struct uhmm_range rg = {
		.notifier = &r->n, .start = ADDR(mem, 0), .end = ADDR(mem, 1),
		.hmm_pfns = pfns,
	};
	int one = 1;

	if (range->event != UHMM_EVENT_CLEAR ||
	    !atomic_compare_exchange_strong(&d->armed, &one, 0))
		return;
	d->thread = pthread_self();
	d->populate = uhmm_mm_populate(mm, mem, T_PAGE, false);
	/* no read_begin here: this very invalidation keeps the sequence odd */
	d->fault = uhmm_range_fault(&rg);
	d->remove = uhmm_interval_notifier_remove(&r->n);
	d->insert = uhmm_interval_notifier_insert(&sub, mm, ADDR(mem, 0), T_PAGE, &nop_ops);
	if (!d->insert)
		uhmm_interval_notifier_remove(&sub);
	atomic_store(&d->done, 1);
}

/* On the handler thread, calls that would need the handler refuse with
 * -EDEADLK; so does inserting a notifier from a callback. */
START_TEST(mm_calls_on_handler_thread_are_edeadlk)
{
	static struct deadlk_mm d;
	struct t_rec *r = t_rec_new();
	struct uhmm_interval_notifier sub = { 0 };

	r->arg = &d;
	__atomic_store_n(&r->hook, hook_mm_calls, __ATOMIC_RELEASE);
	t_rec_insert(r, mm, mem, LEN);
	atomic_store(&d.armed, 1);
	ck_assert_int_eq(madvise(mem + (NP - 1) * T_PAGE, T_PAGE, MADV_DONTNEED), 0);
	ck_assert_int_ge(t_rec_wait(r, 1), 1);
	ck_assert_int_eq(atomic_load(&d.done), 1);
	ck_assert(!pthread_equal(d.thread, pthread_self()));
	ck_assert_int_eq(d.populate, -EDEADLK);
	ck_assert_int_eq(d.fault, -EDEADLK);
	ck_assert_int_eq(d.insert, -EDEADLK);
	ck_assert_int_eq(d.remove, -EDEADLK);
	__atomic_store_n(&r->hook, NULL, __ATOMIC_RELEASE);
	/* from an application thread they work */
	ck_assert_int_eq(uhmm_mm_populate(mm, mem, T_PAGE, false), 0);
	ck_assert_int_eq(uhmm_interval_notifier_insert(&sub, mm, ADDR(mem, 0), T_PAGE,
							&nop_ops), 0);
	ck_assert_int_eq(uhmm_interval_notifier_remove(&sub), 0);
	t_rec_free(r);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* uhmm_sim_read / _write / _snapshot: the range never settles             */

/*
 * A helper thread calls uhmm_mprotect() (same protection, so nothing else
 * changes) in a loop; a recorder inserted above the sim's notifier, so
 * called after it, sleeps in each PROTECTION callback. The invalidation is
 * thus in progress nearly all the time, and every time the sim's read_begin
 * gets through, the next one has already moved the sequence.
 * (uhmm_interval_read_begin() waits only for the invalidation it saw, as the
 * kernel's does, so the sim's 1 s budget is checked between attempts.)
 */
#define CHURN_SLEEP_NS 20000000L	/* 20 ms per invalidation */
/*
 * The churned range: 512 pages, so that a command on it takes longer than
 * the gap of a few syscalls between two invalidations (on 16 pages a
 * snapshot or a read fit in it often enough to succeed every time in some
 * runs). Managed by the test's mm, mapped by busy_check().
 */
#define BUSY_NP 512
#define BUSY_LEN (BUSY_NP * T_PAGE)
static uint8_t *busy_mem;

struct churn {
	pthread_t th;
	atomic_bool stop;
	atomic_long rounds;
	int err;
};

static struct churn churn;

static void hook_sleep(struct t_rec *r, const struct uhmm_notifier_range *range)
{
	struct timespec ts = { 0, CHURN_SLEEP_NS };

	if (range->event == UHMM_EVENT_PROTECTION && !atomic_load(&churn.stop))
		nanosleep(&ts, NULL);
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);	/* best effort */
}

static void *churn_main(void *arg)
{
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
		pin(1);
	while (!atomic_load(&churn.stop)) {
		int err = uhmm_mprotect(busy_mem, BUSY_LEN, PROT_READ | PROT_WRITE);

		if (err) {
			churn.err = err;
			break;
		}
		atomic_fetch_add(&churn.rounds, 1);
	}
	return NULL;
}

static struct t_rec *churn_rec;

static void churn_start(void)
{
	churn_rec = t_rec_new();
	/* above the sim's notifier (it starts at 0): called after it */
	t_rec_insert(churn_rec, mm, busy_mem, BUSY_LEN);
	__atomic_store_n(&churn_rec->hook, hook_sleep, __ATOMIC_RELEASE);
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
		pin(0);
	atomic_store(&churn.stop, false);
	atomic_store(&churn.rounds, 0);
	churn.err = 0;
	ck_assert_int_eq(pthread_create(&churn.th, NULL, churn_main, NULL), 0);
	while (atomic_load(&churn.rounds) < 2)
		usleep(1000);
}

static void churn_stop(void)
{
	atomic_store(&churn.stop, true);
	ck_assert_int_eq(pthread_join(churn.th, NULL), 0);
	ck_assert_int_eq(churn.err, 0);
	__atomic_store_n(&churn_rec->hook, NULL, __ATOMIC_RELEASE);
	t_rec_free(churn_rec);
	churn_rec = NULL;
}

enum busy_op { BUSY_READ, BUSY_WRITE, BUSY_SNAPSHOT };

struct busy_call {
	enum busy_op op;
	atomic_int done;
	int rc;
	uint8_t buf[BUSY_LEN] __attribute__((aligned(T_PAGE)));
};

static void *busy_main(void *arg)
{
	struct busy_call *c = arg;

	if (c->op == BUSY_READ)
		c->rc = uhmm_sim_read(sim, ADDR(busy_mem, 0), BUSY_NP, c->buf);
	else if (c->op == BUSY_WRITE)
		c->rc = uhmm_sim_write(sim, ADDR(busy_mem, 0), BUSY_NP, c->buf);
	else
		c->rc = uhmm_sim_snapshot(sim, ADDR(busy_mem, 0), BUSY_NP, c->buf);
	atomic_store(&c->done, 1);
	return NULL;
}

/*
 * Run @op against a range that never settles; it must give up with -EBUSY
 * after its 1 s budget (3 s allowed here), not wait for the churn to end.
 */
static void busy_check(enum busy_op op)
{
	static struct busy_call c;
	uint64_t end;
	pthread_t th;
	int done;

#if defined(__SANITIZE_THREAD__)
	/* ThreadSanitizer slows the churn down enough that the range does
	 * settle now and then (a snapshot then succeeds): timing, not races. */
	t_skip("timing-dependent; runs in the plain and ASan builds");
	return;
#endif
	/*
	 * The churn leaves a gap of a few syscalls between invalidations; a
	 * call that fits in one succeeds (0), rightly. It does now and then:
	 * the lock hand-over at the end of an invalidation can put the churn
	 * thread to sleep for a cross-CPU wake-up (~60 us here), and the vCPU
	 * it runs on can be preempted. Such an attempt ends early and is run
	 * again, up to 20 in all; a call that never gives up still fails.
	 */
	busy_mem = t_map_anon(BUSY_LEN);
	ck_assert_int_eq(uhmm_mm_manage(mm, busy_mem, BUSY_LEN), 0);
	for (int attempt = 0; attempt < 20; attempt++) {
		memset(&c, 0, sizeof(c));
		c.op = op;
		t_fill_pattern(busy_mem, BUSY_LEN, 21);
		t_fill_pattern(c.buf, BUSY_LEN, 22);
		churn_start();
		ck_assert_int_eq(pthread_create(&th, NULL, busy_main, &c), 0);
		end = t_now_ns() + 3000000000ULL;
		while (!atomic_load(&c.done) && t_now_ns() < end)
			usleep(10000);
		done = atomic_load(&c.done);
		churn_stop();
		ck_assert_int_eq(pthread_join(th, NULL), 0);
		ck_assert_msg(done, "still busy-waiting after 3 s (budget 1 s), then returned %d",
			      c.rc);
		if (c.rc != 0)
			break;
	}
	ck_assert_int_eq(c.rc, -EBUSY);
	ck_assert_int_eq(uhmm_mm_unmanage(mm, busy_mem, BUSY_LEN), 0);
	munmap(busy_mem, BUSY_LEN);
}

/* A read whose range is invalidated without pause gives up: -EBUSY. */
START_TEST(sim_read_range_never_settles_is_ebusy)
{
	busy_check(BUSY_READ);
}
END_TEST

START_TEST(sim_write_range_never_settles_is_ebusy)
{
	busy_check(BUSY_WRITE);
}
END_TEST

START_TEST(sim_snapshot_range_never_settles_is_ebusy)
{
	busy_check(BUSY_SNAPSHOT);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* dax                                                                     */

static char path[64];
static struct uhmm_dax_region *R;
static struct uhmm_dax_dev *D;		/* a 4 MiB device of R */

static void new_path(void)
{
	int fd;

	strcpy(path, "/dev/shm/uhmm-err-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	close(fd);
}

static struct uhmm_dax_dev *seed_of(struct uhmm_dax_region *r)
{
	struct uhmm_dax_dev *d;

	ck_assert_int_eq(uhmm_dax_region_seed(r, &d), 0);
	return d;
}

/* 64 MiB region, 4 KiB align, with D: 4 MiB at offset 0. */
static void dax_setup(void)
{
	new_path();
	ck_assert_int_eq(uhmm_dax_region_create(path, 64 * MiB, UHMM_DAX_ALIGN_4K, &R), 0);
	D = seed_of(R);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 4 * MiB), 0);
}

static void dax_teardown(void)
{
	ck_assert_int_eq(uhmm_dax_region_close(R), 0);
	R = NULL;
	D = NULL;
	unlink(path);
}

static uint32_t nr_devices(struct uhmm_dax_region *r)
{
	struct uhmm_dax_region_info info;

	ck_assert_int_eq(uhmm_dax_region_info(r, &info), 0);
	return info.nr_devices;
}

/* Both label blocks as they are now, and then overwritten with garbage. */
static uint8_t *corrupt_labels(void)
{
	uint8_t *saved = malloc(2 * LABEL_BLOCK), junk[512];
	int fd = open(path, O_RDWR);

	ck_assert_ptr_nonnull(saved);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, saved, 2 * LABEL_BLOCK, 0), 2 * LABEL_BLOCK);
	memset(junk, 0xA5, sizeof(junk));
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), 0), sizeof(junk));
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), LABEL_BLOCK), sizeof(junk));
	close(fd);
	return saved;
}

static void restore_labels(uint8_t *saved)
{
	int fd = open(path, O_RDWR);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, saved, 2 * LABEL_BLOCK, 0), 2 * LABEL_BLOCK);
	close(fd);
	free(saved);
}

/* Once the labels are restored the handle works again, with D intact. */
static void check_label_back(void)
{
	struct uhmm_dax_dev_info di;

	ck_assert_uint_eq(nr_devices(R), 2);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_uint_eq(di.size, 4 * MiB);
}

/* region_info re-reads the label: garbage in both blocks is -EUCLEAN. */
START_TEST(region_info_corrupt_label_is_euclean)
{
	struct uhmm_dax_region_info info;
	uint8_t *saved = corrupt_labels();

	ck_assert_int_eq(uhmm_dax_region_info(R, &info), -EUCLEAN);
	restore_labels(saved);
	check_label_back();
}
END_TEST

START_TEST(region_devices_corrupt_label_is_euclean)
{
	struct uhmm_dax_dev *devs[4];
	uint8_t *saved = corrupt_labels();

	ck_assert_int_eq(uhmm_dax_region_devices(R, devs, 4), -EUCLEAN);
	restore_labels(saved);
	ck_assert_int_eq(uhmm_dax_region_devices(R, devs, 4), 2);
	check_label_back();
}
END_TEST

START_TEST(dev_find_corrupt_label_is_euclean)
{
	struct uhmm_dax_dev_info di;
	struct uhmm_dax_dev *d = NULL;
	uint8_t *saved;

	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	saved = corrupt_labels();
	ck_assert_int_eq(uhmm_dax_dev_find(R, di.name, &d), -EUCLEAN);
	restore_labels(saved);
	ck_assert_int_eq(uhmm_dax_dev_find(R, di.name, &d), 0);
	ck_assert_ptr_eq(d, D);
	check_label_back();
}
END_TEST

/* A resize against a corrupt label fails and writes nothing. */
START_TEST(dev_resize_corrupt_label_is_euclean)
{
	uint8_t *saved = corrupt_labels();

	ck_assert_int_eq(uhmm_dax_dev_resize(D, 8 * MiB), -EUCLEAN);
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 2 * MiB), -EUCLEAN);
	restore_labels(saved);
	check_label_back();
	ck_assert_int_eq(uhmm_dax_dev_resize(D, 8 * MiB), 0);
}
END_TEST

/* 2049 one-page ranges, a page apart: the label takes UHMM_DAX_MAX_RANGES. */
#define FULL_SIZE ((UHMM_DAX_MAX_RANGES + 1) * 2 * T_PAGE)

static void dax_full_setup(void)
{
	new_path();
	ck_assert_int_eq(uhmm_dax_region_create(path, FULL_SIZE, UHMM_DAX_ALIGN_4K, &R), 0);
	D = seed_of(R);
}

/* Ranges that cannot merge fill the label: the next one is -ENOSPC and
 * the label keeps what it had. */
START_TEST(dev_add_range_label_full_is_enospc)
{
	struct uhmm_dax_dev_info di;
	uint64_t i;

	for (i = 0; i < UHMM_DAX_MAX_RANGES; i++)
		ck_assert_int_eq(uhmm_dax_dev_add_range(D, i * 2 * T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_dax_dev_add_range(D, i * 2 * T_PAGE, T_PAGE), -ENOSPC);
	ck_assert_int_eq(uhmm_dax_dev_ranges(D, NULL, 0), UHMM_DAX_MAX_RANGES);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_uint_eq(di.size, UHMM_DAX_MAX_RANGES * T_PAGE);
	/* extending the last range in place needs no new entry */
	ck_assert_int_eq(uhmm_dax_dev_add_range(D, (i - 1) * 2 * T_PAGE + T_PAGE, T_PAGE), 0);
	ck_assert_int_eq(uhmm_dax_dev_ranges(D, NULL, 0), UHMM_DAX_MAX_RANGES);
}
END_TEST

/* A mapped device's align cannot change; unmapped it can. */
START_TEST(dev_set_align_mapped_is_ebusy)
{
	struct uhmm_dax_dev_info di;
	void *p;

	/* D is [0, 4 MiB): 2 MiB aligned ranges, so only busyness stops it */
	ck_assert_int_eq(uhmm_dax_dev_enable(D), 0);
	ck_assert_int_eq(uhmm_dax_map(D, PROT_READ | PROT_WRITE, &p), 0);
	ck_assert_int_eq(uhmm_dax_dev_set_align(D, UHMM_DAX_ALIGN_2M), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_uint_eq(di.align, UHMM_DAX_ALIGN_4K);
	ck_assert_int_eq(uhmm_dax_unmap(D, p), 0);
	ck_assert_int_eq(uhmm_dax_dev_set_align(D, UHMM_DAX_ALIGN_2M), 0);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_uint_eq(di.align, UHMM_DAX_ALIGN_2M);
}
END_TEST

/* In kmem mode the align cannot change either. */
START_TEST(dev_set_align_kmem_is_ebusy)
{
	struct uhmm_dax_dev_info di;

	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), 0);
	ck_assert_int_eq(uhmm_dax_dev_set_align(D, UHMM_DAX_ALIGN_2M), -EBUSY);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_uint_eq(di.align, UHMM_DAX_ALIGN_4K);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), 0);
	ck_assert_int_eq(uhmm_dax_dev_set_align(D, UHMM_DAX_ALIGN_2M), 0);
}
END_TEST

/* With jemalloc out of arenas, switching to kmem is -EOPNOTSUPP and
 * leaves the device in devdax mode. */
START_TEST(dev_reconfigure_no_arena_is_eopnotsupp)
{
	struct uhmm_dax_dev_info di;
	unsigned int idx, made = 0;
	size_t sz = sizeof(idx);
	void *p;

	while (made < 10000 && mallctl("arenas.create", &idx, &sz, NULL, 0) == 0) {
		made++;
		sz = sizeof(idx);
	}
	ck_assert_uint_lt(made, 10000);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), -EOPNOTSUPP);
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_int_eq(di.mode, UHMM_DAX_MODE_DEVDAX);
	ck_assert_uint_eq(di.flags & UHMM_DAX_DEV_KMEM_ONLINE, 0);
	/* still usable as devdax */
	ck_assert_int_eq(uhmm_dax_dev_enable(D), 0);
	ck_assert_int_eq(uhmm_dax_map(D, PROT_READ | PROT_WRITE, &p), 0);
	memset(p, 0x5A, T_PAGE);
	ck_assert_int_eq(uhmm_dax_unmap(D, p), 0);
}
END_TEST

/* Destroyed devices: D destroyed through a second open of the region (so
 * R's handle learns it from the label), or through its own handle. */
static struct uhmm_dax_region *R2;

static void dax_gone_setup(void)
{
	struct uhmm_dax_dev_info di;
	struct uhmm_dax_dev *d2;

	dax_setup();
	ck_assert_int_eq(uhmm_dax_dev_info(D, &di), 0);
	ck_assert_int_eq(uhmm_dax_region_open(path, &R2), 0);
	ck_assert_int_eq(uhmm_dax_dev_find(R2, di.name, &d2), 0);
	ck_assert_int_eq(uhmm_dax_dev_destroy(d2), 0);
}

static void dax_gone_teardown(void)
{
	/* the stale handle did nothing: only the seed is left */
	ck_assert_uint_eq(nr_devices(R), 1);
	ck_assert_uint_eq(nr_devices(R2), 1);
	ck_assert_int_eq(uhmm_dax_region_close(R2), 0);
	R2 = NULL;
	dax_teardown();
}

START_TEST(dev_add_range_destroyed_is_enodev)
{
	ck_assert_int_eq(uhmm_dax_dev_add_range(D, 32 * MiB, 2 * MiB), -ENODEV);
}
END_TEST

START_TEST(dev_set_align_destroyed_is_enodev)
{
	ck_assert_int_eq(uhmm_dax_dev_set_align(D, UHMM_DAX_ALIGN_2M), -ENODEV);
}
END_TEST

START_TEST(dev_enable_destroyed_is_enodev)
{
	ck_assert_int_eq(uhmm_dax_dev_enable(D), -ENODEV);
}
END_TEST

START_TEST(dev_disable_destroyed_is_enodev)
{
	ck_assert_int_eq(uhmm_dax_dev_disable(D), -ENODEV);
}
END_TEST

START_TEST(dev_reconfigure_destroyed_is_enodev)
{
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_KMEM), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(D, UHMM_DAX_MODE_DEVDAX), -ENODEV);
}
END_TEST

START_TEST(dax_map_destroyed_is_enodev)
{
	void *p = (void *)1;

	ck_assert_int_eq(uhmm_dax_map(D, PROT_READ, &p), -ENODEV);
	ck_assert_ptr_eq(p, (void *)1);
}
END_TEST

/* Destroyed through its own handle: the same answers. */
START_TEST(dev_calls_after_own_destroy_are_enodev)
{
	struct uhmm_dax_dev *d = seed_of(R);
	void *p = (void *)1;

	ck_assert_int_eq(uhmm_dax_dev_resize(d, 2 * MiB), 0);
	ck_assert_uint_eq(nr_devices(R), 3);
	ck_assert_int_eq(uhmm_dax_dev_enable(d), 0);
	ck_assert_int_eq(uhmm_dax_dev_disable(d), 0);
	ck_assert_int_eq(uhmm_dax_dev_destroy(d), 0);
	ck_assert_int_eq(uhmm_dax_dev_add_range(d, 32 * MiB, 2 * MiB), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_set_align(d, UHMM_DAX_ALIGN_2M), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_enable(d), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_disable(d), -ENODEV);
	ck_assert_int_eq(uhmm_dax_dev_reconfigure(d, UHMM_DAX_MODE_KMEM), -ENODEV);
	ck_assert_int_eq(uhmm_dax_map(d, PROT_READ, &p), -ENODEV);
	ck_assert_ptr_eq(p, (void *)1);
	ck_assert_uint_eq(nr_devices(R), 2);
}
END_TEST

int main(void)
{
	TCase *open = T_TCASE("mm_open", NULL, NULL, mm_open_without_userfaultfd_is_enosys,
			      mm_open_userfaultfd_refused_is_eperm,
			      mm_open_userfaultfd_and_device_refused_is_eperm,
			      mm_open_uffd_without_features_is_eopnotsupp);
	TCase *mremap = T_TCASE("mremap", mm_setup, mm_teardown,
				mremap_unmapped_old_range_is_efault,
				mremap_old_range_past_mapping_is_efault,
				mremap_grow_into_neighbour_is_enomem);
	TCase *excl = T_TCASE("make_device_exclusive", mm_setup, mm_teardown,
			      make_exclusive_pinned_page_is_ebusy);
	TCase *create = T_TCASE("sim_create", mm_setup, mm_teardown,
				sim_create_without_device_space_is_enospc);
	TCase *rw = T_TCASE("sim_read", sim_setup, sim_teardown,
			    sim_read_on_handler_thread_is_edeadlk,
			    mm_calls_on_handler_thread_are_edeadlk);
	TCase *label = T_TCASE("dax_corrupt_label", dax_setup, dax_teardown,
			       region_info_corrupt_label_is_euclean,
			       region_devices_corrupt_label_is_euclean,
			       dev_find_corrupt_label_is_euclean,
			       dev_resize_corrupt_label_is_euclean);
	TCase *full = T_TCASE("dax_add_range", dax_full_setup, dax_teardown,
			      dev_add_range_label_full_is_enospc);
	TCase *busy = T_TCASE("dax_set_align", dax_setup, dax_teardown,
			      dev_set_align_mapped_is_ebusy, dev_set_align_kmem_is_ebusy);
	TCase *arena = T_TCASE("dax_reconfigure", dax_setup, dax_teardown,
			       dev_reconfigure_no_arena_is_eopnotsupp);
	TCase *gone = T_TCASE("dax_destroyed", dax_gone_setup, dax_gone_teardown,
			      dev_add_range_destroyed_is_enodev,
			      dev_set_align_destroyed_is_enodev,
			      dev_enable_destroyed_is_enodev,
			      dev_disable_destroyed_is_enodev,
			      dev_reconfigure_destroyed_is_enodev,
			      dax_map_destroyed_is_enodev);
	TCase *own = T_TCASE("dax_destroyed_own", dax_setup, dax_teardown,
			     dev_calls_after_own_destroy_are_enodev);

	return t_run_suite("errors", open, mremap, excl, create, rw, label, full, busy,
			   arena, gone, own,
			   T_TCASE("mm_open_eperm", NULL, NULL,
				   mm_open_not_permitted_no_device_is_eperm,
				   mm_open_unprivileged_is_eperm),
			   T_TCASE("exclusive_device", sim_setup_coherent, sim_teardown,
				   make_exclusive_device_page_comes_back),
			   T_TCASE("sim_busy", sim_setup, sim_teardown,
				   sim_read_range_never_settles_is_ebusy,
				   sim_write_range_never_settles_is_ebusy,
				   sim_snapshot_range_never_settles_is_ebusy),
			   NULL);
}
