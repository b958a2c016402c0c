/* Snapshot and rewind of a reset-engine worker; see rewind.h. */
#define _GNU_SOURCE
#include "rewind/rewind.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/kernel_uapi.h"
#include "base/log.h"
#include "rewind/pagemap_gate.h"
#include "rewind/state_gate.h"

#define PAGE 4096u

static size_t round_up(size_t n)
{
    return (n + PAGE - 1) / PAGE * PAGE;
}

/* A call the state gate traps when made from anywhere else (state_gate.h);
 * like libc: -1 and errno on failure. */
static long gate_call(long nr, long a, long b, long c, long d)
{
    long ret = mf_state_syscall(nr, a, b, c, d, 0, 0);
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

/* A process that is not dumpable finds its own /proc files owned by root,
 * and pagemap is 0400: dumpable just for the open. */
static bool open_tracker(struct mf_dirty_tracker *t)
{
    if (prctl(PR_SET_DUMPABLE, 1) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 1)");
    bool opened = mf_dirty_open(t);
    int err = errno;
    if (prctl(PR_SET_DUMPABLE, 0) < 0) {
        mf_err("prctl(PR_SET_DUMPABLE, 0)");
        if (opened)
            mf_dirty_close(t); /* keeps errno */
        return false;
    }
    errno = err;
    return opened;
}

struct mf_rewinder *mf_rewinder_create(bool verify, int reserved_signal)
{
    size_t head = round_up(sizeof(struct mf_rewinder) + MF_REWIND_STACK_SIZE);
    size_t vmas = round_up(MF_REWIND_MAX_VMAS * sizeof(struct mf_vma));
    size_t len = head + 2 * MF_REWIND_MAPS_CAP + 2 * vmas;
    /* NORESERVE: most of the buffers are never touched. */
    mf_cleanup_mapping struct mf_mapping map = {
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), len};

    if (map.addr == MAP_FAILED) {
        mf_err("mmap(%zu bytes for the rewinder)", len);
        return NULL;
    }
    mf_cleanup_fd int maps_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps_fd < 0) {
        mf_err("open(/proc/self/maps)");
        return NULL;
    }
    mf_cleanup_fd int statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (statm_fd < 0) {
        mf_err("open(/proc/self/statm)");
        return NULL;
    }
    mf_cleanup_fd int cwd_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd_fd < 0) {
        mf_err("open(cwd, O_PATH)");
        return NULL;
    }
    mf_cleanup_fd int slack_fd = open("/proc/self/timerslack_ns", O_RDWR | O_CLOEXEC);
    if (slack_fd < 0) {
        mf_err("open(/proc/self/timerslack_ns)");
        return NULL;
    }
    uint8_t *base = map.addr;
    struct mf_rewinder *rw = map.addr;
    /* Last: the tracker's fds are the only ones the cleanups above miss. */
    if (!open_tracker(&rw->tracker))
        return NULL;
    rw->self_start = (uintptr_t)base;
    rw->self_end = (uintptr_t)base + len;
    rw->maps_sealed = (char *)base + head;
    rw->maps_now = rw->maps_sealed + MF_REWIND_MAPS_CAP;
    rw->vmas_sealed = (struct mf_vma *)(void *)(rw->maps_now + MF_REWIND_MAPS_CAP);
    rw->vmas_now = (struct mf_vma *)(void *)((uint8_t *)rw->vmas_sealed + vmas);
    rw->verify = verify;
    rw->reserved_signal = reserved_signal;
    rw->maps_fd = mf_steal_fd(&maps_fd);
    rw->statm_fd = mf_steal_fd(&statm_fd);
    rw->cwd_fd = mf_steal_fd(&cwd_fd);
    rw->slack_fd = mf_steal_fd(&slack_fd);
    return mf_steal_mapping(&map).addr;
}

/* ---- memory ---- */

static bool is_special(const struct mf_vma *v)
{
    return strcmp(v->name, "[vvar]") == 0 || strcmp(v->name, "[vdso]") == 0 ||
           strcmp(v->name, "[vsyscall]") == 0 || strcmp(v->name, "[vvar_vclock]") == 0;
}

/* Calls add(start, end) for each piece of the writable private mappings,
 * with the rewinder's own mappings (and the snapshot, once it exists) cut out. */
static bool for_each_piece(struct mf_rewinder *rw, const struct mf_vma *vmas, size_t n,
                           bool (*add)(struct mf_rewinder *, uint64_t, uint64_t, void *), void *arg)
{
    uint64_t cut_a[2] = {rw->self_start, (uintptr_t)rw->snapshot};
    uint64_t cut_b[2] = {rw->self_end, (uintptr_t)rw->snapshot + rw->snapshot_len};

    /* In address order, so that one pass splits a mapping around both. */
    if (cut_a[1] < cut_a[0]) {
        uint64_t a = cut_a[0], b = cut_b[0];
        cut_a[0] = cut_a[1];
        cut_b[0] = cut_b[1];
        cut_a[1] = a;
        cut_b[1] = b;
    }

    for (size_t i = 0; i < n; i++) {
        const struct mf_vma *v = &vmas[i];
        if (!v->writable || is_special(v))
            continue;
        if (v->shared)
            return mf_errx(ENOTSUP, "a writable shared mapping at %#llx-%#llx cannot be rewound",
                           (unsigned long long)v->start, (unsigned long long)v->end);
        uint64_t a = v->start, b = v->end;
        /* At most two cuts, each possibly inside this mapping: split around them. */
        for (int c = 0; c < 2 && a < b; c++) {
            if (cut_a[c] == cut_b[c] || cut_b[c] <= a || cut_a[c] >= b)
                continue;
            if (cut_a[c] > a)
                MF_TRY(add(rw, a, cut_a[c], arg));
            a = cut_b[c] < b ? cut_b[c] : b;
        }
        if (a < b)
            MF_TRY(add(rw, a, b, arg));
    }
    return true;
}

