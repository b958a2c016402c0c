/* The sandbox hosts backend; see hosts.h. */
#include "front/hosts.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/wait_status.h"
#include "front/conn.h"
#include "front/front_log.h"
#include "front/loop.h"
#include "front/metrics.h"
#include "wire/front_metrics.h"
#include "wire/proto.h"

static const char NOT_RUNNING[] = "the tenant's program is not running";
static const char ENDED[] = "the program ended without answering";
static const char INVALID[] = "the program sent an invalid response";
static const char RETRY[] = "Retry-After: 1";

struct mf_htenant {
    struct mf_htenant *next; /* in its bucket */
    char name[MF_ROUTE_MAX_NAME];
    size_t name_len;
    uint32_t state;          /* MF_TENANT_STARTING or MF_TENANT_DOWN: what a request does without a host */
    struct mf_host *hosts;   /* newest first */
    struct mf_call *waiting_first, *waiting_last;
};

/* Each tenant's requests waiting for a host, over every loop, by metrics
 * slot (a tenant's for the daemon's life): while its host restarts they
 * wait here, as many as a host takes (concurrency running, queue waiting). */
static atomic_uint waiting_count[MF_METRICS_MAX_SLOTS];

static void call_timer_ready(struct mf_front_watch *watch, uint32_t events);
static void host_ready(struct mf_front_watch *watch, uint32_t events);
static void dispatch(struct mf_call *call);
static void host_ended(struct mf_host *host);

/* ---- per loop ------------------------------------------------------------ */

static struct mf_hosts *hosts_of(struct mf_front_loop *loop)
{
    if (loop->backend_data != NULL)
        return loop->backend_data;
    struct mf_hosts *hosts = calloc(1, sizeof(*hosts));
    if (hosts == NULL) {
        mf_err("calloc(hosts)");
        return NULL;
    }
    hosts->loop = loop;
    hosts->packet = malloc(MF_PACKET_MAX + 1);
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0)
        mf_err("timerfd_create(CLOCK_MONOTONIC)");
    else if (hosts->packet == NULL)
        mf_err("malloc(%u)", MF_PACKET_MAX + 1);
    hosts->timer = (struct mf_front_watch){.fd = fd, .ready = call_timer_ready};
    if (fd < 0 || hosts->packet == NULL || !mf_front_watch_add(loop, &hosts->timer, EPOLLIN)) {
        if (fd >= 0)
            (void)close(fd); /* never watched: nothing else to undo */
        free(hosts->packet);
        free(hosts);
        return NULL;
    }
    loop->backend_data = hosts;
    return hosts;
}

static uint64_t name_hash(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ull;
    return h;
}

/* The tenant's record in this loop, made on first sight (tenants are few
 * and live as long as the process). */
static struct mf_htenant *tenant_of(struct mf_hosts *hosts, const char *name, size_t len)
{
    struct mf_htenant **bucket = &hosts->buckets[name_hash(name, len) % MF_TENANT_BUCKETS];
    for (struct mf_htenant *t = *bucket; t != NULL; t = t->next)
        if (t->name_len == len && memcmp(t->name, name, len) == 0)
            return t;
    if (len == 0 || len > MF_ROUTE_MAX_NAME) {
        mf_errx(EINVAL, "a tenant name of %zu bytes", len);
        return NULL;
    }
    struct mf_htenant *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        mf_err("calloc(tenant)");
        return NULL;
    }
    memcpy(t->name, name, len);
    t->name_len = len;
    t->state = MF_TENANT_STARTING;
    t->next = *bucket;
    *bucket = t;
    return t;
}

/* ---- timers: one per call, one timerfd per loop --------------------------- */

/* Sets the timerfd no later than the first timer. Never later: a timer
 * removed leaves it as it is (one early wake-up costs less than a
 * timerfd_settime per request). */
static void timerfd_update(struct mf_hosts *hosts)
{
    if (hosts->timers_first == NULL)
        return;
    uint64_t due = hosts->timers_first->timer_ms;
    if (hosts->timer_set_ms != 0 && hosts->timer_set_ms <= due)
        return;
    struct itimerspec when = {.it_value = {.tv_sec = (time_t)(due / 1000), .tv_nsec = (long)(due % 1000) * 1000000}};
    if (due != 0 && when.it_value.tv_sec == 0 && when.it_value.tv_nsec == 0)
        when.it_value.tv_nsec = 1;
    if (timerfd_settime(hosts->timer.fd, TFD_TIMER_ABSTIME, &when, NULL) < 0) {
        mf_warn("timerfd_settime(%d, %" PRIu64 " ms) failed: %s", hosts->timer.fd, due, strerror(errno));
        return;
    }
    hosts->timer_set_ms = due;
}

