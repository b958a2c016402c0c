/*
 * PAGEMAP_SCAN, the one owner of the call: mf_pagemap_walk is the only
 * code that issues it (dirty_pages.c and rewind.c walk through it), from
 * one `syscall` instruction of its own.
 *
 * Why the instruction matters: PAGEMAP_SCAN is how the rewinder finds and
 * re-protects written pages; in tenant code the same call
 * (PM_SCAN_WP_MATCHING) would mark a written page clean and hide it from
 * the next rewind. seccomp cannot read the call's struct, but it can read
 * the instruction pointer: a filter the worker adds over the request filter
 * refuses PAGEMAP_SCAN from anywhere but that instruction (libc's ioctl(),
 * which fcntl.ioctl uses, included). Code that can jump to arbitrary
 * addresses (ctypes) is beyond this wall; see docs/reset-engine.md.
 */
#ifndef MAYFLYD_PAGEMAP_GATE_H
#define MAYFLYD_PAGEMAP_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/kernel_uapi.h"

/* One walk over [at, end) of /proc/self/pagemap: the fields of struct
 * pm_scan_arg the caller chooses, and the walk's position. */
struct mf_pagemap_walk {
    int fd;                        /* /proc/self/pagemap */
    uint64_t flags;                /* PM_SCAN_WP_MATCHING, PM_SCAN_CHECK_WPASYNC */
    uint64_t category_mask;        /* pages with all of these categories ... */
    uint64_t category_anyof_mask;  /* ... and any of these (0: no condition) */
    uint64_t return_mask;          /* categories reported with each region */
    /* Where the kernel puts the next batch: struct page_region[vec_len]
     * (or a struct of the same layout). The visitor may move it. */
    void *vec;
    size_t vec_len;
    uint64_t at, end;              /* at: where the next batch starts */
};

/* Called after each batch: the kernel put n regions at w->vec, and w->at
 * is where it stopped. false: stop the walk there (not an error). */
typedef bool (*mf_pagemap_visit)(struct mf_pagemap_walk *w, size_t n, void *ctx);

/* Walks until w->at reaches w->end or visit() stops it. false with the
 * error recorded if a call fails (EINVAL if vec_len is 0). Allocates
 * nothing: the rewinder walks on its own stack with signals blocked. */
bool mf_pagemap_walk(struct mf_pagemap_walk *w, mf_pagemap_visit visit, void *ctx);

/* An empty walk: false with ENOTTY recorded on kernels without PAGEMAP_SCAN. */
bool mf_pagemap_probe(int fd);

/* Loads the filter that allows PAGEMAP_SCAN only from mf_pagemap_walk's call. */
bool mf_pagemap_gate_load(void);

#endif /* MAYFLYD_PAGEMAP_GATE_H */