static bool count_piece(struct mf_rewinder *rw, uint64_t a, uint64_t b, void *arg)
{
    (void)rw;
    *(size_t *)arg += (size_t)(b - a);
    return true;
}

struct track_state {
    uint64_t run_a, run_b;  /* adjacent pieces are tracked as one range */
};

static bool track_run(struct mf_rewinder *rw, struct track_state *st)
{
    if (st->run_a == st->run_b)
        return true;
    return mf_dirty_track(&rw->tracker, (void *)(uintptr_t)st->run_a, (size_t)(st->run_b - st->run_a));
}

static bool track_piece(struct mf_rewinder *rw, uint64_t a, uint64_t b, void *arg)
{
    struct track_state *st = arg;
    if (st->run_b == a && st->run_a != st->run_b) {
        st->run_b = b;
        return true;
    }
    MF_TRY(track_run(rw, st));
    st->run_a = a;
    st->run_b = b;
    return true;
}

static bool read_maps(struct mf_rewinder *rw, char *buf, size_t *len, struct mf_vma *vmas, size_t *n)
{
    MF_TRY(mf_maps_read(rw->maps_fd, buf, MF_REWIND_MAPS_CAP, len));
    return mf_maps_parse(buf, *len, vmas, MF_REWIND_MAX_VMAS, n);
}

/* Where copy_present puts the pages of tracked range i. */
struct present_copy {
    struct mf_rewinder *rw;
    size_t i;
};

static bool copy_batch(struct mf_pagemap_walk *w, size_t got, void *ctx)
{
    const struct present_copy *pc = ctx;
    struct mf_rewinder *rw = pc->rw;
    uint64_t range_start = rw->tracker.ranges[pc->i].start;

    (void)w;
    for (size_t k = 0; k < got; k++) {
        const struct mf_dirty_region *r = &rw->dirty[k];
        if (rw->verify)
            memcpy(rw->copy[pc->i] + (r->start - range_start), (void *)(uintptr_t)r->start,
                   (size_t)(r->end - r->start));
        rw->snapshot_pages += (size_t)(r->end - r->start) / PAGE;
    }
    return true;
}

/* Counts the pages of each tracked range that hold anything (present or
 * swapped) and, under verification, copies them; the rest of the copy
 * stays untouched zero pages. */
static bool copy_present(struct mf_rewinder *rw)
{
    const struct mf_dirty_tracker *t = &rw->tracker;
    size_t offset = 0;

    rw->snapshot_pages = 0;
    for (size_t i = 0; i < t->nranges; i++) {
        struct present_copy pc = {rw, i};
        struct mf_pagemap_walk w = {
            .fd = t->pagemap_fd,
            .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            .return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            .vec = rw->dirty, .vec_len = MF_REWIND_REGIONS,
            .at = t->ranges[i].start, .end = t->ranges[i].end,
        };
        rw->copy[i] = rw->verify ? rw->snapshot + offset : NULL;
        offset += (size_t)(t->ranges[i].end - t->ranges[i].start);
        MF_TRY(mf_pagemap_walk(&w, copy_batch, &pc));
    }
    return true;
}

