/* Dirty-page tracking with async userfaultfd write-protect and
 * PAGEMAP_SCAN; see dirty_pages.h. */
#define _GNU_SOURCE
#include "rewind/dirty_pages.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/kernel_uapi.h"
#include "base/log.h"
#include "rewind/pagemap_gate.h"

_Static_assert(sizeof(struct mf_dirty_region) == sizeof(struct page_region), "mf_dirty_region is a page_region");
_Static_assert(offsetof(struct mf_dirty_region, end) == offsetof(struct page_region, end),
               "mf_dirty_region is a page_region");

#define WANTED_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)

/* After UFFDIO_API refused: which wanted feature is missing, asked on a
 * second uffd with no features requested (UFFDIO_API works once per fd). */
static bool explain_missing_features(void)
{
    struct uffdio_api api = {.api = UFFD_API};
    mf_cleanup_fd int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

    if (fd < 0)
        return mf_err("userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)");
    if (ioctl(fd, UFFDIO_API, &api) < 0)
        return mf_err("ioctl(UFFDIO_API, features=0)");
    if (!(api.features & UFFD_FEATURE_WP_ASYNC))
        return mf_errx(EOPNOTSUPP, "userfaultfd lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+; features %#llx)",
                       (unsigned long long)api.features);
    if (!(api.features & UFFD_FEATURE_WP_UNPOPULATED))
        return mf_errx(EOPNOTSUPP, "userfaultfd lacks UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4+; features %#llx)",
                       (unsigned long long)api.features);
    return mf_errx(EINVAL, "ioctl(UFFDIO_API, features=%#x) refused though the kernel offers %#llx",
                   WANTED_FEATURES, (unsigned long long)api.features);
}

static bool open_fds(struct mf_dirty_tracker *t)
{
    struct uffdio_api api = {.api = UFFD_API, .features = WANTED_FEATURES};

    /* UFFD_USER_MODE_ONLY: only user-mode faults, so no privilege needed. */
    t->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (t->uffd < 0)
        return mf_err("userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)");
    if (ioctl(t->uffd, UFFDIO_API, &api) < 0)
        return errno == EINVAL ? explain_missing_features() : mf_err("ioctl(UFFDIO_API, features=%#x)", WANTED_FEATURES);
    t->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (t->pagemap_fd < 0)
        return mf_err("open(/proc/self/pagemap, O_RDONLY)");
    return mf_pagemap_probe(t->pagemap_fd); /* ENOTTY on kernels without PAGEMAP_SCAN */
}

bool mf_dirty_open(struct mf_dirty_tracker *t)
{
    long page = sysconf(_SC_PAGESIZE);

    memset(t, 0, sizeof(*t));
    t->uffd = -1;
    t->pagemap_fd = -1;
    t->page_size = page > 0 ? (size_t)page : 4096;
    if (!open_fds(t)) {
        int err = errno;
        mf_dirty_close(t);
        errno = err;
        return false;
    }
    return true;
}

