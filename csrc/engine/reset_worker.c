/*
 * The reset-engine worker's loop; see reset_worker.h.
 *
 * Control moves between two contexts. The rest context is saved once in
 * the worker's own frame; after the snapshot and after every rewind the
 * worker resumes there, with its stack and heap as they were. The entry
 * context runs the rewinder on a stack of its own with every signal
 * blocked. A request ends by switching to the entry context, normally or
 * from the abort signal's handler.
 */
#define _GNU_SOURCE
#include "engine/reset_worker.h"

#include <errno.h>
#include <alloca.h>
#include <malloc.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "engine/engine_common.h"
#include "base/log.h"
#include "rewind/channel_gate.h"
#include "rewind/pagemap_gate.h"
#include "wire/proto.h"
#include "wire/protocol.h"
#include "rewind/rewind.h"
#include "walls/seccomp.h"
#include "rewind/sigaction_gate.h"
#include "rewind/state_gate.h"

enum phase { PHASE_SNAPSHOT, PHASE_IDLE, PHASE_REQUEST, PHASE_REWIND };

/* Outside tracked memory, so that a rewind leaves it alone. */
struct worker_state {
    volatile sig_atomic_t phase;
    volatile uint64_t req_id;
    volatile sig_atomic_t aborted;
    uint32_t status;
    uint32_t nonce;         /* from the host's REQUEST; never in tracked memory */
    volatile sig_atomic_t channel_dirty; /* a request touched a request channel (channel_gate.h) */
    const struct mf_worker_config *cfg;
};

/* Set once before the snapshot: the rewind restores the same value. */
static struct mf_rewinder *the_rewinder;
static struct worker_state *the_state;

static _Noreturn void fail(const struct mf_worker_config *cfg, const char *when)
{
    char text[1024];
    int n = snprintf(text, sizeof(text), "%s: %s", when, mf_last_error());
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(text))
        n = (int)sizeof(text) - 1;
    /* The host learns why from this, or from the exit status if it fails. */
    (void)mf_send_packet(cfg->chan_fd, MF_MSG_WORKER_FAILED, 0, text, (uint32_t)n);
    _exit(MF_WORKER_EXIT_DIRTY);
}

static void on_abort(int sig, siginfo_t *si, void *uctx)
{
    struct worker_state *ws = the_state;
    (void)sig;
    (void)uctx;
    /* Only the host's sigqueue for the request in progress; a late one is moot. */
    if (ws->phase != PHASE_REQUEST || si->si_code != SI_QUEUE ||
        (uint64_t)(uintptr_t)si->si_value.sival_ptr != ws->req_id)
        return;
    ws->aborted = 1;
    ws->phase = PHASE_REWIND;
    setcontext(&the_rewinder->entry);
}

/* Runs on the rewinder's stack with every signal blocked. */
static void rewinder_entry(void)
{
    struct mf_rewinder *rw = the_rewinder;
    struct worker_state *ws = the_state;
    const struct mf_worker_config *cfg = ws->cfg;
    uint64_t started = mf_now_us();

    if (ws->phase == PHASE_SNAPSHOT) {
        if (!mf_rewind_snapshot(rw))
            fail(cfg, "snapshot");
        /* After the snapshot exists: the cap counts from the whole worker. */
        struct mf_limits mem = {.memory_bytes = cfg->limits.memory_bytes};
        if (!mf_limits_apply(&mem))
            fail(cfg, "request limits");
        /* PAGEMAP_SCAN from the rewinder only (pagemap_gate.h); before the
         * request filter, which denies loading filters. */
        if (!mf_pagemap_gate_load())
            fail(cfg, "pagemap gate");
        if (!mf_sigaction_gate_load())
            fail(cfg, "sigaction gate");
        if (!mf_channel_gate_load())
            fail(cfg, "channel gate");
        int fds[MF_REWIND_MAX_FDS];
        for (size_t i = 0; i < rw->nfds; i++)
            fds[i] = rw->fds[i].fd;
        if (!mf_state_gate_load(fds, rw->nfds))
            fail(cfg, "state gate");
        mf_rewind_signals_gated(rw);
        mf_rewind_state_gated(rw);
        if (cfg->request_filter_len > 0 && !mf_seccomp_load(cfg->request_filter, cfg->request_filter_len))
            fail(cfg, "request filter");
        uint64_t cost = mf_now_us() - started;
        struct mf_worker_ready ready = {.snapshot_pages = (uint32_t)rw->snapshot_pages,
                                        .ranges = (uint32_t)rw->tracker.nranges,
                                        .cost_us = cost > UINT32_MAX ? UINT32_MAX : (uint32_t)cost};
        if (!mf_send_packet(cfg->chan_fd, MF_MSG_WORKER_READY, 0, &ready, sizeof(ready)))
            _exit(MF_WORKER_EXIT_DIRTY); /* the host is gone, or tenant code broke the channel */
    } else {
        size_t pages = 0;
        if (!mf_rewind_restore(rw, &pages))
            fail(cfg, "rewind");
        /* Options, a shutdown or an address cannot be taken back: the
         * next request would meet them. */
        if (ws->channel_dirty) {
            mf_errx(EPERM, "request %llu set an option on, shut down, bound or connected the worker's "
                    "channel to its host or to the front end", (unsigned long long)ws->req_id);
            fail(cfg, "request channel");
        }
        uint64_t cost = mf_now_us() - started;
        struct mf_request_done done = {.status = ws->status, .aborted = ws->aborted ? 1u : 0u,
                                       .cost_us = cost > UINT32_MAX ? UINT32_MAX : (uint32_t)cost,
                                       .pages = pages > UINT32_MAX ? UINT32_MAX : (uint32_t)pages,
                                       .nonce = ws->nonce};
        if (!mf_send_packet(cfg->chan_fd, MF_MSG_REQUEST_DONE, ws->req_id, &done, sizeof(done)))
            _exit(MF_WORKER_EXIT_DIRTY);
    }
    ws->phase = PHASE_IDLE;
    setcontext(&rw->rest);
    fail(cfg, "setcontext(rest)");
}