/* Pages of address space (VmSize), the first field of statm. */
static bool vm_pages(const struct mf_rewinder *rw, uint64_t *out)
{
    char buf[160];
    ssize_t n;

    do
        n = pread(rw->statm_fd, buf, sizeof(buf) - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return mf_err("pread(/proc/self/statm)");
    buf[n] = '\0';
    uint64_t v = 0;
    for (const char *p = buf; *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    *out = v;
    return true;
}

/* ---- kernel state ---- */

/* Whether /proc/self/fdinfo lists a lock on fd (flock, OFD or POSIX). */
static bool holds_locks(int fd, bool *locked)
{
    char path[48], buf[4096];

    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    mf_cleanup_fd int info = open(path, O_RDONLY | O_CLOEXEC);
    if (info < 0)
        return mf_err("open(%s)", path);
    *locked = false;
    /* The lock lines come last; reading the start of each chunk suffices
     * for "lock:" at a line's start. */
    for (;;) {
        ssize_t n = read(info, buf, sizeof(buf) - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return mf_err("read(%s)", path);
        if (n == 0)
            return true;
        buf[n] = '\0';
        if (strncmp(buf, "lock:", 5) == 0 || strstr(buf, "\nlock:") != NULL) {
            *locked = true;
            return true;
        }
    }
}

/* One fd open at the snapshot: what the rewind checks and puts back. */
static bool snapshot_fd(struct mf_rewinder *rw, int fd)
{
    struct stat st;

    if (rw->nfds == MF_REWIND_MAX_FDS)
        return mf_errx(EMFILE, "more than %d open fds at the snapshot", MF_REWIND_MAX_FDS);
    if (fstat(fd, &st) < 0)
        return mf_err("fstat(fd %d)", fd);
    int status_flags = fcntl(fd, F_GETFL);
    if (status_flags < 0)
        return mf_err("fcntl(fd %d, F_GETFL)", fd);
    int fd_flags = fcntl(fd, F_GETFD);
    if (fd_flags < 0)
        return mf_err("fcntl(fd %d, F_GETFD)", fd);
    /* Insertion keeps them sorted for the close_range() gaps. */
    size_t at = rw->nfds++;
    while (at > 0 && rw->fds[at - 1].fd > fd) {
        rw->fds[at] = rw->fds[at - 1];
        at--;
    }
    bool locked = false;
    if (S_ISREG(st.st_mode))
        MF_TRY(holds_locks(fd, &locked));
    rw->fds[at] = (struct mf_snapshot_fd){
        .fd = fd, .dev = st.st_dev, .ino = st.st_ino,
        .offset = S_ISREG(st.st_mode) ? lseek(fd, 0, SEEK_CUR) : -1,
        .status_flags = status_flags, .fd_flags = fd_flags,
        .regular = S_ISREG(st.st_mode), .locked = locked,
    };
    return true;
}

static bool snapshot_fds(struct mf_rewinder *rw)
{
    char buf[16384];
    mf_cleanup_fd int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dir < 0)
        return mf_err("open(/proc/self/fd)");
    rw->nfds = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));
        if (n < 0)
            return mf_err("getdents64(/proc/self/fd)");
        if (n == 0)
            break;
        for (long pos = 0; pos < n;) {
            struct dirent64 *d = (struct dirent64 *)(void *)(buf + pos);
            pos += d->d_reclen;
            char *end;
            long fd = strtol(d->d_name, &end, 10);
            if (d->d_name[0] == '.' || *end != '\0' || fd == dir)
                continue;
            MF_TRY(snapshot_fd(rw, (int)fd));
        }
    }
    if (close(mf_steal_fd(&dir)) < 0)
        return mf_err("close(/proc/self/fd)");
    return true;
}

/* Every disposition the snapshot records and the rewind puts back: not
 * SIGKILL's or SIGSTOP's (fixed), nor the worker's own reserved signal. */
static bool restorable(const struct mf_rewinder *rw, int sig)
{
    return sig != SIGKILL && sig != SIGSTOP && sig != rw->reserved_signal;
}

static bool snapshot_kernel_state(struct mf_rewinder *rw)
{
    static const int which[3] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};

    MF_TRY(snapshot_fds(rw));
    rw->resethand = false;
    for (int sig = 1; sig < NSIG; sig++) {
        if (!restorable(rw, sig))
            continue;
        /* The kernel's own struct, restorer included: put back exactly. */
        long err = mf_gated_sigaction(sig, NULL, &rw->actions[sig]);
        if (err < 0) {
            errno = (int)-err;
            return mf_err("rt_sigaction(%d, query)", sig);
        }
        if (rw->actions[sig].flags & SA_RESETHAND)
            rw->resethand = true;
    }
    rw->timers_armed = false;
    for (int i = 0; i < 3; i++) {
        if (getitimer(which[i], &rw->timers[i]) < 0)
            return mf_err("getitimer(%d)", which[i]);
        if (rw->timers[i].it_value.tv_sec != 0 || rw->timers[i].it_value.tv_usec != 0)
            rw->timers_armed = true;
    }
    if (sigaltstack(NULL, &rw->altstack) < 0)
        return mf_err("sigaltstack(query)");
    ssize_t slack = pread(rw->slack_fd, rw->slack_sealed, sizeof(rw->slack_sealed), 0);
    if (slack <= 0)
        return mf_err("pread(/proc/self/timerslack_ns)");
    rw->slack_len = (size_t)slack;
    rw->altstack.ss_flags &= SS_DISABLE; /* SS_ONSTACK is a state, not a setting */
    rw->umask = umask(0);
    (void)umask(rw->umask);
    return true;
}

