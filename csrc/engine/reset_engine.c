/*
 * The reset engine's dispatcher in the host; see reset_engine.h.
 *
 * One poll() over the control and data channels, a signalfd (SIGCHLD, and
 * the CPU timers' signal) and one channel per worker. Replies on the data
 * channels keep the fork engine's shape: each request ends in one
 * CHILD_EXIT, whose pid is the worker's and whose cost is the rewind. This
 * file keeps the requests (dispatch, deadlines) and the loop; reset_pool.c
 * the workers; children.c what both engines share, the queue included.
 */
#define _GNU_SOURCE
#include "engine/reset_engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/engine_common.h"
#include "engine/reset_pool.h"
#include "engine/stop_sandbox.h"
#include "wire/proto.h"

enum mf_step mf_reset_request_ended(struct pool *p, uint64_t req_id, pid_t pid, int wait_status,
                                    uint32_t flags, uint32_t cost_us, uint32_t pages)
{
    struct mf_child_exit msg = {.pid = pid, .wait_status = wait_status, .flags = flags, .cost_us = cost_us,
                                .pages = pages};
    return mf_children_send(&p->core, MF_MSG_CHILD_EXIT, req_id, &msg, sizeof(msg));
}

/* ---- requests ---- */

/* The pool starts with one worker and grows by one whenever a request
 * waits with no worker idle or starting for it, up to its size: an idle
 * tenant keeps one snapshot, not one per core. */
void mf_reset_grow(struct pool *p)
{
    unsigned starting = 0;
    uint64_t now = 0;

    if (p->core.q_len == 0 || !mf_now_ms(&now) || now < p->grow_after_ms)
        return;
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_STARTING)
            starting++;
    for (unsigned i = 0; i < p->n && starting < p->core.q_len; i++) {
        if (p->workers[i].state != W_GONE)
            continue;
        if (!mf_reset_spawn_worker(p, i)) {
            mf_warn("reset engine: cannot add a worker: %s", mf_last_error());
            p->grow_after_ms = now + MF_RESET_GROW_BACKOFF_MS;
            return;
        }
        starting++;
    }
}

static struct worker *idle_worker(struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_IDLE && !p->workers[i].doomed && p->workers[i].fd >= 0)
            return &p->workers[i];
    return NULL;
}

/* Tenant code can write to its worker's channel; what it cannot do
 * (without reading raw memory) is learn this number. */
static uint32_t new_nonce(void)
{
    uint32_t nonce = 0;

    while (nonce == 0)
        if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
            nonce = 0;
    return nonce;
}

static bool can_start(void *pool)
{
    return idle_worker(pool) != NULL;
}

/* Hands an admitted request to an idle worker (the core asked can_start):
 * the worker learns which of its request channels to read, the front
 * end which worker's channel to write it on. */
static enum mf_step start_request(void *pool, const struct mf_admitted *req)
{
    struct pool *p = pool;
    struct worker *w = idle_worker(p);
    uint32_t loop = p->core.chan_loop[req->chan];
    struct mf_worker_request wr = {.nonce = new_nonce(), .loop = loop};
    struct mf_worker_slot slot = {.worker = (uint32_t)(w - p->workers)};

    if (loop >= p->cfg->front_loops) {
        mf_warn("REQUEST %llu: from front-end loop %u; this host has request channels for %u",
                (unsigned long long)req->req_id, loop, p->cfg->front_loops);
        return mf_children_request_failed(&p->core, req->req_id, EINVAL);
    }
    if (!mf_send_packet(w->fd, MF_MSG_REQUEST, req->req_id, &wr, sizeof(wr))) {
        mf_warn("worker %d: %s", w->pid, mf_last_error());
        /* A worker that cannot take a request is finished; its exit replaces it. */
        mf_reset_doom(w, "could not be handed a request");
        /* Not EAGAIN (the queue is full): it never reached a program, the front end sends it again. */
        return mf_children_request_failed(&p->core, req->req_id, EPIPE);
    }
    w->state = W_BUSY;
    w->req_id = req->req_id;
    w->deadline_ms = req->deadline_ms;
    w->abort_deadline_ms = 0;
    w->flags = 0;
    w->nonce = wr.nonce;
    mf_reset_set_timer(w, p->cfg->limits.cpu_ms);
    return mf_children_tell(&p->core, MF_MSG_DISPATCHED, req->req_id, &slot, sizeof(slot));
}