bool mf_dirty_track(struct mf_dirty_tracker *t, void *start, size_t len)
{
    uint64_t a = (uint64_t)(uintptr_t)start, b = a + len;
    size_t at = 0;

    if (t->uffd < 0)
        return mf_errx(EBADF, "dirty tracker is closed");
    if (len == 0 || a % t->page_size != 0 || len % t->page_size != 0 || b < a)
        return mf_errx(EINVAL, "track(%#llx, %zu): not a non-empty page-aligned range", (unsigned long long)a, len);
    if (t->nranges == MF_DIRTY_MAX_RANGES)
        return mf_errx(ENOSPC, "track(%#llx, %zu): already %d ranges", (unsigned long long)a, len,
                       MF_DIRTY_MAX_RANGES);
    while (at < t->nranges && t->ranges[at].start < a)
        at++;
    if ((at > 0 && t->ranges[at - 1].end > a) || (at < t->nranges && t->ranges[at].start < b))
        return mf_errx(EINVAL, "track(%#llx, %zu): overlaps a tracked range", (unsigned long long)a, len);

    /* Before protecting: a huge page would be protected, and dirtied, as one. */
    if (madvise(start, len, MADV_NOHUGEPAGE) < 0)
        return mf_err("madvise(%#llx, %zu, MADV_NOHUGEPAGE)", (unsigned long long)a, len);
    struct uffdio_register reg = {.range = {.start = a, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(t->uffd, UFFDIO_REGISTER, &reg) < 0)
        return mf_err("ioctl(UFFDIO_REGISTER, %#llx, %zu, MODE_WP)", (unsigned long long)a, len);
    /* With WP_UNPOPULATED this also marks the pages not yet touched. */
    struct uffdio_writeprotect wp = {.range = {.start = a, .len = len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(t->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
        int err = errno;
        struct uffdio_range undo = {.start = a, .len = len};
        (void)ioctl(t->uffd, UFFDIO_UNREGISTER, &undo); /* best effort; the error below is the one to report */
        errno = err;
        return mf_err("ioctl(UFFDIO_WRITEPROTECT, %#llx, %zu, MODE_WP)", (unsigned long long)a, len);
    }
    memmove(&t->ranges[at + 1], &t->ranges[at], (t->nranges - at) * sizeof(t->ranges[0]));
    t->ranges[at] = (struct mf_dirty_range){a, b};
    t->nranges++;
    t->resume_addr = 0; /* a new range invalidates an interrupted walk's plan */
    return true;
}

/* Where a walk puts what it found: out[0..n), pages spanned. */
struct dirty_out {
    const struct mf_dirty_tracker *t;
    struct mf_dirty_region *out;
    size_t cap, n, pages;
};

/* The kernel filled out[n..n+got): count them, and ask for the next batch
 * right after them while out has room. */
static bool take_batch(struct mf_pagemap_walk *w, size_t got, void *ctx)
{
    struct dirty_out *d = ctx;

    for (size_t k = d->n; k < d->n + got; k++)
        d->pages += (size_t)((d->out[k].end - d->out[k].start) / d->t->page_size);
    d->n += got;
    w->vec = d->out + d->n;
    w->vec_len = d->cap - d->n < MF_DIRTY_SCAN_BATCH ? d->cap - d->n : MF_DIRTY_SCAN_BATCH;
    return w->vec_len > 0;
}

/* One walk over the tracked ranges for written pages, from where the last
 * interrupted walk stopped. flags adds PM_SCAN_WP_MATCHING for collect. */
static bool walk(struct mf_dirty_tracker *t, uint64_t flags, struct mf_dirty_region *out, size_t cap, size_t *n,
                 size_t *pages);

/* The same as one PAGEMAP_SCAN from the first range's start to the last
 * one's end. Requiring PAGE_IS_WPALLOWED makes the kernel skip every
 * mapping not registered for async write-protect without walking its
 * page tables (pagemap_scan_test_walk), so the untracked mappings between
 * the ranges cost next to nothing; but a range that lost its registration
 * is skipped too, which only the per-range walk's CHECK_WPASYNC reports. */
static bool walk_joined(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                        size_t *pages)
{
    struct dirty_out d = {.t = t, .out = out, .cap = cap};

    *n = 0;
    *pages = 0;
    if (t->pagemap_fd < 0)
        return mf_errx(EBADF, "dirty tracker is closed");
    if (cap == 0)
        return mf_errx(EINVAL, "dirty-page walk with an output of 0 regions");
    if (t->nranges == 0)
        return true;
    struct mf_pagemap_walk w = {
        .fd = t->pagemap_fd,
        .category_mask = PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED, .return_mask = PAGE_IS_WRITTEN,
        .vec = out, .vec_len = cap < MF_DIRTY_SCAN_BATCH ? cap : MF_DIRTY_SCAN_BATCH,
        .at = t->resume_addr != 0 ? t->resume_addr : t->ranges[0].start, .end = t->ranges[t->nranges - 1].end,
    };
    t->resume_addr = 0;
    if (!mf_pagemap_walk(&w, take_batch, &d))
        return false;
    if (w.at < w.end) { /* out is full */
        t->resume_range = 0;
        t->resume_addr = w.at;
    }
    *n = d.n;
    *pages = d.pages;
    return true;
}

static bool walk(struct mf_dirty_tracker *t, uint64_t flags, struct mf_dirty_region *out, size_t cap, size_t *n,
                 size_t *pages)
{
    struct dirty_out d = {.t = t, .out = out, .cap = cap};
    size_t i = 0;
    uint64_t from = 0;

    *n = 0;
    *pages = 0;
    if (t->pagemap_fd < 0)
        return mf_errx(EBADF, "dirty tracker is closed");
    if (cap == 0)
        return mf_errx(EINVAL, "dirty-page walk with an output of 0 regions");
    if (t->resume_addr != 0) {
        i = t->resume_range;
        from = t->resume_addr;
        t->resume_addr = 0;
    }
    for (; i < t->nranges; i++) {
        const struct mf_dirty_range *r = &t->ranges[i];
        /* CHECK_WPASYNC: EPERM rather than a silent miss if the range
         * lost its registration (unmapped and mapped again). */
        struct mf_pagemap_walk w = {
            .fd = t->pagemap_fd, .flags = flags | PM_SCAN_CHECK_WPASYNC,
            .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
            .vec = out + d.n, .vec_len = cap - d.n < MF_DIRTY_SCAN_BATCH ? cap - d.n : MF_DIRTY_SCAN_BATCH,
            .at = from > r->start ? from : r->start, .end = r->end,
        };
        if (w.vec_len == 0) { /* full exactly at a range boundary */
            t->resume_range = i;
            t->resume_addr = w.at;
            break;
        }
        if (!mf_pagemap_walk(&w, take_batch, &d))
            return false;
        if (w.at < r->end) { /* out is full; the kernel stopped before the next region */
            t->resume_range = i;
            t->resume_addr = w.at;
            break;
        }
    }
    *n = d.n;
    *pages = d.pages;
    return true;
}

bool mf_dirty_collect(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                      size_t *pages)
{
    return walk(t, PM_SCAN_WP_MATCHING, out, cap, n, pages);
}

bool mf_dirty_scan(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n, size_t *pages)
{
    return walk(t, 0, out, cap, n, pages);
}

bool mf_dirty_scan_joined(struct mf_dirty_tracker *t, struct mf_dirty_region *out, size_t cap, size_t *n,
                          size_t *pages)
{
    return walk_joined(t, out, cap, n, pages);
}

bool mf_dirty_pending(const struct mf_dirty_tracker *t)
{
    return t->resume_addr != 0;
}

static bool is_tracked(const struct mf_dirty_tracker *t, uint64_t start, uint64_t end)
{
    for (size_t i = 0; i < t->nranges; i++)
        if (t->ranges[i].start <= start && end <= t->ranges[i].end)
            return true;
    return false;
}

bool mf_dirty_protect(struct mf_dirty_tracker *t, const struct mf_dirty_region *regions, size_t n)
{
    if (t->uffd < 0)
        return mf_errx(EBADF, "dirty tracker is closed");
    for (size_t i = 0; i < n; i++) {
        uint64_t a = regions[i].start, b = regions[i].end;
        if (a >= b || a % t->page_size != 0 || b % t->page_size != 0 || !is_tracked(t, a, b))
            return mf_errx(EINVAL, "protect(%#llx-%#llx): not a page-aligned part of a tracked range",
                           (unsigned long long)a, (unsigned long long)b);
        struct uffdio_writeprotect wp = {.range = {.start = a, .len = b - a}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
        if (ioctl(t->uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
            return mf_err("ioctl(UFFDIO_WRITEPROTECT, %#llx-%#llx, MODE_WP)", (unsigned long long)a,
                          (unsigned long long)b);
    }
    return true;
}

void mf_dirty_close(struct mf_dirty_tracker *t)
{
    /* close() errors are ignored: neither fd has buffered data to lose. */
    if (t->pagemap_fd >= 0)
        (void)close(t->pagemap_fd);
    if (t->uffd >= 0)
        (void)close(t->uffd);
    t->pagemap_fd = -1;
    t->uffd = -1;
    t->nranges = 0;
    t->resume_addr = 0;
}
