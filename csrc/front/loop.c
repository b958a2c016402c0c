/* One event loop per thread; see loop.h. */
#define _GNU_SOURCE /* accept4 */
#include "front/loop.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/conn.h"

/* Connections taken per wake-up of the listener: the others' turn comes. */
#define ACCEPT_BATCH 64
/* Out of fds or memory: the listener stays readable, so it is set aside
 * for this long rather than spinning the loop. */
#define ACCEPT_PAUSE_MS 100
#define EVENT_BATCH 128

static atomic_uint_fast64_t request_ids;

/* Draining: set once, for the whole process; loops_busy counts the loops
 * with connections left, drained_event wakes the main thread at zero. */
static atomic_bool draining;
static atomic_uint loops_busy;
static int drained_event = -1;
static atomic_bool leaving;

bool mf_loop_draining(void)
{
    return atomic_load_explicit(&draining, memory_order_relaxed);
}

void mf_loops_leave(void)
{
    atomic_store(&leaving, true);
}

bool mf_loop_leaving(void)
{
    return atomic_load_explicit(&leaving, memory_order_relaxed);
}

bool mf_loops_drain(struct mf_front_loop *loops, unsigned count, int *drained_fd)
{
    drained_event = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (drained_event < 0)
        return mf_err("eventfd(drained)");
    *drained_fd = drained_event;
    atomic_store(&loops_busy, count);
    atomic_store(&draining, true);
    for (unsigned i = 0; i < count; i++)
        mf_loop_wake(&loops[i]);
    return true;
}

/* A loop's turn while draining: the first time, stop accepting and close
 * what is idle; once no connection is left, say so (once). */
static void drain_turn(struct mf_front_loop *loop)
{
    if (!loop->drain_begun) {
        loop->drain_begun = true;
        /* Set aside by an accept failure, it is out of the set already. */
        if (epoll_ctl(loop->epfd, EPOLL_CTL_DEL, loop->listener.fd, NULL) < 0 && errno != ENOENT)
            mf_warn("epoll_ctl(%d, DEL, listener %d) failed: %s", loop->epfd, loop->listener.fd, strerror(errno));
        mf_conn_close_idle(loop);
    }
    if (loop->conns == 0 && !loop->drain_reported) {
        loop->drain_reported = true;
        uint64_t one = 1;
        if (atomic_fetch_sub(&loops_busy, 1) == 1 && write(drained_event, &one, sizeof(one)) < 0)
            mf_warn("write(eventfd %d) failed: %s", drained_event, strerror(errno));
    }
}

uint64_t mf_next_request_id(void)
{
    return atomic_fetch_add_explicit(&request_ids, 1, memory_order_relaxed) + 1;
}