static bool in_flight(void *pool, uint64_t req_id)
{
    struct pool *p = pool;

    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_BUSY && p->workers[i].req_id == req_id)
            return true;
    return false;
}

/* A busy worker's request ends early: aborted, then rewound as usual. */
static void end_request(struct pool *p, uint64_t req_id, uint32_t flag)
{
    uint64_t now = 0;

    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state == W_BUSY && w->req_id == req_id) {
            if (mf_now_ms(&now))
                mf_reset_abort_request(w, flag, now);
            return;
        }
    }
    /* Not busy: already ended, its CHILD_EXIT is on the way. */
}

static void cancel(void *pool, uint64_t req_id)
{
    end_request(pool, req_id, MF_EXIT_CANCELLED);
}

/* A new data channel learns every serving worker's request channel for its loop. */
static enum mf_step attached(void *pool, unsigned slot)
{
    struct pool *p = pool;

    if (p->core.chan_loop[slot] >= p->cfg->front_loops)
        mf_warn("data channel %u: for front-end loop %u, but this host has request channels for %u; "
                "its requests will fail", slot, p->core.chan_loop[slot], p->cfg->front_loops);
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (!w->announced || w->state == W_GONE)
            continue;
        enum mf_step step = mf_reset_announce(p, i, slot);
        if (step != MF_STEP_CONTINUE)
            return step;
    }
    return MF_STEP_CONTINUE;
}

static const struct mf_children_ops reset_ops = {
    .attached = attached,
    .in_flight = in_flight,
    .can_start = can_start,
    .start = start_request,
    .cancel = cancel,
    .exited = mf_reset_worker_exited,
    .signal = mf_reset_cpu_timer_fired,
    .close_own_fds = mf_reset_close_own_fds,
};

/* ---- deadlines ---- */

/* Workers idle for idle_ms while nothing waits exit, each taking its
 * snapshot's memory with it; the next request forks one again. */
static void retire_idle(struct pool *p, uint64_t now, uint64_t *next)
{
    uint64_t idle_ms = p->cfg->idle_ms;

    if (idle_ms == 0 || p->core.q_len > 0)
        return;
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state != W_IDLE || w->doomed)
            continue;
        if (w->idle_since_ms + idle_ms <= now) {
            w->retiring = true;
            mf_reset_doom(w, NULL);
        } else if (w->idle_since_ms + idle_ms < *next) {
            *next = w->idle_since_ms + idle_ms;
        }
    }
}

/* Aborts a busy worker's request past its deadline, kills a worker that
 * did not come back from an abort; lowers *next to its next deadline. */
static void enforce_worker_deadline(struct worker *w, uint64_t now, uint64_t *next)
{
    if (w->abort_deadline_ms != 0) {
        if (w->abort_deadline_ms <= now) {
            mf_warn("worker %d did not rewind within %d ms of its abort; killed", w->pid, MF_RESET_ABORT_GRACE_MS);
            char why[96];
            snprintf(why, sizeof(why), "did not come back from an abort within %d ms", MF_RESET_ABORT_GRACE_MS);
            mf_reset_doom(w, why);
            w->abort_deadline_ms = UINT64_MAX;
        } else if (w->abort_deadline_ms < *next) {
            *next = w->abort_deadline_ms;
        }
        return;
    }
    if (w->deadline_ms <= now)
        mf_reset_abort_request(w, MF_EXIT_TIMED_OUT, now);
    uint64_t due = w->abort_deadline_ms != 0 ? w->abort_deadline_ms : w->deadline_ms;
    if (due < *next)
        *next = due;
}

/* Aborts requests past their deadline, kills workers that did not come
 * back from an abort, ends queued requests that waited too long. */
static enum mf_step enforce_deadlines(struct pool *p, int *timeout)
{
    uint64_t now = 0, next = UINT64_MAX;

    if (!mf_now_ms(&now))
        return MF_STEP_FAIL;
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_BUSY)
            enforce_worker_deadline(&p->workers[i], now, &next);
    if (mf_children_expire(&p->core, now, &next) != MF_STEP_CONTINUE)
        return MF_STEP_STOP;
    retire_idle(p, now, &next);
    /* Requests waiting while growth backs off: try again when it may. */
    mf_reset_grow(p);
    if (p->core.q_len > 0 && p->grow_after_ms > now && p->grow_after_ms < next)
        next = p->grow_after_ms;
    *timeout = mf_poll_timeout(now, next);
    return MF_STEP_CONTINUE;
}

