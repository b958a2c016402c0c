/*
 * The reset engine's dispatcher in the host; see reset_engine.h.
 *
 * One poll() over the control socket, a signalfd (SIGCHLD, and the CPU
 * timers' signal) and one channel per worker. Replies to the supervisor
 * keep the fork engine's shape: each request ends in one CHILD_EXIT, whose
 * pid is the worker's and whose cost is the rewind.
 */
#define _GNU_SOURCE
#include "engine/reset_engine.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine_common.h"
#include "walls/identity.h"
#include "base/log.h"
#include "walls/private_files.h"
#include "wire/proto.h"

/* Delivered to the host when a worker's CPU clock passes the request's budget. */
#define CPU_TIMER_SIGNAL (SIGRTMAX - 2)
#define WORKER_OOM_SCORE_ADJ 1000
#define CTRL_BUF_SIZE (MF_FRAME_HEADER_SIZE + 64)
#define WORKER_BUF_SIZE (MF_FRAME_HEADER_SIZE + 1024)

enum worker_state { W_STARTING, W_IDLE, W_BUSY, W_GONE };

struct worker {
    pid_t pid;
    int fd;
    enum worker_state state;
    uint64_t req_id;
    uint64_t deadline_ms;
    uint64_t abort_deadline_ms;  /* 0: no abort sent */
    uint32_t flags;              /* enum mf_exit_flags of the request */
    uint32_t nonce;              /* the request's; a REQUEST_DONE must carry it */
    bool doomed;                 /* killed by the host: never dispatched to, messages ignored */
    bool retiring;               /* killed for being idle: not replaced, not reported */
    uint64_t idle_since_ms;
    bool has_timer;
    timer_t cpu_timer;
    char failure[512];           /* what the worker said before exiting */
};

struct queued {
    uint64_t req_id;
    int fd;
    uint64_t deadline_ms;
    uint8_t packet[MF_FRAME_HEADER_SIZE + sizeof(struct mf_request_ctl)];
};

struct pool {
    const struct mf_reset_config *cfg;
    pid_t host_pid;
    int sigfd;
    sigset_t old_mask;
    bool mask_saved;
    bool ready_sent;
    bool cpu_timers_work;
    uint64_t grow_after_ms;  /* after a worker failed to start: no new one before this */
    struct worker workers[MF_RESET_MAX_WORKERS];
    unsigned n;              /* slots: the pool's size; a slot is W_GONE until needed */
    struct queued *queue;    /* FIFO ring */
    size_t q_head, q_len;
    uint8_t buf[WORKER_BUF_SIZE];
};

enum step { STEP_CONTINUE, STEP_STOP, STEP_FAIL };

static enum step send_ctrl(struct pool *p, uint16_t type, uint64_t req_id, const void *payload, uint32_t len)
{
    if (mf_send_packet(p->cfg->ctrl_fd, type, req_id, payload, len))
        return STEP_CONTINUE;
    mf_warn("control socket: %s; stopping", mf_last_error());
    return STEP_STOP;
}

static enum step request_ended(struct pool *p, uint64_t req_id, pid_t pid, int wait_status, uint32_t flags,
                               uint32_t cost_us, uint32_t pages)
{
    struct mf_child_exit msg = {.pid = pid, .wait_status = wait_status, .flags = flags, .cost_us = cost_us,
                                .pages = pages};
    return send_ctrl(p, MF_MSG_CHILD_EXIT, req_id, &msg, sizeof(msg));
}

/* ---- workers ---- */

