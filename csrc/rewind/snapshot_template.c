/* The template process that holds a reset worker's pristine pages; see
 * snapshot_template.h. The template's half (template_main onwards) makes
 * raw system calls only: glibc's wrappers write errno, in tracked memory
 * the template must leave as the snapshot found it. */
#define _GNU_SOURCE
#include "rewind/snapshot_template.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rewind/gate_filter.h"
#include "base/cleanup.h"
#include "base/log.h"

#if !defined(__x86_64__)
#error "the template's raw system calls are written for x86_64"
#endif

#define PAGE 4096u
#define STORE_SEALS (F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* The worker's question: this many page addresses follow. */
struct template_ask {
    uint64_t secret;
    uint64_t seq;
    uint32_t count;
    uint32_t reserved;
};

/* The template's answer: the pages asked for are in slots first.. in order.
 * The first answer (seq 0, count 0) says the store is mapped and sealed. */
struct template_answer {
    uint64_t secret;
    uint64_t seq;
    uint32_t first;
    uint32_t count;
};

/* What the template starts with: its copy of mf_template_start's frame. */
struct template_boot {
    int sock;
    int memfd;
    pid_t parent;
    size_t capacity;        /* pages */
    uint64_t secret;
    const struct mf_dirty_tracker *tracker;
};

