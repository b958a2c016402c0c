/*
 * Fork-mode serve loop of the host, and the first steps of each sandbox.
 *
 * The host is single-threaded: one poll() over the control socket and a
 * signalfd for SIGCHLD, with the timeout set by the nearest sandbox
 * deadline. Each sandbox is a fork() of the sealed host; it answers on its
 * own per-request socket only, and its exit is reported on the control
 * socket as CHILD_EXIT.
 */
#define _GNU_SOURCE
#include "engine/fork_engine.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine_common.h"
#include "walls/identity.h"
#include "walls/request_limits.h"
#include "base/log.h"
#include "walls/private_files.h"
#include "walls/seccomp.h"

/* Sandboxes, not the host, are what the OOM killer should pick. */
#define CHILD_OOM_SCORE_ADJ 1000
/* Control messages are small; anything larger is malformed. */
#define CTRL_BUF_SIZE (MF_FRAME_HEADER_SIZE + 64)

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
    pid_t host_pid;
    int sigfd;
    bool mask_saved;
    sigset_t old_mask;
    struct child *children;  /* n used entries, unordered */
    size_t n;
    uint8_t *buf;
};

enum step { STEP_CONTINUE, STEP_STOP, STEP_FAIL };

static struct child *find_req(struct engine *e, uint64_t req_id)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->children[i].req_id == req_id)
            return &e->children[i];
    return NULL;
}

/* The supervisor is gone when a send fails: stop serving. */
static enum step send_ctrl(struct engine *e, uint16_t type, uint64_t req_id, const void *p, uint32_t len)
{
    if (mf_send_packet(e->cfg->ctrl_fd, type, req_id, p, len))
        return STEP_CONTINUE;
    mf_warn("control socket: %s; stopping", mf_last_error());
    return STEP_STOP;
}

static enum step request_failed(struct engine *e, uint64_t req_id, int error)
{
    struct mf_request_failed msg = {.error = error};
    return send_ctrl(e, MF_MSG_REQUEST_FAILED, req_id, &msg, sizeof(msg));
}

static bool close_inherited(const struct engine *e)
{
    const struct mf_fork_config *cfg = e->cfg;

    if (close(cfg->ctrl_fd) < 0)
        return mf_err("close(control fd %d)", cfg->ctrl_fd);
    if (close(e->sigfd) < 0)
        return mf_err("close(signalfd %d)", e->sigfd);
    for (size_t i = 0; i < cfg->n_close_in_child; i++)
        if (close(cfg->close_in_child[i]) < 0 && errno != EBADF)
            return mf_err("close(fd %d)", cfg->close_in_child[i]);
    return true;
}

