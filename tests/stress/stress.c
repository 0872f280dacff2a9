// SPDX-License-Identifier: MIT
/* stress.c - seeded randomized stress of uhmm with a shadow copy: CPU threads
 * write and read managed pages while chaos threads migrate, take exclusive,
 * snapshot, DONTNEED, mprotect, remap, fork and re-create sims. --dax runs the
 * dax driver (stress_dax.c) instead. Public API: include/uhmm.h. */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uhmm.h>
#include "stress_util.h"

#ifdef UHMM_FAULT_INJECT
/* libuhmm's internal counter of injected failures (src/fault_inject.h) */
uint64_t uhmm_fi_stats(FILE *f);
#endif

int stress_dax_main(uint64_t seed, double seconds, int verbose);

/* Managed memory: NCHUNK separate mappings ("chunks") of CHUNK_PAGES pages. */
#define MAX_CHUNKS 256
#define MAX_SIMS 2
#define RING 8192

struct page {
	pthread_mutex_t lock;	/* held while the page's content and shadow change */
	uint64_t ver;		/* shadow: the version the page must hold (0 = zeros) */
	bool ro;		/* mprotect'ed read-only (by the mprotect op) */
};

struct chunk {
	/* read: any use of addr; write: remap (free + alloc) */
	pthread_rwlock_t lock;
	uint8_t *addr;
};

struct simslot {
	/* read: any use of sim; write: destroy / re-create */
	pthread_rwlock_t lock;
	struct uhmm_sim *sim;
	enum uhmm_sim_mem_type type;
};

/* one entry of the recent-operations ring, for failure reports */
struct opent {
	uint64_t t_us;
	uint32_t thread;
	uint32_t op;
	uint64_t first, npages;	/* global page indices */
	int64_t rc;
};

enum {
	OP_CPU_WRITE, OP_CPU_READ, OP_DEV_WRITE, OP_DEV_READ, OP_TO_DEV, OP_TO_SYS,
	OP_EXCL, OP_CHECK_EXCL, OP_SNAPSHOT, OP_DONTNEED, OP_DONTNEED_RAW,
	OP_MPROTECT, OP_FORK, OP_SIM_RECREATE, OP_REMAP, OP_RELEASE, OP_NR,
};

static struct st_tally tally[OP_NR] = {
	[OP_CPU_WRITE] = { .name = "cpu_write" },
	[OP_CPU_READ] = { .name = "cpu_read" },
	[OP_DEV_WRITE] = { .name = "sim_write" },
	[OP_DEV_READ] = { .name = "sim_read" },
	[OP_TO_DEV] = { .name = "migrate_to_dev" },
	[OP_TO_SYS] = { .name = "migrate_to_sys" },
	[OP_EXCL] = { .name = "exclusive" },
	[OP_CHECK_EXCL] = { .name = "check_exclusive" },
	[OP_SNAPSHOT] = { .name = "snapshot" },
	[OP_DONTNEED] = { .name = "uhmm_madvise" },
	[OP_DONTNEED_RAW] = { .name = "madvise(raw)" },
	[OP_MPROTECT] = { .name = "uhmm_mprotect" },
	[OP_FORK] = { .name = "fork" },
	[OP_SIM_RECREATE] = { .name = "sim_recreate" },
	[OP_REMAP] = { .name = "remap" },
	[OP_RELEASE] = { .name = "sim_release" },
};

static struct {
	uint64_t seed;
	double seconds;
	unsigned int cpu_threads, chaos_threads, nchunks, chunk_pages, nsims;
	unsigned int hang_sec;
	int verbose;
	bool no_fork;
	uint32_t skip;		/* bit per OP_*: operations turned off (--skip) */
	struct uhmm_mm *mm;
	struct page *pages;
	struct chunk chunks[MAX_CHUNKS];
	struct simslot sims[MAX_SIMS];
	_Atomic uint64_t next_ver;
	_Atomic bool stop;
	_Atomic uint64_t ops, bytes, mismatches, hangs, progress;
	pthread_mutex_t ring_lock;
	struct opent ring[RING];
	uint64_t ring_n;
	uint64_t t0;
	pthread_mutex_t report_lock;
} g;

static uint64_t npages_total(void)
{
	return (uint64_t)g.nchunks * g.chunk_pages;
}