/* ---- the loop ---- */

static bool serve_loop(struct pool *p)
{
    struct pollfd pfd[MF_PFD_CORE + MF_RESET_MAX_WORKERS];
    unsigned who[MF_RESET_MAX_WORKERS];

    MF_TRY(mf_reset_spawn_worker(p, 0));
    for (;;) {
        enum mf_step step;
        bool ready;
        int timeout;
        nfds_t n = MF_PFD_CORE;

        step = enforce_deadlines(p, &timeout);
        if (step != MF_STEP_CONTINUE)
            return step == MF_STEP_STOP;
        /* Requests wait in their socket until every worker has its snapshot;
         * a SHUTDOWN or the supervisor's end is heard at once. */
        mf_children_pollfds(&p->core, pfd, p->ready_sent);
        for (unsigned i = 0; i < p->n; i++) {
            if (p->workers[i].fd < 0)
                continue;
            who[n - MF_PFD_CORE] = i;
            pfd[n++] = (struct pollfd){.fd = p->workers[i].fd, .events = POLLIN};
        }
        MF_TRY(mf_children_poll(&p->core, pfd, n, timeout, &ready));
        if (!ready)
            continue;
        /* Worker messages first: a REQUEST_DONE frees a worker for what the
         * front end sent meanwhile, and precedes a worker's exit. */
        for (nfds_t k = MF_PFD_CORE; k < n && step == MF_STEP_CONTINUE; k++)
            if (pfd[k].revents != 0 && p->workers[who[k - MF_PFD_CORE]].fd == pfd[k].fd)
                step = mf_reset_handle_worker(p, &p->workers[who[k - MF_PFD_CORE]]);
        if (step == MF_STEP_CONTINUE)
            step = mf_children_serve(&p->core, pfd);
        if (step != MF_STEP_CONTINUE)
            return step == MF_STEP_STOP;
    }
}

static bool pool_init(struct pool *p, const struct mf_reset_config *cfg)
{
    p->cfg = cfg;
    p->core = (struct mf_children){.ctrl_fd = cfg->ctrl_fd, .oom_fd = cfg->oom_fd,
                                   .close_in_child = cfg->close_in_child,
                                   .n_close_in_child = cfg->n_close_in_child, .hooks = &cfg->hooks->base,
                                   .ops = &reset_ops, .engine = p, .sigfd = -1};
    p->core.no_request_fd = true;
    p->cpu_timers_work = true;
    p->new_chan = -1;
    if (cfg->front_loops == 0 || cfg->front_loops > MF_MAX_FRONT_LOOPS)
        return mf_errx(EINVAL, "front_loops %u is not within 1..%d", cfg->front_loops, MF_MAX_FRONT_LOOPS);
    if (cfg->pool_size == 0 || cfg->pool_size > MF_RESET_MAX_WORKERS)
        return mf_errx(EINVAL, "pool size %u is not within 1..%d", cfg->pool_size, MF_RESET_MAX_WORKERS);
    if (cfg->concurrency == 0)
        return mf_errx(EINVAL, "concurrency 0: the host could never serve");
    /* Busy workers are the requests running: never more than concurrency. */
    p->n = cfg->pool_size < cfg->concurrency ? cfg->pool_size : cfg->concurrency;
    for (unsigned i = 0; i < p->n; i++) {
        p->workers[i] = (struct worker){.pid = -1, .fd = -1, .state = W_GONE};
        for (unsigned k = 0; k < MF_MAX_FRONT_LOOPS; k++)
            p->workers[i].front_ends[k] = -1;
    }
    return mf_children_init(&p->core, p->n, cfg->queue, CPU_TIMER_SIGNAL);
}

bool mf_reset_serve(const struct mf_reset_config *cfg)
{
    struct pool *p = calloc(1, sizeof(*p));
    bool ok;

    if (p == NULL)
        return mf_err("calloc(pool)");
    ok = pool_init(p, cfg) && serve_loop(p);
    if (ok)
        mf_stop_sandbox_run(&p->core, &cfg->limits, cfg->request_filter, cfg->request_filter_len,
                            cfg->stop_timeout_ms);
    /* Keep the error of the loop; the teardown only warns. */
    mf_children_fini(&p->core);
    mf_reset_release_workers(p);
    free(p);
    return ok;
}
