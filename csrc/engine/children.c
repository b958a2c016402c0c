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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/engine_common.h"
#include "walls/identity.h"
#include "walls/private_files.h"
#include "walls/request_limits.h"
#include "walls/seccomp.h"

/* Children, not the host, are what the OOM killer should pick. */
#define CHILD_OOM_SCORE_ADJ 1000

/* ---- requests in flight: req_id -> data channel ---- */

static size_t route_home(const struct mf_children *c, uint64_t req_id)
{
    /* Fibonacci hashing: front ends number requests in sequence. */
    return (size_t)((req_id * 0x9E3779B97F4A7C15ull) >> 32) & c->routes_mask;
}

static struct mf_route *route_find(struct mf_children *c, uint64_t req_id)
{
    for (size_t i = route_home(c, req_id);; i = (i + 1) & c->routes_mask) {
        if (c->routes[i].req_id == req_id)
            return &c->routes[i];
        if (c->routes[i].req_id == 0)
            return NULL;
    }
}

static void route_add(struct mf_children *c, uint64_t req_id, unsigned chan)
{
    size_t i = route_home(c, req_id);

    while (c->routes[i].req_id != 0)
        i = (i + 1) & c->routes_mask;
    c->routes[i] = (struct mf_route){.req_id = req_id, .chan = chan};
}

/* Deletes without tombstones: every later entry of the cluster that may
 * move back into the hole does. */
static void route_delete(struct mf_children *c, struct mf_route *r)
{
    size_t hole = (size_t)(r - c->routes), mask = c->routes_mask;

    for (size_t j = (hole + 1) & mask; c->routes[j].req_id != 0; j = (j + 1) & mask) {
        size_t home = route_home(c, c->routes[j].req_id);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            c->routes[hole] = c->routes[j];
            hole = j;
        }
    }
    c->routes[hole].req_id = 0;
}

/* ---- the channels ---- */

static bool on_data_channel(uint16_t type)
{
    return type == MF_MSG_CHILD_EXIT || type == MF_MSG_REQUEST_FAILED;
}

/* The ring's size: one entry even for a queue of none. */
static size_t ring_size(const struct mf_children *c)
{
    return c->q_max > 0 ? c->q_max : 1;
}

static struct mf_admitted *queued_at(struct mf_children *c, size_t k)
{
    return &c->queue[(c->q_head + k) % ring_size(c)];
}

/* Takes the queued request k out, keeping the others' order. */
static struct mf_admitted unqueue(struct mf_children *c, size_t k)
{
    struct mf_admitted req = *queued_at(c, k);

    if (k == 0) {
        c->q_head = (c->q_head + 1) % ring_size(c);
    } else {
        for (size_t m = k; m + 1 < c->q_len; m++)
            *queued_at(c, m) = *queued_at(c, m + 1);
    }
    c->q_len--;
    return req;
}

/*
 * A data channel's end or error: it is closed, its queued requests
 * dropped and its started ones cancelled, none of them reported (their
 * routes go first, so that the engine's later CHILD_EXIT goes nowhere).
 */
static void drop_channel(struct mf_children *c, unsigned slot)
{
    mf_close_or_warn(c->chans[slot], "data channel");
    c->chans[slot] = -1;
    for (size_t k = 0; k < c->q_len;) {
        if (queued_at(c, k)->chan != slot) {
            k++;
            continue;
        }
        struct mf_admitted req = unqueue(c, k);
        route_delete(c, route_find(c, req.req_id));
        mf_close_or_warn(req.fd, "request");
    }
    /* A deletion may move a later entry into i: look at i again. */
    for (size_t i = 0; i <= c->routes_mask;) {
        struct mf_route *r = &c->routes[i];
        if (r->req_id == 0 || r->chan != slot) {
            i++;
            continue;
        }
        uint64_t req_id = r->req_id;
        route_delete(c, r);
        c->ops->cancel(c->engine, req_id);
    }
}

