/*
 * The reset engine's workers, seen from the host: their fork, their CPU
 * timers, what they say on their channels, their exits and replacement.
 * See reset_engine.h; the worker's own side is reset_worker.c.
 */
#define _GNU_SOURCE
#include "engine/reset_pool.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/wait_status.h"
#include "engine/engine_common.h"
#include "rewind/snapshot_template.h"
#include "walls/host_seal.h"
#include "wire/proto.h"

/* ---- a new worker ---- */

static void close_fds(const int *fds, unsigned n, const char *what)
{
    for (unsigned k = 0; k < n; k++)
        mf_close_or_warn(fds[k], what);
}

/* Nothing of the host's may reach tenant code: the other workers'
 * channels, the front end's ends of every request channel, the channel's
 * host end (the core closes the rest). */
bool mf_reset_close_own_fds(void *pool, const int *keep, size_t n_keep)
{
    struct pool *p = pool;
    unsigned loops = p->cfg->front_loops;

    (void)keep;
    (void)n_keep; /* the worker's own ends are in no list of ours */
    if (p->new_chan >= 0 && close(p->new_chan) < 0)
        return mf_err("close(worker channel %d)", p->new_chan);
    for (unsigned k = 0; p->new_front != NULL && k < loops; k++)
        if (close(p->new_front[k]) < 0)
            return mf_err("close(request channel %d)", p->new_front[k]);
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state == W_GONE)
            continue;
        if (w->fd >= 0 && close(w->fd) < 0)
            return mf_err("close(worker channel %d)", w->fd);
        for (unsigned k = 0; k < loops; k++)
            if (w->front_ends[k] >= 0 && close(w->front_ends[k]) < 0)
                return mf_err("close(request channel %d)", w->front_ends[k]);
    }
    return true;
}

static _Noreturn void worker_child(struct pool *p, bool ok, int chan, const int *request_fds)
{
    const struct mf_reset_config *cfg = p->cfg;

    /* Before the program's after_in_child= callbacks, which run here under
     * the loading filter only (the request filter comes after the snapshot). */
    ok = ok && mf_children_unblock(&p->core) && mf_seal_no_new_tasks(mf_template_clone_site());
    cfg->hooks->base.after_fork_child(cfg->hooks->base.ctx);
    if (!ok) {
        char text[512];
        int n = snprintf(text, sizeof(text), "worker setup: %s", mf_last_error());
        (void)mf_send_packet(chan, MF_MSG_WORKER_FAILED, 0, text, n > 0 ? (uint32_t)n : 0u);
        _exit(MF_WORKER_EXIT_DIRTY);
    }
    struct mf_worker_config wc = {.chan_fd = chan, .request_fds = request_fds, .n_request_fds = cfg->front_loops,
                                  .hooks = cfg->hooks, .limits = cfg->limits,
                                  .request_filter = cfg->request_filter,
                                  .request_filter_len = cfg->request_filter_len, .verify = cfg->verify};
    wc.limits.cpu_ms = 0; /* the host's timer keeps the budget */
    mf_reset_worker_main(&wc);
}

static bool arm_cpu_timer(struct pool *p, unsigned i)
{
    struct worker *w = &p->workers[i];
    clockid_t clock;
    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = CPU_TIMER_SIGNAL};

    w->has_timer = false;
    if (p->cfg->limits.cpu_ms == 0 || !p->cpu_timers_work)
        return true;
    sev.sigev_value.sival_int = (int)i;
    int err = clock_getcpuclockid(w->pid, &clock);
    if (err == 0 && timer_create(clock, &sev, &w->cpu_timer) == 0) {
        w->has_timer = true;
        return true;
    }
    /* The deadline still holds; say once that the CPU budget does not. */
    mf_warn("no CPU timer on worker %d (%s): requests are limited by their deadline only", w->pid,
            strerror(err != 0 ? err : errno));
    p->cpu_timers_work = false;
    return true;
}

/* One persistent request channel per front-end loop: the worker's ends
 * in ends, the front end's in front; false (none left open) on failure. */
static bool make_request_channels(unsigned loops, int *front, int *ends)
{
    int sv[2];

    for (unsigned k = 0; k < loops; k++) {
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
            mf_err("socketpair(request channel %u of a worker)", k);
            close_fds(front, k, "request channel");
            close_fds(ends, k, "request channel");
            return false;
        }
        front[k] = sv[0];
        ends[k] = sv[1];
    }
    return true;
}