static long raw_syscall(long nr, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* clone(2) from a known instruction (gate_filter.h): the filter a reset
 * worker runs the program's after_in_child= callbacks under refuses every
 * other clone (host_seal.h). Fork-like: no new stack, the child returns
 * from it too. */
long mf_template_clone(long flags, long stack, long parent_tid, long child_tid, long tls);
extern const char mf_template_clone_after[];
MF_GATE_STUB(mf_template_clone, SYS_clone, "    mov %rcx, %r10\n");

uint64_t mf_template_clone_site(void)
{
    return (uint64_t)(uintptr_t)mf_template_clone_after;
}

/* The tracked range holding addr; t->nranges if none. */
static size_t range_at(const struct mf_dirty_tracker *t, uint64_t addr)
{
    size_t lo = 0, hi = t->nranges;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->ranges[mid].end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->nranges && t->ranges[lo].start <= addr ? lo : t->nranges;
}

size_t mf_template_index_size(size_t tracked_bytes)
{
    return (tracked_bytes / PAGE * sizeof(uint32_t) + PAGE - 1) / PAGE * PAGE;
}

/* ---- the template ---- */

static _Noreturn void template_exit(int code)
{
    for (;;)
        (void)raw_syscall(SYS_exit_group, code, 0, 0, 0, 0, 0);
}

/* Every fd but the two it needs goes: the worker's channels, its
 * userfaultfd and the rest are not the template's business. */
static bool close_others(int a, int b)
{
    int lo = a < b ? a : b, hi = a < b ? b : a;

    if (lo > 0 && raw_syscall(SYS_close_range, 0, lo - 1, 0, 0, 0, 0) < 0)
        return false;
    if (hi > lo + 1 && raw_syscall(SYS_close_range, lo + 1, hi - 1, 0, 0, 0, 0) < 0)
        return false;
    return raw_syscall(SYS_close_range, hi + 1, ~0u, 0, 0, 0, 0) >= 0;
}

/* Answers questions until EOF; any message but the worker's next question
 * ends it (the worker then fails at its next fetch and is replaced). */
static _Noreturn void template_serve(const struct template_boot *b, uint8_t *store)
{
    struct {
        struct template_ask q;
        uint64_t addr[MF_TEMPLATE_BATCH + 1]; /* + 1: a longer message shows */
    } in;
    uint64_t seq = 0;
    size_t next = 0;

    for (;;) {
        long n = raw_syscall(SYS_recvfrom, b->sock, (long)&in, sizeof(in), 0, 0, 0);
        if (n == -EINTR)
            continue;
        if (n < (long)sizeof(in.q) || in.q.secret != b->secret || in.q.seq != ++seq ||
            in.q.count > MF_TEMPLATE_BATCH || (size_t)n != sizeof(in.q) + in.q.count * sizeof(uint64_t) ||
            in.q.count > b->capacity - next)
            template_exit(n == 0 ? 0 : 1);
        for (uint32_t k = 0; k < in.q.count; k++) {
            uint64_t addr = in.addr[k];
            if (addr % PAGE != 0 || range_at(b->tracker, addr) == b->tracker->nranges)
                template_exit(1);
            /* Its own page, untouched since the snapshot: never wrong. */
            memcpy(store + (next + k) * PAGE, (const void *)(uintptr_t)addr, PAGE);
        }
        struct template_answer a = {.secret = b->secret, .seq = seq, .first = (uint32_t)next, .count = in.q.count};
        next += in.q.count;
        if (raw_syscall(SYS_sendto, b->sock, (long)&a, sizeof(a), MSG_NOSIGNAL, 0, 0) != (long)sizeof(a))
            template_exit(1);
    }
}

/* Runs on its copy of the rewinder's stack, every signal blocked (the
 * rewinder's mask). Never returns. */
static _Noreturn void template_main(const struct template_boot *b)
{
    /* Dies with the worker; a worker already gone is caught by getppid. */
    if (raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0, 0) < 0 ||
        raw_syscall(SYS_getppid, 0, 0, 0, 0, 0, 0) != b->parent)
        template_exit(1);
    /* Not dumpable (the worker's mm flag, copied): no /proc/PID/mem for
     * anyone in the tenant. Checked, since everything rests on it. */
    if (raw_syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0, 0) != 0)
        template_exit(1);
    if (!close_others(b->sock, b->memfd))
        template_exit(1);
    long store = raw_syscall(SYS_mmap, 0, (long)(b->capacity * PAGE), PROT_READ | PROT_WRITE, MAP_SHARED,
                             b->memfd, 0);
    if ((unsigned long)store > -4096UL)
        template_exit(1);
    /* Sealed once the only writable mapping exists: the worker's read-only
     * one can then never become writable, nor anyone write() it. */
    if (raw_syscall(SYS_fcntl, b->memfd, F_ADD_SEALS, STORE_SEALS, 0, 0, 0) < 0 ||
        raw_syscall(SYS_close, b->memfd, 0, 0, 0, 0, 0) < 0)
        template_exit(1);
    struct template_answer ready = {.secret = b->secret};
    if (raw_syscall(SYS_sendto, b->sock, (long)&ready, sizeof(ready), MSG_NOSIGNAL, 0, 0) != (long)sizeof(ready))
        template_exit(1);
    template_serve(b, (uint8_t *)store);
}

/* ---- the worker's side ---- */

/* The template's answer to question seq on sock, within the timeout. */
static bool receive_answer(const struct mf_template *tpl, int sock, uint64_t seq, struct template_answer *a)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    struct template_answer extra[2];

    int ready = poll(&p, 1, MF_TEMPLATE_TIMEOUT_MS);
    if (ready < 0)
        return mf_err("poll(template socket, %d ms)", MF_TEMPLATE_TIMEOUT_MS);
    if (ready == 0)
        return mf_errx(ETIMEDOUT, "the template (pid %d) did not answer within %d ms", (int)tpl->pid,
                       MF_TEMPLATE_TIMEOUT_MS);
    ssize_t n = recv(sock, extra, sizeof(extra), MSG_DONTWAIT);
    if (n < 0)
        return mf_err("recv(template socket)");
    if (n == 0)
        return mf_errx(EPIPE, "the template (pid %d) exited", (int)tpl->pid);
    if (n != (ssize_t)sizeof(*a) || extra[0].secret != tpl->secret || extra[0].seq != seq)
        return mf_errx(EPROTO, "unexpected answer from the template (%zd bytes)", n);
    *a = extra[0];
    return true;
}