enum mf_step mf_children_send_on(struct mf_children *c, unsigned slot, uint16_t type, uint64_t req_id,
                                 const void *payload, uint32_t len, int fd)
{
    if (c->chans[slot] < 0)
        return MF_STEP_CONTINUE;
    bool sent;
    if (fd < 0) {
        sent = mf_send_packet(c->chans[slot], type, req_id, payload, len);
    } else {
        uint8_t packet[MF_FRAME_HEADER_SIZE + 64];
        struct mf_frame_header hdr;
        if (len > sizeof(packet) - MF_FRAME_HEADER_SIZE)
            return mf_errx(EMSGSIZE, "a %u-byte payload with an fd", len), MF_STEP_FAIL;
        mf_frame_init(&hdr, type, req_id, len);
        memcpy(packet, &hdr, sizeof(hdr));
        if (len > 0)
            memcpy(packet + MF_FRAME_HEADER_SIZE, payload, len);
        sent = mf_send_packet_fd(c->chans[slot], packet, MF_FRAME_HEADER_SIZE + len, fd);
    }
    if (sent)
        return MF_STEP_CONTINUE;
    mf_warn("data channel %u: %s; dropped", slot, mf_last_error());
    drop_channel(c, slot);
    return MF_STEP_CONTINUE;
}

static enum mf_step send_data(struct mf_children *c, unsigned slot, uint16_t type, uint64_t req_id,
                              const void *payload, uint32_t len)
{
    return mf_children_send_on(c, slot, type, req_id, payload, len, -1);
}

enum mf_step mf_children_tell(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len)
{
    struct mf_route *r = route_find(c, req_id);
    return r == NULL ? MF_STEP_CONTINUE : send_data(c, r->chan, type, req_id, payload, len);
}

enum mf_step mf_children_send(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len)
{
    if (on_data_channel(type)) {
        struct mf_route *r = route_find(c, req_id);
        /* None: its channel was dropped, and nobody waits for the report. */
        if (r == NULL)
            return MF_STEP_CONTINUE;
        unsigned slot = r->chan;
        route_delete(c, r);
        return send_data(c, slot, type, req_id, payload, len);
    }
    if (mf_send_packet(c->ctrl_fd, type, req_id, payload, len))
        return MF_STEP_CONTINUE;
    mf_warn("control channel: %s; stopping", mf_last_error());
    return MF_STEP_STOP;
}

enum mf_step mf_children_request_failed(struct mf_children *c, uint64_t req_id, int error)
{
    struct mf_request_failed msg = {.error = error};
    return mf_children_send(c, MF_MSG_REQUEST_FAILED, req_id, &msg, sizeof(msg));
}

/* A REQUEST refused before it had a route: its answer goes where it came from. */
static enum mf_step refuse_request(struct mf_children *c, unsigned slot, uint64_t req_id, int error)
{
    struct mf_request_failed msg = {.error = error};
    return send_data(c, slot, MF_MSG_REQUEST_FAILED, req_id, &msg, sizeof(msg));
}

/* A queued request that never ran: it reads as a sandbox killed, pid 0. */
static enum mf_step end_queued(struct mf_children *c, size_t k, uint32_t flag)
{
    struct mf_admitted req = unqueue(c, k);
    struct mf_child_exit msg = {.pid = 0, .wait_status = SIGKILL, .flags = flag};

    mf_close_or_warn(req.fd, "request");
    return mf_children_send(c, MF_MSG_CHILD_EXIT, req.req_id, &msg, sizeof(msg));
}

enum mf_step mf_children_dispatch(struct mf_children *c)
{
    while (c->q_len > 0 && c->ops->can_start(c->engine)) {
        struct mf_admitted req = unqueue(c, 0);
        enum mf_step step = c->ops->start(c->engine, &req);
        if (step != MF_STEP_CONTINUE)
            return step;
    }
    return MF_STEP_CONTINUE;
}