bool mf_reset_spawn_worker(struct pool *p, unsigned i)
{
    mf_cleanup_fd int host_end = -1;
    mf_cleanup_fd int worker_end = -1;
    unsigned loops = p->cfg->front_loops;
    int front[MF_MAX_FRONT_LOOPS], ends[MF_MAX_FRONT_LOOPS], keep[1 + MF_MAX_FRONT_LOOPS];
    bool setup_ok = false;
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return mf_err("socketpair(worker channel)");
    host_end = sv[0];
    worker_end = sv[1];
    MF_TRY(make_request_channels(loops, front, ends));
    keep[0] = worker_end;
    memcpy(keep + 1, ends, loops * sizeof(int));
    p->new_chan = host_end;
    p->new_front = front;
    pid_t pid = mf_children_fork(&p->core, keep, 1 + loops, &setup_ok);
    if (pid == 0)
        worker_child(p, setup_ok, worker_end, ends);
    p->new_chan = -1;
    p->new_front = NULL;
    close_fds(ends, loops, "request channel");
    if (pid < 0) {
        close_fds(front, loops, "request channel");
        return false;
    }
    struct worker *w = &p->workers[i];
    *w = (struct worker){.pid = pid, .fd = mf_steal_fd(&host_end), .state = W_STARTING};
    for (unsigned k = 0; k < MF_MAX_FRONT_LOOPS; k++)
        w->front_ends[k] = k < loops ? front[k] : -1;
    return arm_cpu_timer(p, i);
}

enum mf_step mf_reset_announce(struct pool *p, unsigned i, unsigned slot)
{
    struct worker *w = &p->workers[i];
    uint32_t loop = p->core.chan_loop[slot];
    struct mf_worker_slot msg = {.worker = i};

    if (p->core.chans[slot] < 0 || loop >= p->cfg->front_loops)
        return MF_STEP_CONTINUE;
    return mf_children_send_on(&p->core, slot, MF_MSG_WORKER_CHANNEL, 0, &msg, sizeof(msg), w->front_ends[loop]);
}

/* Every data channel of a served loop learns the worker's request channel. */
static enum mf_step announce_everywhere(struct pool *p, unsigned i)
{
    p->workers[i].announced = true;
    for (unsigned slot = 0; slot < MF_MAX_DATA_CHANNELS; slot++) {
        enum mf_step step = mf_reset_announce(p, i, slot);
        if (step != MF_STEP_CONTINUE)
            return step;
    }
    return MF_STEP_CONTINUE;
}

/* The worker is gone: the front end closes its ends, and so does the host. */
static enum mf_step withdraw_everywhere(struct pool *p, unsigned i)
{
    struct worker *w = &p->workers[i];
    struct mf_worker_slot msg = {.worker = i};
    enum mf_step step = MF_STEP_CONTINUE;

    for (unsigned slot = 0; w->announced && slot < MF_MAX_DATA_CHANNELS && step == MF_STEP_CONTINUE; slot++)
        if (p->core.chans[slot] >= 0 && p->core.chan_loop[slot] < p->cfg->front_loops)
            step = mf_children_send_on(&p->core, slot, MF_MSG_WORKER_GONE, 0, &msg, sizeof(msg), -1);
    w->announced = false;
    for (unsigned k = 0; k < MF_MAX_FRONT_LOOPS; k++) {
        mf_close_or_warn(w->front_ends[k], "request channel");
        w->front_ends[k] = -1;
    }
    return step;
}

/* ---- the host's hold on a worker ---- */

void mf_reset_doom(struct worker *w, const char *why)
{
    if (w->doomed)
        return;
    if (why != NULL && w->failure[0] == '\0')
        snprintf(w->failure, sizeof(w->failure), "%s", why);
    mf_child_kill(w->pid);
    w->doomed = true;
}

void mf_reset_set_timer(struct worker *w, uint32_t cpu_ms)
{
    struct itimerspec its = {.it_value = {.tv_sec = cpu_ms / 1000u, .tv_nsec = (long)(cpu_ms % 1000u) * 1000000L}};
    if (w->has_timer && timer_settime(w->cpu_timer, 0, &its, NULL) < 0)
        mf_warn("timer_settime(worker %d, %u ms) failed: %s", w->pid, cpu_ms, strerror(errno));
}

void mf_reset_abort_request(struct worker *w, uint32_t flag, uint64_t now)
{
    w->flags |= flag;
    if (w->abort_deadline_ms != 0)
        return;
    union sigval v = {.sival_ptr = (void *)(uintptr_t)w->req_id};
    if (sigqueue(w->pid, MF_ABORT_SIGNAL, v) < 0)
        mf_warn("sigqueue(worker %d, abort) failed: %s", w->pid, strerror(errno));
    w->abort_deadline_ms = now + MF_RESET_ABORT_GRACE_MS;
}