static _Noreturn void child_main(const struct engine *e, int req_fd, uint64_t req_id)
{
    const struct mf_fork_config *cfg = e->cfg;
    const struct mf_fork_hooks *hooks = cfg->hooks;
    struct mf_request req;
    struct mf_response resp;

    /* First: a sandbox must never outlive its host. The check catches a
     * host that died before the signal was armed. */
    if (!mf_set_parent_death_signal(SIGKILL, e->host_pid))
        goto setup_failed;
    /* Before the request is read: its memory is charged to us, and if the
     * group runs out the OOM killer must take this sandbox, not the host. */
    if (!mf_set_oom_score_adj(CHILD_OOM_SCORE_ADJ))
        goto setup_failed;
    /* Before any tenant code: the control socket would let a sandbox
     * speak for the host and the other sandboxes. */
    if (!close_inherited(e))
        goto setup_failed;
    /* Before tenant code, while /proc/self/fd may still be opened: a file
     * the program opened in on_init() must not share its offset. */
    if (!mf_private_files(req_fd))
        goto setup_failed;
    /* Before any code of the program, its at-fork handlers included. */
    if (!mf_limits_apply(&cfg->limits))
        goto setup_failed;
    /* Last of the sandbox's own set-up: the request filter is what keeps
     * it from lifting the limits or deleting its CPU timer. */
    if (cfg->request_filter_len > 0 && !mf_seccomp_load(cfg->request_filter, cfg->request_filter_len))
        goto setup_failed;
    /* The handler may use SIGCHLD (subprocess) like any program. */
    if (sigprocmask(SIG_SETMASK, &e->old_mask, NULL) < 0) {
        mf_err("sigprocmask(SIG_SETMASK)");
        goto setup_failed;
    }
    /* Python's at-fork handlers (which reseed random) before any Python. */
    hooks->after_fork_child(hooks->ctx);

    mf_request_init(&req, req_id);
    if (!mf_request_recv(req_fd, &req)) {
        if (mf_last_errno() != EPIPE) /* an abandoned request is no news */
            mf_warn("request %llu: %s", (unsigned long long)req_id, mf_last_error());
        _exit(MF_CHILD_EXIT_BAD_REQUEST);
    }
    if (!hooks->handle(hooks->ctx, &req, &resp))
        _exit(MF_CHILD_EXIT_HANDLER);
    if (!mf_response_send(req_fd, req_id, &resp)) {
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

static enum step start_request(struct engine *e, const struct mf_frame_header *hdr,
                               const uint8_t *payload, int req_fd)
{
    const struct mf_fork_hooks *hooks = e->cfg->hooks;
    struct mf_request_ctl ctl;
    uint64_t now = 0;
    int error = 0;
    pid_t pid;

    if (hdr->payload_len != sizeof(ctl)) {
        mf_warn("REQUEST %llu: payload of %u bytes, expected %zu", (unsigned long long)hdr->req_id,
                hdr->payload_len, sizeof(ctl));
        error = EBADMSG;
    } else if (hdr->req_id == 0 || find_req(e, hdr->req_id) != NULL) {
        mf_warn("REQUEST: req_id %llu is 0 or already in flight", (unsigned long long)hdr->req_id);
        error = EEXIST;
    } else if (!mf_is_seqpacket_unix(req_fd)) {
        mf_warn_last();
        error = errno;
    } else if (e->n == MF_FORK_MAX_CHILDREN) {
        error = EAGAIN;
    } else if (!mf_now_ms(&now)) {
        mf_warn_last();
        error = errno;
    }
    if (error == 0) {
        memcpy(&ctl, payload, sizeof(ctl));
        if (ctl.reserved != 0) {
            mf_warn("REQUEST %llu: reserved field is %u, not 0", (unsigned long long)hdr->req_id,
                    ctl.reserved);
            error = EBADMSG;
        }
    }
    if (error != 0) {
        mf_close_or_warn(req_fd, "request");
        return request_failed(e, hdr->req_id, error);
    }

    uint64_t fork_started = mf_now_us();
    hooks->before_fork(hooks->ctx);
    pid = fork();
    if (pid == 0)
        child_main(e, req_fd, hdr->req_id);
    error = errno;
    /* Also after a failed fork: it releases what before_fork took. */
    hooks->after_fork_parent(hooks->ctx);
    uint64_t fork_cost = mf_now_us() - fork_started;
    /* The host keeps no request fd: a later sandbox must not inherit it. */
    mf_close_or_warn(req_fd, "request");
    if (pid < 0) {
        mf_warn("fork() for request %llu failed: %s", (unsigned long long)hdr->req_id, strerror(error));
        return request_failed(e, hdr->req_id, error);
    }
    e->children[e->n++] = (struct child){
        .pid = pid,
        .req_id = hdr->req_id,
        .deadline_ms = now + ctl.timeout_ms + MF_FORK_GRACE_MS,
        .cost_us = fork_cost > UINT32_MAX ? UINT32_MAX : (uint32_t)fork_cost,
    };
    return STEP_CONTINUE;
}

static void kill_child(struct child *c, uint32_t flag)
{
    if (c->killed)
        return;
    /* A child that already exited is a zombie until reaped: kill() succeeds. */
    if (kill(c->pid, SIGKILL) < 0)
        mf_warn("kill(%d, SIGKILL) failed: %s", c->pid, strerror(errno));
    c->flags |= flag;
    c->killed = true;
}

static enum step handle_ctrl(struct engine *e)
{
    struct mf_frame_header hdr;
    size_t len, nfds;
    int fd = -1;
    int rc = mf_recv_packet(e->cfg->ctrl_fd, MSG_DONTWAIT, e->buf, CTRL_BUF_SIZE, &len, &fd, 1, &nfds);

    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return STEP_CONTINUE;
        mf_warn_last();
        /* A bad packet was consumed whole; anything else ends the channel. */
        return err == EMSGSIZE || err == EPROTO ? STEP_CONTINUE : STEP_STOP;
    }
    if (rc == 0)
        return STEP_STOP;
    if (!mf_frame_parse(e->buf, len, &hdr)) {
        mf_warn("control socket: %s", mf_last_error());
        if (nfds > 0)
            mf_close_or_warn(fd, "unexpected");
        return STEP_CONTINUE;
    }
    if (hdr.type == MF_MSG_REQUEST) {
        if (nfds != 1) {
            mf_warn("REQUEST %llu arrived without its socket", (unsigned long long)hdr.req_id);
            return request_failed(e, hdr.req_id, EBADMSG);
        }
        return start_request(e, &hdr, e->buf + MF_FRAME_HEADER_SIZE, fd);
    }
    if (nfds > 0) {
        mf_warn("control message type %u carried an fd; closed", hdr.type);
        mf_close_or_warn(fd, "unexpected");
    }
    switch (hdr.type) {
    case MF_MSG_CANCEL: {
        struct child *c = find_req(e, hdr.req_id);
        /* Unknown: the sandbox has exited and its CHILD_EXIT is on the way. */
        if (c != NULL)
            kill_child(c, MF_EXIT_CANCELLED);
        return STEP_CONTINUE;
    }
    case MF_MSG_SHUTDOWN:
        return STEP_STOP;
    default:
        mf_warn("control socket: unexpected message type %u; ignored", hdr.type);
        return STEP_CONTINUE;
    }
}

static enum step reap_children(struct engine *e)
{
    struct signalfd_siginfo si;
    ssize_t n;

    /* Drain first; one reading may stand for many exits. */
    while ((n = read(e->sigfd, &si, sizeof(si))) == (ssize_t)sizeof(si))
        ;
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        mf_err("read(signalfd %d)", e->sigfd);
        return STEP_FAIL;
    }
    for (;;) {
        struct rusage ru;
        int status;
        /* wait4 for the CPU time the sandbox used, to name a CPU kill. */
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid == 0 || (pid < 0 && errno == ECHILD))
            return STEP_CONTINUE;
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            mf_err("wait4(-1, WNOHANG)");
            return STEP_FAIL;
        }
        for (size_t i = 0; i < e->n; i++) {
            struct child c = e->children[i];
            if (c.pid != pid)
                continue;
            e->children[i] = e->children[--e->n];
            struct mf_child_exit msg = {.pid = pid, .wait_status = status, .flags = c.flags,
                                        .cost_us = c.cost_us};
            if (mf_limits_cpu_exceeded(&e->cfg->limits, status, &ru))
                msg.flags |= MF_EXIT_CPU_EXCEEDED;
            if (send_ctrl(e, MF_MSG_CHILD_EXIT, c.req_id, &msg, sizeof(msg)) != STEP_CONTINUE)
                return STEP_STOP;
            break;
        }
        /* Not ours (a process the program started before sealing): reaped silently. */
    }
}

