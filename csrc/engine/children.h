/*
 * The child-management core both engines of the host run on: the fork
 * engine's sandboxes and the reset engine's workers are children of the
 * sealed host, and this file owns what is the same for both.
 *
 *   - the host's channels: the control channel (lifecycle, to the
 *     supervisor) and 0..MF_MAX_DATA_CHANNELS data channels (requests, to
 *     the front end's loops), each attached by a DATA_CHANNEL message on
 *     the control channel; every frame received is checked against the
 *     kind of channel it came on, and a REQUEST is admitted (checked once)
 *     here;
 *   - the requests in flight: which data channel each came on (a table
 *     req_id -> channel), so that its CHILD_EXIT or REQUEST_FAILED goes
 *     back there, and so that a data channel's end cancels its requests;
 *   - the queue: an admitted request waits, FIFO, while the engine has no
 *     room (ops->can_start), up to `queue` of them; beyond, EAGAIN. A
 *     queued request ends at its deadline (CHILD_EXIT, TIMED_OUT, pid 0)
 *     or on CANCEL (CHILD_EXIT, CANCELLED, pid 0);
 *   - the tenant cgroup's OOM kill counter, read when a child died of a
 *     SIGKILL the host did not send;
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
/* Requests waiting for room, at most (the config's limit on `queue`). */
#define MF_MAX_QUEUE 100000u
/* The config's default `queue`, for a caller that names none. */
#define MF_DEFAULT_QUEUE 256u

/*
 * A serve loop's pollfds: the core's MF_PFD_CORE first, in this order, and
 * the engine's own after them. Every data channel has a fixed entry,
 * MF_PFD_DATA + its slot; a free slot (or every slot, while the engine does
 * not accept requests) has fd -1, which poll() skips. A fixed layout keeps
 * the loop free of bookkeeping: 66 entries cost poll() next to nothing.
 */
enum { MF_PFD_CTRL, MF_PFD_SIGNAL, MF_PFD_DATA, MF_PFD_CORE = MF_PFD_DATA + MF_MAX_DATA_CHANNELS };

/* What a step of a serve loop leads to. */
enum mf_step {
    MF_STEP_CONTINUE,
    /* a clean end: SHUTDOWN, or the control channel closed (a host
     * without its supervisor cannot serve; a data channel's end only
     * drops that channel) */
    MF_STEP_STOP,
    MF_STEP_FAIL,  /* the host cannot go on; the error is recorded */
};

/* A REQUEST that passed admission. */
struct mf_admitted {
    uint64_t req_id;
    int fd;                     /* the request socket: the engine owns it now */
    unsigned chan;              /* the data channel's slot it came on */
    uint64_t deadline_ms;       /* CLOCK_MONOTONIC, timeout plus MF_FORK_GRACE_MS */
    struct mf_request_ctl ctl;
    /* The frame as received (header and ctl), for an engine that passes it on. */
    uint8_t packet[MF_FRAME_HEADER_SIZE + sizeof(struct mf_request_ctl)];
};

struct mf_children_ops {
    /* The engine still holds a request under this id (one whose channel
     * was dropped may not have ended yet). */
    bool (*in_flight)(void *engine, uint64_t req_id);
    /* Room to start a request now; if not, it waits in the queue. */
    bool (*can_start)(void *engine);
    /* Starts an admitted request (only when can_start); takes req->fd. */
    enum mf_step (*start)(void *engine, const struct mf_admitted *req);
    /* Ends a started request early (CANCEL, or its channel's end): kill
     * or abort it; an unknown id has ended already. */
    void (*cancel)(void *engine, uint64_t req_id);
    /* One of our children exited (already reaped). */
    enum mf_step (*exited)(void *engine, pid_t pid, int status, const struct rusage *ru);
    /* Another signal of the engine's set arrived; NULL if it asked for none. */
    void (*signal)(void *engine, const struct signalfd_siginfo *si);
    /* In a new child: closes the engine's own fds but those in keep; NULL if none. */
    bool (*close_own_fds)(void *engine, const int *keep, size_t n_keep);
    /* A data channel was attached in slot; NULL if the engine need not know. */
    enum mf_step (*attached)(void *engine, unsigned slot);
};

/* A request in flight, and the data channel's slot it came on. */
struct mf_route {
    uint64_t req_id;             /* 0: an empty entry */
    unsigned chan;
};

struct mf_children {
    int ctrl_fd;                 /* control channel: supervisor <-> host */
    int oom_fd;                  /* the cgroup's memory.events (v2) or memory.oom_control (v1), the
                                  * caller's (closed in children only); -1: none */
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
    int chans[MF_MAX_DATA_CHANNELS];  /* data channels by slot; -1: free */
    uint32_t chan_loop[MF_MAX_DATA_CHANNELS]; /* the front-end loop each serves (DATA_CHANNEL) */
    bool no_request_fd;          /* REQUESTs come without a socket: the engine has persistent ones */
    struct mf_route *routes;     /* open addressing, linear probing, by req_id */
    size_t routes_mask;          /* table size - 1 (a power of two, over twice what may be in flight) */
    struct mf_admitted *queue;   /* FIFO ring of q_max */
    size_t q_head, q_len, q_max;
    uint64_t oom_kills;          /* the counter as last read */
    bool shutdown;               /* the supervisor sent SHUTDOWN: a clean stop (stop_sandbox.h) */
    uint8_t ctrl_buf[MF_CTRL_BUF_SIZE];
};