uint64_t mf_monotonic_us(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t monotonic_ms(void)
{
    return mf_monotonic_us() / 1000;
}

static uint64_t duration_ms(const struct mf_front_loop *loop, enum mf_timer_kind kind)
{
    switch (kind) {
    case MF_TIMER_HEADER: return loop->config->header_timeout_ms;
    case MF_TIMER_BODY: return loop->config->body_timeout_ms;
    case MF_TIMER_IDLE: return loop->config->idle_timeout_ms;
    case MF_TIMER_LINGER: return MF_LINGER_MS;
    default: return 0;
    }
}

void mf_timer_arm(struct mf_front_loop *loop, struct mf_timer *timer, enum mf_timer_kind kind)
{
    if (timer->kind != MF_TIMER_NONE) {
        struct mf_timer_list *list = &loop->timers[timer->kind];
        if (timer->prev) timer->prev->next = timer->next; else list->first = timer->next;
        if (timer->next) timer->next->prev = timer->prev; else list->last = timer->prev;
        timer->prev = timer->next = NULL;
    }
    timer->kind = kind;
    if (kind == MF_TIMER_NONE)
        return;
    /* One duration per list: appending keeps it sorted by deadline. */
    struct mf_timer_list *list = &loop->timers[kind];
    timer->deadline_ms = loop->now_ms + duration_ms(loop, kind);
    timer->prev = list->last;
    if (list->last) list->last->next = timer; else list->first = timer;
    list->last = timer;
}

/* Milliseconds until the earliest deadline; -1 if there is none. */
static int next_timeout(const struct mf_front_loop *loop)
{
    uint64_t earliest = UINT64_MAX;
    for (int kind = MF_TIMER_NONE + 1; kind < MF_TIMER_KINDS; kind++)
        if (loop->timers[kind].first && loop->timers[kind].first->deadline_ms < earliest)
            earliest = loop->timers[kind].first->deadline_ms;
    if (earliest == UINT64_MAX)
        return -1;
    uint64_t now = monotonic_ms();
    if (earliest <= now)
        return 0;
    return earliest - now > 60000 ? 60000 : (int)(earliest - now);
}

static void expire_timers(struct mf_front_loop *loop)
{
    for (int kind = MF_TIMER_NONE + 1; kind < MF_TIMER_KINDS; kind++) {
        struct mf_timer *timer;
        /* The handler disarms or re-arms the timer: the list shrinks. */
        while ((timer = loop->timers[kind].first) != NULL && timer->deadline_ms <= loop->now_ms)
            mf_conn_timed_out(timer);
    }
}

static void pause_accepting(struct mf_front_loop *loop)
{
    struct itimerspec pause = {.it_value = {.tv_nsec = ACCEPT_PAUSE_MS * 1000000L}};
    if (timerfd_settime(loop->accept_pause.fd, 0, &pause, NULL) < 0) {
        mf_warn("timerfd_settime(%d, %d ms) failed: %s", loop->accept_pause.fd, ACCEPT_PAUSE_MS, strerror(errno));
        return; /* keep accepting: spinning beats not serving */
    }
    if (!mf_front_watch_remove(loop, &loop->listener))
        mf_warn_last();
}

static void accept_resume(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_front_loop *loop = (struct mf_front_loop *)((char *)watch - offsetof(struct mf_front_loop, accept_pause));
    uint64_t expirations;
    (void)events;
    if (read(watch->fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        mf_warn("read(timerfd %d) failed: %s", watch->fd, strerror(errno));
    if (mf_loop_draining() || !loop->accepting)
        return; /* not accepting (any more, or yet) */
    if (!mf_front_watch_add(loop, &loop->listener, EPOLLIN | EPOLLEXCLUSIVE))
        mf_warn_last();
}

static void accept_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_front_loop *loop = (struct mf_front_loop *)((char *)watch - offsetof(struct mf_front_loop, listener));
    (void)events;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(watch->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* Another loop took it, or the client left first: not our error. */
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return;
            mf_warn("accept4(%d) failed: %s; accepting again in %d ms", watch->fd, strerror(errno),
                    ACCEPT_PAUSE_MS);
            pause_accepting(loop);
            return;
        }
        mf_conn_accept(loop, fd);
    }
}

bool mf_front_watch_add(struct mf_front_loop *loop, struct mf_front_watch *watch, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = watch};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, watch->fd, &ev) < 0)
        return mf_err("epoll_ctl(%d, ADD, %d, %#x)", loop->epfd, watch->fd, events);
    return true;
}

bool mf_front_watch_remove(struct mf_front_loop *loop, struct mf_front_watch *watch)
{
    if (epoll_ctl(loop->epfd, EPOLL_CTL_DEL, watch->fd, NULL) < 0)
        return mf_err("epoll_ctl(%d, DEL, %d)", loop->epfd, watch->fd);
    return true;
}