void mf_reset_cpu_timer_fired(void *pool, const struct signalfd_siginfo *si)
{
    struct pool *p = pool;
    struct itimerspec left;
    uint64_t now = 0;

    if ((int)si->ssi_signo != CPU_TIMER_SIGNAL || si->ssi_int < 0 || (unsigned)si->ssi_int >= p->n)
        return;
    struct worker *w = &p->workers[si->ssi_int];
    /* A stale expiry of an earlier request finds the timer re-armed. */
    if (w->state != W_BUSY || !w->has_timer || timer_gettime(w->cpu_timer, &left) < 0 ||
        left.it_value.tv_sec != 0 || left.it_value.tv_nsec != 0)
        return;
    if (mf_now_ms(&now))
        mf_reset_abort_request(w, MF_EXIT_CPU_EXCEEDED, now);
}

/* ---- what a worker says ---- */

static void become_idle(struct worker *w)
{
    w->state = W_IDLE;
    if (!mf_now_ms(&w->idle_since_ms))
        w->idle_since_ms = 0; /* retires at the next look */
}

static bool all_ready(const struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_STARTING)
            return false;
    return true;
}

static enum mf_step worker_ready(struct pool *p, struct worker *w)
{
    become_idle(w);
    if (announce_everywhere(p, (unsigned)(w - p->workers)) != MF_STEP_CONTINUE)
        return MF_STEP_STOP;
    if (!p->ready_sent && all_ready(p)) {
        struct mf_ready ready = {.pid = p->core.host_pid, .engine = MF_ENGINE_RESET};
        p->ready_sent = true;
        if (mf_children_send(&p->core, MF_MSG_READY, 0, &ready, sizeof(ready)) != MF_STEP_CONTINUE)
            return MF_STEP_STOP;
    }
    return mf_children_dispatch(&p->core);
}

static enum mf_step request_done(struct pool *p, struct worker *w, uint64_t req_id)
{
    struct mf_request_done done;

    memcpy(&done, p->buf + MF_FRAME_HEADER_SIZE, sizeof(done));
    if (done.nonce != w->nonce) {
        mf_warn("worker %d: a completion of request %llu with the wrong nonce (forged by tenant code); killed",
                w->pid, (unsigned long long)req_id);
        mf_reset_doom(w, "forged a completion on its channel to the host");
        return MF_STEP_CONTINUE;
    }
    mf_reset_set_timer(w, 0);
    become_idle(w);
    /* An aborted request reads as a sandbox killed, as in fork mode. */
    int status = done.aborted ? SIGKILL : (int)(done.status & 0xff) << 8;
    if (mf_reset_request_ended(p, w->req_id, w->pid, status, w->flags, done.cost_us, done.pages) !=
        MF_STEP_CONTINUE)
        return MF_STEP_STOP;
    return mf_children_dispatch(&p->core);
}

enum mf_step mf_reset_handle_worker(struct pool *p, struct worker *w)
{
    struct mf_frame_header hdr;
    size_t len, nfds;
    int fd = -1;
    int rc = mf_recv_packet(w->fd, MSG_DONTWAIT, p->buf, sizeof(p->buf), &len, &fd, 1, &nfds);

    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return MF_STEP_CONTINUE;
        rc = 0; /* a broken channel is a dead worker */
    }
    if (nfds > 0)
        mf_close_or_warn(fd, "unexpected");
    if (rc == 0) {
        /* Its exit (SIGCHLD) replaces it; stop polling the channel. */
        mf_close_or_warn(w->fd, "worker channel");
        w->fd = -1;
        return MF_STEP_CONTINUE;
    }
    if (w->doomed)
        return MF_STEP_CONTINUE; /* nothing a killed worker says counts */
    if (!mf_frame_parse(p->buf, len, &hdr)) {
        mf_warn("worker %d: %s; killed", w->pid, mf_last_error());
        mf_reset_doom(w, "sent a malformed frame to the host");
        return MF_STEP_CONTINUE;
    }
    switch (hdr.type) {
    case MF_MSG_WORKER_READY:
        if (w->state != W_STARTING || hdr.payload_len != sizeof(struct mf_worker_ready))
            break;
        return worker_ready(p, w);
    case MF_MSG_REQUEST_DONE:
        if (w->state != W_BUSY || hdr.req_id != w->req_id || hdr.payload_len != sizeof(struct mf_request_done))
            break;
        return request_done(p, w, hdr.req_id);
    case MF_MSG_WORKER_FAILED: {
        size_t n = hdr.payload_len < sizeof(w->failure) - 1 ? hdr.payload_len : sizeof(w->failure) - 1;
        memcpy(w->failure, p->buf + MF_FRAME_HEADER_SIZE, n);
        w->failure[n] = '\0';
        return MF_STEP_CONTINUE;
    }
    default:
        break;
    }
    mf_warn("worker %d: unexpected message type %u in state %d; killed", w->pid, hdr.type, (int)w->state);
    char why[128];
    snprintf(why, sizeof(why), "sent message type %u to the host in state %d", hdr.type, (int)w->state);
    mf_reset_doom(w, why);
    return MF_STEP_CONTINUE;
}