bool mf_rewind_snapshot(struct mf_rewinder *rw)
{
    size_t len = 0, n = 0, total = 0, again = 0;
    struct track_state st = {0};

    rw->brk = (uintptr_t)syscall(SYS_brk, 0);
    MF_TRY(read_maps(rw, rw->maps_now, &len, rw->vmas_now, &n));
    MF_TRY(for_each_piece(rw, rw->vmas_now, n, count_piece, &total));
    /* The copy only under verification; the template's index always. */
    size_t copy_len = rw->verify ? round_up(total) : 0;
    rw->snapshot_len = copy_len + mf_template_index_size(total);
    rw->snapshot = mmap(NULL, rw->snapshot_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (rw->snapshot == MAP_FAILED) {
        rw->snapshot = NULL;
        return mf_err("mmap(%zu bytes for the snapshot)", rw->snapshot_len);
    }
    /* The snapshot's own mapping may have merged with a neighbour: cut it out. */
    MF_TRY(read_maps(rw, rw->maps_now, &len, rw->vmas_now, &n));
    MF_TRY(for_each_piece(rw, rw->vmas_now, n, count_piece, &again));
    if (again != total)
        return mf_errx(EAGAIN, "writable memory changed while the snapshot was taken (%zu, then %zu bytes)", total,
                       again);
    /* Protect, mark everything clean, then clone the template: its memory
     * is the snapshot, and whatever is written after shows as dirty and is
     * rewound to it. */
    MF_TRY(for_each_piece(rw, rw->vmas_now, n, track_piece, &st));
    MF_TRY(track_run(rw, &st));
    /* The joined scan requires PAGE_IS_WPALLOWED, which costs the kernel's
     * walk its fast path (2.6 against 5.7 ns per page-table entry, one
     * PAGEMAP_SCAN over 200 MiB): it pays only while the calls it saves
     * cost more than that, about MF_SCAN_PAGES_PER_CALL pages per range. */
    rw->joined_scan_pays = total / PAGE < rw->tracker.nranges * MF_SCAN_PAGES_PER_CALL;
    do {
        size_t got, pages;
        MF_TRY(mf_dirty_collect(&rw->tracker, rw->dirty, MF_REWIND_REGIONS, &got, &pages));
    } while (mf_dirty_pending(&rw->tracker));
    MF_TRY(copy_present(rw));
    MF_TRY(mf_template_start(&rw->tpl, &rw->tracker, (uint32_t *)(void *)(rw->snapshot + copy_len),
                             rw->snapshot_len - copy_len));
    /* After the template: its store mapping and socket are part of what
     * every rewind must match; registration split mappings. */
    MF_TRY(read_maps(rw, rw->maps_sealed, &rw->maps_sealed_len, rw->vmas_sealed, &rw->nvmas_sealed));
    MF_TRY(snapshot_kernel_state(rw));
    return vm_pages(rw, &rw->vm_pages_sealed);
}

/* ---- the rewind ---- */

static const char *line_of(const char *text, size_t len, size_t at, int *line_len)
{
    size_t a = at, b = at;
    while (a > 0 && text[a - 1] != '\n')
        a--;
    while (b < len && text[b] != '\n')
        b++;
    *line_len = (int)(b - a);
    return text + a;
}

static int prot_of(const struct mf_vma *v)
{
    return (v->readable ? PROT_READ : 0) | (v->writable ? PROT_WRITE : 0) | (v->executable ? PROT_EXEC : 0);
}

/* Unmaps what the request mapped; puts protections back where they changed.
 * What it cannot repair (a sealed mapping gone or replaced) the caller's
 * second comparison finds. */
static bool repair_mappings(struct mf_rewinder *rw, size_t len)
{
    size_t n = 0, s = 0;

    MF_TRY(mf_maps_parse(rw->maps_now, len, rw->vmas_now, MF_REWIND_MAX_VMAS, &n));
    for (size_t i = 0; i < n; i++) {
        const struct mf_vma *v = &rw->vmas_now[i];
        uint64_t a = v->start;
        while (s < rw->nvmas_sealed && rw->vmas_sealed[s].end <= a)
            s++;
        /* The parts of v that no sealed mapping covers were added since. */
        for (size_t k = s; a < v->end; k++) {
            uint64_t gap_end = v->end;
            if (k < rw->nvmas_sealed && rw->vmas_sealed[k].start < v->end)
                gap_end = rw->vmas_sealed[k].start;
            if (gap_end > a && gate_call(SYS_munmap, (long)a, (long)(gap_end - a), 0, 0) < 0)
                return mf_err("munmap(%#llx-%#llx, added by the request)", (unsigned long long)a,
                              (unsigned long long)gap_end);
            if (gap_end == v->end)
                break;
            if (rw->vmas_sealed[k].end > a)
                a = rw->vmas_sealed[k].end;
        }
    }
    for (size_t k = 0; k < rw->nvmas_sealed; k++) {
        const struct mf_vma *sv = &rw->vmas_sealed[k];
        for (size_t i = 0; i < n; i++) {
            const struct mf_vma *v = &rw->vmas_now[i];
            if (v->start != sv->start || v->end != sv->end || prot_of(v) == prot_of(sv))
                continue;
            /* Written through a protection the snapshot did not track. */
            if (v->writable && !sv->writable)
                return mf_errx(EPERM, "the request made %#llx-%#llx writable; its pages cannot be rewound",
                               (unsigned long long)v->start, (unsigned long long)v->end);
            if (mprotect((void *)(uintptr_t)v->start, (size_t)(v->end - v->start), prot_of(sv)) < 0)
                return mf_err("mprotect(%#llx-%#llx) back to its sealed protection", (unsigned long long)v->start,
                              (unsigned long long)v->end);
        }
    }
    return true;
}

static bool rewind_mappings(struct mf_rewinder *rw, bool every)
{
    size_t len = 0;
    uint64_t size = 0;

    /* A mapping added, removed or grown changes the size; a re-protected
     * one does not, which the periodic full comparison (and verification
     * mode, always) catches. */
    MF_TRY(vm_pages(rw, &size));
    bool replaced = rw->state_gated && rw->state_dirty.mappings;
    if (size == rw->vm_pages_sealed && !rw->verify && !replaced && !every)
        return true;
    for (int attempt = 0;; attempt++) {
        MF_TRY(mf_maps_read(rw->maps_fd, rw->maps_now, MF_REWIND_MAPS_CAP, &len));
        if (len == rw->maps_sealed_len && memcmp(rw->maps_now, rw->maps_sealed, len) == 0)
            return true;
        if (attempt == 1)
            break;
        MF_TRY(repair_mappings(rw, len));
    }
    size_t at = 0;
    while (at < len && at < rw->maps_sealed_len && rw->maps_now[at] == rw->maps_sealed[at])
        at++;
    int was_len, now_len;
    const char *was = line_of(rw->maps_sealed, rw->maps_sealed_len, at, &was_len);
    const char *now = line_of(rw->maps_now, len, at, &now_len);
    return mf_errx(EFAULT, "mappings cannot be rewound: sealed '%.*s', now '%.*s'", was_len, was, now_len, now);
}

static size_t range_of(const struct mf_dirty_tracker *t, uint64_t addr, size_t hint)
{
    size_t i = hint < t->nranges ? hint : 0;
    if (t->ranges[i].start > addr)
        i = 0;
    while (i < t->nranges && t->ranges[i].end <= addr)
        i++;
    return i;
}

static bool count_reprotected(struct mf_pagemap_walk *w, size_t got, void *ctx)
{
    const struct mf_dirty_region *r = w->vec;
    size_t *found = ctx;

    for (size_t k = 0; k < got; k++)
        *found += (size_t)((r[k].end - r[k].start) / PAGE);
    return true;
}

/* Write-protects again the written pages of [start, end), which the copy
 * back just wrote, in one walk; it must find exactly `expected` pages (a
 * page written since the scan would be protected with content the snapshot
 * never had). One call per span instead of one UFFDIO_WRITEPROTECT per
 * region: a CPython request writes ~100 scattered regions. */
static bool reprotect_span(struct mf_rewinder *rw, uint64_t start, uint64_t end, size_t expected)
{
    size_t found = 0;
    struct mf_pagemap_walk w = {
        .fd = rw->tracker.pagemap_fd, .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
        .vec = rw->reprotected, .vec_len = MF_DIRTY_SCAN_BATCH,
        .at = start, .end = end,
    };

    MF_TRY(mf_pagemap_walk(&w, count_reprotected, &found));
    if (found != expected)
        return mf_errx(EFAULT, "%zu pages written during the rewind itself (re-protected %zu, copied %zu)",
                       found - expected, found, expected);
    return true;
}

/* Consecutive written pages of one tracked range, re-protected in one walk. */
struct span {
    size_t range; /* SIZE_MAX: none yet */
    uint64_t start, end;
    size_t pages;
};

static bool span_flush(struct mf_rewinder *rw, struct span *sp)
{
    if (sp->range != SIZE_MAX)
        MF_TRY(reprotect_span(rw, sp->start, sp->end, sp->pages));
    sp->range = SIZE_MAX;
    return true;
}

/* A span must not reach over a hot page: the walk would protect it. */
static bool span_add(struct mf_rewinder *rw, struct span *sp, size_t range, uint64_t a, uint64_t b,
                     bool hot_between)
{
    if (sp->range != range || hot_between) {
        MF_TRY(span_flush(rw, sp));
        sp->range = range;
        sp->start = a;
        sp->pages = 0;
    }
    sp->end = b;
    sp->pages += (size_t)((b - a) / PAGE);
    return true;
}

/* Not merged with its neighbour: a region stays within one tracked range. */
static void learn_add(struct mf_rewinder *rw, uint64_t a, uint64_t b)
{
    if (rw->nlearnt == MF_HOT_MAX_REGIONS) {
        rw->learning_overflow = true;
        return;
    }
    rw->learnt[rw->nlearnt++] = (struct mf_dirty_region){.start = a, .end = b};
}

/* Written region [a, b) of this rewind (in address order): keeps what every
 * rewind so far also wrote (everything, on the first). */
static void learn_region(struct mf_rewinder *rw, uint64_t a, uint64_t b, size_t *cursor)
{
    if (rw->hot_rewinds == 1) {
        learn_add(rw, a, b);
        return;
    }
    size_t k = *cursor;
    while (k < rw->nlearning && rw->learning[k].end <= a)
        k++;
    *cursor = k;
    for (; k < rw->nlearning && rw->learning[k].start < b; k++) {
        uint64_t from = rw->learning[k].start > a ? rw->learning[k].start : a;
        uint64_t to = rw->learning[k].end < b ? rw->learning[k].end : b;
        learn_add(rw, from, to);
    }
}

/* After a rewind that learnt: the next step, and at the last the hot pages
 * are fixed. No ioctl unprotects them (the request filter allows none): the
 * next write to each, the request's or the copy back's, does, and no
 * re-protection reaches them again. */
static void learn_end(struct mf_rewinder *rw)
{
    if (rw->hot_rewinds++ == 0)
        return; /* the first request's writes include one-time set-up */
    memcpy(rw->learning, rw->learnt, rw->nlearnt * sizeof(rw->learnt[0]));
    rw->nlearning = rw->nlearnt;
    rw->nlearnt = 0;
    if (rw->hot_rewinds <= MF_HOT_LEARN_REWINDS || rw->learning_overflow)
        return;
    size_t hint = 0;
    for (size_t k = 0; k < rw->nlearning; k++) {
        rw->hot[k] = rw->learning[k];
        rw->hot_range[k] = hint = range_of(&rw->tracker, rw->learning[k].start, hint);
    }
    rw->nhot = rw->nlearning;
}

static bool rewind_pages(struct mf_rewinder *rw, size_t *pages, bool joined)
{
    struct mf_dirty_tracker *t = &rw->tracker;
    bool learning = rw->hot_rewinds <= MF_HOT_LEARN_REWINDS;
    size_t hint = 0, hot = 0, learn_cursor = 0;
    struct span sp = {.range = SIZE_MAX};

    *pages = 0;
    for (size_t k = 0; k < rw->nhot; k++) {
        const struct mf_dirty_region *r = &rw->hot[k];
        size_t i = rw->hot_range[k];
        MF_TRY(mf_template_copy(&rw->tpl, t, i, r->start, (size_t)(r->end - r->start)));
        *pages += (size_t)((r->end - r->start) / PAGE);
    }
    /* The scan also reports the hot pages (not protected reads as written):
     * what is left of each region once they are cut out is copied back and
     * protected again. */
    do {
        size_t got, batch_pages;
        MF_TRY(joined ? mf_dirty_scan_joined(t, rw->dirty, MF_REWIND_REGIONS, &got, &batch_pages)
                      : mf_dirty_scan(t, rw->dirty, MF_REWIND_REGIONS, &got, &batch_pages));
        MF_TRY(mf_template_fetch(&rw->tpl, t, rw->dirty, got));
        for (size_t k = 0; k < got; k++) {
            const struct mf_dirty_region *r = &rw->dirty[k];
            size_t i = hint = range_of(t, r->start, hint);
            if (i == t->nranges || r->end > t->ranges[i].end)
                return mf_errx(EFAULT, "written pages %#llx-%#llx outside the tracked ranges",
                               (unsigned long long)r->start, (unsigned long long)r->end);
            if (learning && rw->hot_rewinds > 0)
                learn_region(rw, r->start, r->end, &learn_cursor);
            uint64_t a = r->start;
            while (a < r->end) {
                while (hot < rw->nhot && rw->hot[hot].end <= a)
                    hot++;
                uint64_t b = r->end;
                if (hot < rw->nhot && rw->hot[hot].start < b) {
                    if (rw->hot[hot].start <= a) {
                        a = rw->hot[hot].end < r->end ? rw->hot[hot].end : r->end;
                        continue;
                    }
                    b = rw->hot[hot].start;
                }
                MF_TRY(mf_template_copy(&rw->tpl, t, i, a, (size_t)(b - a)));
                MF_TRY(span_add(rw, &sp, i, a, b, hot > 0 && rw->hot[hot - 1].end > sp.end));
                *pages += (size_t)((b - a) / PAGE);
                a = b;
            }
        }
        (void)batch_pages;
    } while (mf_dirty_pending(t));
    MF_TRY(span_flush(rw, &sp));
    if (learning)
        learn_end(rw);
    return true;
}

/* The template's store must hold the snapshot's content for every page
 * it has a slot for. */
static bool verify_store(const struct mf_rewinder *rw, size_t i)
{
    const struct mf_dirty_tracker *t = &rw->tracker;

    for (uint64_t a = t->ranges[i].start; a < t->ranges[i].end; a += PAGE) {
        const uint8_t *kept = mf_template_page(&rw->tpl, t, i, a);
        if (kept != NULL && memcmp(kept, rw->copy[i] + (a - t->ranges[i].start), PAGE) != 0)
            return mf_errx(EFAULT, "verification: the template's copy of page %#llx differs from the snapshot",
                           (unsigned long long)a);
    }
    return true;
}

static bool verify_pages(const struct mf_rewinder *rw)
{
    const struct mf_dirty_tracker *t = &rw->tracker;

    for (size_t i = 0; i < t->nranges; i++) {
        const uint8_t *live = (const uint8_t *)(uintptr_t)t->ranges[i].start;
        size_t len = (size_t)(t->ranges[i].end - t->ranges[i].start);
        MF_TRY(verify_store(rw, i));
        if (memcmp(live, rw->copy[i], len) == 0)
            continue;
        size_t at = 0;
        while (at < len && live[at] == rw->copy[i][at])
            at++;
        return mf_errx(EFAULT, "verification: byte %#llx differs from the snapshot after the rewind "
                       "(range %#llx-%#llx)", (unsigned long long)(t->ranges[i].start + at),
                       (unsigned long long)t->ranges[i].start, (unsigned long long)t->ranges[i].end);
    }
    return true;
}

static bool close_range_checked(unsigned a, unsigned b)
{
    if (a <= b && gate_call(SYS_close_range, a, b, 0, 0) < 0)
        return mf_err("close_range(%u, %u)", a, b);
    return true;
}

/* One fd of the snapshot: repaired (its flags put back), or under
 * verification with the gate clean only compared, any difference an error. */
static bool rewind_fd(const struct mf_snapshot_fd *s, bool repair)
{
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return mf_err("fd %d of the snapshot", s->fd);
    if (st.st_dev != s->dev || st.st_ino != s->ino)
        return mf_errx(EBADF, "fd %d of the snapshot was replaced by the request", s->fd);
    /* O_NONBLOCK and O_APPEND are the file description's: a request
     * that set them would hand them to the next. */
    if (repair) {
        if (!(s->status_flags & O_PATH) && gate_call(SYS_fcntl, s->fd, F_SETFL, s->status_flags, 0) < 0)
            return mf_err("fcntl(fd %d, F_SETFL, %#x)", s->fd, s->status_flags);
        if (gate_call(SYS_fcntl, s->fd, F_SETFD, s->fd_flags, 0) < 0)
            return mf_err("fcntl(fd %d, F_SETFD, %#x)", s->fd, s->fd_flags);
        return true;
    }
    int status_flags = fcntl(s->fd, F_GETFL), fd_flags = fcntl(s->fd, F_GETFD);
    if (status_flags < 0 || fd_flags < 0)
        return mf_err("fcntl(fd %d, F_GETFL/F_GETFD)", s->fd);
    if (status_flags != s->status_flags || fd_flags != s->fd_flags)
        return mf_errx(EPERM, "the flags of fd %d changed without passing the state gate", s->fd);
    return true;
}

/* Fds opened since are closed and file offsets put back on every rewind
 * (neither passes the state gate); the rest only when the gate saw a
 * change, every so many rewinds, or always without the gate. */
static bool rewind_fds(struct mf_rewinder *rw, bool every)
{
    unsigned next = 0;
    bool repair = !rw->state_gated || rw->state_dirty.fds || every;

    for (size_t i = 0; i < rw->nfds; i++) {
        const struct mf_snapshot_fd *s = &rw->fds[i];
        if ((unsigned)s->fd > next)
            MF_TRY(close_range_checked(next, (unsigned)s->fd - 1));
        next = (unsigned)s->fd + 1;
    }
    MF_TRY(close_range_checked(next, ~0u));
    for (size_t i = 0; i < rw->nfds; i++) {
        const struct mf_snapshot_fd *s = &rw->fds[i];
        if (repair || rw->verify)
            MF_TRY(rewind_fd(s, repair));
        if (s->offset >= 0 && lseek(s->fd, s->offset, SEEK_SET) < 0)
            return mf_err("lseek(fd %d, %lld)", s->fd, (long long)s->offset);
    }
    rw->state_dirty.fds = 0;
    return true;
}

/* The timer slack: a request changes it by writing
 * /proc/self/timerslack_ns, with no call the gate sees. */
static bool rewind_timerslack(struct mf_rewinder *rw)
{
    char now[sizeof(rw->slack_sealed)];
    ssize_t n = pread(rw->slack_fd, now, sizeof(now), 0);

    if (n <= 0)
        return mf_err("pread(/proc/self/timerslack_ns)");
    if ((size_t)n == rw->slack_len && memcmp(now, rw->slack_sealed, rw->slack_len) == 0)
        return true;
    /* No pwrite on this file (ESPIPE); write() leaves the offset at 0. */
    if (write(rw->slack_fd, rw->slack_sealed, rw->slack_len) != (ssize_t)rw->slack_len)
        return mf_err("write(/proc/self/timerslack_ns) back to its sealed value");
    if (lseek(rw->slack_fd, 0, SEEK_SET) < 0)
        return mf_err("lseek(/proc/self/timerslack_ns, 0)");
    return true;
}

/* Locks a request took on a snapshot fd: flock and OFD locks belong to
 * the open file, POSIX locks to the worker. Dropped, all three kinds, on
 * every regular file of the snapshot. A worker reopens the regular files
 * it inherits (its own open files: the host's locks are not on them), so
 * none holds a lock at the snapshot; if one did, what a request did to it
 * could not be undone, and the worker is replaced. */
static bool rewind_locks(struct mf_rewinder *rw)
{
    if (rw->state_gated && !rw->state_dirty.locks)
        return true;
    for (size_t i = 0; i < rw->nfds; i++) {
        const struct mf_snapshot_fd *s = &rw->fds[i];
        if (!s->regular)
            continue;
        if (s->locked)
            return mf_errx(EPERM, "fd %d held a lock at the snapshot and the request locked or unlocked "
                           "one; it cannot be rewound", s->fd);
        struct flock all = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        /* EPERM: the request filter denies flock, so no request took one. */
        if (gate_call(SYS_flock, s->fd, LOCK_UN, 0, 0) < 0 && errno != EPERM)
            return mf_err("flock(fd %d, LOCK_UN)", s->fd);
        if (gate_call(SYS_fcntl, s->fd, F_OFD_SETLK, (long)(uintptr_t)&all, 0) < 0)
            return mf_err("fcntl(fd %d, F_OFD_SETLK, F_UNLCK)", s->fd);
        if (gate_call(SYS_fcntl, s->fd, F_SETLK, (long)(uintptr_t)&all, 0) < 0)
            return mf_err("fcntl(fd %d, F_SETLK, F_UNLCK)", s->fd);
    }
    rw->state_dirty.locks = 0;
    return true;
}

/* Under verification, a disposition that changed with no gated call would
 * mean the gate missed one: fail rather than restore quietly. */
static bool check_dispositions(const struct mf_rewinder *rw)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct mf_kernel_sigaction now;
        if (!restorable(rw, sig))
            continue;
        long err = mf_gated_sigaction(sig, NULL, &now);
        if (err < 0) {
            errno = (int)-err;
            return mf_err("rt_sigaction(%d, query)", sig);
        }
        if (memcmp(&now, &rw->actions[sig], sizeof(now)) != 0)
            return mf_errx(EPERM, "signal %d's disposition changed without passing the sigaction gate", sig);
    }
    return true;
}

