/*
 * The child-management core both engines of the host run on: the fork
 * engine's sandboxes and the reset engine's workers are children of the
 * sealed host, and this file owns what is the same for both.
 *
 *   - the host's two channels: the control channel (lifecycle, to the
 *     supervisor) and the data channel (requests, to the front end); every
 *     frame sent goes out on the channel its type belongs to, every frame
 *     received is checked against the channel it came on, and a REQUEST
 *     is admitted (checked once) here;
 *   - SIGCHLD (and any further signal an engine asks for) through a
 *     signalfd, set up and torn down here;
 *   - the fork of a child and its first steps (die with the host, OOM
 *     score, none of the host's fds), the reaping of every exit, and
 *     killing and reaping all of them at the end.
 *
 * An engine plugs in what differs through struct mf_children_ops.
 */
#ifndef MAYFLYD_CHILDREN_H
#define MAYFLYD_CHILDREN_H

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/types.h>

#include "engine/fork_engine.h"
#include "wire/proto.h"

/* Control and data messages are small; anything larger is malformed. */
#define MF_CTRL_BUF_SIZE (MF_FRAME_HEADER_SIZE + 64)

/* A serve loop's first pollfds, in this order; an engine adds its own after. */
enum { MF_PFD_CTRL, MF_PFD_DATA, MF_PFD_SIGNAL, MF_PFD_CORE };

/* What a step of a serve loop leads to. */
enum mf_step {
    MF_STEP_CONTINUE,
    /* a clean end: SHUTDOWN, or either channel closed (a host without its
     * supervisor or without its front end cannot serve) */
    MF_STEP_STOP,
    MF_STEP_FAIL,  /* the host cannot go on; the error is recorded */
};

/* A REQUEST that passed admission. */
struct mf_admitted {
    uint64_t req_id;
    int fd;                     /* the request socket: the engine owns it now */
    uint64_t deadline_ms;       /* CLOCK_MONOTONIC, timeout plus MF_FORK_GRACE_MS */
    struct mf_request_ctl ctl;
    /* The frame as received (header and ctl), for an engine that passes it on. */
    uint8_t packet[MF_FRAME_HEADER_SIZE + sizeof(struct mf_request_ctl)];
};

struct mf_children_ops {
    /* A request under this id is in flight (or queued). */
    bool (*in_flight)(void *engine, uint64_t req_id);
    /* No room for another request: it fails with EAGAIN. */
    bool (*full)(void *engine);
    /* Starts (or queues) an admitted request; takes req->fd. */
    enum mf_step (*start)(void *engine, const struct mf_admitted *req);
    /* CANCEL on the data channel; an unknown id has ended already. */
    enum mf_step (*cancel)(void *engine, uint64_t req_id);
    /* One of our children exited (already reaped). */
    enum mf_step (*exited)(void *engine, pid_t pid, int status, const struct rusage *ru);
    /* Another signal of the engine's set arrived; NULL if it asked for none. */
    void (*signal)(void *engine, const struct signalfd_siginfo *si);
    /* In a new child: closes the engine's own fds but keep_fd; NULL if none. */
    bool (*close_own_fds)(void *engine, int keep_fd);
};

struct mf_children {
    int ctrl_fd;                 /* control channel: supervisor <-> host */
    int data_fd;                 /* data channel: front end <-> host */
    const int *close_in_child;   /* further fds no child may keep */
    size_t n_close_in_child;
    const struct mf_fork_hooks *hooks;
    const struct mf_children_ops *ops;
    void *engine;
    pid_t host_pid;
    int sigfd;
    bool mask_saved;
    sigset_t old_mask;
    pid_t *pids;                 /* our live children, unordered */
    size_t n_pids, max_pids;
    uint8_t ctrl_buf[MF_CTRL_BUF_SIZE];
};

/* Blocks SIGCHLD (and extra_signal, if not 0) into a new signalfd and
 * makes room for max_children. Whether it fails or not, and also on a
 * zeroed struct it never saw, mf_children_fini undoes what it did. */
bool mf_children_init(struct mf_children *c, size_t max_children, int extra_signal);

/* Kills and reaps every child left, closes the signalfd, restores the mask. */
void mf_children_fini(struct mf_children *c);

/* One frame, on the channel its type belongs to (CHILD_EXIT and
 * REQUEST_FAILED on the data channel, the rest on the control channel); a
 * failed send means the peer is gone: STOP. */
enum mf_step mf_children_send(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len);

/* REQUEST_FAILED with error. */
enum mf_step mf_children_request_failed(struct mf_children *c, uint64_t req_id, int error);

/* Reads one frame from the control channel (non-blocking) and acts on it:
 * SHUTDOWN stops; a REQUEST or CANCEL there is refused (warned, ignored). */
enum mf_step mf_children_handle_ctrl(struct mf_children *c);

/* Reads one frame from the data channel (non-blocking) and acts on it:
 * REQUEST and CANCEL; a SHUTDOWN there is refused (warned, ignored). */
enum mf_step mf_children_handle_data(struct mf_children *c);

/* Drains the signalfd (passing other signals to ops->signal), then reaps
 * every exited child, passing ours to ops->exited. */
enum mf_step mf_children_reap(struct mf_children *c);

/* The core's pollfds (MF_PFD_*): the data channel only when accepting,
 * else left out (fd -1), so that requests wait in its socket. */
void mf_children_pollfds(const struct mf_children *c, struct pollfd pfd[MF_PFD_CORE], bool accepting);

/* What a serve loop does with the core's pollfds once poll() returned:
 * exits first, so a CHILD_EXIT precedes the host's reaction to whatever
 * arrived meanwhile, then the control channel, then the data channel. */
enum mf_step mf_children_serve(struct mf_children *c, const struct pollfd pfd[MF_PFD_CORE]);

/* poll() for a serve loop: false with the error recorded if the host must
 * stop; *ready false if a signal interrupted it and serving goes on. */
bool mf_children_poll(struct mf_children *c, struct pollfd *pfd, nfds_t n, int timeout, bool *ready);

/*
 * Forks a child with the fork hooks around it. In the child: returns 0
 * after its first steps (die with the host, oom_score_adj, every fd of the
 * host's but keep_fd closed, keep_fd's files made private); a failed step
 * leaves *setup_ok false with the error recorded, for the child to report
 * as it can. In the host: the child's pid, or -1 with the error recorded.
 * The signal mask stays blocked in the child until mf_children_unblock.
 */
pid_t mf_children_fork(struct mf_children *c, int keep_fd, bool *setup_ok);

/* In a child: the signal mask the host had before the signalfd. */
bool mf_children_unblock(const struct mf_children *c);

/* SIGKILL to a child, warning if it fails (a zombie takes it too). */
void mf_child_kill(pid_t pid);

#endif /* MAYFLYD_CHILDREN_H */
