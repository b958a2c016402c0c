/*
 * Fork-mode serve loop of the host, and the first steps of each sandbox.
 *
 * The host is single-threaded: one poll() over the control channel, the
 * data channels and a signalfd for SIGCHLD, with the timeout set by the
 * nearest deadline. Each sandbox is a fork() of the sealed host; it
 * answers on its own per-request socket only, and its exit is reported on
 * the data channel its request came on as CHILD_EXIT. At most
 * `concurrency` run at once; the others wait in the core's queue. The
 * channels, the queue, the signalfd, the fork and the reaping are
 * children.c's, shared with the reset engine.
 */
#define _GNU_SOURCE
#include "engine/fork_engine.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/children.h"
#include "engine/engine_common.h"
#include "engine/stop_sandbox.h"
#include "walls/request_limits.h"

struct child {
    pid_t pid;
    uint64_t req_id;
    uint64_t deadline_ms;   /* CLOCK_MONOTONIC */
    uint32_t flags;         /* enum mf_exit_flags */
    uint32_t cost_us;       /* what the fork cost the host */
    bool killed;
};

struct engine {
    const struct mf_fork_config *cfg;
    struct mf_children core;
    struct child *children;  /* n used entries, unordered */
    size_t n, max;           /* max: the concurrency */
};

static struct child *find_req(struct engine *e, uint64_t req_id)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->children[i].req_id == req_id)
            return &e->children[i];
    return NULL;
}

static _Noreturn void child_main(const struct engine *e, bool setup_ok, int req_fd, uint64_t req_id)
{
    const struct mf_fork_config *cfg = e->cfg;
    const struct mf_fork_hooks *hooks = cfg->hooks;
    struct mf_request req;
    struct mf_response resp;

    /* mf_children_fork took the first steps: the host's fds are closed,
     * the files made private. */
    if (!setup_ok ||
        !mf_children_enter_sandbox(&e->core, &cfg->limits, cfg->request_filter, cfg->request_filter_len))
        goto setup_failed;

    mf_request_init(&req, req_id);
    if (!mf_request_recv(req_fd, &req)) {
        if (mf_last_errno() != EPIPE) /* an abandoned request is no news */
            mf_warn("request %llu: %s", (unsigned long long)req_id, mf_last_error());
        _exit(MF_CHILD_EXIT_BAD_REQUEST);
    }
    /* A cut stream ends as a failed handler: the front end sees no RESP_END. */
    if (!hooks->handle(hooks->ctx, req_fd, &req, &resp) || resp.cut)
        _exit(MF_CHILD_EXIT_HANDLER);
    if (!mf_response_finish(req_fd, req_id, &resp)) {
        int err = mf_last_errno();
        /* A supervisor that went away needs no answer. */
        if (err == EPIPE || err == ECONNRESET)
            _exit(0);
        mf_warn("request %llu: %s", (unsigned long long)req_id, mf_last_error());
        _exit(MF_CHILD_EXIT_SETUP);
    }
    _exit(0);

setup_failed:
    mf_warn("sandbox setup for request %llu: %s", (unsigned long long)req_id, mf_last_error());
    _exit(MF_CHILD_EXIT_SETUP);
}

/* ---- the core's callbacks ---- */

static bool in_flight(void *engine, uint64_t req_id)
{
    return find_req(engine, req_id) != NULL;
}

/* A killed sandbox counts until it is reaped: its memory is still charged. */
static bool can_start(void *engine)
{
    struct engine *e = engine;
    return e->n < e->max;
}

static enum mf_step start_request(void *engine, const struct mf_admitted *req)
{
    struct engine *e = engine;
    bool setup_ok = false;

    uint64_t fork_started = mf_now_us();
    pid_t pid = mf_children_fork(&e->core, &req->fd, 1, &setup_ok);
    if (pid == 0)
        child_main(e, setup_ok, req->fd, req->req_id);
    int error = mf_last_errno();
    uint64_t fork_cost = mf_now_us() - fork_started;
    /* The host keeps no request fd: a later sandbox must not inherit it. */
    mf_close_or_warn(req->fd, "request");
    if (pid < 0) {
        mf_warn("request %llu: %s", (unsigned long long)req->req_id, mf_last_error());
        return mf_children_request_failed(&e->core, req->req_id, error);
    }
    e->children[e->n++] = (struct child){
        .pid = pid,
        .req_id = req->req_id,
        .deadline_ms = req->deadline_ms,
        .cost_us = fork_cost > UINT32_MAX ? UINT32_MAX : (uint32_t)fork_cost,
    };
    return MF_STEP_CONTINUE;
}

static void kill_child(struct child *c, uint32_t flag)
{
    if (c->killed)
        return;
    mf_child_kill(c->pid);
    c->flags |= flag;
    c->killed = true;
}