static _Noreturn void worker_child(struct pool *p, int chan)
{
    const struct mf_reset_config *cfg = p->cfg;
    bool ok = mf_set_parent_death_signal(SIGKILL, p->host_pid) && mf_set_oom_score_adj(WORKER_OOM_SCORE_ADJ);

    /* Nothing of the host's may reach tenant code: its control socket,
     * the other workers' channels, queued requests' sockets. */
    ok = ok && close(cfg->ctrl_fd) == 0 && close(p->sigfd) == 0;
    for (unsigned i = 0; ok && i < p->n; i++)
        if (p->workers[i].state != W_GONE && p->workers[i].fd >= 0 && p->workers[i].fd != chan)
            ok = close(p->workers[i].fd) == 0;
    for (size_t k = 0; ok && k < p->q_len; k++)
        ok = close(p->queue[(p->q_head + k) % MF_FORK_MAX_CHILDREN].fd) == 0;
    for (size_t i = 0; ok && i < cfg->n_close_in_child; i++)
        ok = close(cfg->close_in_child[i]) == 0 || errno == EBADF;
    if (!ok)
        mf_err("closing the host's fds in a worker");
    ok = ok && mf_private_files(chan);
    if (ok && sigprocmask(SIG_SETMASK, &p->old_mask, NULL) < 0)
        ok = mf_err("sigprocmask(SIG_SETMASK)");
    cfg->hooks->base.after_fork_child(cfg->hooks->base.ctx);
    if (!ok) {
        char text[512];
        int n = snprintf(text, sizeof(text), "worker setup: %s", mf_last_error());
        (void)mf_send_packet(chan, MF_MSG_WORKER_FAILED, 0, text, n > 0 ? (uint32_t)n : 0u);
        _exit(MF_WORKER_EXIT_DIRTY);
    }
    struct mf_worker_config wc = {.chan_fd = chan, .hooks = cfg->hooks, .limits = cfg->limits,
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

static bool spawn_worker(struct pool *p, unsigned i)
{
    const struct mf_fork_hooks *hooks = &p->cfg->hooks->base;
    struct worker *w = &p->workers[i];
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return mf_err("socketpair(worker channel)");
    hooks->before_fork(hooks->ctx);
    pid_t pid = fork();
    if (pid == 0) {
        (void)close(sv[0]);
        worker_child(p, sv[1]);
    }
    int err = errno;
    hooks->after_fork_parent(hooks->ctx);
    mf_close_or_warn(sv[1], "worker channel");
    if (pid < 0) {
        mf_close_or_warn(sv[0], "worker channel");
        errno = err;
        return mf_err("fork(worker)");
    }
    *w = (struct worker){.pid = pid, .fd = sv[0], .state = W_STARTING};
    return arm_cpu_timer(p, i);
}

/* Kills a worker the host no longer trusts; its exit (worker_exited) ends
 * its request, if it had one, and forks the replacement. */
static void doom(struct worker *w, const char *why)
{
    if (w->doomed)
        return;
    if (why != NULL && w->failure[0] == '\0')
        snprintf(w->failure, sizeof(w->failure), "%s", why);
    if (kill(w->pid, SIGKILL) < 0)
        mf_warn("kill(worker %d) failed: %s", w->pid, strerror(errno));
    w->doomed = true;
}

static void set_timer(struct worker *w, uint32_t cpu_ms)
{
    struct itimerspec its = {.it_value = {.tv_sec = cpu_ms / 1000u, .tv_nsec = (long)(cpu_ms % 1000u) * 1000000L}};
    if (w->has_timer && timer_settime(w->cpu_timer, 0, &its, NULL) < 0)
        mf_warn("timer_settime(worker %d, %u ms) failed: %s", w->pid, cpu_ms, strerror(errno));
}

static void abort_request(struct pool *p, struct worker *w, uint32_t flag, uint64_t now)
{
    w->flags |= flag;
    if (w->abort_deadline_ms != 0)
        return;
    union sigval v = {.sival_ptr = (void *)(uintptr_t)w->req_id};
    if (sigqueue(w->pid, MF_ABORT_SIGNAL, v) < 0)
        mf_warn("sigqueue(worker %d, abort) failed: %s", w->pid, strerror(errno));
    w->abort_deadline_ms = now + MF_RESET_ABORT_GRACE_MS;
    (void)p;
}

/* ---- requests ---- */

/* The pool starts with one worker and grows by one whenever a request
 * waits with no worker idle or starting for it, up to its size: an idle
 * tenant keeps one snapshot, not one per core. */
static void grow(struct pool *p)
{
    unsigned starting = 0;
    uint64_t now = 0;

    if (p->q_len == 0 || !mf_now_ms(&now) || now < p->grow_after_ms)
        return;
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_STARTING)
            starting++;
    for (unsigned i = 0; i < p->n && starting < p->q_len; i++) {
        if (p->workers[i].state != W_GONE)
            continue;
        if (!spawn_worker(p, i)) {
            mf_warn("reset engine: cannot add a worker: %s", mf_last_error());
            p->grow_after_ms = now + MF_RESET_GROW_BACKOFF_MS;
            return;
        }
        starting++;
    }
}

static enum step dispatch(struct pool *p)
{
    while (p->q_len > 0) {
        struct worker *w = NULL;
        for (unsigned i = 0; i < p->n && w == NULL; i++)
            if (p->workers[i].state == W_IDLE && !p->workers[i].doomed && p->workers[i].fd >= 0)
                w = &p->workers[i];
        if (w == NULL) {
            grow(p);
            return STEP_CONTINUE;
        }
        struct queued *q = &p->queue[p->q_head];
        p->q_head = (p->q_head + 1) % MF_FORK_MAX_CHILDREN;
        p->q_len--;
        /* Tenant code can write to its worker's channel; what it cannot
         * do (without reading raw memory) is learn this number. */
        struct mf_request_ctl ctl;
        uint32_t nonce = 0;
        while (nonce == 0)
            if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
                nonce = 0;
        memcpy(&ctl, q->packet + MF_FRAME_HEADER_SIZE, sizeof(ctl));
        ctl.reserved = nonce;
        memcpy(q->packet + MF_FRAME_HEADER_SIZE, &ctl, sizeof(ctl));
        if (!mf_send_packet_fd(w->fd, q->packet, sizeof(q->packet), q->fd)) {
            /* A worker that cannot take a request is finished; its exit replaces it. */
            mf_warn("worker %d: %s", w->pid, mf_last_error());
            mf_close_or_warn(q->fd, "request");
            doom(w, "could not be handed a request");
            struct mf_request_failed msg = {.error = EAGAIN};
            if (send_ctrl(p, MF_MSG_REQUEST_FAILED, q->req_id, &msg, sizeof(msg)) != STEP_CONTINUE)
                return STEP_STOP;
            continue;
        }
        mf_close_or_warn(q->fd, "request");
        w->state = W_BUSY;
        w->req_id = q->req_id;
        w->deadline_ms = q->deadline_ms;
        w->abort_deadline_ms = 0;
        w->flags = 0;
        w->nonce = nonce;
        set_timer(w, p->cfg->limits.cpu_ms);
    }
    return STEP_CONTINUE;
}

static bool in_flight(const struct pool *p, uint64_t req_id)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_BUSY && p->workers[i].req_id == req_id)
            return true;
    for (size_t k = 0; k < p->q_len; k++)
        if (p->queue[(p->q_head + k) % MF_FORK_MAX_CHILDREN].req_id == req_id)
            return true;
    return false;
}

