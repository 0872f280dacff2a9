// SPDX-License-Identifier: MIT
/* mm.c - struct uhmm_mm: managed ranges, the CPU entries table, the mapping
 * wrappers (uhmm_munmap...) and fork. API in include/uhmm/mm.h; the
 * userfaultfd side is in uffd.c. */
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <unistd.h>
#include "compat.h"
#include "fault_inject.h"
#include "mm_internal.h"

#define TMPFS_MAGIC_ 0x01021994
#define HUGETLBFS_MAGIC_ 0x958458f6

pthread_mutex_t uhmm_mm_list_lock = PTHREAD_MUTEX_INITIALIZER;
struct uhmm_mm *uhmm_mm_list;

static __thread bool tls_forking;

/* ---------------------------------------------------------------------- */
/* kernel mappings                                                         */

static int vma_query_maps(uint64_t addr, struct vma_info *out)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	int rc = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e, ino;
		char perms[8] = "";
		int n = 0;

		if (sscanf(line, "%lx-%lx %7s %*x %*x:%*x %lu %n", &s, &e, perms,
			   &ino, &n) < 4 || e <= addr)
			continue;
		out->start = s;
		out->end = e;
		out->prot = (perms[0] == 'r' ? PROT_READ : 0) |
			    (perms[1] == 'w' ? PROT_WRITE : 0) |
			    (perms[2] == 'x' ? PROT_EXEC : 0);
		out->shared = perms[3] == 's';
		out->file = ino != 0;
		out->page_size = UHMM_PAGE_SIZE;
		rc = 0;
		break;
	}
	fclose(f);
	return rc;
}

int uhmm_vma_query(struct uhmm_mm *mm, uint64_t addr, struct vma_info *out)
{
	struct procmap_query q = {
		.size = sizeof(q),
		.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
		.query_addr = addr,
	};

	if (!(mm->features & UHMM_FEAT_PROCMAP_QUERY))
		return vma_query_maps(addr, out);
	if (ioctl(mm->maps_fd, PROCMAP_QUERY, &q))
		return -errno;
	UHMM_KERNEL_WROTE(&q, sizeof(q));
	out->start = q.vma_start;
	out->end = q.vma_end;
	out->prot = (q.vma_flags & PROCMAP_QUERY_VMA_READABLE ? PROT_READ : 0) |
		    (q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE ? PROT_WRITE : 0) |
		    (q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE ? PROT_EXEC : 0);
	out->shared = q.vma_flags & PROCMAP_QUERY_VMA_SHARED;
	out->file = q.inode != 0;
	out->page_size = q.vma_page_size ? q.vma_page_size : UHMM_PAGE_SIZE;
	return 0;
}