enum mf_step mf_children_expire(struct mf_children *c, uint64_t now, uint64_t *next)
{
    for (size_t k = 0; k < c->q_len;) {
        uint64_t deadline = queued_at(c, k)->deadline_ms;
        if (deadline > now) {
            if (deadline < *next)
                *next = deadline;
            k++;
            continue;
        }
        enum mf_step step = end_queued(c, k, MF_EXIT_TIMED_OUT);
        if (step != MF_STEP_CONTINUE)
            return step;
    }
    return MF_STEP_CONTINUE;
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
    if (hdr->req_id == 0 || route_find(c, hdr->req_id) != NULL || c->ops->in_flight(c->engine, hdr->req_id)) {
        mf_warn("REQUEST: req_id %llu is 0 or already in flight", (unsigned long long)hdr->req_id);
        return EEXIST;
    }
    if (c->no_request_fd != (fd < 0)) {
        mf_warn("REQUEST %llu: %s", (unsigned long long)hdr->req_id,
                c->no_request_fd ? "came with a socket; this host's requests go on its workers' channels"
                                 : "arrived without its socket");
        return EBADMSG;
    }
    if (fd >= 0 && !mf_is_seqpacket_unix(fd)) {
        mf_warn_last();
        return errno;
    }
    /* Room to start it, or to queue it behind those that wait. */
    if (!(c->q_len == 0 && c->ops->can_start(c->engine)) && c->q_len == c->q_max)
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
static enum mf_step request(struct mf_children *c, unsigned slot, const struct mf_frame_header *hdr, int fd)
{
    struct mf_admitted req;
    int error;

    error = admit(c, hdr, fd, &req);
    if (error != 0) {
        if (fd >= 0)
            mf_close_or_warn(fd, "request");
        return refuse_request(c, slot, hdr->req_id, error);
    }
    req.chan = slot;
    route_add(c, req.req_id, slot);
    if (c->q_len == 0 && c->ops->can_start(c->engine))
        return c->ops->start(c->engine, &req);
    *queued_at(c, c->q_len++) = req;
    return MF_STEP_CONTINUE;
}

static enum mf_step cancel(struct mf_children *c, uint64_t req_id)
{
    for (size_t k = 0; k < c->q_len; k++)
        if (queued_at(c, k)->req_id == req_id)
            return end_queued(c, k, MF_EXIT_CANCELLED);
    /* Unknown to the engine too: it has ended, its CHILD_EXIT is on the way. */
    c->ops->cancel(c->engine, req_id);
    return MF_STEP_CONTINUE;
}

/*
 * One frame from a channel into c->ctrl_buf, with fds[0..*nfds) its
 * attached fds. *got false when there was none to act on: nothing
 * waiting, or a bad packet (consumed whole and warned about); *ended at
 * the channel's end or on its error.
 */
static void recv_frame(struct mf_children *c, int chan, const char *name, struct mf_frame_header *hdr,
                       int fds[2], size_t *nfds, bool *got, bool *ended)
{
    size_t len;
    int rc = mf_recv_packet(chan, MSG_DONTWAIT, c->ctrl_buf, sizeof(c->ctrl_buf), &len, fds, 2, nfds);

    *got = false;
    *ended = false;
    if (rc < 0) {
        int err = mf_last_errno();
        if (err == EAGAIN || err == EWOULDBLOCK)
            return;
        mf_warn("%s channel: %s", name, mf_last_error());
        /* A bad packet was consumed whole; anything else ends the channel. */
        *ended = err != EMSGSIZE && err != EPROTO;
        return;
    }
    if (rc == 0) {
        *ended = true;
        return;
    }
    if (!mf_frame_parse(c->ctrl_buf, len, hdr)) {
        mf_warn("%s channel: %s", name, mf_last_error());
        for (size_t i = 0; i < *nfds; i++)
            mf_close_or_warn(fds[i], "unexpected");
        return;
    }
    *got = true;
}

/* A message that may carry none (CANCEL, SHUTDOWN): what it carried is closed. */
static void drop_fds(const char *name, uint16_t type, const int *fds, size_t nfds)
{
    if (nfds > 0)
        mf_warn("%s channel: message type %u carried %zu fd(s); closed", name, type, nfds);
    for (size_t i = 0; i < nfds; i++)
        mf_close_or_warn(fds[i], "unexpected");
}

/* A message of the other kind of channel or of no known type. */
static enum mf_step refuse(const char *name, uint16_t type, const int *fds, size_t nfds)
{
    mf_warn("%s channel: unexpected message type %u; ignored", name, type);
    for (size_t i = 0; i < nfds; i++)
        mf_close_or_warn(fds[i], "unexpected");
    return MF_STEP_CONTINUE;
}

/* DATA_CHANNEL: exactly one fd, an AF_UNIX SOCK_SEQPACKET socket, and no
 * payload (loop 0) or a mf_data_channel. */
static enum mf_step attach_channel(struct mf_children *c, const struct mf_frame_header *hdr, const int *fds,
                                   size_t nfds)
{
    unsigned slot = 0;
    struct mf_data_channel dc = {.loop = 0};

    if ((hdr->payload_len != 0 && hdr->payload_len != sizeof(dc)) || nfds != 1) {
        mf_warn("control channel: DATA_CHANNEL with %u payload bytes and %zu fds, expected 0 or %zu and 1; "
                "refused", hdr->payload_len, nfds, sizeof(dc));
        return refuse("control", hdr->type, fds, nfds);
    }
    if (hdr->payload_len == sizeof(dc))
        memcpy(&dc, c->ctrl_buf + MF_FRAME_HEADER_SIZE, sizeof(dc));
    if (dc.loop >= MF_MAX_FRONT_LOOPS || dc.reserved != 0) {
        mf_warn("control channel: DATA_CHANNEL for loop %u (reserved %u); refused", dc.loop, dc.reserved);
        return refuse("control", hdr->type, fds, nfds);
    }
    if (!mf_is_seqpacket_unix(fds[0])) {
        mf_warn("control channel: DATA_CHANNEL: %s; refused", mf_last_error());
        return refuse("control", hdr->type, fds, nfds);
    }
    while (slot < MF_MAX_DATA_CHANNELS && c->chans[slot] >= 0)
        slot++;
    if (slot == MF_MAX_DATA_CHANNELS) {
        mf_warn("control channel: DATA_CHANNEL: %d channels already; refused", MF_MAX_DATA_CHANNELS);
        return refuse("control", hdr->type, fds, nfds);
    }
    c->chans[slot] = fds[0];
    c->chan_loop[slot] = dc.loop;
    return c->ops->attached != NULL ? c->ops->attached(c->engine, slot) : MF_STEP_CONTINUE;
}

enum mf_step mf_children_handle_ctrl(struct mf_children *c)
{
    struct mf_frame_header hdr;
    int fds[2];
    size_t nfds = 0;
    bool got, ended;