static enum step enqueue(struct pool *p, const struct mf_frame_header *hdr, const uint8_t *packet, int fd)
{
    struct mf_request_ctl ctl;
    uint64_t now = 0;
    int error = 0;

    if (hdr->payload_len != sizeof(ctl))
        error = EBADMSG;
    else if (hdr->req_id == 0 || in_flight(p, hdr->req_id))
        error = EEXIST;
    else if (!mf_is_seqpacket_unix(fd))
        error = errno;
    else if (p->q_len == MF_FORK_MAX_CHILDREN)
        error = EAGAIN;
    else if (!mf_now_ms(&now))
        error = errno;
    if (error == 0) {
        memcpy(&ctl, packet + MF_FRAME_HEADER_SIZE, sizeof(ctl));
        if (ctl.reserved != 0)
            error = EBADMSG;
    }
    if (error != 0) {
        mf_warn("REQUEST %llu refused: %s", (unsigned long long)hdr->req_id, strerror(error));
        mf_close_or_warn(fd, "request");
        struct mf_request_failed msg = {.error = error};
        return send_ctrl(p, MF_MSG_REQUEST_FAILED, hdr->req_id, &msg, sizeof(msg));
    }
    struct queued *q = &p->queue[(p->q_head + p->q_len) % MF_FORK_MAX_CHILDREN];
    q->req_id = hdr->req_id;
    q->fd = fd;
    q->deadline_ms = now + ctl.timeout_ms + MF_FORK_GRACE_MS;
    memcpy(q->packet, packet, sizeof(q->packet));
    p->q_len++;
    return dispatch(p);
}