static void ring_add(unsigned int th, unsigned int op, uint64_t first, uint64_t n, int64_t rc)
{
	pthread_mutex_lock(&g.ring_lock);
	g.ring[g.ring_n++ % RING] = (struct opent){
		.t_us = (st_now_ns() - g.t0) / 1000, .thread = th, .op = op,
		.first = first, .npages = n, .rc = rc,
	};
	pthread_mutex_unlock(&g.ring_lock);
}

/* Print the recent operations that touched @page (all when page == -1). */
static void ring_dump(uint64_t page, unsigned int max)
{
	unsigned int shown = 0;

	pthread_mutex_lock(&g.ring_lock);
	for (uint64_t i = g.ring_n; i-- > (g.ring_n > RING ? g.ring_n - RING : 0) && shown < max;) {
		struct opent *e = &g.ring[i % RING];

		if (page != UINT64_MAX && (page < e->first || page >= e->first + e->npages) &&
		    e->op != OP_FORK && e->op != OP_SIM_RECREATE)
			continue;
		fprintf(stderr, "    t=%" PRIu64 "us thread %u %s pages [%" PRIu64 ", +%" PRIu64
			") rc %" PRId64 "\n", e->t_us, e->thread, tally[e->op].name, e->first,
			e->npages, e->rc);
		shown++;
	}
	pthread_mutex_unlock(&g.ring_lock);
}

static void done_op(unsigned int op, int rc)
{
	st_count(&tally[op], rc);
	atomic_fetch_add_explicit(&g.ops, 1, memory_order_relaxed);
	atomic_store_explicit(&g.progress, st_now_ns(), memory_order_relaxed);
}

static uint8_t *page_addr(uint64_t gp)
{
	return g.chunks[gp / g.chunk_pages].addr + (gp % g.chunk_pages) * ST_PAGE;
}

/* Called with the page locked: check @data against the shadow. */
static bool verify(const void *data, uint64_t gp, const char *how)
{
	struct page *pg = &g.pages[gp];
	long bad = st_check(data, gp, pg->ver);
	char what[96];

	atomic_fetch_add_explicit(&g.bytes, ST_PAGE, memory_order_relaxed);
	if (bad < 0)
		return true;
	atomic_fetch_add(&g.mismatches, 1);
	st_describe(data, what, sizeof(what));
	pthread_mutex_lock(&g.report_lock);
	fprintf(stderr, "MISMATCH (%s) page %" PRIu64 " (chunk %" PRIu64 " +%" PRIu64
		") at %p: want version %" PRIu64 ", word %ld differs; holds %s%s\n",
		how, gp, gp / g.chunk_pages, gp % g.chunk_pages, (void *)page_addr(gp),
		pg->ver, bad, what, pg->ro ? " [read-only]" : "");
	fprintf(stderr, "  recent operations on this page (newest first):\n");
	ring_dump(gp, 24);
	pthread_mutex_unlock(&g.report_lock);
	return false;
}

/* ---------------------------------------------------------------------- */
/* CPU threads                                                            */

static void lock_pages(uint64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		pthread_mutex_lock(&g.pages[first + i].lock);
}

static void unlock_pages(uint64_t first, uint64_t n)
{
	for (uint64_t i = n; i-- > 0;)
		pthread_mutex_unlock(&g.pages[first + i].lock);
}

/* A random run of 1..max pages inside one chunk; returns the chunk. */
static unsigned int pick_run(struct st_rng *r, uint64_t max, uint64_t *first, uint64_t *n)
{
	unsigned int c = (unsigned int)st_below(r, g.nchunks);
	uint64_t len = st_range(r, 1, max < g.chunk_pages ? max : g.chunk_pages);
	uint64_t off = st_below(r, g.chunk_pages - len + 1);

	*first = (uint64_t)c * g.chunk_pages + off;
	*n = len;
	return c;
}

static unsigned int pick_sim(struct st_rng *r)
{
	return (unsigned int)st_below(r, g.nsims);
}

static void cpu_write(unsigned int th, uint64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint64_t gp = first + i;
		struct page *pg = &g.pages[gp];

		pthread_mutex_lock(&pg->lock);
		if (pg->ro) {
			/* writing would SIGSEGV: read instead */
			verify(page_addr(gp), gp, "cpu read of read-only page");
		} else {
			pg->ver = atomic_fetch_add(&g.next_ver, 1) + 1;
			st_fill(page_addr(gp), gp, pg->ver);
		}
		pthread_mutex_unlock(&pg->lock);
	}
	ring_add(th, OP_CPU_WRITE, first, n, 0);
	done_op(OP_CPU_WRITE, 0);
}