static bool rewind_dispositions(struct mf_rewinder *rw)
{
    bool every = ++rw->signal_rewinds % MF_REWIND_MAPS_EVERY == 0;
    if (rw->signals_gated && !rw->resethand && !rw->signals_dirty && !every)
        return rw->verify ? check_dispositions(rw) : true;
    for (int sig = 1; sig < NSIG; sig++) {
        if (!restorable(rw, sig))
            continue;
        long err = mf_gated_sigaction(sig, &rw->actions[sig], NULL);
        if (err < 0) {
            errno = (int)-err;
            return mf_err("rt_sigaction(%d) back to its sealed disposition", sig);
        }
    }
    rw->signals_dirty = 0;
    return true;
}

void mf_rewind_signals_gated(struct mf_rewinder *rw)
{
    rw->signals_gated = true;
}

void mf_rewind_state_gated(struct mf_rewinder *rw)
{
    rw->state_gated = true;
}

/* Under verification with the gate clean: what the gate would have seen
 * must not have changed. */
static bool check_process_state(const struct mf_rewinder *rw)
{
    static const int which[3] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};
    struct stat here, sealed;
    stack_t alt;

    for (int i = 0; i < 3 && !rw->timers_armed; i++) {
        struct itimerval now;
        if (getitimer(which[i], &now) < 0)
            return mf_err("getitimer(%d)", which[i]);
        if (now.it_value.tv_sec != 0 || now.it_value.tv_usec != 0 || now.it_interval.tv_sec != 0 ||
            now.it_interval.tv_usec != 0)
            return mf_errx(EPERM, "interval timer %d set without passing the state gate", which[i]);
    }
    if (sigaltstack(NULL, &alt) < 0)
        return mf_err("sigaltstack(query)");
    if (alt.ss_sp != rw->altstack.ss_sp || alt.ss_size != rw->altstack.ss_size ||
        (alt.ss_flags & SS_DISABLE) != rw->altstack.ss_flags)
        return mf_errx(EPERM, "the alternate signal stack changed without passing the state gate");
    long was = gate_call(SYS_umask, rw->umask, 0, 0, 0);
    if (was != (long)rw->umask)
        return mf_errx(EPERM, "umask changed to %#lo without passing the state gate", was);
    if (stat(".", &here) < 0 || fstat(rw->cwd_fd, &sealed) < 0)
        return mf_err("stat(cwd)");
    if (here.st_dev != sealed.st_dev || here.st_ino != sealed.st_ino)
        return mf_errx(EPERM, "the working directory changed without passing the state gate");
    return true;
}

