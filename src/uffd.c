// SPDX-License-Identifier: MIT
/* uffd.c - the userfaultfd side of a uhmm_mm: open and negotiate, register,
 * the handler threads (faults and events) and retrying UFFDIO_* helpers.
 * API in include/uhmm/mm.h; internals in src/mm_internal.h. */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include "compat.h"
#include "fault_inject.h"
#include "mm_internal.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define REQUIRED_FEATURES                                                    \
	(UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |              \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_FORK |                \
	 UFFD_FEATURE_THREAD_ID)
#define OPTIONAL_FEATURES                                                    \
	(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MISSING_SHMEM |       \
	 UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |  \
	 UFFD_FEATURE_MOVE)

/* Zero source for fills: a never-written read-only mapping reads as zeros. */
#define ZERO_SRC_LEN (1UL << 30)
static void *zero_src;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_src_init(void)
{
	void *p = mmap(NULL, ZERO_SRC_LEN, PROT_READ,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	zero_src = p == MAP_FAILED ? NULL : p;
	/* Map the first 2 MiB to the zero page now: UFFDIO_COPY from a
	 * source that faults retries page by page, ~20x slower. */
	if (zero_src)
		madvise(zero_src, 2UL << 20, MADV_POPULATE_READ);
}

static __thread struct uhmm_mm *tls_handler_mm;

bool uhmm_uffd_is_handler(void)
{
	return tls_handler_mm != NULL;
}

static int uffd_new_fd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int dev, sys_err;

	if (fd >= 0)
		return fd;
	sys_err = errno;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		/* the syscall's refusal says more than a missing/denied node */
		if (sys_err == EPERM)
			return -EPERM;
		return errno == ENOENT ? -ENOSYS : -errno;
	}
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(dev);
	return fd < 0 ? -errno : fd;
}

int uhmm_uffd_open(struct uhmm_mm *mm)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	uint64_t want;
	int fd, err;

	pthread_once(&zero_once, zero_src_init);
	if (!zero_src)
		return -ENOMEM;
	/* UFFDIO_API may be called once per fd: probe on a throwaway one. */
	fd = uffd_new_fd();
	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api)) {
		err = -errno;
		close(fd);
		return err;
	}
	close(fd);
	if ((api.features & REQUIRED_FEATURES) != REQUIRED_FEATURES) {
		uhmm_log(UHMM_LOG_ERROR, "userfaultfd lacks events (features %#llx)",
			 (unsigned long long)api.features);
		return -EOPNOTSUPP;
	}
	want = REQUIRED_FEATURES | (api.features & OPTIONAL_FEATURES);
	if (mm->inthread) {
		if (!(api.features & UFFD_FEATURE_SIGBUS))
			return -EOPNOTSUPP;
		want |= UFFD_FEATURE_SIGBUS;
	}
	fd = uffd_new_fd();
	if (fd < 0)
		return fd;
	api = (struct uffdio_api){ .api = UFFD_API, .features = want };
	if (ioctl(fd, UFFDIO_API, &api)) {
		err = -errno;
		close(fd);
		return err;
	}
	mm->uffd = fd;
	mm->uffd_features = want;
	if (want & UFFD_FEATURE_MOVE)
		mm->features |= UHMM_FEAT_MOVE;
	if (want & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
		mm->features |= UHMM_FEAT_WP;
	return 0;
}

int uhmm_uffd_register(struct uhmm_mm *mm, uint64_t start, uint64_t len, bool wp)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (wp && (mm->features & UHMM_FEAT_WP))
		reg.mode |= UFFDIO_REGISTER_MODE_WP;
	if (uhmm_fi_fail(UHMM_FI_UFFD_REGISTER))
		return uhmm_fi_errno(UHMM_FI_UFFD_REGISTER, -ENOMEM);
	if (ioctl(mm->uffd, UFFDIO_REGISTER, &reg) == 0)
		return 0;
	if (errno == EINVAL && (reg.mode & UFFDIO_REGISTER_MODE_WP)) {
		/* shmem/hugetlb without WP support: MISSING is what we need */
		reg.mode = UFFDIO_REGISTER_MODE_MISSING;
		if (ioctl(mm->uffd, UFFDIO_REGISTER, &reg) == 0)
			return 0;
	}
	return -errno;
}

int uhmm_uffd_unregister(struct uhmm_mm *mm, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	return ioctl(mm->uffd, UFFDIO_UNREGISTER, &r) ? -errno : 0;
}

/* Count the REMOVE events in @n messages just read (see read_gate). */
static void note_removes(struct uhmm_mm *mm, const struct uffd_msg *msgs, size_t n)
{
	unsigned int k = 0;

	for (size_t i = 0; i < n; i++)
		k += msgs[i].event == UFFD_EVENT_REMOVE;
	if (k)
		atomic_fetch_add(&mm->removes_unapplied, k);
}