static enum step cancel(struct pool *p, uint64_t req_id, uint32_t flag)
{
    uint64_t now = 0;

    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state == W_BUSY && w->req_id == req_id) {
            if (mf_now_ms(&now))
                abort_request(p, w, flag, now);
            return STEP_CONTINUE;
        }
    }
    for (size_t k = 0; k < p->q_len; k++) {
        size_t at = (p->q_head + k) % MF_FORK_MAX_CHILDREN;
        if (p->queue[at].req_id != req_id)
            continue;
        mf_close_or_warn(p->queue[at].fd, "request");
        /* Close the gap: later requests keep their order. */
        for (size_t m = k; m + 1 < p->q_len; m++)
            p->queue[(p->q_head + m) % MF_FORK_MAX_CHILDREN] = p->queue[(p->q_head + m + 1) % MF_FORK_MAX_CHILDREN];
        p->q_len--;
        return request_ended(p, req_id, 0, SIGKILL, flag, 0, 0);
    }
    return STEP_CONTINUE; /* already ended: its CHILD_EXIT is on the way */
}

static enum step handle_ctrl(struct pool *p)
{
    uint8_t buf[CTRL_BUF_SIZE];
    struct mf_frame_header hdr;
    size_t len, nfds;
    int fd = -1;
    int rc = mf_recv_packet(p->cfg->ctrl_fd, MSG_DONTWAIT, buf, sizeof(buf), &len, &fd, 1, &nfds);

    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return STEP_CONTINUE;
        mf_warn_last();
        return err == EMSGSIZE || err == EPROTO ? STEP_CONTINUE : STEP_STOP;
    }
    if (rc == 0)
        return STEP_STOP;
    if (!mf_frame_parse(buf, len, &hdr)) {
        mf_warn("control socket: %s", mf_last_error());
        if (nfds > 0)
            mf_close_or_warn(fd, "unexpected");
        return STEP_CONTINUE;
    }
    if (hdr.type == MF_MSG_REQUEST) {
        if (nfds != 1) {
            struct mf_request_failed msg = {.error = EBADMSG};
            return send_ctrl(p, MF_MSG_REQUEST_FAILED, hdr.req_id, &msg, sizeof(msg));
        }
        if (len != MF_FRAME_HEADER_SIZE + sizeof(struct mf_request_ctl)) {
            mf_close_or_warn(fd, "request");
            struct mf_request_failed msg = {.error = EBADMSG};
            return send_ctrl(p, MF_MSG_REQUEST_FAILED, hdr.req_id, &msg, sizeof(msg));
        }
        return enqueue(p, &hdr, buf, fd);
    }
    if (nfds > 0)
        mf_close_or_warn(fd, "unexpected");
    switch (hdr.type) {
    case MF_MSG_CANCEL:
        return cancel(p, hdr.req_id, MF_EXIT_CANCELLED);
    case MF_MSG_SHUTDOWN:
        return STEP_STOP;
    default:
        mf_warn("control socket: unexpected message type %u; ignored", hdr.type);
        return STEP_CONTINUE;
    }
}