static void cpu_read(unsigned int th, uint64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		pthread_mutex_lock(&g.pages[first + i].lock);
		verify(page_addr(first + i), first + i, "cpu read");
		pthread_mutex_unlock(&g.pages[first + i].lock);
	}
	done_op(OP_CPU_READ, 0);
}

/* After a failed device write: the page must hold the old or the new version. */
static void settle_write(uint64_t gp, uint64_t newver)
{
	struct page *pg = &g.pages[gp];
	const uint8_t *p = page_addr(gp);

	if (st_check(p, gp, newver) < 0)
		pg->ver = newver;
	else
		verify(p, gp, "after failed sim_write");
}

static void dev_write(struct st_rng *r, unsigned int th, uint64_t first, uint64_t n, uint8_t *buf)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	uint64_t vers[16];
	bool any_ro = false;
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	lock_pages(first, n);
	for (uint64_t i = 0; i < n; i++) {
		vers[i] = atomic_fetch_add(&g.next_ver, 1) + 1;
		st_fill(buf + i * ST_PAGE, first + i, vers[i]);
		any_ro |= g.pages[first + i].ro;
	}
	if (ss->sim)
		rc = uhmm_sim_write(ss->sim, (uint64_t)(uintptr_t)page_addr(first), n, buf);
	if (rc == 0) {
		for (uint64_t i = 0; i < n; i++)
			g.pages[first + i].ver = vers[i];
	} else {
		if (rc == -EPERM && !any_ro) {
			pthread_mutex_lock(&g.report_lock);
			fprintf(stderr, "note: sim_write -EPERM on writable pages [%" PRIu64
				", +%" PRIu64 ")\n", first, n);
			pthread_mutex_unlock(&g.report_lock);
		}
		for (uint64_t i = 0; i < n && ss->sim; i++)
			settle_write(first + i, vers[i]);
	}
	unlock_pages(first, n);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, OP_DEV_WRITE, first, n, rc);
	done_op(OP_DEV_WRITE, rc);
}

static void dev_read(struct st_rng *r, unsigned int th, uint64_t first, uint64_t n, uint8_t *buf)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	lock_pages(first, n);
	if (ss->sim)
		rc = uhmm_sim_read(ss->sim, (uint64_t)(uintptr_t)page_addr(first), n, buf);
	if (rc == 0)
		for (uint64_t i = 0; i < n; i++)
			verify(buf + i * ST_PAGE, first + i, "sim read");
	unlock_pages(first, n);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, OP_DEV_READ, first, n, rc);
	done_op(OP_DEV_READ, rc);
}

static void *cpu_thread(void *arg)
{
	unsigned int th = (unsigned int)(uintptr_t)arg;
	struct st_rng r = { g.seed * 1000003 + th };
	uint8_t *buf = aligned_alloc(ST_PAGE, 16 * ST_PAGE);

	while (!atomic_load_explicit(&g.stop, memory_order_relaxed)) {
		uint64_t first, n, dice = st_below(&r, 100);
		unsigned int c = pick_run(&r, dice < 80 ? 4 : 16, &first, &n);

		if (g.skip & (1U << (dice < 45 ? OP_CPU_WRITE : dice < 80 ? OP_CPU_READ :
				     dice < 90 ? OP_DEV_WRITE : OP_DEV_READ)))
			continue;
		pthread_rwlock_rdlock(&g.chunks[c].lock);
		if (dice < 45)
			cpu_write(th, first, n);
		else if (dice < 80)
			cpu_read(th, first, n);
		else if (dice < 90)
			dev_write(&r, th, first, n, buf);
		else
			dev_read(&r, th, first, n, buf);
		pthread_rwlock_unlock(&g.chunks[c].lock);
	}
	free(buf);
	return NULL;
}

/* ---------------------------------------------------------------------- */
/* chaos threads                                                          */

