/*
 * The child-management core of the host's engines; see children.h.
 *
 * Runs in the host, single-threaded. Every frame the host sends comes out
 * of mf_children_send, so both engines speak the same frames in the same
 * way, each on its own channel.
 */
#define _GNU_SOURCE
#include "engine/children.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/engine_common.h"
#include "walls/identity.h"
#include "walls/private_files.h"

/* Children, not the host, are what the OOM killer should pick. */
#define CHILD_OOM_SCORE_ADJ 1000

/* ---- the two channels ---- */

/* Per-request messages go to the front end, the rest to the supervisor. */
static bool on_data_channel(uint16_t type)
{
    return type == MF_MSG_CHILD_EXIT || type == MF_MSG_REQUEST_FAILED;
}

enum mf_step mf_children_send(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len)
{
    bool data = on_data_channel(type);

    if (mf_send_packet(data ? c->data_fd : c->ctrl_fd, type, req_id, payload, len))
        return MF_STEP_CONTINUE;
    mf_warn("%s channel: %s; stopping", data ? "data" : "control", mf_last_error());
    return MF_STEP_STOP;
}

enum mf_step mf_children_request_failed(struct mf_children *c, uint64_t req_id, int error)
{
    struct mf_request_failed msg = {.error = error};
    return mf_children_send(c, MF_MSG_REQUEST_FAILED, req_id, &msg, sizeof(msg));
}

/* The checks on a REQUEST the front end hands over: 0 and *req filled in,
 * or the error its REQUEST_FAILED carries. */
static int admit(struct mf_children *c, const struct mf_frame_header *hdr, int fd, struct mf_admitted *req)
{
    uint64_t now = 0;

    if (hdr->payload_len != sizeof(req->ctl)) {
        mf_warn("REQUEST %llu: payload of %u bytes, expected %zu", (unsigned long long)hdr->req_id,
                hdr->payload_len, sizeof(req->ctl));
        return EBADMSG;
    }
    if (hdr->req_id == 0 || c->ops->in_flight(c->engine, hdr->req_id)) {
        mf_warn("REQUEST: req_id %llu is 0 or already in flight", (unsigned long long)hdr->req_id);
        return EEXIST;
    }
    if (!mf_is_seqpacket_unix(fd)) {
        mf_warn_last();
        return errno;
    }
    if (c->ops->full(c->engine))
        return EAGAIN;
    if (!mf_now_ms(&now)) {
        mf_warn_last();
        return errno;
    }
    memcpy(&req->ctl, c->ctrl_buf + MF_FRAME_HEADER_SIZE, sizeof(req->ctl));
    if (req->ctl.reserved != 0) {
        mf_warn("REQUEST %llu: reserved field is %u, not 0", (unsigned long long)hdr->req_id, req->ctl.reserved);
        return EBADMSG;
    }
    req->req_id = hdr->req_id;
    req->fd = fd;
    req->deadline_ms = now + req->ctl.timeout_ms + MF_FORK_GRACE_MS;
    memcpy(req->packet, c->ctrl_buf, sizeof(req->packet));
    return 0;
}

/* fd: the attached socket, or -1. */
static enum mf_step request(struct mf_children *c, const struct mf_frame_header *hdr, int fd)
{
    struct mf_admitted req;
    int error;

    if (fd < 0) {
        mf_warn("REQUEST %llu arrived without its socket", (unsigned long long)hdr->req_id);
        return mf_children_request_failed(c, hdr->req_id, EBADMSG);
    }
    error = admit(c, hdr, fd, &req);
    if (error != 0) {
        mf_close_or_warn(fd, "request");
        return mf_children_request_failed(c, hdr->req_id, error);
    }
    return c->ops->start(c->engine, &req);
}

/*
 * One frame from a channel into c->ctrl_buf, with *fd its attached fd or
 * -1. *got false when there was none to act on: nothing waiting, or a bad
 * packet (consumed whole and warned about); STOP at the channel's end.
 */
static enum mf_step recv_frame(struct mf_children *c, int chan, const char *name, struct mf_frame_header *hdr,
                               int *fd, bool *got)
{
    size_t len, nfds;
    int rc = mf_recv_packet(chan, MSG_DONTWAIT, c->ctrl_buf, sizeof(c->ctrl_buf), &len, fd, 1, &nfds);

    *got = false;
    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return MF_STEP_CONTINUE;
        mf_warn("%s channel: %s", name, mf_last_error());
        /* A bad packet was consumed whole; anything else ends the channel. */
        return err == EMSGSIZE || err == EPROTO ? MF_STEP_CONTINUE : MF_STEP_STOP;
    }
    if (rc == 0)
        return MF_STEP_STOP;
    if (nfds == 0)
        *fd = -1;
    if (!mf_frame_parse(c->ctrl_buf, len, hdr)) {
        mf_warn("%s channel: %s", name, mf_last_error());
        if (*fd >= 0)
            mf_close_or_warn(*fd, "unexpected");
        return MF_STEP_CONTINUE;
    }
    *got = true;
    return MF_STEP_CONTINUE;
}