/* Read whatever is queued into the backlog, without blocking. */
void uhmm_uffd_drain(struct uhmm_mm *mm)
{
	struct uffd_msg msg;

	/* a writer into the process holds the gate: read nothing now */
	if (pthread_rwlock_trywrlock(&mm->read_gate))
		return;
	pthread_mutex_lock(&mm->backlog_lock);
	while (mm->nr_backlog < MM_BACKLOG) {
		if (read(mm->uffd, &msg, sizeof(msg)) != sizeof(msg))
			break;
		note_removes(mm, &msg, 1);
		mm->backlog[mm->nr_backlog++] = msg;
	}
	pthread_mutex_unlock(&mm->backlog_lock);
	pthread_rwlock_unlock(&mm->read_gate);
}

/* This thread holds a read_gate: an EAGAIN (an event queued, unread) must
 * not be waited out here, the handler cannot read it until we let go. */
__thread bool uhmm_tls_gated;

bool uhmm_mm_lock_gated(struct uhmm_mm *mm)
{
	int tries = 0;

	/* A handler takes mm->lock alone: the REMOVEs it read are ones it
	 * applies before serving faults (events run first). */
	if (uhmm_uffd_is_handler()) {
		mm_lock(mm);
		return false;
	}
	/*
	 * mm->lock first, then the gate without waiting for it, and never wait
	 * with either held: the handler may need mm->lock to apply a REMOVE,
	 * and a holder of mm->lock may need the handler to read an event.
	 */
	for (;;) {
		mm_lock(mm);
		if (pthread_rwlock_tryrdlock(&mm->read_gate) == 0) {
			if (!atomic_load(&mm->removes_unapplied))
				break;
			pthread_rwlock_unlock(&mm->read_gate);
		}
		mm_unlock(mm);
		uhmm_uffd_retry_wait(mm, &tries);
	}
	uhmm_tls_gated = true;
	return true;
}

void uhmm_mm_unlock_gated(struct uhmm_mm *mm, bool gated)
{
	if (gated) {
		uhmm_tls_gated = false;
		pthread_rwlock_unlock(&mm->read_gate);
	}
	mm_unlock(mm);
}

bool uhmm_mm_relock_gated(struct uhmm_mm *mm, bool gated)
{
	int tries = 0;

	uhmm_mm_unlock_gated(mm, gated);
	uhmm_uffd_retry_wait(mm, &tries);	/* the handler reads and applies */
	return uhmm_mm_lock_gated(mm);
}

void uhmm_uffd_retry_wait(struct uhmm_mm *mm, int *tries)
{
	/* The event that raised mmap_changing may sit unread behind us. */
	if (uhmm_uffd_is_handler())
		uhmm_uffd_drain(mm);
	if (++*tries < 64) {
		sched_yield();
	} else {
		struct timespec ts = { 0, 20000 };

		nanosleep(&ts, NULL);
	}
}

int uhmm_uffd_wake(struct uhmm_mm *mm, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	if (mm->inthread)
		return 0;	/* SIGBUS mode: nobody sleeps in the kernel */
	return ioctl(mm->uffd, UFFDIO_WAKE, &r) ? -errno : 0;
}

int uhmm_uffd_copy(struct uhmm_mm *mm, uint64_t dst, const void *src,
		   uint64_t len, bool wake, uint64_t *copied)
{
	uint64_t done = 0;
	int tries = 0, rc = 0;

	while (done < len) {
		struct uffdio_copy c = {
			.dst = dst + done,
			.src = (uint64_t)(uintptr_t)src + done,
			.len = len - done,
			.mode = UFFDIO_COPY_MODE_DONTWAKE,
		};

		if (uhmm_fi_fail(UHMM_FI_UFFD_COPY)) {	/* as if mm were changing */
			if (uhmm_tls_gated) {
				rc = -EAGAIN;
				break;
			}
			uhmm_uffd_retry_wait(mm, &tries);
			continue;
		}
		if (ioctl(mm->uffd, UFFDIO_COPY, &c) == 0) {
			done = len;
			break;
		}
		if (c.copy > 0) {
			done += (uint64_t)c.copy;
			continue;
		}
		if (c.copy != -EAGAIN && errno != EAGAIN) {
			rc = c.copy < 0 ? (int)c.copy : -errno;
			break;
		}
		if (uhmm_tls_gated) {
			rc = -EAGAIN;		/* the caller lets go and retries */
			break;
		}
		uhmm_uffd_retry_wait(mm, &tries);
	}
	if (copied)
		*copied = done;
	if (wake && done)
		uhmm_uffd_wake(mm, dst, done);
	return rc;
}

