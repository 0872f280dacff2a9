// SPDX-License-Identifier: MIT
/* fuzz_api.c - API sequence fuzzer: every 3 input bytes are one call on a
 * small managed range (CPU writes and reads, two sims: migrate both ways,
 * device read/write, exclusive, snapshot, release, re-create; DONTNEED;
 * range_fault through a notifier; calls with bad arguments), checked against
 * a per-page shadow of versions. A wrong byte, a wrong errno on bad input or
 * a crash is a finding. Single-threaded, so every input replays exactly.
 * mprotect steps run only with UHMM_FUZZ_MPROTECT=1 (a known hang). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>
#include "../stress/stress_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NP 32

static struct {
	struct uhmm_mm *mm;
	struct uhmm_sim *sim[2];
	uint8_t *mem;
	uint64_t ver[NP], next;
	bool ro[NP];
	struct uhmm_interval_notifier n;
	uint8_t buf[8 * ST_PAGE];
} f;

static bool on_invalidate(struct uhmm_interval_notifier *sub,
			  const struct uhmm_notifier_range *r, unsigned long seq)
{
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops nops = { .invalidate = on_invalidate };

#define FAIL(...)                                                            \
	do {                                                                 \
		fprintf(stderr, "fuzz_api: " __VA_ARGS__);                   \
		fputc('\n', stderr);                                         \
		abort();                                                     \
	} while (0)

static uint64_t A(unsigned int pg)
{
	return (uint64_t)(uintptr_t)(f.mem + (size_t)pg * ST_PAGE);
}

static void check_page(const void *p, unsigned int pg, const char *how)
{
	long bad = st_check(p, pg, f.ver[pg]);

	if (bad >= 0) {
		char what[96];

		st_describe(p, what, sizeof(what));
		FAIL("%s: page %u want version %llu, word %ld; holds %s", how, pg,
		     (unsigned long long)f.ver[pg], bad, what);
	}
}

static struct uhmm_sim *mk_sim(int i)
{
	UHMM_OPTS(sim_opts, o, .mem_type = i ? UHMM_SIM_COHERENT : UHMM_SIM_PRIVATE,
		  .capacity_pages = i ? 8 : 64, .evict_when_full = i);
	struct uhmm_sim *s = NULL;

	if (uhmm_sim_create(f.mm, &o, &s))
		FAIL("sim_create");
	return s;
}

static void bad_args(unsigned int which, unsigned int pg)
{
	struct uhmm_sim *s = f.sim[which & 1];
	int rc;

	switch (which % 6) {
	case 0: rc = uhmm_sim_read(s, A(pg) + 1, 1, f.buf); break;
	case 1: rc = uhmm_sim_migrate_to_dev(s, A(pg), 0); break;
	case 2: rc = uhmm_sim_write(s, A(pg), 1, NULL); break;
	case 3: rc = uhmm_sim_snapshot(s, A(pg), 0, f.buf); break;
	case 4: rc = uhmm_mm_manage(f.mm, f.mem, NP * ST_PAGE); break;	/* overlaps */
	default: rc = uhmm_mm_unmanage(f.mm, f.mem + 1, ST_PAGE); break;
	}
	if (which % 6 == 4 ? rc != -EEXIST : rc != -EINVAL)
		FAIL("bad-argument call %u returned %d", which % 6, rc);
}