/* Only a REQUEST carries an fd: any other is closed. */
static void drop_fd(const char *name, uint16_t type, int fd)
{
    if (fd < 0)
        return;
    mf_warn("%s channel: message type %u carried an fd; closed", name, type);
    mf_close_or_warn(fd, "unexpected");
}

/* A message of the other channel (a REQUEST or CANCEL on the control
 * channel, a SHUTDOWN on the data channel) or of no known type. */
static enum mf_step refuse(const char *name, uint16_t type, int fd)
{
    mf_warn("%s channel: unexpected message type %u; ignored", name, type);
    if (fd >= 0)
        mf_close_or_warn(fd, "unexpected");
    return MF_STEP_CONTINUE;
}

enum mf_step mf_children_handle_ctrl(struct mf_children *c)
{
    struct mf_frame_header hdr;
    int fd = -1;
    bool got;
    enum mf_step step = recv_frame(c, c->ctrl_fd, "control", &hdr, &fd, &got);

    if (!got)
        return step;
    if (hdr.type != MF_MSG_SHUTDOWN)
        return refuse("control", hdr.type, fd);
    drop_fd("control", hdr.type, fd);
    return MF_STEP_STOP;
}

enum mf_step mf_children_handle_data(struct mf_children *c)
{
    struct mf_frame_header hdr;
    int fd = -1;
    bool got;
    enum mf_step step = recv_frame(c, c->data_fd, "data", &hdr, &fd, &got);

    if (!got)
        return step;
    if (hdr.type == MF_MSG_REQUEST)
        return request(c, &hdr, fd);
    if (hdr.type != MF_MSG_CANCEL)
        return refuse("data", hdr.type, fd);
    drop_fd("data", hdr.type, fd);
    return c->ops->cancel(c->engine, hdr.req_id);
}

/* ---- signals, exits ---- */

bool mf_children_init(struct mf_children *c, size_t max_children, int extra_signal)
{
    sigset_t set;

    c->host_pid = getpid();
    c->sigfd = -1;
    c->mask_saved = false;
    c->n_pids = 0;
    c->max_pids = max_children;
    c->pids = calloc(max_children, sizeof(*c->pids));
    if (c->pids == NULL)
        return mf_err("calloc(%zu children)", max_children);
    if (sigemptyset(&set) < 0 || sigaddset(&set, SIGCHLD) < 0 ||
        (extra_signal != 0 && sigaddset(&set, extra_signal) < 0))
        return mf_err("sigaddset(SIGCHLD, %d)", extra_signal);
    /* Blocked, so that they arrive only through the signalfd. */
    if (sigprocmask(SIG_BLOCK, &set, &c->old_mask) < 0)
        return mf_err("sigprocmask(SIG_BLOCK, SIGCHLD)");
    c->mask_saved = true;
    c->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (c->sigfd < 0)
        return mf_err("signalfd(SIGCHLD)");
    return true;
}

/* Takes pid out of our children; false if it was not one. */
static bool forget(struct mf_children *c, pid_t pid)
{
    for (size_t i = 0; i < c->n_pids; i++) {
        if (c->pids[i] != pid)
            continue;
        c->pids[i] = c->pids[--c->n_pids];
        return true;
    }
    return false;
}

enum mf_step mf_children_reap(struct mf_children *c)
{
    struct signalfd_siginfo si;
    ssize_t n;

    /* Drain first; one reading may stand for many exits. */
    while ((n = read(c->sigfd, &si, sizeof(si))) == (ssize_t)sizeof(si))
        if ((int)si.ssi_signo != SIGCHLD && c->ops->signal != NULL)
            c->ops->signal(c->engine, &si);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        mf_err("read(signalfd %d)", c->sigfd);
        return MF_STEP_FAIL;
    }
    for (;;) {
        struct rusage ru;
        int status;
        /* wait4 for the CPU time the child used, to name a CPU kill. */
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid == 0 || (pid < 0 && errno == ECHILD))
            return MF_STEP_CONTINUE;
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            mf_err("wait4(-1, WNOHANG)");
            return MF_STEP_FAIL;
        }
        /* Not ours (a process the program started before sealing): reaped silently. */
        if (!forget(c, pid))
            continue;
        enum mf_step step = c->ops->exited(c->engine, pid, status, &ru);
        if (step != MF_STEP_CONTINUE)
            return step;
    }
}

void mf_child_kill(pid_t pid)
{
    /* A child that already exited is a zombie until reaped: kill() succeeds. */
    if (kill(pid, SIGKILL) < 0)
        mf_warn("kill(%d, SIGKILL) failed: %s", pid, strerror(errno));
}

/* At the end nothing may be left behind: kill and reap every child. */
static void kill_all(struct mf_children *c)
{
    for (size_t i = 0; i < c->n_pids; i++) {
        pid_t pid = c->pids[i];
        mf_child_kill(pid);
        while (waitpid(pid, NULL, 0) < 0) {
            if (errno != EINTR) {
                mf_warn("waitpid(%d) failed: %s", pid, strerror(errno));
                break;
            }
        }
    }
    c->n_pids = 0;
}