static void become_idle(struct worker *w)
{
    w->state = W_IDLE;
    if (!mf_now_ms(&w->idle_since_ms))
        w->idle_since_ms = 0; /* retires at the next look */
}

/* Workers idle for idle_ms while nothing waits exit, each taking its
 * snapshot's memory with it; the next request forks one again. */
static void retire_idle(struct pool *p, uint64_t now, uint64_t *next)
{
    uint64_t idle_ms = p->cfg->idle_ms;

    if (idle_ms == 0 || p->q_len > 0)
        return;
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state != W_IDLE || w->doomed)
            continue;
        if (w->idle_since_ms + idle_ms <= now) {
            w->retiring = true;
            doom(w, NULL);
        } else if (w->idle_since_ms + idle_ms < *next) {
            *next = w->idle_since_ms + idle_ms;
        }
    }
}

static bool all_ready(const struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->workers[i].state == W_STARTING)
            return false;
    return true;
}

static enum step handle_worker(struct pool *p, struct worker *w)
{
    struct mf_frame_header hdr;
    size_t len, nfds;
    int fd = -1;
    int rc = mf_recv_packet(w->fd, MSG_DONTWAIT, p->buf, sizeof(p->buf), &len, &fd, 1, &nfds);

    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return STEP_CONTINUE;
        rc = 0; /* a broken channel is a dead worker */
    }
    if (nfds > 0)
        mf_close_or_warn(fd, "unexpected");
    if (rc == 0) {
        /* Its exit (SIGCHLD) replaces it; stop polling the channel. */
        mf_close_or_warn(w->fd, "worker channel");
        w->fd = -1;
        return STEP_CONTINUE;
    }
    if (w->doomed)
        return STEP_CONTINUE; /* nothing a killed worker says counts */
    if (!mf_frame_parse(p->buf, len, &hdr)) {
        mf_warn("worker %d: %s; killed", w->pid, mf_last_error());
        doom(w, "sent a malformed frame to the host");
        return STEP_CONTINUE;
    }
    switch (hdr.type) {
    case MF_MSG_WORKER_READY:
        if (w->state != W_STARTING || hdr.payload_len != sizeof(struct mf_worker_ready))
            break;
        become_idle(w);
        if (!p->ready_sent && all_ready(p)) {
            struct mf_ready ready = {.pid = p->host_pid, .engine = MF_ENGINE_RESET};
            p->ready_sent = true;
            if (send_ctrl(p, MF_MSG_READY, 0, &ready, sizeof(ready)) != STEP_CONTINUE)
                return STEP_STOP;
        }
        return dispatch(p);
    case MF_MSG_REQUEST_DONE: {
        struct mf_request_done done;
        if (w->state != W_BUSY || hdr.req_id != w->req_id || hdr.payload_len != sizeof(done))
            break;
        memcpy(&done, p->buf + MF_FRAME_HEADER_SIZE, sizeof(done));
        if (done.nonce != w->nonce) {
            mf_warn("worker %d: a completion of request %llu with the wrong nonce (forged by tenant code); killed",
                    w->pid, (unsigned long long)hdr.req_id);
            doom(w, "forged a completion on its channel to the host");
            return STEP_CONTINUE;
        }
        set_timer(w, 0);
        become_idle(w);
        /* An aborted request reads as a sandbox killed, as in fork mode. */
        int status = done.aborted ? SIGKILL : (int)(done.status & 0xff) << 8;
        if (request_ended(p, w->req_id, w->pid, status, w->flags, done.cost_us, done.pages) != STEP_CONTINUE)
            return STEP_STOP;
        return dispatch(p);
    }
    case MF_MSG_WORKER_FAILED: {
        size_t n = hdr.payload_len < sizeof(w->failure) - 1 ? hdr.payload_len : sizeof(w->failure) - 1;
        memcpy(w->failure, p->buf + MF_FRAME_HEADER_SIZE, n);
        w->failure[n] = '\0';
        return STEP_CONTINUE;
    }
    default:
        break;
    }
    mf_warn("worker %d: unexpected message type %u in state %d; killed", w->pid, hdr.type, (int)w->state);
    char why[128];
    snprintf(why, sizeof(why), "sent message type %u to the host in state %d", hdr.type, (int)w->state);
    doom(w, why);
    return STEP_CONTINUE;
}