void mf_loop_wake(struct mf_front_loop *loop)
{
    uint64_t one = 1;
    /* Only a counter at its maximum fails (EAGAIN): the loop is awake anyway. */
    if (write(loop->mailbox.fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        mf_warn("write(eventfd %d) failed: %s", loop->mailbox.fd, strerror(errno));
}

void mf_loop_post(struct mf_front_loop *loop, struct mf_front_mail *mail)
{
    mail->next = NULL;
    (void)pthread_mutex_lock(&loop->mail_lock); /* a default mutex, never held across a call: cannot fail */
    if (loop->mail_last != NULL)
        loop->mail_last->next = mail;
    else
        loop->mail_first = mail;
    loop->mail_last = mail;
    (void)pthread_mutex_unlock(&loop->mail_lock);
    mf_loop_wake(loop);
}

/* The loop's thread: every message posted so far, in order. */
static void mailbox_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_front_loop *loop = (struct mf_front_loop *)((char *)watch - offsetof(struct mf_front_loop, mailbox));
    uint64_t count;
    (void)events;
    if (read(watch->fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        mf_warn("read(eventfd %d) failed: %s", watch->fd, strerror(errno));
    (void)pthread_mutex_lock(&loop->mail_lock); /* a default mutex, never held across a call: cannot fail */
    struct mf_front_mail *mail = loop->mail_first;
    loop->mail_first = loop->mail_last = NULL;
    (void)pthread_mutex_unlock(&loop->mail_lock);
    while (mail != NULL) {
        struct mf_front_mail *next = mail->next;
        if (loop->backend != NULL && loop->backend->mail != NULL)
            loop->backend->mail(loop->backend->ctx, loop, mail); /* it takes the fd */
        else if (mail->fd >= 0)
            (void)close(mail->fd); /* nobody serves hosts here */
        free(mail);
        mail = next;
    }
}

bool mf_loop_init(struct mf_front_loop *loop, const struct mf_front_config *config,
                  const struct mf_front_backend *backend, int listen_fd, unsigned index)
{
    *loop = (struct mf_front_loop){.config = config, .backend = backend, .now_ms = monotonic_ms(),
                                   .index = index};
    mf_cleanup_fd int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return mf_err("epoll_create1(EPOLL_CLOEXEC)");
    mf_cleanup_fd int pause_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (pause_fd < 0)
        return mf_err("timerfd_create(CLOCK_MONOTONIC)");
    mf_cleanup_fd int mail_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mail_fd < 0)
        return mf_err("eventfd(0)");
    int err = pthread_mutex_init(&loop->mail_lock, NULL);
    if (err != 0)
        return mf_errx(err, "pthread_mutex_init(mailbox) failed: %s", strerror(err));
    loop->epfd = epfd;
    loop->listener = (struct mf_front_watch){.fd = listen_fd, .ready = accept_ready};
    loop->accept_pause = (struct mf_front_watch){.fd = pause_fd, .ready = accept_resume};
    loop->mailbox = (struct mf_front_watch){.fd = mail_fd, .ready = mailbox_ready};
    /* Level triggered, and one waiting loop woken per connection. With a
     * supervisor, not before its first table: a restarted front end must
     * not answer the connections waiting in the backlog with 503s. */
    if (config->control_fd < 0) {
        MF_TRY(mf_front_watch_add(loop, &loop->listener, EPOLLIN | EPOLLEXCLUSIVE));
        loop->accepting = true;
    }
    MF_TRY(mf_front_watch_add(loop, &loop->accept_pause, EPOLLIN));
    MF_TRY(mf_front_watch_add(loop, &loop->mailbox, EPOLLIN));
    loop->epfd = mf_steal_fd(&epfd);
    loop->accept_pause.fd = mf_steal_fd(&pause_fd);
    loop->mailbox.fd = mf_steal_fd(&mail_fd);
    return true;
}

bool mf_loop_run(struct mf_front_loop *loop)
{
    struct epoll_event events[EVENT_BATCH];
    for (;;) {
        int n = epoll_wait(loop->epfd, events, EVENT_BATCH, loop->again ? 0 : next_timeout(loop));
        if (n < 0 && errno != EINTR)
            return mf_err("epoll_wait(%d)", loop->epfd);
        loop->now_ms = monotonic_ms();
        mf_routes_take(loop); /* before any event: what was read after a publication sees it */
        if (!loop->accepting && loop->routes != NULL && !mf_loop_draining()) {
            if (mf_front_watch_add(loop, &loop->listener, EPOLLIN | EPOLLEXCLUSIVE))
                loop->accepting = true;
            else
                mf_warn_last(); /* tried again next turn */
        }
        mf_conn_run_again(loop); /* those from the last turn first: round robin */
        for (int i = 0; i < n; i++) {
            struct mf_front_watch *watch = events[i].data.ptr;
            watch->ready(watch, events[i].events);
        }
        expire_timers(loop);
        if (mf_loop_draining())
            drain_turn(loop);
        mf_conn_free_dead(loop);
        if (loop->backend != NULL && loop->backend->turn_end != NULL)
            loop->backend->turn_end(loop->backend->ctx, loop);
    }
}