/* Kills sandboxes past their deadline; returns the poll timeout to the next one. */
static bool enforce_deadlines(struct engine *e, int *timeout)
{
    uint64_t now = 0, next = UINT64_MAX;

    MF_TRY(mf_now_ms(&now));
    for (size_t i = 0; i < e->n; i++) {
        struct child *c = &e->children[i];
        if (c->killed)
            continue;
        if (c->deadline_ms <= now)
            kill_child(c, MF_EXIT_TIMED_OUT);
        else if (c->deadline_ms < next)
            next = c->deadline_ms;
    }
    *timeout = next == UINT64_MAX ? -1 : next - now > INT_MAX ? INT_MAX : (int)(next - now);
    return true;
}

static bool serve_loop(struct engine *e)
{
    const struct mf_fork_hooks *hooks = e->cfg->hooks;
    struct mf_ready ready = {.pid = e->host_pid, .engine = MF_ENGINE_FORK};

    if (send_ctrl(e, MF_MSG_READY, 0, &ready, sizeof(ready)) != STEP_CONTINUE)
        return true;
    for (;;) {
        struct pollfd pfd[2] = {{.fd = e->cfg->ctrl_fd, .events = POLLIN},
                                {.fd = e->sigfd, .events = POLLIN}};
        enum step step = STEP_CONTINUE;
        int timeout;

        MF_TRY(enforce_deadlines(e, &timeout));
        if (poll(pfd, 2, timeout) < 0) {
            if (errno != EINTR)
                return mf_err("poll(control fd %d, signalfd %d)", pfd[0].fd, pfd[1].fd);
            if (!hooks->interrupted(hooks->ctx))
                return mf_errx(EINTR, "serving interrupted by a signal");
            continue;
        }
        /* Exits first, so a CHILD_EXIT precedes the host's reaction to
         * whatever the supervisor sent meanwhile. */
        if (pfd[1].revents != 0)
            step = reap_children(e);
        if (step == STEP_CONTINUE && pfd[0].revents != 0)
            step = handle_ctrl(e);
        if (step == STEP_STOP)
            return true;
        if (step == STEP_FAIL)
            return false;
    }
}