int uhmm_uffd_move(struct uhmm_mm *mm, uint64_t dst, uint64_t src, uint64_t len,
		   uint64_t *moved)
{
	uint64_t done = 0;
	int tries = 0;

	*moved = 0;
	if (uhmm_fi_fail(UHMM_FI_UFFD_MOVE))	/* callers fall back to copying */
		return uhmm_fi_errno(UHMM_FI_UFFD_MOVE, -EBUSY);
	while (done < len) {
		struct uffdio_move m = {
			.dst = dst + done,
			.src = src + done,
			.len = len - done,
			.mode = UFFDIO_MOVE_MODE_DONTWAKE |
				UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
		};

		if (ioctl(mm->uffd, UFFDIO_MOVE, &m) == 0) {
			done = len;
			break;
		}
		if (m.move > 0) {
			done += (uint64_t)m.move;
			continue;
		}
		if (m.move != -EAGAIN && errno != EAGAIN) {
			*moved = done;
			return m.move < 0 ? (int)m.move : -errno;
		}
		if (uhmm_tls_gated) {
			*moved = done;
			return -EAGAIN;		/* the caller lets go and retries */
		}
		uhmm_uffd_retry_wait(mm, &tries);
	}
	*moved = done;
	return 0;
}

/*
 * Fill the holes of [start, start + len) with zeros: a mapped zero page for
 * reads, fresh pages for writes and for hugetlbfs. Present pages are skipped.
 * Does not wake. Return 0, -EAGAIN (mm changing; *done says how far) or -errno.
 */
int uhmm_uffd_fill(struct uhmm_mm *mm, uint64_t start, uint64_t len, bool write,
		   uint64_t *done)
{
	struct mm_vma *v = uhmm_vma_find(mm, start);
	uint64_t psz = v ? 1ULL << v->page_shift : UHMM_PAGE_SIZE;
	bool copy = write || (v && v->kind == VMA_HUGETLB);
	uint64_t off = 0;

	if (uhmm_fi_fail(copy ? UHMM_FI_UFFD_COPY : UHMM_FI_UFFD_ZEROPAGE)) {
		*done = 0;
		return -EAGAIN;		/* the handler defers and retries */
	}
	while (off < len) {
		int64_t res;
		int rc;

		if (copy) {
			struct uffdio_copy c = {
				.dst = start + off,
				.src = (uint64_t)(uintptr_t)zero_src,
				.len = UHMM_MIN(len - off, (uint64_t)ZERO_SRC_LEN),
				.mode = UFFDIO_COPY_MODE_DONTWAKE,
			};

			rc = ioctl(mm->uffd, UFFDIO_COPY, &c);
			res = rc ? c.copy : (int64_t)c.len;
		} else {
			struct uffdio_zeropage z = {
				.range = { .start = start + off, .len = len - off },
				.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
			};

			rc = ioctl(mm->uffd, UFFDIO_ZEROPAGE, &z);
			res = rc ? z.zeropage : (int64_t)z.range.len;
		}
		if (res > 0) {
			off += (uint64_t)res;
			continue;
		}
		if (res == 0)
			res = -errno;
		if (res == -EEXIST) {
			off += psz;	/* already present: keep it */
			continue;
		}
		*done = off;
		return (int)res;
	}
	*done = off;
	return 0;
}

static void handler_sigbus(int tid)
{
	if (tid > 0)
		syscall(SYS_tgkill, getpid(), tid, SIGBUS);
}

/*
 * Serve one CPU fault at @addr. A handler thread (blocking mode) returns 0
 * (handled) or -EAGAIN (retry later). In-thread mode (the faulting thread,
 * in its SIGBUS handler) returns 0 to re-execute the access (served, or try
 * again) or a negative errno to let the SIGBUS through (a device that
 * cannot give the page back).
 */
