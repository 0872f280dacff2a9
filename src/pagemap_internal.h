/* SPDX-License-Identifier: MIT */
/*
 * pagemap_internal.h - what the pagemap offers the rest of uhmm (migrate,
 * sim, dax): the teardown eviction hook and page iteration helpers.
 * Nothing here is exported.
 */
#ifndef UHMM_PAGEMAP_INTERNAL_H
#define UHMM_PAGEMAP_INTERNAL_H

#include <uhmm/pagemap.h>
#include "internal.h"

/*
 * Called by uhmm_memunmap_pages() (and each _timeout() attempt) for PRIVATE
 * and COHERENT pagemaps, after the pagemap is marked dying (gets and allocs
 * fail) and before waiting for references to drain: it should move every
 * page still holding CPU data back to system memory, so that the pages'
 * references go away. Called with no uhmm lock held, on the thread calling
 * memunmap; may block. Return 0 or a negative errno (logged, teardown still
 * waits for the references).
 */
typedef int (*uhmm_pagemap_evict_fn)(struct uhmm_pagemap *pgmap);

/* Install (NULL: remove) the eviction hook; one hook per process. Any thread. */
UHMM_HIDDEN void uhmm_pagemap_set_evict_hook(uhmm_pagemap_evict_fn fn);

/*
 * The @idx-th page of a registered pagemap, counting across its ranges in
 * range order (page 0 is ranges[0].start), or NULL if @idx >= nr_pages or
 * @pgmap is not registered. No reference taken. Walk every page with
 * idx = 0 .. uhmm_pagemap_nr_pages() - 1.
 */
UHMM_HIDDEN struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap,
						uint64_t idx);

/* Inverse of uhmm_pagemap_page(): the page's index in its pagemap. */
UHMM_HIDDEN uint64_t uhmm_page_index(const struct uhmm_page *page);

/*
 * True once uhmm_memunmap_pages() has started on @pgmap (no new gets or
 * allocations), and for NULL or unregistered pagemaps.
 */
UHMM_HIDDEN bool uhmm_pagemap_is_dying(struct uhmm_pagemap *pgmap);

#endif