/* What kind of managed range a kernel mapping can be, or -EOPNOTSUPP. */
static int vma_classify(const struct vma_info *vi, enum vma_kind *kind)
{
	char link[64];
	struct statfs sf;
	int fd, rc;

	if (vi->page_size > UHMM_PAGE_SIZE) {
		*kind = VMA_HUGETLB;
		return 0;
	}
	if (!vi->file) {
		if (vi->shared)
			return -EOPNOTSUPP;	/* shared anonymous: shmem */
		*kind = VMA_ANON;
		return 0;
	}
	if (!vi->shared)
		return -EOPNOTSUPP;
	snprintf(link, sizeof(link), "/proc/self/map_files/%" PRIx64 "-%" PRIx64,
		 vi->start, vi->end);
	fd = open(link, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -EOPNOTSUPP;
	rc = fstatfs(fd, &sf);
	close(fd);
	if (rc || (sf.f_type != TMPFS_MAGIC_ && sf.f_type != HUGETLBFS_MAGIC_))
		return -EOPNOTSUPP;	/* page cache of a real file */
	*kind = sf.f_type == HUGETLBFS_MAGIC_ ? VMA_HUGETLB : VMA_SHMEM;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* managed ranges and the entries table (mm->lock held)                   */

static size_t vma_index(struct uhmm_mm *mm, uint64_t addr)
{
	size_t lo = 0, hi = mm->nr_vmas;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (mm->vmas[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;	/* first vma with end > addr */
}

struct mm_vma *uhmm_vma_find(struct uhmm_mm *mm, uint64_t addr)
{
	size_t i = vma_index(mm, addr);

	uhmm_lockdep_assert_held(&mm->lock);
	if (i < mm->nr_vmas && mm->vmas[i].start <= addr)
		return &mm->vmas[i];
	return NULL;
}

bool uhmm_vma_ents_alloc(struct mm_vma *v)
{
	v->ents = uhmm_calloc_huge((v->end - v->start) >> UHMM_PAGE_SHIFT,
				   sizeof(uint64_t));
	return v->ents != NULL;
}

static int vma_insert(struct uhmm_mm *mm, const struct mm_vma *nv)
{
	size_t i = vma_index(mm, nv->start);

	if (mm->nr_vmas == mm->cap_vmas) {
		size_t cap = mm->cap_vmas ? mm->cap_vmas * 2 : 16;
		struct mm_vma *n = realloc(mm->vmas, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		mm->vmas = n;
		mm->cap_vmas = cap;
	}
	memmove(&mm->vmas[i + 1], &mm->vmas[i], (mm->nr_vmas - i) * sizeof(*nv));
	mm->vmas[i] = *nv;
	mm->nr_vmas++;
	return 0;
}

/* Split the vma containing addr so that a vma starts at addr. */
static int vma_split(struct uhmm_mm *mm, uint64_t addr)
{
	struct mm_vma *v = uhmm_vma_find(mm, addr), tail;
	uint64_t head_pages;

	if (!v || v->start == addr)
		return 0;
	head_pages = (addr - v->start) >> UHMM_PAGE_SHIFT;
	tail = *v;
	tail.start = addr;
	tail.ents = NULL;
	tail.nents = 0;
	if (v->ents && v->nents) {
		uint64_t n = (v->end - addr) >> UHMM_PAGE_SHIFT;

		tail.ents = uhmm_calloc_huge(n, sizeof(uint64_t));
		if (!tail.ents)
			return -ENOMEM;
		memcpy(tail.ents, v->ents + head_pages, n * sizeof(uint64_t));
		for (uint64_t i = 0; i < n; i++)
			tail.nents += tail.ents[i] != 0;
		v->nents -= tail.nents;
	}
	v->end = addr;
	return vma_insert(mm, &tail);
}

static void vma_remove_at(struct uhmm_mm *mm, size_t i)
{
	mm->nr_ents -= mm->vmas[i].nents;
	free(mm->vmas[i].ents);
	memmove(&mm->vmas[i], &mm->vmas[i + 1],
		(mm->nr_vmas - i - 1) * sizeof(mm->vmas[0]));
	mm->nr_vmas--;
}

struct put_list {
	struct uhmm_page **pages;
	struct uhmm_excl **excl;
	size_t np, nx;
};

static void put_list_add(struct put_list *pl, uint64_t e)
{
	if (ENT_STATE(e) == ENT_DEVICE) {
		struct uhmm_page **n = realloc(pl->pages, (pl->np + 1) * sizeof(*n));

		if (n) {
			pl->pages = n;
			pl->pages[pl->np++] = ENT_PTR(e);
		}
	} else if (ENT_STATE(e) == ENT_EXCLUSIVE) {
		struct uhmm_excl **n = realloc(pl->excl, (pl->nx + 1) * sizeof(*n));

		if (n) {
			pl->excl = n;
			pl->excl[pl->nx++] = ENT_PTR(e);
		}
	}
}

UHMM_HIDDEN void uhmm_excl_free(struct uhmm_excl *x);

static void put_list_run(struct put_list *pl)
{
	for (size_t i = 0; i < pl->np; i++)
		uhmm_page_put(pl->pages[i]);
	for (size_t i = 0; i < pl->nx; i++)
		uhmm_excl_free(pl->excl[i]);
	free(pl->pages);
	free(pl->excl);
}

/*
 * [start, end) was unmapped (or its pages dropped, clear_only): device copies
 * die with it, as in the kernel. Migrating entries are left to their
 * migration, which notices that its entry changed.
 */
void uhmm_mm_apply_unmap(struct uhmm_mm *mm, uint64_t start, uint64_t end,
			 bool clear_only)
{
	struct put_list pl = { 0 };

	mm_lock(mm);
	if (!clear_only) {
		vma_split(mm, start);
		vma_split(mm, end);
	}
	for (size_t i = vma_index(mm, start); i < mm->nr_vmas && mm->vmas[i].start < end;) {
		struct mm_vma *v = &mm->vmas[i];
		uint64_t s = UHMM_MAX(start, v->start), e = UHMM_MIN(end, v->end);

		if (v->ents && v->nents)
			for (uint64_t a = s; a < e; a += UHMM_PAGE_SIZE) {
				uint64_t *p = uhmm_vma_ent(v, a, false);

				if (*p) {
					put_list_add(&pl, *p);
					uhmm_ent_set(mm, v, a, 0);
				}
			}

		if (!clear_only && v->start >= start && v->end <= end)
			vma_remove_at(mm, i);
		else
			i++;
	}
	mm_unlock(mm);
	put_list_run(&pl);
}

/* mremap moved [from, from + len) to [to, to + len): entries move along. */
void uhmm_mm_apply_remap(struct uhmm_mm *mm, uint64_t from, uint64_t to,
			 uint64_t len)
{
	struct mm_vma *moved = NULL;
	size_t nm = 0, first;

	mm_lock(mm);
	vma_split(mm, from);
	vma_split(mm, from + len);
	first = vma_index(mm, from);
	while (first + nm < mm->nr_vmas && mm->vmas[first + nm].start < from + len)
		nm++;
	if (nm)
		moved = malloc(nm * sizeof(*moved));
	if (moved) {
		memcpy(moved, &mm->vmas[first], nm * sizeof(*moved));
		for (size_t i = 0; i < nm; i++)
			mm->nr_ents -= moved[i].nents;
		memmove(&mm->vmas[first], &mm->vmas[first + nm],
			(mm->nr_vmas - first - nm) * sizeof(mm->vmas[0]));
		mm->nr_vmas -= nm;
		for (size_t i = 0; i < nm; i++) {
			moved[i].start += to - from;
			moved[i].end += to - from;
			if (vma_insert(mm, &moved[i]) == 0)
				mm->nr_ents += moved[i].nents;
			else
				free(moved[i].ents);
		}
		free(moved);
	}
	mm_unlock(mm);
}

/* ---------------------------------------------------------------------- */
/* suppression of events the caller has already announced                 */

void uhmm_mm_suppress_add(struct uhmm_mm *mm, uint8_t event, uint64_t start,
			  uint64_t end)
{
	mm_lock(mm);
	if (mm->nr_suppress < MM_MAX_SUPPRESS)
		mm->suppress[mm->nr_suppress++] =
			(struct mm_suppress){ event, start, end };
	mm_unlock(mm);
}

bool uhmm_mm_suppressed(struct uhmm_mm *mm, uint8_t event, uint64_t start,
			uint64_t end)
{
	bool hit = false;

	mm_lock(mm);
	for (unsigned int i = 0; i < mm->nr_suppress; i++) {
		struct mm_suppress *s = &mm->suppress[i];

		if (s->event == event && start >= s->start && end <= s->end) {
			hit = true;
			break;
		}
	}
	mm_unlock(mm);
	return hit;
}

bool uhmm_mm_dropping_locked(struct uhmm_mm *mm, uint64_t addr)
{
	uhmm_lockdep_assert_held(&mm->lock);
	for (unsigned int i = 0; i < mm->nr_suppress; i++)
		if (mm->suppress[i].event == UFFD_EVENT_REMOVE &&
		    addr >= mm->suppress[i].start && addr < mm->suppress[i].end)
			return true;
	return false;
}

void uhmm_mm_zap_note_locked(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct mm_zap *z;

	uhmm_lockdep_assert_held(&mm->lock);
	if (mm->nr_zap < MM_MAX_ZAP) {
		mm->zap[mm->nr_zap++] = (struct mm_zap){ start, end, uhmm_now_ns() };
		return;
	}
	/* full: widen the newest record (more pages wait, none is missed) */
	z = &mm->zap[MM_MAX_ZAP - 1];
	z->start = UHMM_MIN(z->start, start);
	z->end = UHMM_MAX(z->end, end);
	z->read_ns = uhmm_now_ns();
}

bool uhmm_mm_zap_pending_locked(struct uhmm_mm *mm, uint64_t addr)
{
	unsigned char vec = 0;
	uint64_t now;
	bool in = false;

	uhmm_lockdep_assert_held(&mm->lock);
	if (!mm->nr_zap)
		return false;
	now = uhmm_now_ns();
	for (unsigned int i = 0; i < mm->nr_zap;) {
		struct mm_zap *z = &mm->zap[i];

		if (now - z->read_ns > MM_ZAP_EXPIRE_NS) {
			*z = mm->zap[--mm->nr_zap];
			continue;
		}
		in |= addr >= z->start && addr < z->end;
		i++;
	}
	/* absent: nothing left to zap here (a hole migrates as zeros) */
	return in && mincore((void *)(uintptr_t)addr, UHMM_PAGE_SIZE, &vec) == 0 && (vec & 1);
}

static void suppress_del(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	mm_lock(mm);
	for (unsigned int i = 0; i < mm->nr_suppress;) {
		if (mm->suppress[i].start == start && mm->suppress[i].end == end)
			mm->suppress[i] = mm->suppress[--mm->nr_suppress];
		else
			i++;
	}
	mm_unlock(mm);
}

static bool mm_overlaps(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	size_t i;
	bool r;

	mm_lock(mm);
	i = vma_index(mm, start);
	r = i < mm->nr_vmas && mm->vmas[i].start < end;
	mm_unlock(mm);
	return r;
}

/* ---------------------------------------------------------------------- */
/* device pages seen from the CPU                                          */

__thread struct uhmm_wake_defer uhmm_wake_defer;
__thread unsigned int uhmm_tls_mm_locked;

int uhmm_device_fault(struct uhmm_mm *mm, uint64_t addr, uint64_t end, bool write, int tid,
		      uint64_t *back)
{
	struct uhmm_wake_defer prev, w;
	struct uhmm_fault f = { .mm = mm, .addr = addr, .tid = tid,
				.flags = write ? UHMM_FAULT_WRITE : 0,
				.end = UHMM_MAX(end, addr + UHMM_PAGE_SIZE) };
	struct mm_vma *v;
	uint64_t e = 0;
	int rc;

	mm_lock(mm);
	v = uhmm_vma_find(mm, addr);
	if (v && v->ents)
		e = v->ents[(addr - v->start) >> UHMM_PAGE_SHIFT];
	if (ENT_STATE(e) != ENT_DEVICE) {
		mm_unlock(mm);
		return 0;	/* someone else brought it back */
	}
	f.page = ENT_PTR(e);
	uhmm_page_get(f.page);
	mm_unlock(mm);
	prev = uhmm_wake_defer;
	uhmm_wake_defer = (struct uhmm_wake_defer){ .active = true, .fault_page = f.page,
						    .fault_addr = addr };
	rc = f.page->pgmap->ops->migrate_to_ram(&f);
	if (!rc && !uhmm_wake_defer.fault_done && !uhmm_wake_defer.fault_busy) {
		/*
		 * The driver returned 0 but left the page on the device? Check
		 * before waking: once woken, the page may legitimately go back.
		 * Our reference is still held: another migration that brought
		 * the page back cannot have freed it and put it here again.
		 * A page another migration held at setup is not the driver's
		 * doing: the access simply faults again.
		 */
		mm_lock(mm);
		v = uhmm_vma_find(mm, addr);
		e = v && v->ents ? v->ents[(addr - v->start) >> UHMM_PAGE_SHIFT] : 0;
		mm_unlock(mm);
		if (ENT_STATE(e) == ENT_DEVICE && ENT_PTR(e) == f.page)
			rc = -EFAULT;
	}
	uhmm_page_put(f.page);
	w = uhmm_wake_defer;
	uhmm_wake_defer = prev;
	if (w.end > w.start)
		uhmm_uffd_wake(mm, w.start, w.end - w.start);
	if (back)
		*back = w.back;
	return rc;
}

/* Device pages brought back by one fault at most: one migration's worth. */
#define BRING_BACK_RUN 512

/*
 * The first page of [from, end) whose entry @want accepts, 0 if none.
 * *run_end: the end of the run from it of wanted device pages of the same
 * pagemap in one range (a fault brings back the run with the page).
 */
static uint64_t next_wanted_page(struct uhmm_mm *mm, uint64_t from, uint64_t end,
				 uhmm_ent_want_fn want, void *arg, uint64_t *ent,
				 uint64_t *run_end)
{
	uint64_t found = 0;

	mm_lock(mm);
	for (size_t i = vma_index(mm, from);
	     i < mm->nr_vmas && mm->vmas[i].start < end && !found; i++) {
		struct mm_vma *v = &mm->vmas[i];

		if (!v->nents)
			continue;
		for (uint64_t a = UHMM_MAX(from, v->start); a < UHMM_MIN(end, v->end);
		     a += UHMM_PAGE_SIZE) {
			uint64_t e = v->ents[(a - v->start) >> UHMM_PAGE_SHIFT];

			if (want(e, arg)) {
				uint64_t b = a + UHMM_PAGE_SIZE, lim = UHMM_MIN(end, v->end);

				while (ENT_STATE(e) == ENT_DEVICE && b < lim &&
				       b - a < BRING_BACK_RUN * UHMM_PAGE_SIZE) {
					uint64_t f = v->ents[(b - v->start) >> UHMM_PAGE_SHIFT];
					const struct uhmm_page *pf = ENT_PTR(f), *pe = ENT_PTR(e);

					if (ENT_STATE(f) != ENT_DEVICE || !want(f, arg) ||
					    pf->pgmap != pe->pgmap)
						break;
					b += UHMM_PAGE_SIZE;
				}
				*ent = e;
				*run_end = b;
				found = a;
				break;
			}
		}
	}
	mm_unlock(mm);
	return found;
}

int uhmm_mm_bring_back_if(struct uhmm_mm *mm, uint64_t start, uint64_t end,
			  uhmm_ent_want_fn want, void *arg, int *err)
{
	int count = 0;

	for (int pass = 0;;) {
		struct timespec ts = { 0, 1000000 };
		bool failed = false, progress = false;
		uint64_t addr, e = 0, run = 0;

		*err = 0;
		for (uint64_t from = start; from < end &&
		     (addr = next_wanted_page(mm, from, end, want, arg, &e, &run));
		     from = addr + UHMM_PAGE_SIZE) {
			uint64_t back = 0;
			int rc = ENT_STATE(e) == ENT_DEVICE
					 ? uhmm_device_fault(mm, addr, run, false, 0, &back)
					 : uhmm_excl_restore(mm, addr);

			if (rc) {
				failed = true;
				*err = rc;
			} else {
				progress = true;
				count += back > 1 ? (int)back : 1;
			}
		}
		/* a pass that brought pages back is followed by one more (a
		 * page may have moved below the cursor meanwhile) */
		if (!progress && (!failed || ++pass >= 64))
			return count;
		if (!progress)
			nanosleep(&ts, NULL);	/* short of memory or racing: again */
	}
}

static bool away(uint64_t e, void *arg)
{
	(void)arg;
	return ENT_STATE(e) == ENT_DEVICE || ENT_STATE(e) == ENT_EXCLUSIVE;
}

/* Bring every device-resident or exclusive page of [start, end) back to RAM:
 * 0, or the last error if pages are left. */
int uhmm_mm_bring_back(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	int err;

	uhmm_mm_bring_back_if(mm, start, end, away, NULL, &err);
	return err;
}

/* ---------------------------------------------------------------------- */
/* fork: device pages come back first; other migrations wait               */

/*
 * While a fork is prepared, migrations of other threads wait, both ways: a
 * page in flight is a hole in the process, which the child would read as
 * zeros (a migration back to RAM that began after the fork's wait was
 * skipped by bring_back, as its entry was MIGRATING). Handlers do not wait
 * (a fault they serve may be what the fork's bring-back waits for); they
 * finish their batch before they park, so none is in flight at the fork.
 */
void uhmm_mm_migration_begin(struct uhmm_mm *mm)
{
	mm_lock(mm);	/* a handler never sleeps on it */
	while (mm->forking && !tls_forking && !uhmm_uffd_is_handler())
		pthread_cond_wait(&mm->fork_cond, &mm->lock);
	mm->migrations++;
	mm_unlock(mm);
}

void uhmm_mm_migration_end(struct uhmm_mm *mm)
{
	mm_lock(mm);
	mm->migrations--;
	pthread_cond_broadcast(&mm->fork_cond);
	mm_unlock(mm);
}

static void atfork_prepare(void)
{
	pthread_mutex_lock(&uhmm_mm_list_lock);
	tls_forking = true;
	for (struct uhmm_mm *mm = uhmm_mm_list; mm; mm = mm->next_open) {
		pthread_mutex_lock(&mm->lock);
		mm->forking = true;
		/* pages in flight either way are holes the child would read as zero */
		while (mm->migrations)
			pthread_cond_wait(&mm->fork_cond, &mm->lock);
		pthread_mutex_unlock(&mm->lock);
		if (uhmm_mm_bring_back(mm, 0, UINT64_MAX))
			uhmm_log(UHMM_LOG_ERROR, "fork: device pages left behind; the child reads them as zeros");
	}
	/* last: bringing pages back needs running handlers */
	for (struct uhmm_mm *mm = uhmm_mm_list; mm; mm = mm->next_open)
		uhmm_uffd_fork_park(mm);
}

static void atfork_done(void)
{
	for (struct uhmm_mm *mm = uhmm_mm_list; mm; mm = mm->next_open) {
		uhmm_uffd_fork_unpark(mm);
		pthread_mutex_lock(&mm->lock);
		mm->forking = false;
		pthread_cond_broadcast(&mm->fork_cond);
		pthread_mutex_unlock(&mm->lock);
	}
	tls_forking = false;
	pthread_mutex_unlock(&uhmm_mm_list_lock);
}

static void atfork_child(void)
{
	/* No handler threads here: the child's mms are dead objects. */
	tls_forking = false;
	uhmm_mm_list = NULL;
	pthread_mutex_init(&uhmm_mm_list_lock, NULL);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
	pthread_atfork(atfork_prepare, atfork_done, atfork_child);
}

/* ---------------------------------------------------------------------- */
/* open / close                                                            */

static void probe_features(struct uhmm_mm *mm)
{
	static char probe_page[4096] __attribute__((aligned(4096)));
	struct page_region reg;
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = (uint64_t)(uintptr_t)probe_page,
		.end = (uint64_t)(uintptr_t)probe_page + sizeof(probe_page),
		.vec = (uint64_t)(uintptr_t)&reg,
		.vec_len = 1,
		.category_anyof_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_PRESENT,
	};
	struct procmap_query q = { .size = sizeof(q),
				   .query_addr = (uint64_t)(uintptr_t)probe_page };

	if (mm->pagemap_fd >= 0 && ioctl(mm->pagemap_fd, PAGEMAP_SCAN, &arg) >= 0)
		mm->features |= UHMM_FEAT_PAGEMAP_SCAN;
	if (mm->maps_fd >= 0 && ioctl(mm->maps_fd, PROCMAP_QUERY, &q) == 0)
		mm->features |= UHMM_FEAT_PROCMAP_QUERY;
}

int uhmm_mm_open(struct uhmm_mm **out, const struct uhmm_mm_opts *uopts)
{
	struct uhmm_mm_opts o = { 0 }, *opts = NULL;
	struct uhmm_mm *mm;
	unsigned int fa = 512;
	int err;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (uopts) {
		/* an older caller's struct may be shorter: read only its sz bytes */
		if (uopts->sz < sizeof(size_t) || uopts->sz > sizeof(o))
			return -EINVAL;
		memcpy(&o, uopts, uopts->sz);
		opts = &o;
		if (opts->nr_handlers > 16 || opts->spin_usec > 1000000 ||
		    (opts->flags & ~(UHMM_MM_FRAMES | UHMM_MM_INTHREAD)))
			return -EINVAL;
		if (opts->fault_around_pages) {
			fa = opts->fault_around_pages;
			if (fa > 512 || (fa & (fa - 1)))
				return -EINVAL;
		}
	}
	mm = calloc(1, sizeof(*mm));
	if (!mm)
		return -ENOMEM;
	pthread_mutex_init(&mm->lock, NULL);
	pthread_mutex_init(&mm->backlog_lock, NULL);
	pthread_rwlock_init(&mm->read_gate, NULL);
	pthread_cond_init(&mm->batch_cond, NULL);
	pthread_cond_init(&mm->fork_cond, NULL);
	mm->uffd = mm->wake_fd = -1;
	mm->fault_around = fa;
	mm->nr_handlers = opts && opts->nr_handlers ? opts->nr_handlers : 1;
	mm->spin_usec = opts ? opts->spin_usec : 0;
	mm->frames = opts && (opts->flags & UHMM_MM_FRAMES);
	mm->inthread = opts && (opts->flags & UHMM_MM_INTHREAD);
	mm->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	mm->maps_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	probe_features(mm);
	err = uhmm_uffd_open(mm);
	if (err)
		goto err_free;
	mm->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mm->wake_fd < 0) {
		err = -errno;
		goto err_free;
	}
	err = uhmm_notif_init(mm);
	if (err)
		goto err_free;
	err = uhmm_uffd_start(mm);
	if (err)
		goto err_stop;
	if (mm->inthread) {
		err = uhmm_uffd_inthread_add(mm);
		if (err)
			goto err_stop;
	}
	pthread_once(&atfork_once, atfork_register);
	pthread_mutex_lock(&uhmm_mm_list_lock);
	mm->next_open = uhmm_mm_list;
	uhmm_mm_list = mm;
	pthread_mutex_unlock(&uhmm_mm_list_lock);
	*out = mm;
	return 0;

err_stop:
	uhmm_uffd_stop(mm);
	uhmm_notif_fini(mm);
err_free:
	if (mm->uffd >= 0)
		close(mm->uffd);
	if (mm->wake_fd >= 0)
		close(mm->wake_fd);
	if (mm->pagemap_fd >= 0)
		close(mm->pagemap_fd);
	if (mm->maps_fd >= 0)
		close(mm->maps_fd);
	free(mm);
	return err;
}

void uhmm_mm_close(struct uhmm_mm *mm)
{
	if (!mm)
		return;
	pthread_mutex_lock(&uhmm_mm_list_lock);
	for (struct uhmm_mm **pp = &uhmm_mm_list; *pp; pp = &(*pp)->next_open)
		if (*pp == mm) {
			*pp = mm->next_open;
			break;
		}
	pthread_mutex_unlock(&uhmm_mm_list_lock);
	uhmm_invalidate(mm, UHMM_EVENT_RELEASE, 0, UINT64_MAX & ~(UHMM_PAGE_SIZE - 1),
			NULL, 0);
	uhmm_mm_bring_back(mm, 0, UINT64_MAX);
	uhmm_migrate_mm_fini(mm);
	mm_lock(mm);
	for (size_t i = 0; i < mm->nr_vmas; i++)
		uhmm_uffd_unregister(mm, mm->vmas[i].start,
				     mm->vmas[i].end - mm->vmas[i].start);
	mm_unlock(mm);
	if (mm->inthread)
		uhmm_uffd_inthread_del(mm);	/* no fault can reach it now */
	uhmm_uffd_stop(mm);
	uhmm_notif_fini(mm);
	/* leftover entries can only be ones whose device refused to return them */
	while (mm->nr_vmas)
		vma_remove_at(mm, mm->nr_vmas - 1);
	free(mm->vmas);
	close(mm->uffd);
	close(mm->wake_fd);
	if (mm->pagemap_fd >= 0)
		close(mm->pagemap_fd);
	if (mm->maps_fd >= 0)
		close(mm->maps_fd);
	pthread_mutex_destroy(&mm->lock);
	pthread_mutex_destroy(&mm->backlog_lock);
	pthread_rwlock_destroy(&mm->read_gate);
	pthread_cond_destroy(&mm->batch_cond);
	pthread_cond_destroy(&mm->fork_cond);
	free(mm);
}

/* ---------------------------------------------------------------------- */
/* manage / alloc                                                           */

int uhmm_mm_populate(struct uhmm_mm *mm, void *addr, size_t len, bool write)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	if (!mm || !addr || !len || !UHMM_IS_ALIGNED(a, UHMM_PAGE_SIZE) ||
	    !UHMM_IS_ALIGNED(len, UHMM_PAGE_SIZE) || a + len < a)
		return -EINVAL;
	if (uhmm_uffd_is_handler())
		return -EDEADLK;
	return uhmm_uffd_populate(mm, a, len, write);
}

static bool range_ok(const void *addr, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	return addr && len && UHMM_IS_ALIGNED(a, UHMM_PAGE_SIZE) &&
	       UHMM_IS_ALIGNED((uint64_t)len, UHMM_PAGE_SIZE) && a + len > a;
}

static int manage(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool allocated)
{
	struct mm_vma pieces[64];
	size_t np = 0;
	int err;

	/* Check the whole range first: all mapped, all of a supported kind. */
	for (uint64_t a = start; a < end;) {
		struct vma_info vi;
		enum vma_kind kind;

		err = uhmm_vma_query(mm, a, &vi);
		if (err == -ENOENT || (!err && vi.start > a))
			return -EFAULT;
		if (err)
			return err;
		err = vma_classify(&vi, &kind);
		if (err)
			return err;
		if (np == UHMM_ARRAY_SIZE(pieces))
			return -ENOMEM;
		pieces[np++] = (struct mm_vma){
			.start = a,
			.end = UHMM_MIN(end, vi.end),
			.kind = kind,
			.page_shift = (unsigned int)__builtin_ctzll(vi.page_size),
			.allocated = allocated,
		};
		if (kind == VMA_HUGETLB &&
		    (!UHMM_IS_ALIGNED(a, vi.page_size) ||
		     !UHMM_IS_ALIGNED(pieces[np - 1].end, vi.page_size)))
			return -EINVAL;
		a = pieces[np - 1].end;
	}
	mm_lock(mm);
	{
		size_t i = vma_index(mm, start);

		if (i < mm->nr_vmas && mm->vmas[i].start < end) {
			mm_unlock(mm);
			return -EEXIST;
		}
	}
	err = uhmm_uffd_register(mm, start, end - start, true);
	if (err) {
		mm_unlock(mm);
		return err == -EINVAL ? -EOPNOTSUPP : err;
	}
	for (size_t i = 0; i < np && !err; i++)
		err = vma_insert(mm, &pieces[i]);
	if (err) {
		uhmm_uffd_unregister(mm, start, end - start);
		for (size_t i = vma_index(mm, start);
		     i < mm->nr_vmas && mm->vmas[i].start < end;)
			vma_remove_at(mm, i);
	}
	mm_unlock(mm);
	return err;
}

int uhmm_mm_manage(struct uhmm_mm *mm, void *addr, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	if (!mm || !range_ok(addr, len))
		return -EINVAL;
	return manage(mm, a, a + len, false);
}

static int unmanage(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	uint64_t covered = 0;
	int err;

	mm_lock(mm);
	for (size_t i = vma_index(mm, start);
	     i < mm->nr_vmas && mm->vmas[i].start < end; i++)
		covered += UHMM_MIN(end, mm->vmas[i].end) -
			   UHMM_MAX(start, mm->vmas[i].start);
	mm_unlock(mm);
	if (covered != end - start)
		return -ENOENT;
	err = uhmm_mm_bring_back(mm, start, end);
	if (err)
		return err;
	mm_lock(mm);
	uhmm_uffd_unregister(mm, start, end - start);
	vma_split(mm, start);
	vma_split(mm, end);
	for (size_t i = vma_index(mm, start);
	     i < mm->nr_vmas && mm->vmas[i].start < end;)
		vma_remove_at(mm, i);
	mm_unlock(mm);
	return 0;
}

int uhmm_mm_unmanage(struct uhmm_mm *mm, void *addr, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	if (!mm || !range_ok(addr, len))
		return -EINVAL;
	return unmanage(mm, a, a + len);
}

int uhmm_mm_alloc(struct uhmm_mm *mm, size_t len, unsigned int flags, void **out)
{
	bool huge = flags & UHMM_ALLOC_HUGE;
	uint8_t *a;
	int err;

	if (!mm || !out || !len || (flags & ~UHMM_ALLOC_HUGE) ||
	    !UHMM_IS_ALIGNED((uint64_t)len, UHMM_PAGE_SIZE) || len > (1ULL << 46))
		return -EINVAL;
	if (uhmm_fi_fail(UHMM_FI_MMAP))
		return -ENOMEM;
	a = uhmm_map_aligned(len, huge ? 2UL << 20 : UHMM_PAGE_SIZE, PROT_READ | PROT_WRITE,
			     huge);
	if (!a)
		return -ENOMEM;
	err = manage(mm, (uint64_t)(uintptr_t)a, (uint64_t)(uintptr_t)a + len, true);
	if (err) {
		munmap(a, len);
		return err;
	}
	*out = a;
	return 0;
}

int uhmm_mm_free(struct uhmm_mm *mm, void *addr, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;
	int err;

	if (!mm || !range_ok(addr, len))
		return -EINVAL;
	uhmm_invalidate(mm, UHMM_EVENT_UNMAP, a, a + len, NULL, 0);
	err = unmanage(mm, a, a + len);
	if (err)
		return err;
	munmap(addr, len);
	return 0;
}

int uhmm_mm_stat(struct uhmm_mm *mm, struct uhmm_mm_stat *st)
{
	if (!mm || !st)
		return -EINVAL;
	st->faults = atomic_load(&mm->st_faults);
	st->fills = atomic_load(&mm->st_fills);
	st->filled_pages = atomic_load(&mm->st_filled_pages);
	st->device_faults = atomic_load(&mm->st_device_faults);
	st->events = atomic_load(&mm->st_events);
	st->invalidations = atomic_load(&mm->st_invalidations);
	return 0;
}

unsigned int uhmm_mm_features(struct uhmm_mm *mm)
{
	return mm ? mm->features : 0;
}

/* ---------------------------------------------------------------------- */
/* wrappers: invalidate before the change, then make it                    */

struct wrap {
	struct uhmm_mm *mms[8];
	bool suppressed[8];
	unsigned int n;
};

static void wrap_begin(struct wrap *w, enum uhmm_event ev, uint64_t s, uint64_t e,
		       uint8_t uffd_ev, uint8_t uffd_ev2)
{
	w->n = 0;
	pthread_mutex_lock(&uhmm_mm_list_lock);
	for (struct uhmm_mm *mm = uhmm_mm_list; mm && w->n < 8; mm = mm->next_open) {
		bool sup = uffd_ev && mm_overlaps(mm, s, e);

		if (sup) {
			uhmm_mm_suppress_add(mm, uffd_ev, s, e);
			if (uffd_ev2)
				uhmm_mm_suppress_add(mm, uffd_ev2, s, e);
		}
		uhmm_invalidate_start(mm, ev, s, e, NULL, 0);
		w->suppressed[w->n] = sup;
		w->mms[w->n++] = mm;
	}
}

static void wrap_end(struct wrap *w, uint64_t s, uint64_t e)
{
	for (unsigned int i = 0; i < w->n; i++) {
		uhmm_invalidate_end(w->mms[i]);
		if (w->suppressed[i]) {
			/* the events the call caused have been handled */
			uhmm_mm_batch_barrier(w->mms[i]);
			suppress_del(w->mms[i], s, e);
		}
	}
	pthread_mutex_unlock(&uhmm_mm_list_lock);
}

#define WRAP_ARGS(addr, len)                                                 \
	uint64_t s = (uint64_t)(uintptr_t)(addr);                            \
	uint64_t e = s + UHMM_ALIGN_UP((uint64_t)(len), UHMM_PAGE_SIZE);     \
	struct wrap w;                                                       \
	int rc;                                                              \
	if (!UHMM_IS_ALIGNED(s, UHMM_PAGE_SIZE) || !(len) || e < s)          \
		return -EINVAL

int uhmm_mprotect(void *addr, size_t len, int prot)
{
	WRAP_ARGS(addr, len);
	wrap_begin(&w, UHMM_EVENT_PROTECTION, s, e, 0, 0);
	rc = mprotect(addr, len, prot) ? -errno : 0;
	wrap_end(&w, s, e);
	return rc;
}

int uhmm_munmap(void *addr, size_t len)
{
	WRAP_ARGS(addr, len);
	wrap_begin(&w, UHMM_EVENT_UNMAP, s, e, UFFD_EVENT_UNMAP, 0);
	rc = munmap(addr, len) ? -errno : 0;
	wrap_end(&w, s, e);
	return rc;
}

int uhmm_madvise(void *addr, size_t len, int advice)
{
	bool drops = advice == MADV_DONTNEED || advice == MADV_FREE ||
		     advice == MADV_REMOVE || advice == 24 /* DONTNEED_LOCKED */;

	if (!drops)
		return madvise(addr, len, advice) ? -errno : 0;
	WRAP_ARGS(addr, len);
	wrap_begin(&w, UHMM_EVENT_CLEAR, s, e, UFFD_EVENT_REMOVE, 0);
	/*
	 * Drop uhmm's state before the kernel zaps: a migration in flight then
	 * finds its pages gone and installs nothing afterwards, and new ones
	 * skip the range until the call is over (the suppression entry).
	 */
	for (unsigned int i = 0; i < w.n; i++)
		if (w.suppressed[i])
			uhmm_mm_apply_unmap(w.mms[i], s, e, true);
	rc = madvise(addr, len, advice) ? -errno : 0;
	wrap_end(&w, s, e);
	return rc;
}

int uhmm_mremap(void *old_addr, size_t old_len, size_t new_len, int flags,
		void *fixed_addr, void **new_addr)
{
	void *p;

	if (!new_addr)
		return -EINVAL;
	WRAP_ARGS(old_addr, old_len);
	/* The old range loses its mappings; the new one has none yet. */
	wrap_begin(&w, UHMM_EVENT_UNMAP, s, e, UFFD_EVENT_REMAP, UFFD_EVENT_UNMAP);
	p = mremap(old_addr, old_len, new_len, flags, fixed_addr);
	rc = p == MAP_FAILED ? -errno : 0;
	wrap_end(&w, s, e);
	if (!rc)
		*new_addr = p;
	return rc;
}