/* One request, from the rest point; ends in the rewinder, never returns. */
static _Noreturn void serve_one(const struct mf_worker_config *cfg)
{
    const struct mf_fork_hooks *hooks = &cfg->hooks->base;
    struct worker_state *ws = the_state;
    uint8_t buf[MF_FRAME_HEADER_SIZE + 64];
    struct mf_frame_header hdr;
    struct mf_request req;
    struct mf_response resp;
    size_t len, nfds;
    int fd;

    cfg->hooks->after_rewind(hooks->ctx);
    int rc = mf_recv_packet(cfg->chan_fd, 0, buf, sizeof(buf), &len, NULL, 0, &nfds);
    if (rc == 0)
        _exit(0); /* the host closed the channel: it is stopping */
    if (rc < 0)
        fail(cfg, "worker channel");
    struct mf_worker_request wr;
    if (!mf_frame_parse(buf, len, &hdr) || hdr.type != MF_MSG_REQUEST || hdr.payload_len != sizeof(wr)) {
        mf_errx(EPROTO, "expected a REQUEST of %zu bytes", sizeof(wr));
        fail(cfg, "worker channel");
    }
    memcpy(&wr, buf + MF_FRAME_HEADER_SIZE, sizeof(wr));
    if (wr.loop >= cfg->n_request_fds) {
        mf_errx(EPROTO, "REQUEST for front-end loop %u of %u", wr.loop, cfg->n_request_fds);
        fail(cfg, "worker channel");
    }
    fd = cfg->request_fds[wr.loop];
    ws->nonce = wr.nonce;
    explicit_bzero(buf, sizeof(buf));
    explicit_bzero(&wr, sizeof(wr));
    ws->req_id = hdr.req_id;
    ws->aborted = 0;
    ws->status = 0;
    ws->phase = PHASE_REQUEST;
    /* Blocked at rest, so an abort sent as soon as the host dispatched is
     * held until now rather than dropped as meant for no request. */
    sigset_t abort_only;
    if (sigemptyset(&abort_only) < 0 || sigaddset(&abort_only, MF_ABORT_SIGNAL) < 0 ||
        sigprocmask(SIG_UNBLOCK, &abort_only, NULL) < 0) {
        mf_err("sigprocmask(SIG_UNBLOCK, abort signal)");
        fail(cfg, "worker setup");
    }

    mf_request_init(&req, hdr.req_id);
    if (!mf_request_recv(fd, &req)) {
        if (mf_last_errno() != EPIPE)
            mf_warn("request %llu: %s", (unsigned long long)hdr.req_id, mf_last_error());
        ws->status = MF_CHILD_EXIT_BAD_REQUEST;
    } else if (!hooks->handle(hooks->ctx, fd, &req, &resp) || resp.cut) {
        ws->status = MF_CHILD_EXIT_HANDLER; /* a cut stream too: no RESP_END */
    } else if (!mf_response_finish(fd, hdr.req_id, &resp)) {
        int err = mf_last_errno();
        if (err != EPIPE && err != ECONNRESET) {
            mf_warn("request %llu: %s", (unsigned long long)hdr.req_id, mf_last_error());
            ws->status = MF_CHILD_EXIT_SETUP;
        }
    }
    ws->phase = PHASE_REWIND;
    setcontext(&the_rewinder->entry);
    fail(cfg, "setcontext(rewinder)");
}

/* Grows the stack now, so that ordinary requests stay inside the
 * snapshot's [stack] mapping and leave the mappings unchanged. The
 * mapping is what counts: its pages go back at once (they read as zero
 * again, in the worker and in the snapshot's template), or each worker
 * would keep 512 KiB of zeros. */