static int serve_fault(struct uhmm_mm *mm, uint64_t addr, bool write, bool wp, int tid)
{
	struct mm_vma *v;
	uint64_t e = 0, ws, we, psz, done;
	bool fill_err = false;
	int rc = 0;

	mm_lock(mm);
	v = uhmm_vma_find(mm, addr);
	if (v && v->ents)
		e = v->ents[(addr - v->start) >> UHMM_PAGE_SHIFT];
	switch (ENT_STATE(e)) {
	case ENT_MIGRATING:
		/* the migration's finalize wakes every thread parked here;
		 * in-thread, the access simply faults again until it is over */
		mm_unlock(mm);
		if (mm->inthread)
			sched_yield();
		return 0;
	case ENT_DEVICE:
		mm_unlock(mm);
		atomic_fetch_add(&mm->st_device_faults, 1);
		rc = uhmm_device_fault(mm, addr, addr + UHMM_PAGE_SIZE, write, tid, NULL);
		if (rc == -ENOMEM)
			rc = -EAGAIN;	/* short of memory for now: try again */
		if (rc == -EAGAIN)
			return mm->inthread ? (sched_yield(), 0) : rc;
		if (rc < 0) {
			uhmm_log(UHMM_LOG_WARN, "device fault at %#llx failed: %d",
				 (unsigned long long)addr, rc);
			if (mm->inthread)
				return rc;
			handler_sigbus(tid);
		}
		uhmm_uffd_wake(mm, addr, UHMM_PAGE_SIZE);
		return 0;
	case ENT_EXCLUSIVE:
		mm_unlock(mm);
		rc = uhmm_excl_restore(mm, addr);
		if (rc == -EAGAIN)
			return mm->inthread ? (sched_yield(), 0) : rc;
		uhmm_uffd_wake(mm, addr, UHMM_PAGE_SIZE);
		return 0;
	}
	if (wp) {
		struct uffdio_writeprotect wpr = {
			.range = { .start = addr, .len = UHMM_PAGE_SIZE },
		};

		mm_unlock(mm);
		if (ioctl(mm->uffd, UFFDIO_WRITEPROTECT, &wpr) && errno == EAGAIN)
			return mm->inthread ? 0 : -EAGAIN;
		return 0;
	}
	psz = v ? 1ULL << v->page_shift : UHMM_PAGE_SIZE;
	if (!v || v->kind == VMA_INTERNAL || v->kind == VMA_HUGETLB) {
		/* one page: internal buffers, huge pages, or an unknown range */
		ws = addr & ~(psz - 1);
		we = ws + psz;
	} else {
		uint64_t win = (uint64_t)mm->fault_around << UHMM_PAGE_SHIFT;

		ws = UHMM_MAX(v->start, addr & ~(win - 1));
		we = UHMM_MIN(v->end, (addr & ~(win - 1)) + win);
	}
	/* Fill runs without CPU entries: device pages must stay holes. */
	for (uint64_t a = ws; a < we && rc != -EAGAIN;) {
		uint64_t b = a;
		int r;

		if (v && v->ents)
			while (a < we && ENT_STATE(v->ents[(a - v->start) >> UHMM_PAGE_SHIFT]))
				a += UHMM_PAGE_SIZE;
		b = a;
		if (v && v->ents)
			while (b < we && !ENT_STATE(v->ents[(b - v->start) >> UHMM_PAGE_SHIFT]))
				b += UHMM_PAGE_SIZE;
		else
			b = we;
		if (a >= we)
			break;
		r = uhmm_uffd_fill(mm, a, b - a, write, &done);
		atomic_fetch_add(&mm->st_filled_pages, done >> UHMM_PAGE_SHIFT);
		if (r == -EAGAIN)
			rc = r;
		else if (r)
			fill_err = true;
		a = b;
	}
	/*
	 * The window may cross a mapping split (mprotect) that uhmm's range
	 * record does not show: the fill then fails there. Serve at least the
	 * faulting page, alone.
	 */
	if (fill_err && rc != -EAGAIN) {
		uint64_t ps = addr & ~(psz - 1);

		if (uhmm_uffd_fill(mm, ps, psz, write, &done) == -EAGAIN)
			rc = -EAGAIN;
	}
	mm_unlock(mm);
	atomic_fetch_add(&mm->st_fills, 1);
	uhmm_uffd_wake(mm, ws, we - ws);
	if (mm->inthread)
		return 0;	/* a hole left by -EAGAIN faults again */
	return rc;
}

static int handle_fault(struct uhmm_mm *mm, const struct uffd_msg *msg)
{
	uint64_t flags = msg->arg.pagefault.flags;

	return serve_fault(mm, msg->arg.pagefault.address & ~(UHMM_PAGE_SIZE - 1),
			   flags & UFFD_PAGEFAULT_FLAG_WRITE, flags & UFFD_PAGEFAULT_FLAG_WP,
			   (int)msg->arg.pagefault.feat.ptid);
}

/* ---------------------------------------------------------------------- */
/* in-thread faults: userfaultfd SIGBUS mode                               */

#define INTHREAD_MAX 16

static struct uhmm_mm *_Atomic inthread_mms[INTHREAD_MAX];
static atomic_uint inthread_running;	/* SIGBUS handlers inside an mm */
static pthread_mutex_t inthread_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction inthread_prev;	/* the handler before ours */