static void step(uint8_t op, uint8_t a, uint8_t b)
{
	unsigned int pg = a % NP, n = 1 + b % 8, si = (b >> 4) & 1;
	struct uhmm_sim *s = f.sim[si];
	int rc;

	if (pg + n > NP)
		n = NP - pg;
	switch (op % 16) {
	case 0:		/* CPU write */
		for (unsigned int i = pg; i < pg + n; i++)
			if (!f.ro[i])
				st_fill(f.mem + i * ST_PAGE, i, f.ver[i] = ++f.next);
		break;
	case 1:		/* CPU read */
		for (unsigned int i = pg; i < pg + n; i++)
			check_page(f.mem + i * ST_PAGE, i, "cpu read");
		break;
	case 2:
		rc = uhmm_sim_migrate_to_dev(s, A(pg), n);
		if (rc < 0 || rc > (int)n)
			FAIL("migrate_to_dev returned %d", rc);
		break;
	case 3:
		rc = uhmm_sim_migrate_to_sys(s, A(pg), n);
		if (rc < 0 || rc > (int)n)
			FAIL("migrate_to_sys returned %d", rc);
		break;
	case 4: {	/* device write */
		bool ro = false;

		for (unsigned int i = 0; i < n; i++) {
			st_fill(f.buf + i * ST_PAGE, pg + i, f.next + 1 + i);
			ro |= f.ro[pg + i];
		}
		rc = uhmm_sim_write(s, A(pg), n, f.buf);
		if (rc == 0 && ro)
			FAIL("sim_write succeeded on read-only memory");
		if (rc == 0)
			for (unsigned int i = 0; i < n; i++)
				f.ver[pg + i] = f.next + 1 + i;
		else if (!(ro && rc == -EPERM))
			FAIL("sim_write returned %d", rc);
		f.next += n;
		break;
	}
	case 5:
		rc = uhmm_sim_read(s, A(pg), n, f.buf);
		if (rc)
			FAIL("sim_read returned %d", rc);
		for (unsigned int i = 0; i < n; i++)
			check_page(f.buf + i * ST_PAGE, pg + i, "sim read");
		break;
	case 6:
		uhmm_sim_exclusive(s, A(pg), n);
		break;
	case 7: {
		uint8_t prot[8];

		rc = uhmm_sim_snapshot(s, A(pg), n, prot);
		if (rc)
			FAIL("snapshot returned %d", rc);
		for (unsigned int i = 0; i < n; i++)
			if (prot[i] == UHMM_SIM_PROT_ERROR)
				FAIL("snapshot: ERROR for mapped page %u", pg + i);
		break;
	}
	case 8:
		rc = uhmm_madvise(f.mem + pg * ST_PAGE, n * ST_PAGE, MADV_DONTNEED);
		if (rc)
			FAIL("uhmm_madvise returned %d", rc);
		for (unsigned int i = pg; i < pg + n; i++)
			f.ver[i] = 0;
		break;
	case 9: {
		bool to_ro = !f.ro[pg];

		if (!getenv("UHMM_FUZZ_MPROTECT"))
			break;
		rc = uhmm_mprotect(f.mem + pg * ST_PAGE, n * ST_PAGE,
				   to_ro ? PROT_READ : PROT_READ | PROT_WRITE);
		if (rc)
			FAIL("uhmm_mprotect returned %d", rc);
		for (unsigned int i = pg; i < pg + n; i++)
			f.ro[i] = to_ro;
		break;
	}
	case 10: {	/* range_fault, read, through our notifier */
		uint64_t pfns[8];
		struct uhmm_range r = {
			.notifier = &f.n, .start = A(pg), .end = A(pg + n), .hmm_pfns = pfns,
			.default_flags = UHMM_PFN_REQ_FAULT,
		};

		for (int tries = 0; tries < 100; tries++) {
			r.notifier_seq = uhmm_interval_read_begin(&f.n);
			rc = uhmm_range_fault(&r);
			if (rc != -EBUSY)
				break;
		}
		if (rc)
			FAIL("range_fault returned %d", rc);
		for (unsigned int i = 0; i < n; i++)
			if (!(pfns[i] & UHMM_PFN_VALID) || (!!(pfns[i] & UHMM_PFN_WRITE) && f.ro[pg + i]))
				FAIL("range_fault entry %u = %#llx", i, (unsigned long long)pfns[i]);
		break;
	}
	case 11:
		bad_args(b, pg);
		break;
	case 12:
		if (uhmm_sim_release(s) < 0)
			FAIL("sim_release");
		break;
	case 13:
		uhmm_sim_destroy(s);
		f.sim[si] = mk_sim((int)si);
		break;
	case 14:
		rc = uhmm_sim_check_exclusive(s, A(pg), n);
		if (rc != 0 && rc != 1)
			FAIL("check_exclusive returned %d", rc);
		break;
	default:	/* device write then CPU read of the same page */
		step(4, a, b);
		step(1, a, b);
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	void *p;

	memset(&f, 0, sizeof(f));
	if (uhmm_mm_open(&f.mm, NULL))
		FAIL("mm_open");
	if (uhmm_mm_alloc(f.mm, NP * ST_PAGE, 0, &p))
		FAIL("mm_alloc");
	f.mem = p;
	if (uhmm_interval_notifier_insert(&f.n, f.mm, A(0), NP * ST_PAGE, &nops))
		FAIL("notifier_insert");
	f.sim[0] = mk_sim(0);
	f.sim[1] = mk_sim(1);
	for (size_t i = 0; i + 3 <= size && i < 3 * 256; i += 3)
		step(data[i], data[i + 1], data[i + 2]);
	for (unsigned int i = 0; i < NP; i++)
		check_page(f.mem + i * ST_PAGE, i, "final cpu read");
	uhmm_sim_destroy(f.sim[0]);
	uhmm_sim_destroy(f.sim[1]);
	uhmm_interval_notifier_remove(&f.n);
	uhmm_mprotect(f.mem, NP * ST_PAGE, PROT_READ | PROT_WRITE);
	uhmm_mm_free(f.mm, f.mem, NP * ST_PAGE);
	uhmm_mm_close(f.mm);
	return 0;
}