static void describe_exit(char *out, size_t cap, int status)
{
    if (WIFSIGNALED(status))
        snprintf(out, cap, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
}

/* A worker exited: end its request, say why, and fork its replacement
 * (one retired for being idle just leaves its slot free). */
static enum step worker_exited(struct pool *p, unsigned i, int status)
{
    struct worker *w = &p->workers[i];
    char why[700];

    if (w->failure[0] != '\0')
        snprintf(why, sizeof(why), "%s", w->failure);
    else
        describe_exit(why, sizeof(why), status);
    mf_close_or_warn(w->fd, "worker channel");
    if (w->has_timer && timer_delete(w->cpu_timer) < 0)
        mf_warn("timer_delete(worker %d) failed: %s", w->pid, strerror(errno));
    enum worker_state was = w->state;
    w->state = W_GONE;
    w->fd = -1;
    w->has_timer = false;
    if (w->retiring && was == W_IDLE) {
        grow(p); /* for a request that came in as it went */
        return STEP_CONTINUE;
    }
    if (!p->ready_sent) {
        char text[800];
        bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && w->failure[0] == '\0';
        int n = snprintf(text, sizeof(text), "reset engine: a worker could not start: %s%s", why,
                         killed ? " (out of memory? each worker keeps a snapshot of the host's writable "
                                  "memory: raise limits.memory, lower pool, or use engine: fork)" : "");
        (void)send_ctrl(p, MF_MSG_LOAD_FAILED, 0, text, n > 0 ? (uint32_t)n : 0u);
        return STEP_STOP;
    }
    if (was == W_BUSY && request_ended(p, w->req_id, w->pid, status, w->flags, 0, 0) != STEP_CONTINUE)
        return STEP_STOP;
    mf_warn("reset engine: worker %d replaced: %s", w->pid, why);
    if (send_ctrl(p, MF_MSG_WORKER_REPLACED, 0, why, (uint32_t)strlen(why)) != STEP_CONTINUE)
        return STEP_STOP;
    if (was == W_STARTING) {
        /* It could not even take its snapshot (out of memory, most likely):
         * forking another at once would fail the same way. Waiting
         * requests bring one back after the backoff. */
        uint64_t now = 0;
        if (mf_now_ms(&now))
            p->grow_after_ms = now + MF_RESET_GROW_BACKOFF_MS;
        return STEP_CONTINUE;
    }
    if (!spawn_worker(p, i)) {
        mf_warn_last();
        return STEP_FAIL;
    }
    return STEP_CONTINUE;
}

static enum step handle_signals(struct pool *p)
{
    struct signalfd_siginfo si;
    ssize_t got;
    uint64_t now = 0;

    while ((got = read(p->sigfd, &si, sizeof(si))) == (ssize_t)sizeof(si)) {
        if ((int)si.ssi_signo != CPU_TIMER_SIGNAL || si.ssi_int < 0 || (unsigned)si.ssi_int >= p->n)
            continue;
        struct worker *w = &p->workers[si.ssi_int];
        struct itimerspec left;
        /* A stale expiry of an earlier request finds the timer re-armed. */
        if (w->state != W_BUSY || !w->has_timer || timer_gettime(w->cpu_timer, &left) < 0 ||
            left.it_value.tv_sec != 0 || left.it_value.tv_nsec != 0)
            continue;
        if (mf_now_ms(&now))
            abort_request(p, w, MF_EXIT_CPU_EXCEEDED, now);
    }
    if (got < 0 && errno != EAGAIN && errno != EINTR) {
        mf_err("read(signalfd)");
        return STEP_FAIL;
    }
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0 || (pid < 0 && errno == ECHILD))
            return STEP_CONTINUE;
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            mf_err("waitpid(-1, WNOHANG)");
            return STEP_FAIL;
        }
        for (unsigned i = 0; i < p->n; i++) {
            if (p->workers[i].pid != pid || p->workers[i].state == W_GONE)
                continue;
            enum step step = worker_exited(p, i, status);
            if (step != STEP_CONTINUE)
                return step;
            break;
        }
    }
}