static void timer_disarm(struct mf_call *call)
{
    struct mf_hosts *hosts = call->hosts;
    if (!call->timer_armed)
        return;
    if (call->timer_prev) call->timer_prev->timer_next = call->timer_next; else hosts->timers_first = call->timer_next;
    if (call->timer_next) call->timer_next->timer_prev = call->timer_prev; else hosts->timers_last = call->timer_prev;
    call->timer_prev = call->timer_next = NULL;
    call->timer_armed = false;
}

/* Inserted from the end: most calls of a tenant share one timeout, so the
 * newest deadline is mostly the latest. */
static void timer_arm(struct mf_call *call, uint64_t at_ms, bool exit_wait)
{
    struct mf_hosts *hosts = call->hosts;
    timer_disarm(call);
    call->timer_ms = at_ms;
    call->exit_wait = exit_wait;
    struct mf_call *after = hosts->timers_last;
    while (after != NULL && after->timer_ms > at_ms)
        after = after->timer_prev;
    call->timer_prev = after;
    call->timer_next = after ? after->timer_next : hosts->timers_first;
    if (call->timer_next) call->timer_next->timer_prev = call; else hosts->timers_last = call;
    if (after) after->timer_next = call; else hosts->timers_first = call;
    call->timer_armed = true;
    timerfd_update(hosts);
}

/* ---- lists --------------------------------------------------------------- */

/* False: the tenant has as many waiting as its host would take. */
static bool waiting_count_add(struct mf_call *call)
{
    if (call->slot >= MF_METRICS_MAX_SLOTS)
        return true; /* not a slot the supervisor gives: uncounted */
    if (atomic_fetch_add(&waiting_count[call->slot], 1) >= call->wait_limit) {
        atomic_fetch_sub(&waiting_count[call->slot], 1);
        return false;
    }
    call->counted = true;
    return true;
}

static void waiting_count_remove(struct mf_call *call)
{
    if (call->counted)
        atomic_fetch_sub(&waiting_count[call->slot], 1);
    call->counted = false;
}

static void unlink_call(struct mf_call *call)
{
    if (call->stage == MF_CALL_WAITING) {
        waiting_count_remove(call);
        struct mf_htenant *t = call->tenant;
        if (call->prev) call->prev->next = call->next; else if (t->waiting_first == call) t->waiting_first = call->next;
        if (call->next) call->next->prev = call->prev; else if (t->waiting_last == call) t->waiting_last = call->prev;
    } else if (call->host != NULL) {
        if (call->prev) call->prev->next = call->next; else if (call->host->calls == call) call->host->calls = call->next;
        if (call->next) call->next->prev = call->prev;
    }
    call->prev = call->next = NULL;
}