/* Read/write and protection-fault bits of the page fault behind a SIGBUS. */
static bool fault_is_write(const void *ucv, bool *wp)
{
#if defined(__x86_64__)
	const ucontext_t *uc = ucv;
	unsigned long long err = (unsigned long long)uc->uc_mcontext.gregs[REG_ERR];

	*wp = (err & 3) == 3;	/* present page, write access */
	return err & 2;
#else
	(void)ucv;
	*wp = false;
	return false;		/* a write then takes one more (kernel) COW fault */
#endif
}

/* 1: @addr is not @mm's; 0: served or retry; < 0: deliver the SIGBUS. */
static int inthread_fault(struct uhmm_mm *mm, uint64_t addr, bool write, bool wp)
{
	uint64_t page = addr & ~(UHMM_PAGE_SIZE - 1);
	bool known;

	mm_lock(mm);
	known = uhmm_vma_find(mm, page) != NULL;
	mm_unlock(mm);
	if (!known) {
		/* registered just before its range was recorded? Only our
		 * userfaultfd can fill it: anything else is not ours. */
		struct uffdio_zeropage z = {
			.range = { .start = page, .len = UHMM_PAGE_SIZE },
			.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
		};

		if (ioctl(mm->uffd, UFFDIO_ZEROPAGE, &z) == 0 || errno == EEXIST ||
		    errno == EAGAIN)
			return 0;
		return 1;
	}
	atomic_fetch_add(&mm->st_faults, 1);
	return serve_fault(mm, page, write, wp, 0);
}

static void inthread_chain(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *p = &inthread_prev;

	if (p->sa_flags & SA_SIGINFO) {
		if (p->sa_sigaction)
			p->sa_sigaction(sig, si, uc);
		return;
	}
	if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN) {
		p->sa_handler(sig);
		return;
	}
	if (p->sa_handler == SIG_IGN && si->si_code <= 0)
		return;		/* a sent SIGBUS the application ignores */
	/* The default action: a fault re-executes and dies on it; a sent
	 * signal is raised again. */
	signal(SIGBUS, SIG_DFL);
	if (si->si_code <= 0)
		raise(SIGBUS);
}

static void inthread_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno, rc = 1;

	if (si->si_code == BUS_ADRERR && uhmm_tls_mm_locked) {
		/* uhmm itself touched a hole under its lock: a bug; serving it
		 * here would deadlock, so the SIGBUS goes through */
		uhmm_log(UHMM_LOG_ERROR, "fault at %p under mm lock", si->si_addr);
	} else if (si->si_code == BUS_ADRERR) {
		uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
		bool wp, write = fault_is_write(uc, &wp);

		atomic_fetch_add(&inthread_running, 1);
		for (int i = 0; i < INTHREAD_MAX && rc > 0; i++) {
			struct uhmm_mm *mm = atomic_load(&inthread_mms[i]);

			if (mm)
				rc = inthread_fault(mm, addr, write, wp);
		}
		atomic_fetch_sub(&inthread_running, 1);
	}
	errno = saved;
	if (rc)
		inthread_chain(sig, si, uc);
}

int uhmm_uffd_inthread_add(struct uhmm_mm *mm)
{
	struct sigaction cur;
	int err = -EBUSY;

	pthread_mutex_lock(&inthread_lock);
	/* (Re)install unless ours is in place: the application may have put
	 * its own handler over ours since; that one is then the one we chain
	 * to. Ours stays installed: with no in-thread mm it only passes on. */
	if (sigaction(SIGBUS, NULL, &cur) == 0 &&
	    (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != inthread_sigbus)) {
		struct sigaction sa = { .sa_sigaction = inthread_sigbus,
					.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART };

		sigemptyset(&sa.sa_mask);
		inthread_prev = cur;
		if (sigaction(SIGBUS, &sa, NULL)) {
			err = -errno;
			goto out;
		}
	}
	for (int i = 0; i < INTHREAD_MAX; i++)
		if (!atomic_load(&inthread_mms[i])) {
			atomic_store(&inthread_mms[i], mm);
			err = 0;
			break;
		}
out:
	pthread_mutex_unlock(&inthread_lock);
	return err;
}

void uhmm_uffd_inthread_del(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&inthread_lock);
	for (int i = 0; i < INTHREAD_MAX; i++)
		if (atomic_load(&inthread_mms[i]) == mm)
			atomic_store(&inthread_mms[i], NULL);
	pthread_mutex_unlock(&inthread_lock);
	/* a handler that loaded @mm before the store may still use it */
	while (atomic_load(&inthread_running))
		sched_yield();
}

