/*
 * Dirty-page tracking for the reset engine: which pages of the tracked
 * ranges were written since they were last write-protected.
 *
 * Mechanism (Linux 6.7+): userfaultfd write-protect in asynchronous mode
 * (UFFD_FEATURE_WP_ASYNC; a write just clears the page's protection, no
 * event, no thread) plus UFFD_FEATURE_WP_UNPOPULATED (pages never touched
 * are protected too), and the PAGEMAP_SCAN ioctl on /proc/self/pagemap,
 * which lists the written pages and can re-protect them in the same call.
 *
 * How the rewinder uses it (rewind.c:rewind_pages; docs/reset-engine.md):
 * it first copies back the hot pages (left writable on purpose, so the
 * scan reports them too), then mf_dirty_scan (report only) until nothing
 * is pending, copying the snapshot back over each reported region outside
 * the hot pages (which writes them again); each run of copied pages is
 * then re-protected with one PAGEMAP_SCAN walk (PM_SCAN_WP_MATCHING) that
 * must find exactly the pages copied: a page written in between would be
 * protected with content the snapshot never had. mf_dirty_collect (report
 * and re-protect at once) is for callers that do not write afterwards
 * (the snapshot); mf_dirty_protect (one UFFDIO_WRITEPROTECT per region)
 * for the DirtyTracker binding and its tests.
 *
 * Caveats, all the caller's to handle:
 * - MADV_DONTNEED (and MADV_FREE) on tracked private anonymous memory
 *   zaps the page; tests/unit/test_dirty_pages.py records what a scan
 *   reports then.
 * - Tracked ranges must be private writable mappings (anonymous here);
 *   mf_dirty_track marks them MADV_NOHUGEPAGE so a write dirties 4 KiB,
 *   not 2 MiB.
 * - The tracker belongs to the process that opened it: /proc/self/pagemap
 *   names the opener's memory, and a fork's child loses the registration.
 *   Open it in the process to be rewound, after any fork.
 * - No threads may write tracked memory during a scan-copy-protect cycle.
 */
#ifndef MAYFLYD_DIRTY_PAGES_H
#define MAYFLYD_DIRTY_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most ranges one tracker holds: a CPython host has a writable range or
 * two per loaded extension module, besides its heap, stack and arenas. */
#define MF_DIRTY_MAX_RANGES 1024
/* Regions asked of one PAGEMAP_SCAN: the kernel allocates a bounce buffer
 * of this many per call, and a request writes a few dozen per range. */
#define MF_DIRTY_SCAN_BATCH 64

/* Written pages [start, end), byte addresses, page-aligned. Same layout as
 * the kernel's struct page_region, so the kernel fills it directly;
 * categories is PAGE_IS_WRITTEN for every region reported here. */
struct mf_dirty_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct mf_dirty_range {
    uint64_t start, end;
};

struct mf_dirty_tracker {
    int uffd;       /* -1 when closed */
    int pagemap_fd; /* -1 when closed */
    size_t page_size;
    size_t nranges; /* ranges[] sorted by start, disjoint */
    struct mf_dirty_range ranges[MF_DIRTY_MAX_RANGES];
    /* Where an interrupted scan/collect continues (out was full): the
     * index of the range and the address in it. resume_addr 0: none. */
    size_t resume_range;
    uint64_t resume_addr;
};

/* userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY), UFFDIO_API with
 * WP_ASYNC|WP_UNPOPULATED, open /proc/self/pagemap and check that it
 * knows PAGEMAP_SCAN. EOPNOTSUPP naming the feature if the kernel lacks
 * one; ENOTTY if it lacks PAGEMAP_SCAN. Closes what it opened on failure. */
bool mf_dirty_open(struct mf_dirty_tracker *t);

/* Registers [start, start+len) (page-aligned, not overlapping a tracked
 * range) for write-protect and protects all of it, populated or not. */
bool mf_dirty_track(struct mf_dirty_tracker *t, void *start, size_t len);

/* The pages of the tracked ranges written since their last protection,
 * re-protected in the same call. Fills out[0..*n) and *pages (how many
 * pages they span). If out fills before the walk ends, the rest is kept
 * for the next call: mf_dirty_pending() is then true and the next
 * scan/collect continues where this one stopped (only what was reported
 * has been re-protected). cap must be at least 1. */
bool mf_dirty_collect(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                      size_t *pages);

/* As mf_dirty_collect, without re-protecting: a second scan reports the
 * same pages again (plus any written since). */
bool mf_dirty_scan(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                   size_t *pages);

/* As mf_dirty_scan, in one PAGEMAP_SCAN call over the span of all the
 * ranges instead of one per range, but blind to a range that lost its
 * registration (unmapped and mapped again): the caller must know no
 * mapping was replaced since the last per-range scan. Do not mix with
 * mf_dirty_scan within one walk (until mf_dirty_pending is false). */
bool mf_dirty_scan_joined(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                          size_t *pages);

/* True when the last scan/collect stopped because out was full. */
bool mf_dirty_pending(const struct mf_dirty_tracker *t);

/* Write-protects exactly these regions again (one UFFDIO_WRITEPROTECT
 * each). Every region must lie inside a tracked range: EINVAL if not. */
bool mf_dirty_protect(struct mf_dirty_tracker *t, const struct mf_dirty_region *regions, size_t n);

/* Closes both fds (the kernel drops the registrations with the uffd).
 * Safe on a tracker that failed to open or is already closed. */
void mf_dirty_close(struct mf_dirty_tracker *t);

#endif /* MAYFLYD_DIRTY_PAGES_H */