/* The socket must still be the one the template holds: a request may have
 * put a socket of its own, with an answer queued, at its fd. */
static bool check_socket(const struct mf_template *tpl)
{
    struct stat st;

    if (fstat(tpl->sock, &st) < 0)
        return mf_err("fstat(template socket %d)", tpl->sock);
    if (st.st_dev != tpl->sock_dev || st.st_ino != tpl->sock_ino)
        return mf_errx(EBADF, "the template's socket (fd %d) was replaced by a request", tpl->sock);
    return true;
}

static uint32_t *slot_of(const struct mf_template *tpl, const struct mf_dirty_tracker *t, uint64_t addr)
{
    size_t i = range_at(t, addr);
    if (i == t->nranges)
        return NULL;
    return &tpl->slots[tpl->first[i] + (size_t)(addr - t->ranges[i].start) / PAGE];
}

/* Asks for tpl->ask[0..count) and records their slots. */
static bool ask(struct mf_template *tpl, const struct mf_dirty_tracker *t, size_t count)
{
    struct template_ask q = {.secret = tpl->secret, .seq = ++tpl->seq, .count = (uint32_t)count};
    struct iovec iov[2] = {{&q, sizeof(q)}, {tpl->ask, count * sizeof(uint64_t)}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    struct template_answer a;

    MF_TRY(check_socket(tpl));
    ssize_t sent = sendmsg(tpl->sock, &mh, MSG_NOSIGNAL);
    if (sent < 0 && errno == EPIPE)
        return mf_errx(EPIPE, "the template (pid %d) exited", (int)tpl->pid);
    if (sent < 0)
        return mf_err("sendmsg(template socket, %zu pages)", count);
    if ((size_t)sent != sizeof(q) + count * sizeof(uint64_t))
        return mf_errx(EPROTO, "short send to the template (%zd bytes)", sent);
    MF_TRY(receive_answer(tpl, tpl->sock, q.seq, &a));
    if (a.count != count || a.first != tpl->fetched || tpl->fetched + count > tpl->npages)
        return mf_errx(EPROTO, "the template answered %u pages at slot %u, asked %zu at %zu", a.count, a.first,
                       count, tpl->fetched);
    for (size_t k = 0; k < count; k++)
        *slot_of(tpl, t, tpl->ask[k]) = (uint32_t)(a.first + k + 1);
    tpl->fetched += count;
    return true;
}

bool mf_template_fetch(struct mf_template *tpl, const struct mf_dirty_tracker *t,
                       const struct mf_dirty_region *regions, size_t n)
{
    size_t count = 0;

    for (size_t k = 0; k < n; k++) {
        for (uint64_t a = regions[k].start; a < regions[k].end; a += PAGE) {
            const uint32_t *slot = slot_of(tpl, t, a);
            if (slot == NULL)
                return mf_errx(EFAULT, "written page %#llx outside the tracked ranges", (unsigned long long)a);
            if (*slot != 0)
                continue;
            tpl->ask[count++] = a;
            if (count == MF_TEMPLATE_BATCH) {
                MF_TRY(ask(tpl, t, count));
                count = 0;
            }
        }
    }
    return count == 0 || ask(tpl, t, count);
}

const uint8_t *mf_template_page(const struct mf_template *tpl, const struct mf_dirty_tracker *t, size_t i,
                                uint64_t addr)
{
    uint32_t slot = tpl->slots[tpl->first[i] + (size_t)(addr - t->ranges[i].start) / PAGE];
    return slot == 0 ? NULL : tpl->store + (size_t)(slot - 1) * PAGE;
}

bool mf_template_copy(const struct mf_template *tpl, const struct mf_dirty_tracker *t, size_t i, uint64_t addr,
                      size_t len)
{
    uint64_t end = addr + len;

    while (addr < end) {
        const uint8_t *from = mf_template_page(tpl, t, i, addr);
        if (from == NULL)
            return mf_errx(EFAULT, "page %#llx was never fetched from the template", (unsigned long long)addr);
        /* Pages fetched together sit in consecutive slots: one copy. */
        size_t run = PAGE;
        while (addr + run < end && mf_template_page(tpl, t, i, addr + run) == from + run)
            run += PAGE;
        memcpy((void *)(uintptr_t)addr, from, run);
        addr += run;
    }
    return true;
}

/* The worker's read-only view of the sealed store; it must not be
 * possible to make it writable. */
static bool map_store(struct mf_template *tpl, int memfd)
{
    int seals = fcntl(memfd, F_GET_SEALS);
    if (seals < 0)
        return mf_err("fcntl(template store, F_GET_SEALS)");
    if ((seals & STORE_SEALS) != STORE_SEALS)
        return mf_errx(EPERM, "the template's store is not sealed (seals %#x)", seals);
    void *store = mmap(NULL, tpl->store_len, PROT_READ, MAP_SHARED, memfd, 0);
    if (store == MAP_FAILED)
        return mf_err("mmap(template store, %zu bytes, read-only)", tpl->store_len);
    tpl->store = store;
    if (mprotect(store, tpl->store_len, PROT_READ | PROT_WRITE) == 0)
        return mf_errx(EPERM, "the template's sealed store could be made writable");
    return true;
}

bool mf_template_start(struct mf_template *tpl, const struct mf_dirty_tracker *t, uint32_t *index,
                       size_t index_len)
{
    int sv[2];
    struct template_answer ready;
    struct stat st;

    tpl->sock = -1;
    tpl->npages = 0;
    for (size_t i = 0; i < t->nranges; i++) {
        tpl->first[i] = tpl->npages;
        tpl->npages += (size_t)(t->ranges[i].end - t->ranges[i].start) / PAGE;
    }
    if (tpl->npages == 0 || tpl->npages > UINT32_MAX - 1 || tpl->npages * sizeof(uint32_t) > index_len)
        return mf_errx(EINVAL, "%zu tracked pages: no template for them (index of %zu bytes)", tpl->npages,
                       index_len);
    tpl->slots = index;
    tpl->store_len = tpl->npages * PAGE;
    tpl->seq = 0;
    tpl->fetched = 0;
    if (getrandom(&tpl->secret, sizeof(tpl->secret), 0) != (ssize_t)sizeof(tpl->secret))
        return mf_err("getrandom(template secret)");
    /* Sparse: only the slots filled take memory. */
    mf_cleanup_fd int memfd = memfd_create("mayflyd-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0)
        return mf_err("memfd_create(template store)");
    if (ftruncate(memfd, (off_t)tpl->store_len) < 0)
        return mf_err("ftruncate(template store, %zu)", tpl->store_len);
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return mf_err("socketpair(template)");
    mf_cleanup_fd int mine = sv[0];
    mf_cleanup_fd int its = sv[1];
    struct template_boot boot = {.sock = its, .memfd = memfd, .parent = getpid(), .capacity = tpl->npages,
                                 .secret = tpl->secret, .tracker = t};
    /* A raw clone: glibc's fork would write its own state (malloc locks,
     * the pid cache) in the worker's memory. No exit signal: the worker
     * never waits for it; orphaned, the host (pid 1) reaps it. */
    long pid = mf_template_clone(0, 0, 0, 0, 0);
    if (pid == 0)
        template_main(&boot);
    if (pid < 0) {
        errno = (int)-pid;
        return mf_err("clone(template)");
    }
    tpl->pid = (pid_t)pid;
    if (close(mf_steal_fd(&its)) < 0)
        return mf_err("close(template's end of its socket)");
    MF_TRY(receive_answer(tpl, mine, 0, &ready));
    MF_TRY(map_store(tpl, memfd));
    if (fstat(mine, &st) < 0)
        return mf_err("fstat(template socket)");
    tpl->sock_dev = st.st_dev;
    tpl->sock_ino = st.st_ino;
    tpl->sock = mf_steal_fd(&mine);
    return true;
}