static int sim_create_slot(struct simslot *ss, struct st_rng *r)
{
	UHMM_OPTS(sim_opts, o, .mem_type = ss->type,
		  .capacity_pages = st_below(r, 2) ? npages_total() / 2 : npages_total() * 2,
		  .evict_when_full = (int)st_below(r, 2));

	return uhmm_sim_create(g.mm, &o, &ss->sim);
}

static void op_migrate(struct st_rng *r, unsigned int th, unsigned int op, uint64_t first, uint64_t n)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	uint64_t addr = (uint64_t)(uintptr_t)page_addr(first);
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	if (ss->sim)
		rc = op == OP_TO_DEV ? uhmm_sim_migrate_to_dev(ss->sim, addr, n)
				     : uhmm_sim_migrate_to_sys(ss->sim, addr, n);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, op, first, n, rc);
	done_op(op, rc);
}

static void op_exclusive(struct st_rng *r, unsigned int th, unsigned int op, uint64_t first, uint64_t n)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	uint64_t addr = (uint64_t)(uintptr_t)page_addr(first);
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	if (ss->sim)
		rc = op == OP_EXCL ? uhmm_sim_exclusive(ss->sim, addr, n)
				   : uhmm_sim_check_exclusive(ss->sim, addr, n);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, op, first, n, rc);
	done_op(op, rc);
}

static void op_snapshot(struct st_rng *r, unsigned int th, uint64_t first, uint64_t n)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	uint8_t prot[256];
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	if (ss->sim)
		rc = uhmm_sim_snapshot(ss->sim, (uint64_t)(uintptr_t)page_addr(first), n, prot);
	pthread_rwlock_unlock(&ss->lock);
	/* every page is mapped: ERROR would be wrong */
	for (uint64_t i = 0; rc == 0 && i < n; i++)
		if (prot[i] == UHMM_SIM_PROT_ERROR) {
			pthread_mutex_lock(&g.report_lock);
			fprintf(stderr, "note: snapshot says ERROR for mapped page %" PRIu64 "\n",
				first + i);
			pthread_mutex_unlock(&g.report_lock);
			break;
		}
	ring_add(th, OP_SNAPSHOT, first, n, rc);
	done_op(OP_SNAPSHOT, rc);
}

static void op_dontneed(unsigned int th, unsigned int op, uint64_t first, uint64_t n)
{
	int rc;

	lock_pages(first, n);
	if (op == OP_DONTNEED)
		rc = uhmm_madvise(page_addr(first), n * ST_PAGE, MADV_DONTNEED);
	else
		rc = madvise(page_addr(first), n * ST_PAGE, MADV_DONTNEED) ? -errno : 0;
	if (rc == 0)
		for (uint64_t i = 0; i < n; i++)
			g.pages[first + i].ver = 0;
	ring_add(th, op, first, n, rc);
	unlock_pages(first, n);
	done_op(op, rc);
}

/* Toggle: a range whose first page is read-only becomes writable, else read-only. */
static void op_mprotect(unsigned int th, uint64_t first, uint64_t n)
{
	bool to_ro;
	int rc;

	lock_pages(first, n);
	to_ro = !g.pages[first].ro;
	rc = uhmm_mprotect(page_addr(first), n * ST_PAGE,
			   to_ro ? PROT_READ : PROT_READ | PROT_WRITE);
	if (rc == 0)
		for (uint64_t i = 0; i < n; i++)
			g.pages[first + i].ro = to_ro;
	ring_add(th, OP_MPROTECT, first, n, rc);
	unlock_pages(first, n);
	done_op(OP_MPROTECT, rc);
}

/* Child: compare every page with the shadow copied at fork; no locks, no malloc. */
static void fork_child(void)
{
	unsigned long bad = 0;

	for (uint64_t gp = 0; gp < npages_total(); gp++) {
		long w = st_check(page_addr(gp), gp, g.pages[gp].ver);

		if (w >= 0) {
			char what[96], line[256];
			int len;

			st_describe(page_addr(gp), what, sizeof(what));
			len = snprintf(line, sizeof(line),
				       "MISMATCH (fork child) page %" PRIu64 ": want version %"
				       PRIu64 ", word %ld differs; holds %s\n",
				       gp, g.pages[gp].ver, w, what);
			if (bad++ < 8 && write(2, line, (size_t)len) < 0)
				break;
			if (bad == 1) {
				/* one thread here: a lock another thread held at the
				 * fork would never be released */
				pthread_mutex_init(&g.ring_lock, NULL);
				fprintf(stderr, "  recent operations on this page (newest first):\n");
				ring_dump(gp, 24);
			}
		}
	}
	_exit(bad ? 1 : 0);
}