static bool __attribute__((noinline)) reserve_stack(void)
{
    volatile uint8_t *room = alloca(MF_REWIND_STACK_RESERVE);
    for (size_t i = 0; i < MF_REWIND_STACK_RESERVE; i += 4096)
        room[i] = 0;
    /* Whole pages of room only, one short of its top: this frame is above. */
    uintptr_t from = ((uintptr_t)room + 4095) & ~(uintptr_t)4095;
    uintptr_t to = (((uintptr_t)room + MF_REWIND_STACK_RESERVE) & ~(uintptr_t)4095) - 4096;
    if (madvise((void *)from, to - from, MADV_DONTNEED) < 0)
        return mf_err("madvise(%#lx-%#lx, MADV_DONTNEED) on the reserved stack", (unsigned long)from,
                      (unsigned long)to);
    return true;
}

/* glibc's rseq area is written by the kernel at any preemption: it would
 * show up as dirty (and differ under verification) at random. */
static bool unregister_rseq(void)
{
    if (__rseq_size == 0)
        return true;
    void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
    if (syscall(SYS_rseq, area, 32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) < 0 && errno != EINVAL)
        return mf_err("rseq(UNREGISTER)");
    return true;
}

static bool prepare(const struct mf_worker_config *cfg, struct worker_state *ws)
{
    struct sigaction abort_action = {.sa_sigaction = on_abort, .sa_flags = SA_SIGINFO};
    struct mf_limits rl = {.nofile = cfg->limits.nofile};

    the_rewinder = mf_rewinder_create(cfg->verify, MF_ABORT_SIGNAL);
    if (the_rewinder == NULL)
        return false;
    the_state = ws;
    /* Freed memory must stay mapped (the rewind restores the allocator's
     * view of it), and the heap must not shrink below its sealed end. */
    if (mallopt(M_MMAP_MAX, 0) != 1 || mallopt(M_TRIM_THRESHOLD, -1) != 1)
        return mf_errx(EINVAL, "mallopt refused M_MMAP_MAX or M_TRIM_THRESHOLD");
    cfg->hooks->prepare(cfg->hooks->base.ctx);
    MF_TRY(unregister_rseq());
    MF_TRY(mf_limits_apply(&rl));
    if (sigfillset(&abort_action.sa_mask) < 0 || sigaction(MF_ABORT_SIGNAL, &abort_action, NULL) < 0)
        return mf_err("sigaction(abort signal %d)", MF_ABORT_SIGNAL);
    MF_TRY(mf_sigaction_gate_prepare(&the_rewinder->signals_dirty, MF_ABORT_SIGNAL));
    mf_state_gate_prepare(&the_rewinder->state_dirty);
    /* Blocked in the rest context (saved after this); serve_one unblocks it
     * once the request it is meant for is the current one. */
    sigset_t abort_only;
    if (sigemptyset(&abort_only) < 0 || sigaddset(&abort_only, MF_ABORT_SIGNAL) < 0 ||
        sigprocmask(SIG_BLOCK, &abort_only, NULL) < 0)
        return mf_err("sigprocmask(SIG_BLOCK, abort signal)");
    MF_TRY(reserve_stack());
    struct mf_rewinder *rw = the_rewinder;
    if (getcontext(&rw->entry) < 0)
        return mf_err("getcontext(rewinder)");
    rw->entry.uc_stack.ss_sp = rw->stack;
    rw->entry.uc_stack.ss_size = MF_REWIND_STACK_SIZE;
    rw->entry.uc_link = NULL;
    if (sigfillset(&rw->entry.uc_sigmask) < 0)
        return mf_err("sigfillset");
    makecontext(&rw->entry, rewinder_entry, 0);
    return true;
}

_Noreturn void mf_reset_worker_main(const struct mf_worker_config *cfg)
{
    _Static_assert(sizeof(struct worker_state) <= sizeof(((struct mf_rewinder *)0)->owner), "owner room");
    struct worker_state *ws, boot = {.phase = PHASE_SNAPSHOT, .cfg = cfg};

    if (!prepare(cfg, &boot))
        fail(cfg, "worker setup");
    /* The state must survive rewinds: move it into the rewinder's mapping. */
    ws = (struct worker_state *)(void *)the_rewinder->owner;
    *ws = boot;
    the_state = ws;
    if (!mf_channel_gate_prepare(&ws->channel_dirty, cfg->chan_fd, cfg->request_fds, cfg->n_request_fds))
        fail(cfg, "worker setup");
    if (getcontext(&the_rewinder->rest) < 0)
        fail(cfg, "getcontext(rest)");
    /* Here after the snapshot and after every rewind. */
    if (the_state->phase == PHASE_SNAPSHOT)
        setcontext(&the_rewinder->entry);
    serve_one(the_state->cfg);
}