/* ---- a worker's end ---- */

/* Before every worker has its snapshot, one that fails ends the host. */
static enum mf_step load_failed(struct pool *p, const struct worker *w, int status, const char *why)
{
    char text[800];
    bool killed = mf_killed_by(status, SIGKILL) && w->failure[0] == '\0';
    int n = snprintf(text, sizeof(text), "reset engine: a worker could not start: %s%s", why,
                     killed ? " (out of memory? each worker keeps its own copy of every page it writes, "
                              "and its snapshot's: raise limits.memory, lower pool, or use engine: fork)" : "");

    (void)mf_children_send(&p->core, MF_MSG_LOAD_FAILED, 0, text, n > 0 ? (uint32_t)n : 0u);
    return MF_STEP_STOP;
}

/* A worker exited: end its request, say why, and fork its replacement
 * (one retired for being idle just leaves its slot free). */
static enum mf_step worker_exited(struct pool *p, unsigned i, int status)
{
    struct worker *w = &p->workers[i];
    char why[700];

    if (w->failure[0] != '\0')
        snprintf(why, sizeof(why), "%s", w->failure);
    else
        mf_describe_wait_status(status, why, sizeof(why));
    mf_close_or_warn(w->fd, "worker channel");
    if (w->has_timer && timer_delete(w->cpu_timer) < 0)
        mf_warn("timer_delete(worker %d) failed: %s", w->pid, strerror(errno));
    enum worker_state was = w->state;
    w->state = W_GONE;
    w->fd = -1;
    w->has_timer = false;
    /* Its request first (CHILD_EXIT), then its channels (WORKER_GONE). */
    if (was == W_BUSY && p->ready_sent) {
        uint32_t flags = w->flags;
        if (!w->doomed && mf_children_oom_killed(&p->core, status))
            flags |= MF_EXIT_OUT_OF_MEMORY;
        if (mf_reset_request_ended(p, w->req_id, w->pid, status, flags, 0, 0) != MF_STEP_CONTINUE)
            return MF_STEP_STOP;
    }
    if (withdraw_everywhere(p, i) != MF_STEP_CONTINUE)
        return MF_STEP_STOP;
    if (w->retiring && was == W_IDLE) {
        mf_reset_grow(p); /* for a request that came in as it went */
        return MF_STEP_CONTINUE;
    }
    if (!p->ready_sent)
        return load_failed(p, w, status, why);
    mf_warn("reset engine: worker %d replaced: %s", w->pid, why);
    if (mf_children_send(&p->core, MF_MSG_WORKER_REPLACED, 0, why, (uint32_t)strlen(why)) != MF_STEP_CONTINUE)
        return MF_STEP_STOP;
    if (was == W_STARTING) {
        /* It could not even take its snapshot (out of memory, most likely):
         * forking another at once would fail the same way. Waiting
         * requests bring one back after the backoff. */
        uint64_t now = 0;
        if (mf_now_ms(&now))
            p->grow_after_ms = now + MF_RESET_GROW_BACKOFF_MS;
        return MF_STEP_CONTINUE;
    }
    if (!mf_reset_spawn_worker(p, i)) {
        mf_warn_last();
        return MF_STEP_FAIL;
    }
    return MF_STEP_CONTINUE;
}

enum mf_step mf_reset_worker_exited(void *pool, pid_t pid, int status, const struct rusage *ru)
{
    struct pool *p = pool;

    (void)ru; /* the host's CPU timer names a CPU kill */
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].pid == pid && p->workers[i].state != W_GONE)
            return worker_exited(p, i, status);
    return MF_STEP_CONTINUE;
}

void mf_reset_release_workers(struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state == W_GONE)
            continue;
        mf_close_or_warn(w->fd, "worker channel");
        close_fds(w->front_ends, p->cfg->front_loops, "request channel");
        if (w->has_timer)
            (void)timer_delete(w->cpu_timer); /* the worker is gone; so is its clock */
        w->state = W_GONE;
    }
}