static void op_fork(unsigned int th)
{
	uint64_t t0, n = npages_total();
	int status = 0, rc = 0;
	pid_t pid;

	for (unsigned int c = 0; c < g.nchunks; c++)
		pthread_rwlock_rdlock(&g.chunks[c].lock);
	lock_pages(0, n);
	pid = fork();
	if (pid == 0)
		fork_child();
	unlock_pages(0, n);
	for (unsigned int c = g.nchunks; c-- > 0;)
		pthread_rwlock_unlock(&g.chunks[c].lock);
	if (pid < 0) {
		rc = -errno;
		goto out;
	}
	t0 = st_now_ns();
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		if (w == pid)
			break;
		if (st_now_ns() - t0 > (uint64_t)g.hang_sec * 1000000000ULL) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			atomic_fetch_add(&g.hangs, 1);
			fprintf(stderr, "HANG: fork child did not finish in %u s\n", g.hang_sec);
			rc = -ETIMEDOUT;
			goto out;
		}
		usleep(2000);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		atomic_fetch_add(&g.bytes, n * ST_PAGE);
	} else {
		atomic_fetch_add(&g.mismatches, 1);
		fprintf(stderr, "fork child failed: status %#x\n", status);
		rc = -EIO;
	}
out:
	ring_add(th, OP_FORK, 0, n, rc);
	done_op(OP_FORK, rc);
}

static void op_sim_recreate(struct st_rng *r, unsigned int th)
{
	unsigned int i = pick_sim(r);
	struct simslot *ss = &g.sims[i];
	int rc;

	pthread_rwlock_wrlock(&ss->lock);
	uhmm_sim_destroy(ss->sim);
	ss->sim = NULL;
	rc = sim_create_slot(ss, r);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, OP_SIM_RECREATE, i, 0, rc);
	done_op(OP_SIM_RECREATE, rc);
}

static void op_release(struct st_rng *r, unsigned int th)
{
	struct simslot *ss = &g.sims[pick_sim(r)];
	int rc = -ENODEV;

	pthread_rwlock_rdlock(&ss->lock);
	if (ss->sim)
		rc = uhmm_sim_release(ss->sim);
	pthread_rwlock_unlock(&ss->lock);
	ring_add(th, OP_RELEASE, 0, 0, rc);
	done_op(OP_RELEASE, rc);
}

/* Free a chunk and allocate a new one (often at the same address): all zero. */
static void op_remap(struct st_rng *r, unsigned int th)
{
	unsigned int c = (unsigned int)st_below(r, g.nchunks);
	size_t len = (size_t)g.chunk_pages * ST_PAGE;
	uint64_t first = (uint64_t)c * g.chunk_pages;
	void *p = NULL;
	int rc;

	pthread_rwlock_wrlock(&g.chunks[c].lock);
	rc = uhmm_mm_free(g.mm, g.chunks[c].addr, len);
	if (rc == 0) {
		rc = uhmm_mm_alloc(g.mm, len, 0, &p);
		if (rc) {
			fprintf(stderr, "FATAL: uhmm_mm_alloc after free: %d\n", rc);
			abort();
		}
		g.chunks[c].addr = p;
		for (uint64_t i = 0; i < g.chunk_pages; i++) {
			g.pages[first + i].ver = 0;
			g.pages[first + i].ro = false;
		}
	}
	ring_add(th, OP_REMAP, first, g.chunk_pages, rc);
	pthread_rwlock_unlock(&g.chunks[c].lock);
	done_op(OP_REMAP, rc);
}