/* At shutdown nothing may be left behind: kill and reap every sandbox. */
static void kill_all(struct engine *e)
{
    for (size_t i = 0; i < e->n; i++) {
        pid_t pid = e->children[i].pid;
        int status;
        if (kill(pid, SIGKILL) < 0)
            mf_warn("kill(%d, SIGKILL) failed: %s", pid, strerror(errno));
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) {
                mf_warn("waitpid(%d) failed: %s", pid, strerror(errno));
                break;
            }
        }
    }
    e->n = 0;
}

static bool engine_init(struct engine *e, const struct mf_fork_config *cfg)
{
    const char *oom_path = "/proc/self/oom_score_adj";
    sigset_t chld;

    *e = (struct engine){.cfg = cfg, .host_pid = getpid(), .sigfd = -1};
    /* Fail here, not in every sandbox, when /proc is not in the sandbox's view. */
    if (access(oom_path, F_OK) < 0)
        return mf_err("access(%s, F_OK) (sandboxes set their OOM score there; is /proc mounted?)",
                      oom_path);
    e->children = calloc(MF_FORK_MAX_CHILDREN, sizeof(*e->children));
    if (e->children == NULL)
        return mf_err("calloc(%d sandboxes)", MF_FORK_MAX_CHILDREN);
    e->buf = malloc(CTRL_BUF_SIZE);
    if (e->buf == NULL)
        return mf_err("malloc(%d)", CTRL_BUF_SIZE);
    if (sigemptyset(&chld) < 0 || sigaddset(&chld, SIGCHLD) < 0)
        return mf_err("sigaddset(SIGCHLD)");
    /* Blocked, so that exits arrive only through the signalfd. */
    if (sigprocmask(SIG_BLOCK, &chld, &e->old_mask) < 0)
        return mf_err("sigprocmask(SIG_BLOCK, SIGCHLD)");
    e->mask_saved = true;
    e->sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (e->sigfd < 0)
        return mf_err("signalfd(SIGCHLD)");
    return true;
}

static void engine_fini(struct engine *e)
{
    if (e->sigfd >= 0)
        mf_close_or_warn(e->sigfd, "signalfd");
    if (e->mask_saved && sigprocmask(SIG_SETMASK, &e->old_mask, NULL) < 0)
        mf_warn("sigprocmask(SIG_SETMASK) failed: %s", strerror(errno));
    free(e->children);
    free(e->buf);
}

bool mf_fork_serve(const struct mf_fork_config *cfg)
{
    struct engine e;
    bool ok = engine_init(&e, cfg) && serve_loop(&e);

    /* Keep the error of the loop; kill_all only warns. */
    if (e.children != NULL)
        kill_all(&e);
    engine_fini(&e);
    return ok;
}