/* Serve the holes of [start, start+len) in this thread, as faults would. */
static void inthread_serve_holes(struct uhmm_mm *mm, uint64_t start, uint64_t len,
				 bool write)
{
	unsigned char vec[512];

	for (uint64_t off = 0; off < len;) {
		uint64_t n = UHMM_MIN(len - off, sizeof(vec) * UHMM_PAGE_SIZE) >> UHMM_PAGE_SHIFT;
		uint64_t i = 0;
		int tries = 0;

		if (mincore((void *)(uintptr_t)(start + off), n << UHMM_PAGE_SHIFT, vec))
			return;		/* unmapped: populate reports it */
		while (i < n) {
			uint64_t a = start + off + (i << UHMM_PAGE_SHIFT);

			if ((vec[i] & 1) || tries > 8) {
				i++;
				tries = 0;
				continue;
			}
			if (inthread_fault(mm, a, write, false) < 0)
				return;
			tries++;
			if (mincore((void *)(uintptr_t)a, (n - i) << UHMM_PAGE_SHIFT, vec + i))
				return;
		}
		off += n << UHMM_PAGE_SHIFT;
	}
}

int uhmm_uffd_populate(struct uhmm_mm *mm, uint64_t start, uint64_t len, bool write)
{
	int adv = write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;

	for (int pass = 0;; pass++) {
		if (madvise((void *)(uintptr_t)start, len, adv) == 0)
			return 0;
		/* In SIGBUS mode the kernel will not wait for a hole (-EFAULT):
		 * serve the holes here, then let the kernel finish (COW, checks). */
		if (errno != EFAULT || !mm->inthread || pass >= 16)
			break;
		inthread_serve_holes(mm, start, len, write);
	}
	if (errno == EINVAL || errno == ENOMEM || errno == EFAULT)
		return -EFAULT;
	return -errno;
}

static void handle_event(struct uhmm_mm *mm, const struct uffd_msg *msg)
{
	uint64_t s, e;

	atomic_fetch_add(&mm->st_events, 1);
	switch (msg->event) {
	case UFFD_EVENT_UNMAP:
	case UFFD_EVENT_REMOVE: {
		bool unmap = msg->event == UFFD_EVENT_UNMAP;

		s = msg->arg.remove.start;
		e = msg->arg.remove.end;
		/*
		 * Apply while the sequence is odd: a device whose read_begin
		 * returns sees the entries already changed.
		 */
		if (!uhmm_mm_suppressed(mm, msg->event, s, e)) {
			if (!unmap) {	/* a plain DONTNEED: its zap is still to come */
				mm_lock(mm);
				uhmm_mm_zap_note_locked(mm, s, e);
				mm_unlock(mm);
			}
			uhmm_invalidate_start(mm, unmap ? UHMM_EVENT_UNMAP : UHMM_EVENT_CLEAR,
					      s, e, NULL, 0);
			uhmm_mm_apply_unmap(mm, s, e, !unmap);
			uhmm_invalidate_end(mm);
		} else {
			uhmm_mm_apply_unmap(mm, s, e, !unmap);
		}
		if (!unmap)
			atomic_fetch_sub(&mm->removes_unapplied, 1);
		break;
	}
	case UFFD_EVENT_REMAP:
		s = msg->arg.remap.from;
		e = s + msg->arg.remap.len;
		if (!uhmm_mm_suppressed(mm, UFFD_EVENT_REMAP, s, e)) {
			uhmm_invalidate_start(mm, UHMM_EVENT_REMAP, s, e, NULL,
					      msg->arg.remap.to);
			uhmm_mm_apply_remap(mm, s, msg->arg.remap.to, msg->arg.remap.len);
			uhmm_invalidate_end(mm);
		} else {
			uhmm_mm_apply_remap(mm, s, msg->arg.remap.to, msg->arg.remap.len);
		}
		break;
	case UFFD_EVENT_FORK: {
		/* The child does not inherit management: dropping its fd
		 * unregisters its ranges. The parent's pages are now COW. */
		struct mm_vma *copy;
		size_t n;

		close((int)msg->arg.fork.ufd);
		mm_lock(mm);
		n = mm->nr_vmas;
		copy = n ? malloc(n * sizeof(*copy)) : NULL;
		if (copy)
			memcpy(copy, mm->vmas, n * sizeof(*copy));
		mm_unlock(mm);
		for (size_t i = 0; copy && i < n; i++)
			if (copy[i].kind != VMA_INTERNAL)
				uhmm_invalidate(mm, UHMM_EVENT_PROTECTION,
						copy[i].start, copy[i].end, NULL, 0);
		free(copy);
		break;
	}
	default:
		break;
	}
}

static int handle_msg(struct uhmm_mm *mm, const struct uffd_msg *msg)
{
	if (msg->event == UFFD_EVENT_PAGEFAULT) {
		atomic_fetch_add(&mm->st_faults, 1);
		return handle_fault(mm, msg);
	}
	handle_event(mm, msg);
	return 0;
}