/* Aborts requests past their deadline, kills workers that did not come
 * back from an abort, ends queued requests that waited too long. */
static enum step enforce_deadlines(struct pool *p, int *timeout)
{
    uint64_t now = 0, next = UINT64_MAX;

    if (!mf_now_ms(&now))
        return STEP_FAIL;
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state != W_BUSY)
            continue;
        if (w->abort_deadline_ms != 0) {
            if (w->abort_deadline_ms <= now) {
                mf_warn("worker %d did not rewind within %d ms of its abort; killed", w->pid,
                        MF_RESET_ABORT_GRACE_MS);
                char why[96];
                snprintf(why, sizeof(why), "did not come back from an abort within %d ms", MF_RESET_ABORT_GRACE_MS);
                doom(w, why);
                w->abort_deadline_ms = UINT64_MAX;
            } else if (w->abort_deadline_ms < next) {
                next = w->abort_deadline_ms;
            }
            continue;
        }
        if (w->deadline_ms <= now)
            abort_request(p, w, MF_EXIT_TIMED_OUT, now);
        uint64_t due = w->abort_deadline_ms != 0 ? w->abort_deadline_ms : w->deadline_ms;
        if (due < next)
            next = due;
    }
    while (p->q_len > 0 && p->queue[p->q_head].deadline_ms <= now) {
        uint64_t req_id = p->queue[p->q_head].req_id;
        if (cancel(p, req_id, MF_EXIT_TIMED_OUT) != STEP_CONTINUE)
            return STEP_STOP;
    }
    for (size_t k = 0; k < p->q_len; k++) {
        uint64_t due = p->queue[(p->q_head + k) % MF_FORK_MAX_CHILDREN].deadline_ms;
        if (due < next)
            next = due;
    }
    retire_idle(p, now, &next);
    /* Requests waiting while growth backs off: try again when it may. */
    grow(p);
    if (p->q_len > 0 && p->grow_after_ms > now && p->grow_after_ms < next)
        next = p->grow_after_ms;
    *timeout = next == UINT64_MAX ? -1 : next <= now ? 0 : next - now > INT_MAX ? INT_MAX : (int)(next - now);
    return STEP_CONTINUE;
}