void mf_children_fini(struct mf_children *c)
{
    /* No table: init never got past its first step, nothing to undo. */
    if (c->pids == NULL)
        return;
    kill_all(c);
    if (c->sigfd >= 0)
        mf_close_or_warn(c->sigfd, "signalfd");
    c->sigfd = -1;
    if (c->mask_saved && sigprocmask(SIG_SETMASK, &c->old_mask, NULL) < 0)
        mf_warn("sigprocmask(SIG_SETMASK) failed: %s", strerror(errno));
    c->mask_saved = false;
    free(c->pids);
    c->pids = NULL;
}

void mf_children_pollfds(const struct mf_children *c, struct pollfd pfd[MF_PFD_CORE], bool accepting)
{
    pfd[MF_PFD_CTRL] = (struct pollfd){.fd = c->ctrl_fd, .events = POLLIN};
    pfd[MF_PFD_DATA] = (struct pollfd){.fd = accepting ? c->data_fd : -1, .events = POLLIN};
    pfd[MF_PFD_SIGNAL] = (struct pollfd){.fd = c->sigfd, .events = POLLIN};
}

enum mf_step mf_children_serve(struct mf_children *c, const struct pollfd pfd[MF_PFD_CORE])
{
    enum mf_step step = MF_STEP_CONTINUE;

    if (pfd[MF_PFD_SIGNAL].revents != 0)
        step = mf_children_reap(c);
    if (step == MF_STEP_CONTINUE && pfd[MF_PFD_CTRL].revents != 0)
        step = mf_children_handle_ctrl(c);
    if (step == MF_STEP_CONTINUE && pfd[MF_PFD_DATA].revents != 0)
        step = mf_children_handle_data(c);
    return step;
}

bool mf_children_poll(struct mf_children *c, struct pollfd *pfd, nfds_t n, int timeout, bool *ready)
{
    *ready = false;
    if (poll(pfd, n, timeout) >= 0) {
        *ready = true;
        return true;
    }
    if (errno != EINTR)
        return mf_err("poll(control fd %d, data fd %d, signalfd %d, %lu more fds)", c->ctrl_fd, c->data_fd,
                      c->sigfd, (unsigned long)(n - MF_PFD_CORE));
    if (!c->hooks->interrupted(c->hooks->ctx))
        return mf_errx(EINTR, "serving interrupted by a signal");
    return true;
}

/* ---- a new child ---- */

/* Nothing of the host's may reach tenant code: either channel would let a
 * child speak for the host and the other children. */
static bool close_inherited(struct mf_children *c, int keep_fd)
{
    if (close(c->ctrl_fd) < 0)
        return mf_err("close(control fd %d)", c->ctrl_fd);
    if (close(c->data_fd) < 0)
        return mf_err("close(data fd %d)", c->data_fd);
    if (close(c->sigfd) < 0)
        return mf_err("close(signalfd %d)", c->sigfd);
    if (c->ops->close_own_fds != NULL)
        MF_TRY(c->ops->close_own_fds(c->engine, keep_fd));
    for (size_t i = 0; i < c->n_close_in_child; i++)
        if (close(c->close_in_child[i]) < 0 && errno != EBADF)
            return mf_err("close(fd %d)", c->close_in_child[i]);
    return true;
}

static bool child_first_steps(struct mf_children *c, int keep_fd)
{
    /* First: a child must never outlive its host. */
    MF_TRY(mf_arm_parent_death(SIGKILL, "the host", c->host_pid, -1));
    /* Before the request is read: its memory is charged to us, and if the
     * group runs out the OOM killer must take this child, not the host. */
    MF_TRY(mf_set_oom_score_adj(CHILD_OOM_SCORE_ADJ));
    /* Before any tenant code. */
    MF_TRY(close_inherited(c, keep_fd));
    /* Before tenant code, while /proc/self/fd may still be opened: a file
     * the program opened in on_init() must not share its offset. */
    return mf_private_files(keep_fd);
}

pid_t mf_children_fork(struct mf_children *c, int keep_fd, bool *setup_ok)
{
    const struct mf_fork_hooks *hooks = c->hooks;
    pid_t pid;
    int error;

    if (c->n_pids == c->max_pids) {
        mf_errx(EAGAIN, "fork(): %zu children already", c->n_pids);
        return -1;
    }
    hooks->before_fork(hooks->ctx);
    pid = fork();
    if (pid == 0) {
        *setup_ok = child_first_steps(c, keep_fd);
        return 0;
    }
    error = errno;
    /* Also after a failed fork: it releases what before_fork took. */
    hooks->after_fork_parent(hooks->ctx);
    if (pid < 0) {
        errno = error;
        mf_err("fork()");
        return -1;
    }
    c->pids[c->n_pids++] = pid;
    return pid;
}

bool mf_children_unblock(const struct mf_children *c)
{
    /* A handler may use SIGCHLD (subprocess) like any program. */
    if (sigprocmask(SIG_SETMASK, &c->old_mask, NULL) < 0)
        return mf_err("sigprocmask(SIG_SETMASK)");
    return true;
}