/* Blocks SIGCHLD (and extra_signal, if not 0) into a new signalfd and
 * makes room for max_children children, as many requests started and
 * `queue` queued; reads c->oom_fd's count once. Whether it fails or
 * not, and also on a zeroed struct it never saw, mf_children_fini undoes
 * what it did. */
bool mf_children_init(struct mf_children *c, size_t max_children, size_t queue, int extra_signal);

/* Kills and reaps every child left, closes the signalfd, the data
 * channels, the queued requests' sockets, restores the mask. */
void mf_children_fini(struct mf_children *c);

/* One frame. CHILD_EXIT and REQUEST_FAILED end a request: they go on the
 * data channel it came on, or nowhere if that channel was dropped (a
 * failed send drops it too); the rest go on the control channel, where a
 * failed send means the supervisor is gone: STOP. */
enum mf_step mf_children_send(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len);

/* A message on the data channel in slot (fd: -1, or one to attach);
 * a failed send drops the channel. */
enum mf_step mf_children_send_on(struct mf_children *c, unsigned slot, uint16_t type, uint64_t req_id,
                                 const void *payload, uint32_t len, int fd);

/* A message about a request in flight, on the channel it came on, which
 * (unlike CHILD_EXIT) does not end it; nowhere if that channel is gone. */
enum mf_step mf_children_tell(struct mf_children *c, uint16_t type, uint64_t req_id, const void *payload,
                              uint32_t len);

/* REQUEST_FAILED with error. */
enum mf_step mf_children_request_failed(struct mf_children *c, uint64_t req_id, int error);

/* Starts queued requests, oldest first, while ops->can_start. */
enum mf_step mf_children_dispatch(struct mf_children *c);

/* Ends the queued requests whose deadline passed (CHILD_EXIT, TIMED_OUT)
 * and lowers *next to the nearest deadline still queued. */
enum mf_step mf_children_expire(struct mf_children *c, uint64_t now, uint64_t *next);

/* Whether a child that died of status was killed by the OOM killer: a
 * SIGKILL (the caller knows it did not send it) while the cgroup's
 * oom_kill counter moved. Never with no cgroup. */
bool mf_children_oom_killed(struct mf_children *c, int status);

/* Reads one frame from the control channel (non-blocking) and acts on it:
 * SHUTDOWN stops (and sets c->shutdown), DATA_CHANNEL attaches one; a REQUEST or CANCEL there is
 * refused (warned, ignored). */
enum mf_step mf_children_handle_ctrl(struct mf_children *c);

/* Reads one frame from the data channel in slot (non-blocking) and acts on
 * it: REQUEST and CANCEL; anything else is refused (warned, ignored). Its
 * end or error drops the channel and cancels its requests, unreported. */
enum mf_step mf_children_handle_data(struct mf_children *c, unsigned slot);

/* Drains the signalfd (passing other signals to ops->signal), then reaps
 * every exited child, passing ours to ops->exited. */
enum mf_step mf_children_reap(struct mf_children *c);

/* The core's pollfds (MF_PFD_*): the data channels only when accepting,
 * else left out (fd -1), so that requests wait in their sockets. */
void mf_children_pollfds(const struct mf_children *c, struct pollfd pfd[MF_PFD_CORE], bool accepting);

/* What a serve loop does with the core's pollfds once poll() returned:
 * exits first, so a CHILD_EXIT precedes the host's reaction to whatever
 * arrived meanwhile, then the control channel, then the data channels;
 * then starts what the queue holds, if there is room. */
enum mf_step mf_children_serve(struct mf_children *c, const struct pollfd pfd[MF_PFD_CORE]);

/* poll() for a serve loop: false with the error recorded if the host must
 * stop; *ready false if a signal interrupted it and serving goes on. */
bool mf_children_poll(struct mf_children *c, struct pollfd *pfd, nfds_t n, int timeout, bool *ready);

/*
 * Forks a child with the fork hooks around it. In the child: returns 0
 * after its first steps (die with the host, oom_score_adj, every fd of the
 * host's but the n_keep in keep closed, the rest's files made private); a failed step
 * leaves *setup_ok false with the error recorded, for the child to report
 * as it can. In the host: the child's pid, or -1 with the error recorded.
 * The signal mask stays blocked in the child until mf_children_unblock.
 */
pid_t mf_children_fork(struct mf_children *c, const int *keep, size_t n_keep, bool *setup_ok);

/* In a child: the signal mask the host had before the signalfd. */
bool mf_children_unblock(const struct mf_children *c);

/*
 * In a child mf_children_fork made (its first steps taken): the rest of a
 * request sandbox's walls, set by the child on itself, then the host's
 * signal mask back and the after-fork hook, after which tenant code may
 * run. A fork-engine request and the stop sandbox of both engines take
 * exactly these steps. false with the error recorded.
 */
bool mf_children_enter_sandbox(const struct mf_children *c, const struct mf_limits *limits,
                               const void *request_filter, size_t request_filter_len);

/* Takes pid, reaped by the caller, out of our children; false if it was not one. */
bool mf_children_forget(struct mf_children *c, pid_t pid);

/* Kills and reaps every child (mf_children_fini does it too). */
void mf_children_kill_all(struct mf_children *c);

/* SIGKILL to a child, warning if it fails (a zombie takes it too). */
void mf_child_kill(pid_t pid);

#endif /* MAYFLYD_CHILDREN_H */