#define MAX_DEFERRED 256

struct handler_state {
	struct uffd_msg def[MAX_DEFERRED];
	unsigned int ndef;
};

static void run_msg(struct uhmm_mm *mm, struct handler_state *hs,
		    const struct uffd_msg *m)
{
	if (handle_msg(mm, m) == -EAGAIN && hs->ndef < MAX_DEFERRED)
		hs->def[hs->ndef++] = *m;
}

static void run_backlog_and_deferred(struct uhmm_mm *mm, struct handler_state *hs)
{
	for (;;) {
		struct uffd_msg m;
		bool got = false;

		/* events before faults, as in the main loop */
		pthread_mutex_lock(&mm->backlog_lock);
		for (unsigned int i = 0; i < mm->nr_backlog && !got; i++)
			if (mm->backlog[i].event != UFFD_EVENT_PAGEFAULT) {
				m = mm->backlog[i];
				memmove(mm->backlog + i, mm->backlog + i + 1,
					(--mm->nr_backlog - i) * sizeof(m));
				got = true;
			}
		if (!got && mm->nr_backlog) {
			m = mm->backlog[0];
			memmove(mm->backlog, mm->backlog + 1,
				--mm->nr_backlog * sizeof(m));
			got = true;
		}
		pthread_mutex_unlock(&mm->backlog_lock);
		if (!got)
			break;
		run_msg(mm, hs, &m);
	}
	if (hs->ndef) {
		struct uffd_msg retry[MAX_DEFERRED];
		unsigned int n = hs->ndef;

		memcpy(retry, hs->def, n * sizeof(retry[0]));
		hs->ndef = 0;
		for (unsigned int i = 0; i < n; i++)
			run_msg(mm, hs, &retry[i]);
	}
}

static void batch_done(struct uhmm_mm *mm, uint64_t start)
{
	pthread_mutex_lock(&mm->backlog_lock);
	if (start > mm->batch_done)
		mm->batch_done = start;
	pthread_cond_broadcast(&mm->batch_cond);
	pthread_mutex_unlock(&mm->backlog_lock);
}

/* Parked for a fork (see fork_park): read, never run, never allocate. */
static void handler_park(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->backlog_lock);
	mm->parked++;
	pthread_cond_broadcast(&mm->batch_cond);
	pthread_mutex_unlock(&mm->backlog_lock);
	while (atomic_load(&mm->fork_park) && !atomic_load(&mm->stop)) {
		struct pollfd p = { .fd = mm->uffd, .events = POLLIN };

		uhmm_uffd_drain(mm);	/* reading the FORK event lets fork() go on */
		poll(&p, 1, 1);
	}
	pthread_mutex_lock(&mm->backlog_lock);
	mm->parked--;
	pthread_mutex_unlock(&mm->backlog_lock);
}