/* The chaos operation a dice value selects (mirrors chaos_thread). */
static unsigned int chaos_op(uint64_t dice)
{
	static const struct { uint8_t below, op; } map[] = {
		{ 2, OP_FORK }, { 4, OP_SIM_RECREATE }, { 6, OP_RELEASE }, { 9, OP_REMAP },
		{ 35, OP_TO_DEV }, { 50, OP_TO_SYS }, { 60, OP_EXCL }, { 63, OP_CHECK_EXCL },
		{ 73, OP_SNAPSHOT }, { 83, OP_DONTNEED }, { 87, OP_DONTNEED_RAW },
		{ 100, OP_MPROTECT },
	};

	for (unsigned int i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (dice < map[i].below)
			return map[i].op;
	return OP_MPROTECT;
}

static void *chaos_thread(void *arg)
{
	unsigned int th = (unsigned int)(uintptr_t)arg;
	struct st_rng r = { g.seed * 1000003 + th };
	uint64_t last_fork = 0, last_recreate = 0;

	while (!atomic_load_explicit(&g.stop, memory_order_relaxed)) {
		uint64_t first, n, dice = st_below(&r, 100), now = st_now_ns();
		unsigned int c;

		/* whole-process operations, rate limited */
		if (dice < 9 && (g.skip & (1U << chaos_op(dice))))
			continue;
		if (dice < 2 && !g.no_fork && now - last_fork > 200000000ULL) {
			op_fork(th);
			last_fork = now;
			continue;
		}
		if (dice >= 2 && dice < 4 && now - last_recreate > 100000000ULL) {
			op_sim_recreate(&r, th);
			last_recreate = now;
			continue;
		}
		if (dice >= 4 && dice < 6) {
			op_release(&r, th);
			continue;
		}
		if (dice >= 6 && dice < 9) {
			op_remap(&r, th);
			continue;
		}
		c = pick_run(&r, dice < 50 ? g.chunk_pages : 16, &first, &n);
		if (g.skip & (1U << chaos_op(dice)))
			continue;
		pthread_rwlock_rdlock(&g.chunks[c].lock);
		if (dice < 35)
			op_migrate(&r, th, OP_TO_DEV, first, n);
		else if (dice < 50)
			op_migrate(&r, th, OP_TO_SYS, first, n);
		else if (dice < 60)
			op_exclusive(&r, th, OP_EXCL, first, n);
		else if (dice < 63)
			op_exclusive(&r, th, OP_CHECK_EXCL, first, n);
		else if (dice < 73)
			op_snapshot(&r, th, first, n);
		else if (dice < 83)
			op_dontneed(th, OP_DONTNEED, first, n);
		else if (dice < 87)
			op_dontneed(th, OP_DONTNEED_RAW, first, n);
		else
			op_mprotect(th, first, n);
		pthread_rwlock_unlock(&g.chunks[c].lock);
		if (g.verbose > 1)
			usleep(100);
	}
	return NULL;
}

/* ---------------------------------------------------------------------- */

/* Single-threaded: every page by the CPU, then by each sim after a migration. */
static void final_verify(void)
{
	uint64_t n = npages_total();
	uint8_t *buf = aligned_alloc(ST_PAGE, g.chunk_pages * ST_PAGE);

	for (uint64_t gp = 0; gp < n; gp++)
		verify(page_addr(gp), gp, "final cpu read");
	for (unsigned int s = 0; s < g.nsims; s++) {
		struct uhmm_sim *sim = g.sims[s].sim;

		if (!sim)
			continue;
		for (unsigned int c = 0; c < g.nchunks; c++) {
			uint64_t addr = (uint64_t)(uintptr_t)g.chunks[c].addr;
			uint64_t first = (uint64_t)c * g.chunk_pages;
			int rc;

			uhmm_mprotect(g.chunks[c].addr, g.chunk_pages * ST_PAGE,
				      PROT_READ | PROT_WRITE);
			for (uint64_t i = 0; i < g.chunk_pages; i++)
				g.pages[first + i].ro = false;
			uhmm_sim_migrate_to_dev(sim, addr, g.chunk_pages);
			rc = uhmm_sim_read(sim, addr, g.chunk_pages, buf);
			if (rc) {
				fprintf(stderr, "final sim_read of chunk %u: %d\n", c, rc);
				atomic_fetch_add(&g.mismatches, 1);
				continue;
			}
			for (uint64_t i = 0; i < g.chunk_pages; i++)
				verify(buf + i * ST_PAGE, first + i, "final sim read");
		}
	}
	free(buf);
}

static void log_stderr(enum uhmm_log_level level, const char *msg)
{
	fprintf(stderr, "uhmm[%d]: %s\n", (int)level, msg);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: stress [--duration SEC] [--threads N] [--chaos N] [--chunks N]\n"
		"              [--chunk-pages N] [--sims 1|2] [--no-fork] [--hang SEC]\n"
		"              [--skip OP,OP...] [--dax] [-v]\n"
		"OP names are those of the result table (cpu_write, fork, remap, ...).\n"
		"UHMM_SEED=<n> replays a seed; SECONDS=<n> sets the duration.\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "duration", required_argument, NULL, 'd' },
		{ "threads", required_argument, NULL, 't' },
		{ "chaos", required_argument, NULL, 'c' },
		{ "chunks", required_argument, NULL, 'n' },
		{ "chunk-pages", required_argument, NULL, 'p' },
		{ "sims", required_argument, NULL, 's' },
		{ "hang", required_argument, NULL, 'H' },
		{ "no-fork", no_argument, NULL, 'F' },
		{ "dax", no_argument, NULL, 'D' },
		{ "skip", required_argument, NULL, 'S' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	pthread_t th[64];
	unsigned int nth = 0;
	bool dax = false;
	const char *env;
	uint64_t leaks = 0;
	int c, ret;

	g.seconds = 10;
	g.cpu_threads = 2;
	g.chaos_threads = 2;
	g.nchunks = 16;
	g.chunk_pages = 64;
	g.nsims = 2;
	g.hang_sec = 60;
	if ((env = getenv("SECONDS")) && *env)
		g.seconds = atof(env);
	while ((c = getopt_long(argc, argv, "d:t:c:n:p:s:H:FDvh", lo, NULL)) != -1) {
		switch (c) {
		case 'd': g.seconds = atof(optarg); break;
		case 't': g.cpu_threads = (unsigned int)atoi(optarg); break;
		case 'c': g.chaos_threads = (unsigned int)atoi(optarg); break;
		case 'n': g.nchunks = (unsigned int)atoi(optarg); break;
		case 'p': g.chunk_pages = (unsigned int)atoi(optarg); break;
		case 's': g.nsims = (unsigned int)atoi(optarg); break;
		case 'H': g.hang_sec = (unsigned int)atoi(optarg); break;
		case 'F': g.no_fork = true; break;
		case 'D': dax = true; break;
		case 'S':
			for (char *t = strtok(optarg, ","); t; t = strtok(NULL, ","))
				for (unsigned int i = 0; i < OP_NR; i++)
					if (!strcmp(t, tally[i].name))
						g.skip |= 1U << i;
			break;
		case 'v': g.verbose++; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (g.cpu_threads + g.chaos_threads > 64 || !g.nchunks || g.nchunks > MAX_CHUNKS ||
	    g.chunk_pages < 16 || g.chunk_pages > 4096 || !g.nsims || g.nsims > MAX_SIMS) {
		usage(stderr);
		return 2;
	}
	if ((env = getenv("UHMM_SEED")) && *env)
		g.seed = strtoull(env, NULL, 0);
	else
		g.seed = (st_now_ns() ^ ((uint64_t)getpid() << 32)) % 1000000007ULL;
	printf("seed %" PRIu64 " (replay: UHMM_SEED=%" PRIu64 ")\n", g.seed, g.seed);
	fflush(stdout);
	if (g.verbose)
		uhmm_set_log(log_stderr, g.verbose > 1 ? UHMM_LOG_DEBUG : UHMM_LOG_WARN);
	if (dax)
		return stress_dax_main(g.seed, g.seconds, g.verbose);

	ret = uhmm_mm_open(&g.mm, NULL);
	if (ret) {
		fprintf(stderr, "uhmm_mm_open: %d\n", ret);
		return 2;
	}
	pthread_mutex_init(&g.ring_lock, NULL);
	pthread_mutex_init(&g.report_lock, NULL);
	g.pages = calloc(npages_total(), sizeof(*g.pages));
	for (uint64_t i = 0; i < npages_total(); i++)
		pthread_mutex_init(&g.pages[i].lock, NULL);
	for (unsigned int i = 0; i < g.nchunks; i++) {
		void *p;

		pthread_rwlock_init(&g.chunks[i].lock, NULL);
		ret = uhmm_mm_alloc(g.mm, (size_t)g.chunk_pages * ST_PAGE, 0, &p);
		if (ret) {
			fprintf(stderr, "uhmm_mm_alloc: %d\n", ret);
			return 2;
		}
		g.chunks[i].addr = p;
	}
	{
		struct st_rng r = { g.seed };

		for (unsigned int i = 0; i < g.nsims; i++) {
			pthread_rwlock_init(&g.sims[i].lock, NULL);
			g.sims[i].type = i ? UHMM_SIM_COHERENT : UHMM_SIM_PRIVATE;
			ret = sim_create_slot(&g.sims[i], &r);
			if (ret) {
				fprintf(stderr, "uhmm_sim_create: %d\n", ret);
				return 2;
			}
		}
	}
	printf("stress: %" PRIu64 " pages in %u chunks, %u cpu + %u chaos threads, %u sims, %.0f s\n",
	       npages_total(), g.nchunks, g.cpu_threads, g.chaos_threads, g.nsims, g.seconds);
	fflush(stdout);
	g.t0 = st_now_ns();
	atomic_store(&g.progress, g.t0);
	for (unsigned int i = 0; i < g.cpu_threads; i++, nth++)
		pthread_create(&th[nth], NULL, cpu_thread, (void *)(uintptr_t)nth);
	for (unsigned int i = 0; i < g.chaos_threads; i++, nth++)
		pthread_create(&th[nth], NULL, chaos_thread, (void *)(uintptr_t)nth);
	/* watchdog: the run ends on time, or fails when nothing completes for hang_sec */
	for (;;) {
		uint64_t now = st_now_ns();

		usleep(50000);
		if (!atomic_load(&g.stop) && now - g.t0 >= (uint64_t)(g.seconds * 1e9))
			atomic_store(&g.stop, true);
		if (now > atomic_load(&g.progress) &&
		    now - atomic_load(&g.progress) > (uint64_t)g.hang_sec * 1000000000ULL) {
			fprintf(stderr, "HANG: no operation completed for %u s; last operations:\n",
				g.hang_sec);
			ring_dump(UINT64_MAX, 40);
			printf("result: ops %" PRIu64 " bytes_verified %" PRIu64
			       " mismatches %" PRIu64 " hangs 1 (seed %" PRIu64 ")\n",
			       atomic_load(&g.ops), atomic_load(&g.bytes),
			       atomic_load(&g.mismatches), g.seed);
			fflush(stdout);
			_exit(1);
		}
		if (atomic_load(&g.stop)) {
			bool all = true;

			for (unsigned int i = 0; i < nth; i++) {
				if (!th[i])
					continue;	/* joined on an earlier pass */
				if (pthread_tryjoin_np(th[i], NULL) == 0)
					th[i] = 0;
				else
					all = false;
			}
			if (all)
				break;
		}
	}
	final_verify();
	for (unsigned int i = 0; i < g.nsims; i++) {
		struct uhmm_sim_counters cnt;

		/* every page is back in RAM: device memory in use must be 0 */
		uhmm_sim_release(g.sims[i].sim);
		uhmm_sim_counters(g.sims[i].sim, &cnt);
		if (cnt.dev_pages) {
			fprintf(stderr, "LEAK: sim %u holds %" PRIu64 " device pages after release\n",
				i, cnt.dev_pages);
			leaks += cnt.dev_pages;
		}
		uhmm_sim_destroy(g.sims[i].sim);
	}
	for (unsigned int i = 0; i < g.nchunks; i++)
		uhmm_mm_free(g.mm, g.chunks[i].addr, (size_t)g.chunk_pages * ST_PAGE);
	uhmm_mm_close(g.mm);
	st_print_tally(stdout, tally, OP_NR);
#ifdef UHMM_FAULT_INJECT
	printf("faults injected: %" PRIu64 "\n", uhmm_fi_stats(stdout));
#endif
	printf("result: ops %" PRIu64 " bytes_verified %" PRIu64 " mismatches %" PRIu64
	       " hangs %" PRIu64 " leaks %" PRIu64 " (seed %" PRIu64 ", %.1f s)\n",
	       atomic_load(&g.ops), atomic_load(&g.bytes), atomic_load(&g.mismatches),
	       atomic_load(&g.hangs), leaks, g.seed, (st_now_ns() - g.t0) / 1e9);
	for (uint64_t i = 0; i < npages_total(); i++)
		pthread_mutex_destroy(&g.pages[i].lock);
	free(g.pages);
	return atomic_load(&g.mismatches) || atomic_load(&g.hangs) || leaks ? 1 : 0;
}
