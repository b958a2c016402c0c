/*
 * One event loop per thread: epoll (edge triggered for connections), the
 * shared listening socket, and the connections' deadlines. Every timeout
 * kind has one fixed duration, so appending to its list keeps the list
 * sorted: arming, disarming and expiry are O(1) per connection.
 */
#ifndef MAYFLYD_FRONT_LOOP_H
#define MAYFLYD_FRONT_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "front/front.h"
#include "front/routes.h"

struct mf_conn;

enum mf_timer_kind {
    MF_TIMER_NONE,
    MF_TIMER_HEADER, /* config header_timeout_ms */
    MF_TIMER_BODY,   /* config body_timeout_ms */
    MF_TIMER_IDLE,   /* config idle_timeout_ms */
    MF_TIMER_LINGER, /* MF_LINGER_MS: draining a client after our close */
    MF_TIMER_KINDS,
};

/* How long a closing connection reads and discards what the client still
 * sends, so that its unread bytes do not turn our last answer into a RST. */
#define MF_LINGER_MS 2000

struct mf_timer {
    struct mf_timer *prev, *next;
    uint64_t deadline_ms;
    enum mf_timer_kind kind;
};

struct mf_timer_list {
    struct mf_timer *first, *last;
};

struct mf_front_loop {
    int epfd;
    struct mf_front_watch listener;
    const struct mf_front_config *config;
    const struct mf_front_backend *backend; /* NULL: every request gets 503 */
    struct mf_timer_list timers[MF_TIMER_KINDS];
    uint64_t now_ms; /* CLOCK_MONOTONIC, read once per wake-up */
    struct mf_conn *dead; /* closed during this wake-up; see mf_conn_free_dead */
    struct mf_conn *again; /* to run again next turn; see mf_conn_run_again */
    struct mf_front_watch accept_pause; /* timerfd: accepting resumes when it fires */
    /* The routing table in use (NULL: none yet, every request gets 503),
     * and the newest one published for this loop (routes.h). */
    struct mf_routes *routes;
    _Atomic(struct mf_routes *) routes_pending;
    unsigned index;       /* the thread number: HOST_ATTACH's `thread`, the metrics record's */
    void *backend_data;   /* the backend's per-loop state, made on its first use */
    /* The supervisor's messages for this loop, posted by the control
     * thread; the eventfd wakes the loop for them and for a new table. */
    struct mf_front_watch mailbox;
    pthread_mutex_t mail_lock;
    struct mf_front_mail *mail_first, *mail_last;
    bool accepting;       /* the listener is in the set: from the first table on, with a supervisor */
    unsigned conns;       /* open client connections */
    bool drain_begun;     /* the listener is set aside and idle connections closed */
    bool drain_reported;  /* counted as drained (no connection left) */
};

bool mf_loop_init(struct mf_front_loop *loop, const struct mf_front_config *config,
                  const struct mf_front_backend *backend, int listen_fd, unsigned index);
/* Control thread: queues a message for the loop (which owns it from now) and wakes it. */
void mf_loop_post(struct mf_front_loop *loop, struct mf_front_mail *mail);
/* Wakes the loop (a new table is in its mailbox). */
void mf_loop_wake(struct mf_front_loop *loop);
/*
 * Draining, for a stop that loses no request: every loop stops accepting,
 * closes its idle connections and each other one once its answers are out.
 * mf_loops_drain starts it (any thread); the returned eventfd becomes
 * readable once no loop has a connection left.
 */
bool mf_loops_drain(struct mf_front_loop *loops, unsigned count, int *drained_fd);
bool mf_loop_draining(void);
/*
 * Leaving (MF_MSG_LEAVING, before the drain): the node is being taken out
 * of its load balancer but still serves; every answer from now on closes
 * its connection, so that keep-alive clients reconnect, elsewhere.
 */
void mf_loops_leave(void);
bool mf_loop_leaving(void);

/* Runs until an epoll call fails (logged); never returns otherwise. */
bool mf_loop_run(struct mf_front_loop *loop);

/* (Re)arms the timer of the given kind from now; MF_TIMER_NONE disarms it. */
void mf_timer_arm(struct mf_front_loop *loop, struct mf_timer *timer, enum mf_timer_kind kind);

/* CLOCK_MONOTONIC in microseconds. */
uint64_t mf_monotonic_us(void);

/* The next X-Request-Id: one counter for the whole process. */
uint64_t mf_next_request_id(void);

#endif /* MAYFLYD_FRONT_LOOP_H */