static void cancel(void *engine, uint64_t req_id)
{
    struct child *c = find_req(engine, req_id);

    /* Unknown: the sandbox has exited and its CHILD_EXIT is on the way. */
    if (c != NULL)
        kill_child(c, MF_EXIT_CANCELLED);
}

static enum mf_step exited(void *engine, pid_t pid, int status, const struct rusage *ru)
{
    struct engine *e = engine;

    for (size_t i = 0; i < e->n; i++) {
        struct child c = e->children[i];
        if (c.pid != pid)
            continue;
        e->children[i] = e->children[--e->n];
        struct mf_child_exit msg = {.pid = pid, .wait_status = status, .flags = c.flags, .cost_us = c.cost_us};
        if (mf_limits_cpu_exceeded(&e->cfg->limits, status, ru))
            msg.flags |= MF_EXIT_CPU_EXCEEDED;
        else if (!c.killed && mf_children_oom_killed(&e->core, status))
            msg.flags |= MF_EXIT_OUT_OF_MEMORY;
        return mf_children_send(&e->core, MF_MSG_CHILD_EXIT, c.req_id, &msg, sizeof(msg));
    }
    return MF_STEP_CONTINUE;
}

static const struct mf_children_ops fork_ops = {
    .in_flight = in_flight,
    .can_start = can_start,
    .start = start_request,
    .cancel = cancel,
    .exited = exited,
};

/* ---- the loop ---- */

/* Kills sandboxes past their deadline, ends queued requests past theirs;
 * the poll timeout to the next one. */
static enum mf_step enforce_deadlines(struct engine *e, int *timeout)
{
    uint64_t now = 0, next = UINT64_MAX;

    if (!mf_now_ms(&now))
        return MF_STEP_FAIL;
    for (size_t i = 0; i < e->n; i++) {
        struct child *c = &e->children[i];
        if (c->killed)
            continue;
        if (c->deadline_ms <= now)
            kill_child(c, MF_EXIT_TIMED_OUT);
        else if (c->deadline_ms < next)
            next = c->deadline_ms;
    }
    enum mf_step step = mf_children_expire(&e->core, now, &next);
    *timeout = mf_poll_timeout(now, next);
    return step;
}

static bool serve_loop(struct engine *e)
{
    struct mf_ready ready = {.pid = e->core.host_pid, .engine = MF_ENGINE_FORK};

    if (mf_children_send(&e->core, MF_MSG_READY, 0, &ready, sizeof(ready)) != MF_STEP_CONTINUE)
        return true;
    for (;;) {
        struct pollfd pfd[MF_PFD_CORE];
        enum mf_step step;
        bool ready_fds;
        int timeout;

        step = enforce_deadlines(e, &timeout);
        if (step != MF_STEP_CONTINUE)
            return step == MF_STEP_STOP;
        mf_children_pollfds(&e->core, pfd, true);
        MF_TRY(mf_children_poll(&e->core, pfd, MF_PFD_CORE, timeout, &ready_fds));
        if (!ready_fds)
            continue;
        step = mf_children_serve(&e->core, pfd);
        if (step != MF_STEP_CONTINUE)
            return step == MF_STEP_STOP;
    }
}

static bool engine_init(struct engine *e)
{
    const char *oom_path = "/proc/self/oom_score_adj";

    /* Fail here, not in every sandbox, when /proc is not in the sandbox's view. */
    if (access(oom_path, F_OK) < 0)
        return mf_err("access(%s, F_OK) (sandboxes set their OOM score there; is /proc mounted?)",
                      oom_path);
    e->children = calloc(e->max, sizeof(*e->children));
    if (e->children == NULL)
        return mf_err("calloc(%zu sandboxes)", e->max);
    return true;
}

bool mf_fork_serve(const struct mf_fork_config *cfg)
{
    struct engine e = {
        .cfg = cfg,
        .core = {.ctrl_fd = cfg->ctrl_fd, .oom_fd = cfg->oom_fd, .close_in_child = cfg->close_in_child,
                 .n_close_in_child = cfg->n_close_in_child, .hooks = cfg->hooks, .ops = &fork_ops},
        /* More would fail at fork() anyway: the pids limit is concurrency + 16. */
        .max = cfg->concurrency < MF_FORK_MAX_CHILDREN ? cfg->concurrency : MF_FORK_MAX_CHILDREN,
    };
    bool ok;

    e.core.engine = &e;
    if (e.max == 0)
        return mf_errx(EINVAL, "concurrency 0: the host could never serve");
    ok = mf_children_init(&e.core, e.max, cfg->queue, 0) && engine_init(&e) && serve_loop(&e);
    if (ok)
        mf_stop_sandbox_run(&e.core, &cfg->limits, cfg->request_filter, cfg->request_filter_len,
                            cfg->stop_timeout_ms);
    /* Keep the error of the loop; the teardown only warns. */
    mf_children_fini(&e.core);
    free(e.children);
    return ok;
}