/* Timers, the alternate signal stack, umask and cwd: put back when the
 * gate saw a change (a running sealed timer: always), else, under
 * verification, compared. */
static bool rewind_process_state(struct mf_rewinder *rw, bool every)
{
    static const int which[3] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};

    if (rw->state_gated && !rw->state_dirty.process && !every) {
        for (int i = 0; i < 3 && rw->timers_armed; i++)
            if (gate_call(SYS_setitimer, which[i], (long)(uintptr_t)&rw->timers[i], 0, 0) < 0)
                return mf_err("setitimer(%d)", which[i]);
        return rw->verify ? check_process_state(rw) : true;
    }
    for (int i = 0; i < 3; i++)
        if (gate_call(SYS_setitimer, which[i], (long)(uintptr_t)&rw->timers[i], 0, 0) < 0)
            return mf_err("setitimer(%d)", which[i]);
    if (gate_call(SYS_sigaltstack, (long)(uintptr_t)&rw->altstack, 0, 0, 0) < 0)
        return mf_err("sigaltstack back to its sealed setting");
    (void)gate_call(SYS_umask, rw->umask, 0, 0, 0);
    if (gate_call(SYS_fchdir, rw->cwd_fd, 0, 0, 0) < 0)
        return mf_err("fchdir back to the sealed cwd");
    rw->state_dirty.process = 0;
    return true;
}