static bool serve_loop(struct pool *p)
{
    const struct mf_fork_hooks *hooks = &p->cfg->hooks->base;
    struct pollfd pfd[2 + MF_RESET_MAX_WORKERS];
    unsigned who[MF_RESET_MAX_WORKERS];

    MF_TRY(spawn_worker(p, 0));
    for (;;) {
        enum step step = STEP_CONTINUE;
        int timeout;
        nfds_t n = 2;

        step = enforce_deadlines(p, &timeout);
        if (step == STEP_STOP)
            return true;
        if (step == STEP_FAIL)
            return false;
        /* Requests wait in the socket until every worker has its snapshot. */
        pfd[0] = (struct pollfd){.fd = p->ready_sent ? p->cfg->ctrl_fd : -1, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = p->sigfd, .events = POLLIN};
        for (unsigned i = 0; i < p->n; i++) {
            if (p->workers[i].fd < 0)
                continue;
            who[n - 2] = i;
            pfd[n++] = (struct pollfd){.fd = p->workers[i].fd, .events = POLLIN};
        }
        if (poll(pfd, n, timeout) < 0) {
            if (errno != EINTR)
                return mf_err("poll(control, signalfd, %u workers)", p->n);
            if (!hooks->interrupted(hooks->ctx))
                return mf_errx(EINTR, "serving interrupted by a signal");
            continue;
        }
        /* Worker messages first: a REQUEST_DONE frees a worker for what the
         * supervisor sent meanwhile, and precedes a worker's exit. */
        for (nfds_t k = 2; k < n && step == STEP_CONTINUE; k++)
            if (pfd[k].revents != 0 && p->workers[who[k - 2]].fd == pfd[k].fd)
                step = handle_worker(p, &p->workers[who[k - 2]]);
        if (step == STEP_CONTINUE && pfd[1].revents != 0)
            step = handle_signals(p);
        if (step == STEP_CONTINUE && pfd[0].revents != 0)
            step = handle_ctrl(p);
        if (step == STEP_STOP)
            return true;
        if (step == STEP_FAIL)
            return false;
    }
}

static void stop_workers(struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->workers[i];
        if (w->state == W_GONE || w->pid <= 0)
            continue;
        if (kill(w->pid, SIGKILL) < 0)
            mf_warn("kill(worker %d) failed: %s", w->pid, strerror(errno));
        while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        mf_close_or_warn(w->fd, "worker channel");
        if (w->has_timer)
            (void)timer_delete(w->cpu_timer);
        w->state = W_GONE;
    }
    for (size_t k = 0; k < p->q_len; k++)
        mf_close_or_warn(p->queue[(p->q_head + k) % MF_FORK_MAX_CHILDREN].fd, "request");
    p->q_len = 0;
}

static bool pool_init(struct pool *p, const struct mf_reset_config *cfg)
{
    sigset_t set;

    p->cfg = cfg;
    p->host_pid = getpid();
    p->sigfd = -1;
    p->cpu_timers_work = true;
    p->n = cfg->pool_size;
    if (p->n == 0 || p->n > MF_RESET_MAX_WORKERS)
        return mf_errx(EINVAL, "pool size %u is not within 1..%d", p->n, MF_RESET_MAX_WORKERS);
    for (unsigned i = 0; i < p->n; i++)
        p->workers[i] = (struct worker){.pid = -1, .fd = -1, .state = W_GONE};
    p->queue = calloc(MF_FORK_MAX_CHILDREN, sizeof(*p->queue));
    if (p->queue == NULL)
        return mf_err("calloc(request queue)");
    if (sigemptyset(&set) < 0 || sigaddset(&set, SIGCHLD) < 0 || sigaddset(&set, CPU_TIMER_SIGNAL) < 0)
        return mf_err("sigaddset");
    if (sigprocmask(SIG_BLOCK, &set, &p->old_mask) < 0)
        return mf_err("sigprocmask(SIG_BLOCK)");
    p->mask_saved = true;
    p->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (p->sigfd < 0)
        return mf_err("signalfd");
    return true;
}

bool mf_reset_serve(const struct mf_reset_config *cfg)
{
    struct pool *p = calloc(1, sizeof(*p));
    bool ok;

    if (p == NULL)
        return mf_err("calloc(pool)");
    ok = pool_init(p, cfg) && serve_loop(p);
    stop_workers(p);
    if (p->sigfd >= 0)
        mf_close_or_warn(p->sigfd, "signalfd");
    if (p->mask_saved && sigprocmask(SIG_SETMASK, &p->old_mask, NULL) < 0)
        mf_warn("sigprocmask(SIG_SETMASK) failed: %s", strerror(errno));
    free(p->queue);
    free(p);
    return ok;
}