static void send_drained(struct mf_front_loop *loop, uint64_t host_id)
{
    int fd = loop->config->control_fd;
    if (fd < 0)
        return;
    struct {
        struct mf_frame_header header;
        struct mf_host_drained drained;
    } packet;
    mf_frame_init(&packet.header, MF_MSG_HOST_DRAINED, 0, sizeof(packet.drained));
    packet.drained = (struct mf_host_drained){.host_id = host_id, .thread = loop->index};
    if (send(fd, &packet, sizeof(packet), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        mf_warn("send(control %d, HOST_DRAINED %" PRIu64 ") failed: %s", fd, host_id, strerror(errno));
}

static void host_close_channel(struct mf_host *host)
{
    if (host->watch.fd < 0)
        return;
    if (close(host->watch.fd) < 0) /* also takes it out of the epoll set */
        mf_warn("close(data channel %d) failed: %s", host->watch.fd, strerror(errno));
    host->watch.fd = -1;
}

static void ignore_ready(struct mf_front_watch *watch, uint32_t events)
{
    (void)watch, (void)events;
}

/* A detached host with nothing in flight: closed, reported, forgotten. */
static void host_maybe_drained(struct mf_host *host)
{
    if (!host->detached || host->calls != NULL || host->reading)
        return;
    host_close_channel(host);
    mf_worker_channels_close(host->workers); /* no call holds one now */
    struct mf_htenant *t = host->tenant;
    for (struct mf_host **p = &t->hosts; *p != NULL; p = &(*p)->next)
        if (*p == host) {
            *p = host->next;
            break;
        }
    send_drained(host->hosts->loop, host->host_id);
    host->watch.ready = ignore_ready;
    host->next = host->hosts->dead_hosts;
    host->hosts->dead_hosts = host;
}

static void call_free(struct mf_call *call)
{
    struct mf_host *host = call->stage == MF_CALL_WAITING ? NULL : call->host;
    timer_disarm(call);
    unlink_call(call);
    mf_call_release(call);
    call->watch.ready = ignore_ready;
    call->timer_next = call->hosts->dead_calls;
    call->hosts->dead_calls = call;
    if (host != NULL)
        host_maybe_drained(host);
}

/* ---- answers -------------------------------------------------------------- */

/* The ticket's answer is given; the call waits for the host's report
 * unless it has it (or no host will send one). */
static void call_answered(struct mf_call *call)
{
    call->ticket = NULL;
    call->request = NULL;
    mf_call_release(call);
    timer_disarm(call);
    if (call->stage != MF_CALL_RUNNING || call->reported || call->host == NULL || call->host->watch.fd < 0) {
        call_free(call);
        return;
    }
    call->stage = MF_CALL_DONE;
}

static void fail(struct mf_call *call, int status, const char *why, const char *extra)
{
    struct mf_front_ticket *ticket = call->ticket;
    call_answered(call);
    mf_front_fail(ticket, status, why, extra);
}

static void cancel(struct mf_call *call)
{
    struct mf_host *host = call->host;
    if (host == NULL || host->watch.fd < 0)
        return;
    struct mf_frame_header header;
    mf_frame_init(&header, MF_MSG_CANCEL, call->req_id, 0);
    /* Tiny; a host that cannot take it is stuck, and its end ends the sandbox anyway. */
    if (send(host->watch.fd, &header, sizeof(header), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        mf_warn("send(data channel %d, CANCEL %" PRIu64 ") failed: %s", host->watch.fd, call->req_id,
                strerror(errno));
}

static void timed_out(struct mf_call *call)
{
    char why[96];
    (void)snprintf(why, sizeof(why), "the program did not answer within %u ms", call->timeout_ms);
    mf_front_limit_hit(call->metrics, MF_METRICS_LIMIT_REQUEST_TIMEOUT, call->tenant->name, call->tenant->name_len, call->req_id, why);
    fail(call, 504, why, NULL);
}

static const char *unanswered(const struct mf_call *call)
{
    return call->streaming ? "before the end of its streamed answer (the client's connection is cut)"
                           : "without answering";
}

/* ---- sending a request again --------------------------------------------- */

static bool idempotent(const struct mf_front_request *r)
{
    return (r->method_len == 3 && memcmp(r->method, "GET", 3) == 0)
           || (r->method_len == 4 && memcmp(r->method, "HEAD", 4) == 0);
}

/* Whether a call whose host or sandbox died may be sent again: one that
 * never reached the program always (it waits for a host again); a GET or
 * HEAD once, unless part of its streamed answer is out. */
static bool may_resend(const struct mf_call *call)
{
    if (call->streaming)
        return false; /* the client has part of an answer */
    if (!call->delivered)
        return call->resends < MF_MAX_RESENDS;
    return !call->retried && idempotent(call->request);
}

/* Sends a call that is in no list (stage DONE, no host) again, on the
 * tenant's serving host or the next one. False (nothing done but the
 * channel dropped): it cannot be, the caller answers. */
static bool resend(struct mf_call *call, const char *what)
{
    mf_call_release(call); /* unwatches a borrowed channel before the worker is forgotten */
    call->worker = -1;
    if (!may_resend(call) || !mf_call_encode(call))
        return false;
    mf_front_log("info", "mayflyd.request", call->tenant->name, call->tenant->name_len, call->req_id, NULL,
                 call->delivered ? "%s under the request; retrying once" : "%s before the request reached the "
                 "program; sending it again", what);
    if (call->delivered)
        call->retried = true;
    else
        call->resends++;
    call->delivered = call->reported = call->failed = false;
    call->exit = (struct mf_child_exit){0};
    timer_arm(call, call->deadline_ms, false);
    dispatch(call);
    return true;
}

/* A running call the host reported ended without an answer, sent again
 * (or, if it cannot be, answered 502). */
static void resend_from_host(struct mf_call *call, const char *what)
{
    struct mf_host *host = call->host;
    unlink_call(call);
    call->stage = MF_CALL_DONE; /* in no list now */
    call->host = NULL;
    if (!resend(call, what)) {
        call->reported = true; /* its report came: nothing more to wait for */
        fail(call, 502, ENDED, NULL);
    }
    if (host != NULL)
        host_maybe_drained(host);
}

/* A sandbox killed by SIGKILL that no limit of ours explains (an operator,
 * a crash of its host's machinery): its GET or HEAD runs once more, on
 * another worker or sandbox of the same host. A program that crashes on
 * its own (another signal, an exit) gets its 502: it would again. */
static bool resend_after_kill(struct mf_call *call)
{
    int ws = call->exit.wait_status;
    if (!call->reported || call->failed || !WIFSIGNALED(ws) || WTERMSIG(ws) != SIGKILL
        || (call->exit.flags & (MF_EXIT_TIMED_OUT | MF_EXIT_CPU_EXCEEDED | MF_EXIT_OUT_OF_MEMORY | MF_EXIT_CANCELLED))
        || !may_resend(call))
        return false;
    resend_from_host(call, "the sandbox was killed");
    return true;
}

/* 503: the tenant has concurrency requests running and queue more waiting. */
static void refuse_full(struct mf_call *call)
{
    mf_front_limit_hit(call->metrics, MF_METRICS_LIMIT_CONCURRENCY, call->tenant->name, call->tenant->name_len,
                       call->req_id, "concurrency requests running and queue more waiting");
    fail(call, 503, "the tenant is at its concurrency limit and its queue is full", RETRY);
}

/* The sandbox ended (or could not start) without a whole answer: the
 * host's report says why, or there is none in time. */
static void ended_without_answer(struct mf_call *call)
{
    struct mf_front_loop *loop = call->hosts->loop;
    if (loop->now_ms >= call->deadline_ms && !call->failed) {
        timed_out(call); /* the host killed it at the deadline */
        return;
    }
    if (call->reported && call->failed) {
        if (call->error == EAGAIN) {
            refuse_full(call);
            return;
        }
        if (call->error == EPIPE && !call->delivered && may_resend(call)) {
            resend_from_host(call, "the worker died");
            return;
        }
        mf_front_log("warning", "mayflyd.request", call->tenant->name, call->tenant->name_len, call->req_id, NULL, "the host could not start a sandbox: %s",
                     strerror(call->error));
        fail(call, 503, NOT_RUNNING, RETRY);
        return;
    }
    if (call->reported) {
        uint32_t flags = call->exit.flags;
        if (flags & MF_EXIT_TIMED_OUT) {
            timed_out(call);
            return;
        }
        if (flags & MF_EXIT_CPU_EXCEEDED) {
            char why[96];
            (void)snprintf(why, sizeof(why), "the program used more than its %u ms of CPU", call->cpu_ms);
            mf_front_limit_hit(call->metrics, MF_METRICS_LIMIT_REQUEST_CPU, call->tenant->name, call->tenant->name_len, call->req_id, why);
            fail(call, 504, why, NULL);
            return;
        }
        if (flags & MF_EXIT_OUT_OF_MEMORY) {
            mf_front_limit_hit(call->metrics, MF_METRICS_LIMIT_MEMORY, call->tenant->name, call->tenant->name_len, call->req_id,
                               "the OOM killer took the sandbox: the tenant is at its memory limit");
            fail(call, 502, "the program ran out of memory", NULL);
            return;
        }
        if (resend_after_kill(call))
            return;
        int ws = call->exit.wait_status;
        char how[64];
        mf_front_log("warning", "mayflyd.request", call->tenant->name, call->tenant->name_len, call->req_id, NULL,
                     "sandbox failed: the sandbox %s %s", mf_describe_wait_status(ws, how, sizeof(how)), unanswered(call));
    } else {
        mf_front_log("warning", "mayflyd.request", call->tenant->name, call->tenant->name_len, call->req_id, NULL,
                     "sandbox failed: the sandbox ended %s", unanswered(call));
    }
    fail(call, 502, ENDED, NULL);
}

void mf_call_invalid(struct mf_call *call, enum mf_feed why)
{
    if (why == MF_FEED_TOO_LARGE) {
        mf_front_limit_hit(call->metrics, MF_METRICS_LIMIT_MAX_RESPONSE, call->tenant->name, call->tenant->name_len, call->req_id, mf_last_error());
    } else {
        mf_front_log("warning", "mayflyd.request", call->tenant->name, call->tenant->name_len, call->req_id, NULL, "invalid response from the sandbox: %s",
                     mf_last_error());
    }
    cancel(call);
    fail(call, 502, INVALID, NULL);
}

/* A streamed answer's head or chunk to the client. False: the call is
 * answered (the client left, or the head was invalid) and its sandbox
 * cancelled. MF_STREAM_FULL pauses the reading until hosts_resume. */
static bool stream_on(struct mf_call *call, enum mf_feed got)
{
    enum mf_stream how;
    if (got == MF_FEED_STREAM_HEAD) {
        struct mf_front_response head;
        mf_call_response(call, &head);
        how = mf_front_stream_begin(call->ticket, &head, call);
    } else {
        how = mf_front_stream_write(call->ticket, call->chunk, call->chunk_len);
    }
    if (how == MF_STREAM_GONE) {
        cancel(call);
        call_answered(call);
        return false;
    }
    call->paused = how == MF_STREAM_FULL;
    return true;
}

bool mf_call_read(struct mf_call *call)
{
    uint8_t *packet = call->hosts->packet;
    while (call->watch.fd >= 0 && !call->eof) {
        /* Paused, the sandbox blocks in its send. Once the host reported
         * its end, what is left is bounded by the channel's buffer, and
         * must be read before the channel serves another request. */
        if (call->paused && !call->reported)
            return true; /* hosts_resume reads on */
        ssize_t n = recv(call->watch.fd, packet, MF_PACKET_MAX + 1, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return true;
            n = 0; /* reset: as good as its end */
        }
        if (n == 0) {
            call->eof = true;
            break;
        }
        enum mf_feed got = mf_call_feed(call, packet, (size_t)n);
        if (got == MF_FEED_MORE)
            continue;
        if (got == MF_FEED_STREAM_HEAD || got == MF_FEED_CHUNK) {
            if (!stream_on(call, got))
                return false;
            continue;
        }
        if (got != MF_FEED_DONE) {
            mf_call_invalid(call, got); /* a stream is cut: its head is out */
            return false;
        }
        struct mf_front_ticket *ticket = call->ticket;
        if (call->streaming) {
            call_answered(call);
            mf_front_stream_end(ticket);
            return false;
        }
        struct mf_front_response response;
        mf_call_response(call, &response);
        mf_front_complete(ticket, &response); /* copies the answer before the call lets go of it */
        call_answered(call);
        return false;
    }
    if (!call->eof)
        return true;
    /* Ended without a whole answer: how, the host says (now or soon). */
    if (call->reported) {
        ended_without_answer(call);
        return false;
    }
    mf_call_drop_channel(call);
    uint64_t wait_until = call->hosts->loop->now_ms + MF_EXIT_WAIT_MS;
    timer_arm(call, wait_until < call->deadline_ms ? wait_until : call->deadline_ms, true);
    return true;
}

void mf_call_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_call *call = (struct mf_call *)((char *)watch - offsetof(struct mf_call, watch));
    (void)events;
    mf_call_send(call);
    (void)mf_call_read(call);
}

/* ---- running a call on a host --------------------------------------------- */

/* The newest attached host still serving, or NULL. */
static struct mf_host *serving_host(const struct mf_htenant *t)
{
    for (struct mf_host *h = t->hosts; h != NULL; h = h->next)
        if (!h->detached && h->watch.fd >= 0)
            return h;
    return NULL;
}

/* REQUEST to the host: with the sandbox's end of the call's socketpair
 * (fork host), or alone (reset host: DISPATCHED names the channel later). */
static bool send_request(struct mf_call *call, struct mf_host *host, int theirs)
{
    struct mf_front_loop *loop = call->hosts->loop;
    uint64_t left = call->deadline_ms > loop->now_ms ? call->deadline_ms - loop->now_ms : 1;
    if (left > call->timeout_ms)
        left = call->timeout_ms; /* the head's time was read after the loop's */
    struct {
        struct mf_frame_header header;
        struct mf_request_ctl ctl;
    } packet;
    mf_frame_init(&packet.header, MF_MSG_REQUEST, call->req_id, sizeof(packet.ctl));
    packet.ctl = (struct mf_request_ctl){.timeout_ms = left > UINT32_MAX ? UINT32_MAX : (uint32_t)left};
    if (theirs >= 0)
        return mf_send_packet_fd(host->watch.fd, &packet, sizeof(packet), theirs);
    if (send(host->watch.fd, &packet, sizeof(packet), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        return mf_err("send(data channel %d, REQUEST %" PRIu64 ")", host->watch.fd, call->req_id);
    return true;
}

static void start(struct mf_call *call, struct mf_host *host)
{
    struct mf_front_loop *loop = call->hosts->loop;
    mf_cleanup_fd int theirs = -1;
    if (host->workers == NULL) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
            mf_warn("socketpair(request %" PRIu64 ") failed: %s", call->req_id, strerror(errno));
            fail(call, 503, NOT_RUNNING, RETRY);
            return;
        }
        theirs = pair[1];
        /* Both ends stay blocking: every send and recv on ours says
         * MSG_DONTWAIT (a syscall less per request), the sandbox's reads block. */
        call->watch = (struct mf_front_watch){.fd = pair[0], .ready = mf_call_ready};
    }
    call->stage = MF_CALL_RUNNING;
    call->host = host;
    call->prev = NULL;
    call->next = host->calls;
    if (host->calls != NULL)
        host->calls->prev = call;
    host->calls = call;
    /* Queued before the host hands the channel on: the sandbox finds the
     * request whole on its first read. */
    mf_call_send(call);
    if (!send_request(call, host, theirs)) {
        int error = errno;
        mf_warn_last();
        if (error == EPIPE || error == ECONNRESET) {
            /* The host died and its channel's end is not read yet: the
             * request never reached it. It waits for the next host. */
            unlink_call(call);
            call->stage = MF_CALL_DONE; /* in no list now */
            call->host = NULL;
            host_ended(host); /* before the call is sent again: not to it */
            if (!resend(call, "the host died"))
                fail(call, 502, ENDED, NULL);
            return;
        }
        /* EAGAIN: a host that does not read its channel is stuck. */
        call->reported = true; /* it never got it: no report will come */
        fail(call, 503, NOT_RUNNING, RETRY);
        return;
    }
    if (host->workers != NULL)
        return; /* the channel comes with DISPATCHED */
    call->delivered = true; /* its sandbox may read it from now on */
    if (!mf_front_watch_add(loop, &call->watch, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)) {
        mf_warn_last();
        cancel(call);
        fail(call, 503, NOT_RUNNING, RETRY);
        return;
    }
    (void)mf_call_read(call); /* edge triggered: what is there already */
}

static void dispatch(struct mf_call *call)
{
    struct mf_htenant *t = call->tenant;
    struct mf_host *host = serving_host(t);
    if (host != NULL) {
        start(call, host);
        return;
    }
    if (t->state == MF_TENANT_DOWN) {
        if (call->retried)
            fail(call, 502, ENDED, NULL);
        else
            fail(call, 503, NOT_RUNNING, RETRY);
        return;
    }
    call->host = NULL;
    if (!waiting_count_add(call)) {
        refuse_full(call);
        return;
    }
    call->stage = MF_CALL_WAITING;
    call->next = NULL;
    call->prev = t->waiting_last;
    if (t->waiting_last) t->waiting_last->next = call; else t->waiting_first = call;
    t->waiting_last = call;
}

static void call_timer_fired(struct mf_call *call)
{
    timer_disarm(call);
    if (call->stage == MF_CALL_WAITING) {
        unlink_call(call);
        call->stage = MF_CALL_DONE; /* no host: nothing to wait for */
        call->host = NULL;
        if (call->retried)
            fail(call, 502, ENDED, NULL);
        else
            fail(call, 503, NOT_RUNNING, RETRY);
        return;
    }
    if (call->exit_wait) {
        ended_without_answer(call);
        return;
    }
    cancel(call);
    timed_out(call);
}

static void call_timer_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_hosts *hosts = (struct mf_hosts *)((char *)watch - offsetof(struct mf_hosts, timer));
    uint64_t expirations;
    (void)events;
    if (read(watch->fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        mf_warn("read(timerfd %d) failed: %s", watch->fd, strerror(errno));
    hosts->timer_set_ms = 0;
    uint64_t now = hosts->loop->now_ms;
    struct mf_call *call;
    while ((call = hosts->timers_first) != NULL && call->timer_ms <= now)
        call_timer_fired(call);
    timerfd_update(hosts);
}

/* ---- the host's data channel ---------------------------------------------- */

static struct mf_call *find_call(struct mf_host *host, uint64_t req_id)
{
    for (struct mf_call *c = host->calls; c != NULL; c = c->next)
        if (c->req_id == req_id)
            return c;
    return NULL;
}

static void host_report(struct mf_host *host, const uint8_t *packet, size_t len, int passed_fd)
{
    mf_cleanup_fd int fd = passed_fd;
    struct mf_frame_header header;
    if (!mf_frame_parse(packet, len, &header)) {
        mf_warn_last();
        return;
    }
    const uint8_t *payload = packet + MF_FRAME_HEADER_SIZE;
    if (host->workers != NULL && (header.type == MF_MSG_WORKER_CHANNEL || header.type == MF_MSG_WORKER_GONE)) {
        mf_worker_changed(host, &header, payload, &fd);
        return;
    }
    if (fd >= 0)
        mf_warn("host %" PRIu64 ": message type %u carries an fd (closed)", host->host_id, header.type);
    struct mf_call *call = find_call(host, header.req_id);
    if (call == NULL)
        return; /* its request was answered and forgotten with a host gone: nothing to do */
    if (header.type == MF_MSG_DISPATCHED && host->workers != NULL) {
        mf_worker_dispatched(host, call, &header, payload);
        return;
    }
    if (header.type == MF_MSG_CHILD_EXIT && header.payload_len == sizeof(struct mf_child_exit)) {
        memcpy(&call->exit, payload, sizeof(call->exit));
        mf_metrics_sandbox(call->metrics, call->exit.cost_us, call->exit.pages, call->exit.pages > 0);
    } else if (header.type == MF_MSG_REQUEST_FAILED && header.payload_len == sizeof(struct mf_request_failed)) {
        struct mf_request_failed failed;
        memcpy(&failed, payload, sizeof(failed));
        call->failed = true;
        call->error = failed.error;
    } else {
        mf_warn("host %" PRIu64 ": unexpected message type %u of %u bytes", host->host_id, header.type,
                header.payload_len);
        return;
    }
    call->reported = true;
    int worker = call->worker;
    /* The sandbox is gone: what it sent is all there is. */
    if (call->stage == MF_CALL_DONE)
        call_free(call);
    else if (call->failed || mf_call_read(call))
        ended_without_answer(call);
    /* The rest (junk after its answer) must not reach the worker's next request. */
    if (worker >= 0)
        mf_worker_reported(host, worker, header.req_id);
}

/* The host's end of this channel is gone: its sandboxes with it. */
static void host_ended(struct mf_host *host)
{
    host_close_channel(host);
    struct mf_call *call = host->calls;
    host->calls = NULL;
    while (call != NULL) {
        struct mf_call *next = call->next;
        call->prev = call->next = NULL;
        call->host = NULL; /* in no list now */
        if (call->stage == MF_CALL_DONE) {
            call_free(call);
        } else {
            call->stage = MF_CALL_DONE; /* in no list now */
            if (!resend(call, "the host died")) {
                call->reported = true; /* no report will come */
                fail(call, 502, ENDED, NULL);
            }
        }
        call = next;
    }
    mf_worker_channels_close(host->workers); /* the calls let go of them above */
    host_maybe_drained(host);
}

static void host_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_host *host = (struct mf_host *)watch;
    uint8_t *packet = host->hosts->packet;
    (void)events;
    host->reading = true;
    for (int i = 0; i < 64 && host->watch.fd >= 0; i++) { /* level triggered: the rest next turn */
        size_t len, nfds;
        int fd = -1;
        /* WORKER_CHANNEL brings an fd; any other is closed by host_report. */
        int got = mf_recv_packet(host->watch.fd, MSG_DONTWAIT, packet, MF_PACKET_MAX + 1, &len, &fd, 1, &nfds);
        if (got < 0 && errno == EAGAIN)
            break;
        if (got < 0 && (errno == EMSGSIZE || errno == EPROTO)) {
            mf_warn_last(); /* one bad packet, its fds closed: the channel goes on */
            continue;
        }
        if (got <= 0) {
            if (got < 0)
                mf_warn("host %" PRIu64 ": %s", host->host_id, mf_last_error());
            host->reading = false;
            host_ended(host);
            return;
        }
        host_report(host, packet, len, nfds > 0 ? fd : -1);
    }
    host->reading = false;
    host_maybe_drained(host);
}

/* ---- the supervisor's messages -------------------------------------------- */

static void attach(struct mf_hosts *hosts, struct mf_front_mail *mail)
{
    mf_cleanup_fd int fd = mail->fd;
    mail->fd = -1;
    struct mf_htenant *t = tenant_of(hosts, mail->name, mail->name_len);
    struct mf_host *host = t ? calloc(1, sizeof(*host)) : NULL;
    if (host == NULL) {
        if (t != NULL)
            mf_err("calloc(host)");
        mf_warn_last();
        return;
    }
    host->watch = (struct mf_front_watch){.fd = fd, .ready = host_ready};
    host->hosts = hosts;
    host->tenant = t;
    host->host_id = mail->host_id;
    if (mail->engine == MF_ENGINE_RESET && (host->workers = mf_worker_channels_new()) == NULL) {
        mf_warn_last();
        free(host);
        return;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        mf_warn("fcntl(data channel %d, O_NONBLOCK) failed: %s", fd, strerror(errno));
        free(host->workers);
        free(host);
        return;
    }
    if (!mf_front_watch_add(hosts->loop, &host->watch, EPOLLIN)) {
        mf_warn_last();
        free(host->workers);
        free(host);
        return;
    }
    (void)mf_steal_fd(&fd);
    host->next = t->hosts;
    t->hosts = host;
    t->state = MF_TENANT_STARTING; /* after this host, requests wait for the next one */
    /* Those waiting go to it, in the order they came. */
    struct mf_call *call = t->waiting_first;
    t->waiting_first = t->waiting_last = NULL;
    while (call != NULL) {
        struct mf_call *next = call->next;
        call->prev = call->next = NULL;
        call->stage = MF_CALL_DONE; /* in no list now */
        waiting_count_remove(call);
        dispatch(call); /* to this host, unless a send found it dead meanwhile */
        call = next;
    }
}

static void detach(struct mf_hosts *hosts, uint64_t host_id)
{
    for (size_t b = 0; b < MF_TENANT_BUCKETS; b++)
        for (struct mf_htenant *t = hosts->buckets[b]; t != NULL; t = t->next)
            for (struct mf_host *h = t->hosts; h != NULL; h = h->next)
                if (h->host_id == host_id && !h->detached) {
                    h->detached = true;
                    host_maybe_drained(h);
                    return;
                }
    send_drained(hosts->loop, host_id); /* never attached here: nothing to drain */
}

static void set_state(struct mf_hosts *hosts, struct mf_front_mail *mail)
{
    struct mf_htenant *t = tenant_of(hosts, mail->name, mail->name_len);
    if (t == NULL) {
        mf_warn_last();
        return;
    }
    t->state = mail->state;
    if (t->state != MF_TENANT_DOWN || serving_host(t) != NULL)
        return;
    /* No host will come soon: those waiting are answered now. */
    struct mf_call *call;
    while ((call = t->waiting_first) != NULL)
        call_timer_fired(call);
}

static void hosts_mail(void *ctx, struct mf_front_loop *loop, struct mf_front_mail *mail)
{
    (void)ctx;
    struct mf_hosts *hosts = hosts_of(loop);
    if (hosts == NULL) {
        mf_warn_last();
        if (mail->fd >= 0)
            (void)close(mail->fd); /* cannot serve it */
        return;
    }
    switch (mail->type) {
    case MF_MSG_HOST_ATTACH: attach(hosts, mail); break;
    case MF_MSG_HOST_DETACH: detach(hosts, mail->host_id); break;
    default: set_state(hosts, mail); break;
    }
}

static void hosts_submit(void *ctx, struct mf_front_loop *loop, struct mf_front_ticket *ticket,
                         const struct mf_front_request *request)
{
    (void)ctx;
    if (request->tenant_len == 0) { /* no routing table yet */
        mf_front_fail(ticket, 503, "no tenant is connected", RETRY);
        return;
    }
    struct mf_hosts *hosts = hosts_of(loop);
    struct mf_htenant *t = hosts ? tenant_of(hosts, request->tenant, request->tenant_len) : NULL;
    struct mf_call *call = t ? calloc(1, sizeof(*call)) : NULL;
    if (call == NULL) {
        if (t != NULL)
            mf_err("calloc(call)");
        mf_warn_last();
        mf_front_fail(ticket, 503, "out of memory", RETRY);
        return;
    }
    *call = (struct mf_call){
        .hosts = hosts, .tenant = t, .ticket = ticket, .request = request, .metrics = ticket->metrics,
        .req_id = request->id, .timeout_ms = request->limits->request_timeout_ms,
        .cpu_ms = request->limits->request_cpu_ms, .max_response = request->limits->max_response,
        .deadline_ms = request->arrived_ms + request->limits->request_timeout_ms,
        .slot = request->limits->slot, .wait_limit = request->limits->concurrency + request->limits->queue,
        .stage = MF_CALL_DONE, .watch = {.fd = -1}, .worker = -1};
    if (!mf_call_encode(call)) {
        struct mf_conn *conn = ticket->conn;
        mf_front_log("info", "mayflyd.request", t->name, t->name_len, call->req_id, NULL, "request head too large: %s",
                     mf_last_error());
        free(call);
        ticket->closes = conn != NULL;
        mf_front_fail(ticket, 431, NULL, NULL);
        return;
    }
    timer_arm(call, call->deadline_ms, false);
    if (loop->now_ms >= call->deadline_ms) {
        call_timer_fired(call);
        return;
    }
    dispatch(call);
}

static void hosts_resume(void *ctx, void *ref)
{
    struct mf_call *call = ref;
    (void)ctx;
    call->paused = false;
    (void)mf_call_read(call);
}

static void hosts_turn_end(void *ctx, struct mf_front_loop *loop)
{
    (void)ctx;
    struct mf_hosts *hosts = loop->backend_data;
    if (hosts == NULL)
        return;
    while (hosts->dead_calls != NULL) {
        struct mf_call *call = hosts->dead_calls;
        hosts->dead_calls = call->timer_next;
        free(call);
    }
    while (hosts->dead_hosts != NULL) {
        struct mf_host *host = hosts->dead_hosts;
        hosts->dead_hosts = host->next;
        free(host->workers); /* closed when its channel was */
        free(host);
    }
}

const struct mf_front_backend mf_hosts_backend = {
    .submit = hosts_submit, .mail = hosts_mail, .turn_end = hosts_turn_end, .resume = hosts_resume};