static bool rewind_signals(struct mf_rewinder *rw)
{
    static const struct timespec no_wait = {0, 0};
    sigset_t pending;

    MF_TRY(rewind_dispositions(rw));
    /* A signal the request left pending (blocked, or raised late) would
     * reach the next request: take it now. */
    if (sigpending(&pending) < 0)
        return mf_err("sigpending");
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigismember(&pending, sig) != 1)
            continue;
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        if (sigtimedwait(&one, NULL, &no_wait) < 0 && errno != EAGAIN)
            return mf_err("sigtimedwait(%d)", sig);
    }
    return true;
}

bool mf_rewind_restore(struct mf_rewinder *rw, size_t *pages)
{
    bool every = ++rw->state_rewinds % MF_REWIND_MAPS_EVERY == 0;
    /* One scan unless a mapping may have been replaced (read before the
     * mappings check clears it). Under verification too: the comparison
     * of every page after it is what would catch a page it missed. */
    bool joined = rw->joined_scan_pays && rw->state_gated && !rw->state_dirty.mappings && !every;

    /* brk first: the heap's end is part of what the mappings must match. */
    if ((uintptr_t)syscall(SYS_brk, rw->brk) != rw->brk)
        return mf_errx(ENOMEM, "brk(%#lx) did not restore the heap's end", (unsigned long)rw->brk);
    MF_TRY(rewind_mappings(rw, every));
    rw->state_dirty.mappings = 0;
    MF_TRY(rewind_pages(rw, pages, joined));
    if (rw->verify)
        MF_TRY(verify_pages(rw));
    MF_TRY(rewind_fds(rw, every));
    MF_TRY(rewind_locks(rw));
    MF_TRY(rewind_signals(rw));
    MF_TRY(rewind_timerslack(rw));
    return rewind_process_state(rw, every);
}