void uhmm_uffd_fork_park(struct uhmm_mm *mm)
{
	uint64_t one = 1;

	atomic_store(&mm->fork_park, true);
	/* wake handlers sleeping in poll; uhmm_uffd_fork_unpark resets it
	 * (EAGAIN: the counter is full, so the fd is readable anyway). With
	 * no way to wake them, do not park: they could not be unparked. */
	if (write(mm->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
		atomic_store(&mm->fork_park, false);
		return;
	}
	pthread_mutex_lock(&mm->backlog_lock);
	while (mm->parked < mm->nr_handlers)
		pthread_cond_wait(&mm->batch_cond, &mm->backlog_lock);
	pthread_mutex_unlock(&mm->backlog_lock);
}

void uhmm_uffd_fork_unpark(struct uhmm_mm *mm)
{
	uint64_t v;

	if (!atomic_load(&mm->fork_park))
		return;
	/* a stop in between is impossible: uhmm_mm_close waits for the list lock */
	if (read(mm->wake_fd, &v, sizeof(v)) < 0)
		v = 0;
	atomic_store(&mm->fork_park, false);
}

static void *handler_main(void *arg)
{
	struct uhmm_mm *mm = arg;
	struct handler_state *hs = calloc(1, sizeof(*hs));
	struct uffd_msg msgs[32];
	uint64_t last = uhmm_now_ns();

	tls_handler_mm = mm;
	if (!hs)
		return NULL;
	while (!atomic_load(&mm->stop)) {
		uint64_t start;
		ssize_t n;

		if (atomic_load(&mm->fork_park)) {
			handler_park(mm);
			continue;
		}
		pthread_mutex_lock(&mm->backlog_lock);
		start = ++mm->batch_start;
		pthread_mutex_unlock(&mm->backlog_lock);
		pthread_rwlock_wrlock(&mm->read_gate);
		n = read(mm->uffd, msgs, sizeof(msgs));
		if (n > 0)
			note_removes(mm, msgs, (size_t)n / sizeof(msgs[0]));
		pthread_rwlock_unlock(&mm->read_gate);
		if (n > 0) {
			/*
			 * Events first: a fault read in the same batch as a
			 * REMOVE must not bring back data the kernel has
			 * already zapped (the caller resumed when we read it).
			 */
			for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
				if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
					run_msg(mm, hs, &msgs[i]);
			for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
				if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
					run_msg(mm, hs, &msgs[i]);
			run_backlog_and_deferred(mm, hs);
			batch_done(mm, start);
			last = uhmm_now_ns();
			continue;
		}
		run_backlog_and_deferred(mm, hs);
		batch_done(mm, start);
		if (hs->ndef || mm->nr_backlog) {
			struct pollfd p = { .fd = mm->uffd, .events = POLLIN };

			poll(&p, 1, 1);
			continue;
		}
		if (mm->spin_usec && uhmm_now_ns() - last < (uint64_t)mm->spin_usec * 1000) {
			__builtin_ia32_pause();
			continue;
		}
		struct pollfd pf[2] = {
			{ .fd = mm->uffd, .events = POLLIN },
			{ .fd = mm->wake_fd, .events = POLLIN },
		};
		poll(pf, 2, -1);
		last = uhmm_now_ns();
	}
	free(hs);
	return NULL;
}

int uhmm_uffd_start(struct uhmm_mm *mm)
{
	sigset_t all, old;
	int err = 0;

	mm->handlers = calloc(mm->nr_handlers, sizeof(pthread_t));
	if (!mm->handlers) {
		mm->nr_handlers = 0;	/* uhmm_uffd_stop joins none */
		return -ENOMEM;
	}
	/* Handler threads take no signals: the application's stay its own. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned int i = 0; i < mm->nr_handlers; i++) {
		err = uhmm_fi_fail(UHMM_FI_THREAD)
			      ? -EAGAIN
			      : -pthread_create(&mm->handlers[i], NULL, handler_main, mm);
		if (err) {
			mm->nr_handlers = i;
			break;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err;
}

void uhmm_uffd_stop(struct uhmm_mm *mm)
{
	uint64_t one = 1;

	atomic_store(&mm->stop, true);
	for (unsigned int i = 0; i < mm->nr_handlers; i++)
		if (write(mm->wake_fd, &one, sizeof(one)) < 0)
			break;
	for (unsigned int i = 0; i < mm->nr_handlers; i++)
		pthread_join(mm->handlers[i], NULL);
	free(mm->handlers);
	mm->handlers = NULL;
	mm->nr_handlers = 0;
}

/*
 * A plain madvise(MADV_DONTNEED) returns once a handler has read its REMOVE,
 * maybe before the handler applied it: wait for that, so a device that
 * looks at its page table after the call sees the pages dropped (the
 * kernel invalidates before madvise returns). A handler reads under the
 * write side of read_gate and counts the REMOVEs before it lets go, so a
 * read side taken with no REMOVE counted means none is pending. Bounded
 * (100 ms): a stream of DONTNEEDs must not hold a reader forever. Handlers
 * never wait (they apply what they read before they serve faults).
 */
static bool removes_pending(struct uhmm_mm *mm)
{
	bool pending;

	if (pthread_rwlock_tryrdlock(&mm->read_gate))
		return true;		/* a handler is reading */
	pending = atomic_load(&mm->removes_unapplied);
	pthread_rwlock_unlock(&mm->read_gate);
	return pending;
}

void uhmm_mm_removes_settle(struct uhmm_mm *mm)
{
	uint64_t t0;
	int tries = 0;

	if (uhmm_uffd_is_handler() || !removes_pending(mm))
		return;
	t0 = uhmm_now_ns();
	while (removes_pending(mm) && !atomic_load(&mm->stop) &&
	       uhmm_now_ns() - t0 < 100000000ULL)
		uhmm_uffd_retry_wait(mm, &tries);
}

/* Wait until the handlers have processed every message read so far. */
void uhmm_mm_batch_barrier(struct uhmm_mm *mm)
{
	uint64_t target;

	if (uhmm_uffd_is_handler())
		return;
	pthread_mutex_lock(&mm->backlog_lock);
	target = mm->batch_start;
	while (mm->batch_done < target && !atomic_load(&mm->stop))
		pthread_cond_wait(&mm->batch_cond, &mm->backlog_lock);
	pthread_mutex_unlock(&mm->backlog_lock);
}