    recv_frame(c, c->ctrl_fd, "control", &hdr, fds, &nfds, &got, &ended);
    if (ended)
        return MF_STEP_STOP;
    if (!got)
        return MF_STEP_CONTINUE;
    if (hdr.type == MF_MSG_DATA_CHANNEL)
        return attach_channel(c, &hdr, fds, nfds);
    if (hdr.type != MF_MSG_SHUTDOWN)
        return refuse("control", hdr.type, fds, nfds);
    drop_fds("control", hdr.type, fds, nfds);
    c->shutdown = true;
    return MF_STEP_STOP;
}

enum mf_step mf_children_handle_data(struct mf_children *c, unsigned slot)
{
    struct mf_frame_header hdr;
    int fds[2];
    size_t nfds = 0;
    bool got, ended;

    recv_frame(c, c->chans[slot], "data", &hdr, fds, &nfds, &got, &ended);
    if (ended) {
        drop_channel(c, slot);
        return MF_STEP_CONTINUE;
    }
    if (!got)
        return MF_STEP_CONTINUE;
    if (hdr.type == MF_MSG_REQUEST && nfds <= 1)
        return request(c, slot, &hdr, nfds == 1 ? fds[0] : -1);
    if (hdr.type != MF_MSG_CANCEL)
        return refuse("data", hdr.type, fds, nfds);
    drop_fds("data", hdr.type, fds, nfds);
    return cancel(c, hdr.req_id);
}

/* ---- the cgroup's OOM kills ---- */

/* The "oom_kill N" line of memory.events (v2) or memory.oom_control (v1). */
static bool read_oom_kills(int fd, uint64_t *out)
{
    char buf[1024];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

    if (n < 0)
        return mf_err("pread(cgroup memory events fd %d)", fd);
    buf[n] = '\0';
    for (char *line = buf; line != NULL && *line != '\0';) {
        char *end = strchr(line, '\n');
        unsigned long long v;
        if (sscanf(line, "oom_kill %llu", &v) == 1) {
            *out = v;
            return true;
        }
        line = end != NULL ? end + 1 : NULL;
    }
    return mf_errx(ENOENT, "no oom_kill line in the cgroup's memory events");
}

bool mf_children_oom_killed(struct mf_children *c, int status)
{
    uint64_t kills = 0;

    if (c->oom_fd < 0 || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        return false;
    if (!read_oom_kills(c->oom_fd, &kills)) {
        mf_warn_last();
        return false;
    }
    bool moved = kills != c->oom_kills;
    c->oom_kills = kills;
    return moved;
}

/* ---- signals, exits ---- */

bool mf_children_init(struct mf_children *c, size_t max_children, size_t queue, int extra_signal)
{
    size_t routes = 8;
    sigset_t set;

    c->host_pid = getpid();
    c->sigfd = -1;
    c->mask_saved = false;
    c->n_pids = 0;
    c->max_pids = max_children;
    for (unsigned i = 0; i < MF_MAX_DATA_CHANNELS; i++)
        c->chans[i] = -1;
    c->pids = calloc(max_children, sizeof(*c->pids));
    if (c->pids == NULL)
        return mf_err("calloc(%zu children)", max_children);
    if (queue > MF_MAX_QUEUE)
        return mf_errx(EINVAL, "queue of %zu requests: at most %u", queue, MF_MAX_QUEUE);
    /* At most max_children started and `queue` queued are in flight: at
     * most half full, probes stay short. */
    while (routes < 2 * (max_children + queue + 1))
        routes *= 2;
    c->routes_mask = routes - 1;
    c->routes = calloc(routes, sizeof(*c->routes));
    if (c->routes == NULL)
        return mf_err("calloc(%zu routes)", routes);
    c->q_head = c->q_len = 0;
    c->q_max = queue;
    c->queue = calloc(ring_size(c), sizeof(*c->queue));
    if (c->queue == NULL)
        return mf_err("calloc(queue of %zu)", queue);
    c->oom_kills = 0;
    c->shutdown = false;
    if (c->oom_fd >= 0 && !read_oom_kills(c->oom_fd, &c->oom_kills)) {
        /* The limit on memory still holds; only the flag is lost. */
        mf_warn("%s: out-of-memory kills will not be told apart", mf_last_error());
        c->oom_fd = -1;
    }
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

bool mf_children_forget(struct mf_children *c, pid_t pid)
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
        if (!mf_children_forget(c, pid))
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

/* At the end nothing may be left behind. */
void mf_children_kill_all(struct mf_children *c)
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
    mf_children_kill_all(c);
    for (unsigned i = 0; i < MF_MAX_DATA_CHANNELS; i++) {
        mf_close_or_warn(c->chans[i], "data channel");
        c->chans[i] = -1;
    }
    for (size_t k = 0; c->queue != NULL && k < c->q_len; k++)
        mf_close_or_warn(queued_at(c, k)->fd, "request");
    c->q_len = 0;
    free(c->queue);
    c->queue = NULL;
    free(c->routes);
    c->routes = NULL;
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
    pfd[MF_PFD_SIGNAL] = (struct pollfd){.fd = c->sigfd, .events = POLLIN};
    for (unsigned i = 0; i < MF_MAX_DATA_CHANNELS; i++)
        pfd[MF_PFD_DATA + i] = (struct pollfd){.fd = accepting ? c->chans[i] : -1, .events = POLLIN};
}

enum mf_step mf_children_serve(struct mf_children *c, const struct pollfd pfd[MF_PFD_CORE])
{
    enum mf_step step = MF_STEP_CONTINUE;

    if (pfd[MF_PFD_SIGNAL].revents != 0)
        step = mf_children_reap(c);
    if (step == MF_STEP_CONTINUE && pfd[MF_PFD_CTRL].revents != 0)
        step = mf_children_handle_ctrl(c);
    /* A channel attached or dropped meanwhile: its entry's fd no longer matches. */
    for (unsigned i = 0; i < MF_MAX_DATA_CHANNELS && step == MF_STEP_CONTINUE; i++)
        if (pfd[MF_PFD_DATA + i].revents != 0 && pfd[MF_PFD_DATA + i].fd == c->chans[i])
            step = mf_children_handle_data(c, i);
    if (step == MF_STEP_CONTINUE)
        step = mf_children_dispatch(c);
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
        return mf_err("poll(control fd %d, signalfd %d, data channels, %lu more fds)", c->ctrl_fd, c->sigfd,
                      (unsigned long)(n - MF_PFD_CORE));
    if (!c->hooks->interrupted(c->hooks->ctx))
        return mf_errx(EINTR, "serving interrupted by a signal");
    return true;
}

/* ---- a new child ---- */

/* Nothing of the host's may reach tenant code: any channel would let a
 * child speak for the host and the other children, a queued request's
 * socket would let it answer for another. */
static bool is_kept(const int *keep, size_t n_keep, int fd)
{
    for (size_t i = 0; i < n_keep; i++)
        if (keep[i] == fd)
            return true;
    return false;
}

static bool close_inherited(struct mf_children *c, const int *keep, size_t n_keep)
{
    if (close(c->ctrl_fd) < 0)
        return mf_err("close(control fd %d)", c->ctrl_fd);
    for (unsigned i = 0; i < MF_MAX_DATA_CHANNELS; i++)
        if (c->chans[i] >= 0 && close(c->chans[i]) < 0)
            return mf_err("close(data channel fd %d)", c->chans[i]);
    for (size_t k = 0; k < c->q_len; k++)
        if (queued_at(c, k)->fd >= 0 && !is_kept(keep, n_keep, queued_at(c, k)->fd) &&
            close(queued_at(c, k)->fd) < 0)
            return mf_err("close(queued request fd %d)", queued_at(c, k)->fd);
    if (c->oom_fd >= 0 && close(c->oom_fd) < 0)
        return mf_err("close(cgroup memory events fd %d)", c->oom_fd);
    if (close(c->sigfd) < 0)
        return mf_err("close(signalfd %d)", c->sigfd);
    if (c->ops->close_own_fds != NULL)
        MF_TRY(c->ops->close_own_fds(c->engine, keep, n_keep));
    for (size_t i = 0; i < c->n_close_in_child; i++)
        if (close(c->close_in_child[i]) < 0 && errno != EBADF)
            return mf_err("close(fd %d)", c->close_in_child[i]);
    return true;
}

static bool child_first_steps(struct mf_children *c, const int *keep, size_t n_keep)
{
    /* First: a child must never outlive its host. */
    MF_TRY(mf_arm_parent_death(SIGKILL, "the host", c->host_pid, -1));
    /* Before any tenant code, and before the next step makes this child
     * dumpable for an instant: a sibling that opened its /proc/<pid>/mem
     * then would find the host's memory, but none of its channels. */
    MF_TRY(close_inherited(c, keep, n_keep));
    /* Before the request is read: its memory is charged to us, and if the
     * group runs out the OOM killer must take this child, not the host. */
    MF_TRY(mf_set_oom_score_adj(CHILD_OOM_SCORE_ADJ));
    /* Before tenant code, while /proc/self/fd may still be opened: a file
     * the program opened in on_init() must not share its offset. */
    return mf_private_files(keep, n_keep);
}

pid_t mf_children_fork(struct mf_children *c, const int *keep, size_t n_keep, bool *setup_ok)
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
        *setup_ok = child_first_steps(c, keep, n_keep);
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

bool mf_children_enter_sandbox(const struct mf_children *c, const struct mf_limits *limits,
                               const void *request_filter, size_t request_filter_len)
{
    /* Before any code of the program, its at-fork handlers included. */
    MF_TRY(mf_limits_apply(limits));
    /* Last of the sandbox's own set-up: the request filter is what keeps
     * it from lifting the limits or deleting its CPU timer. */
    if (request_filter_len > 0)
        MF_TRY(mf_seccomp_load(request_filter, request_filter_len));
    MF_TRY(mf_children_unblock(c));
    /* Python's at-fork handlers (which reseed random) before any Python. */
    c->hooks->after_fork_child(c->hooks->ctx);
    return true;
}
