/*
 * A client connection; see conn.h. All work on a connection goes through
 * mf_conn_run(), which is never re-entered: a backend answering inside
 * submit() (inside the parser) only marks its ticket answered, and the
 * running mf_conn_run() writes it. A closed connection is freed only after
 * its loop's turn (mf_conn_free_dead): a later event may still name it.
 */
#include "front/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "front/request.h"
#include "front/response.h"

/* Over this much unsent output, no further request is parsed. */
#define OUT_HIGH (256 * 1024)
/* Reads per turn: then every other connection's turn, then this one's. */
#define READ_BUDGET 16

static llhttp_settings_t settings;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;

static void init_settings(void)
{
    mf_request_settings(&settings);
}

static size_t unsent(const struct mf_conn *conn)
{
    return conn->out_len - conn->out_sent;
}

size_t mf_conn_unsent(const struct mf_conn *conn)
{
    return unsent(conn);
}

static bool out_append(struct mf_conn *conn, const char *data, size_t len)
{
    if (conn->out_sent == conn->out_len)
        conn->out_sent = conn->out_len = 0;
    MF_TRY(mf_reserve(&conn->out, &conn->out_cap, conn->out_len + len, 4096));
    memcpy(conn->out + conn->out_len, data, len);
    conn->out_len += len;
    return true;
}

/* Moves the answers that are next in order to the output, and writes it.
 * A streamed answer's output moves as it comes; the later answers wait
 * for its end, and nothing follows one that was cut. */
static void conn_flush(struct mf_conn *conn)
{
    struct mf_front_ticket *t = NULL;
    while (!conn->cut && (t = conn->first) != NULL && (t->answered || t->streaming)) {
        if (t->out_len > 0 && !out_append(conn, t->out, t->out_len)) {
            mf_warn_last();
            conn->broken = true;
            return;
        }
        t->out_len = 0;
        if (!t->answered)
            break;
        if (t->cut) {
            conn->cut = true;
            conn->cut_reset = !t->chunked; /* a close-delimited body's FIN would look like its end */
            conn->reading_done = true;
        }
        conn->close_when_flushed = conn->close_when_flushed || t->closes;
        conn->first = t->next;
        if (conn->first == NULL)
            conn->last = NULL;
        conn->queued--;
        mf_ticket_free(t);
    }
    /* 100 Continue only when every earlier answer is out: answers stay in order. */
    if (!conn->cut && t != NULL && t == conn->parsing && t->want_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        t->want_continue = false;
        if (!out_append(conn, cont, sizeof(cont) - 1)) {
            mf_warn_last();
            conn->broken = true;
            return;
        }
    }
    bool progress = false;
    while (unsent(conn) > 0) {
        ssize_t n = send(conn->watch.fd, conn->out + conn->out_sent, unsent(conn), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                conn->broken = true; /* reset or gone: nothing to tell it */
                return;
            }
            break;
        }
        conn->out_sent += (size_t)n;
        progress = true;
    }
    if (progress && unsent(conn) > 0 && conn->parsing == NULL)
        mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_IDLE); /* a reader that stalls is idle */
}

/* Ends reading with the daemon's answer, after every earlier one. */
static void conn_refuse(struct mf_conn *conn, int status, const char *why)
{
    struct mf_front_ticket *t = conn->parsing;
    if (t == NULL && mf_conn_request_begin(conn))
        t = conn->parsing;
    conn->parsing = NULL;
    conn->reading_done = true;
    conn->in_off = conn->in_len;
    if (t == NULL) {
        conn->broken = true; /* out of memory: the client only sees the close */
        return;
    }
    const char *extra = status == 405 ? "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" : NULL;
    if (!mf_render_daemon(t, status, why, extra, true)) {
        mf_warn_last();
        conn->broken = true;
    }
    mf_ticket_free_request(t); /* after: the access log line names it */
}

static const char *refusal_text(int status)
{
    switch (status) {
    case 405: return "CONNECT is not served";
    case 408: return "the request did not arrive in time";
    case 413: return "the request body is over the limit";
    case 414: return "the request target is over the limit";
    case 417: return "only 100-continue is supported";
    case 431: return "the request head is over the limit";
    case 503: return "out of memory";
    default: return "malformed request";
    }
}

/* The first answer is a stream the backend paused (MF_STREAM_FULL): once
 * its client has taken enough, the backend goes on. True if it was told. */
static bool stream_resume(struct mf_conn *conn)
{
    struct mf_front_ticket *t = conn->first;
    /* A broken connection is closed next: conn_close tells the backend. */
    if (conn->broken || t == NULL || !t->paused || t->answered || unsent(conn) + t->out_len > MF_STREAM_HIGH / 2)
        return false;
    t->paused = false;
    conn->loop->backend->resume(conn->loop->backend->ctx, t->stream_ref);
    return true;
}

static bool may_parse(const struct mf_conn *conn)
{
    if (conn->reading_done || conn->broken || unsent(conn) > OUT_HIGH)
        return false;
    return conn->parsing != NULL || conn->queued < conn->loop->config->max_pipeline;
}

/* A trusted peer's first bytes: its PROXY header, if it sends one, names
 * the client of every request on the connection. False while more bytes
 * are needed, or when a malformed header closes the connection. */
static bool conn_proxy_header(struct mf_conn *conn)
{
    struct mf_proxy_header header;
    switch (mf_proxy_header_parse((const uint8_t *)conn->in + conn->in_off, conn->in_len - conn->in_off, &header)) {
    case MF_PROXY_MORE:
        return false;
    case MF_PROXY_NONE:
        break;
    case MF_PROXY_DONE:
        conn->in_off += header.len;
        if (header.has_source) {
            conn->peer = header.source;
            conn->client_len = mf_addr_text(&conn->peer, conn->client, sizeof(conn->client));
        }
        break;
    case MF_PROXY_BAD:
        mf_warn("PROXY header from %s refused (%s): connection closed", conn->client, header.why);
        conn->reading_done = conn->broken = true; /* no answer: the proxy did not speak HTTP */
        conn->in_off = conn->in_len;
        return false;
    }
    conn->proxy_pending = false;
    return true;
}

/* The connection ends (at `why`) in the middle of a PROXY header: said once. */
static void proxy_cut_short(const struct mf_conn *conn, const char *why)
{
    if (conn->proxy_pending && conn->in_off < conn->in_len)
        mf_warn("PROXY header from %s incomplete after %zu bytes and %s: connection closed", conn->client,
                conn->in_len - conn->in_off, why);
}

/* Parses what is buffered; false when it had to stop before the end. */
static bool conn_parse(struct mf_conn *conn)
{
    while (conn->in_off < conn->in_len) {
        if (!may_parse(conn))
            return false;
        if (conn->proxy_pending && !conn_proxy_header(conn))
            return !conn->broken; /* the header's end is to come: read on */
        if (conn->in_off == conn->in_len)
            break;
        const char *data = conn->in + conn->in_off;
        enum llhttp_errno err = llhttp_execute(&conn->parser, data, conn->in_len - conn->in_off);
        if (err == HPE_OK) {
            conn->in_off = conn->in_len;
            break;
        }
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            /* Upgrade is ignored: the next bytes are the next request. */
            conn->in_off += (size_t)(llhttp_get_error_pos(&conn->parser) - data);
            if (err == HPE_PAUSED)
                llhttp_resume(&conn->parser);
            else
                llhttp_resume_after_upgrade(&conn->parser);
            continue;
        }
        int status = conn->error_status ? conn->error_status : 400;
        conn_refuse(conn, status, refusal_text(status));
        return false;
    }
    return true;
}

/* Reads and parses until the socket is drained or parsing must wait. */
static void conn_pump(struct mf_conn *conn)
{
    for (int reads = 0; conn_parse(conn); reads++) {
        if (reads == READ_BUDGET) {
            if (!conn->again) {
                conn->again = true;
                conn->next_again = conn->loop->again;
                conn->loop->again = conn;
            }
            return;
        }
        /* Edge triggered: after a short read the socket was empty, and
         * whatever comes next raises a new event; a recv now would only
         * say EAGAIN. */
        if (!conn->readable)
            return;
        if (conn->in_len > 0)
            conn->byte_before = conn->in[conn->in_len - 1];
        /* A PROXY header's beginning stays: the next bytes go after it
         * (MF_PROXY_MAX_HEADER is well under the buffer). */
        size_t kept = conn->proxy_pending ? conn->in_len - conn->in_off : 0;
        memmove(conn->in, conn->in + conn->in_off, kept);
        ssize_t n = recv(conn->watch.fd, conn->in + kept, sizeof(conn->in) - kept, 0);
        if (n > 0) {
            conn->in_off = 0;
            conn->in_len = kept + (size_t)n;
            if ((size_t)n < sizeof(conn->in) - kept)
                conn->readable = false;
            continue;
        }
        if (n == 0) {
            proxy_cut_short(conn, "the peer's end");
            conn->peer_eof = true;
            conn->reading_done = true;
            if (conn->parsing != NULL) /* cut off mid-request: nobody to answer */
                conn->parsing->answered = conn->parsing->closes = true;
            conn->parsing = NULL;
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            conn->readable = false;
        else
            conn->broken = true;
        return;
    }
}

static void conn_close(struct mf_conn *conn)
{
    if (close(conn->watch.fd) < 0)
        mf_warn("close(%d) of a client failed: %s", conn->watch.fd, strerror(errno));
    mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_NONE);
    struct mf_front_ticket *t = conn->first, *next, *paused = NULL;
    for (; t != NULL; t = next) {
        next = t->next;
        if (t->submitted && !t->answered) {
            t->conn = NULL; /* the backend still owns it: mf_front_complete frees it */
            if (t->paused) {
                t->next = paused;
                paused = t;
            }
        } else {
            mf_ticket_free(t);
        }
    }
    conn->first = conn->last = conn->parsing = NULL;
    /* A paused stream learns that its client left (its next write says so). */
    for (t = paused; t != NULL; t = next) {
        next = t->next;
        t->next = NULL;
        t->paused = false;
        conn->loop->backend->resume(conn->loop->backend->ctx, t->stream_ref);
    }
    free(conn->out);
    conn->out = NULL;
    conn->dead = true;
    conn->next_dead = conn->loop->dead;
    conn->loop->dead = conn;
    conn->loop->conns--;
}

static void conn_discard_input(struct mf_conn *conn)
{
    for (;;) {
        ssize_t n = recv(conn->watch.fd, conn->in, sizeof(conn->in), 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || errno != EAGAIN)
            conn_close(conn);
        return;
    }
}

/* Closes a finished connection, or sets the deadline its state calls for. */
static void conn_settle(struct mf_conn *conn)
{
    if (conn->broken) {
        conn_close(conn);
        return;
    }
    if (conn->lingering)
        return;
    /* Cut: whatever answers follow are dropped with the connection. */
    bool finished = (conn->first == NULL || conn->cut) && unsent(conn) == 0;
    if (finished && (conn->reading_done || conn->close_when_flushed || mf_loop_draining())) {
        if (conn->cut_reset) {
            /* SO_LINGER 0: close() sends a reset, which the client cannot take for the body's end. */
            struct linger reset = {.l_onoff = 1, .l_linger = 0};
            if (setsockopt(conn->watch.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)) < 0)
                mf_warn("setsockopt(%d, SO_LINGER 0) failed: %s", conn->watch.fd, strerror(errno));
            conn_close(conn);
            return;
        }
        if (conn->peer_eof) {
            conn_close(conn);
            return;
        }
        /* Half-close, then drain: closing with unread input would send a
         * RST that may destroy our last answer in the client's buffer. */
        if (shutdown(conn->watch.fd, SHUT_WR) < 0) {
            conn_close(conn);
            return;
        }
        conn->lingering = true;
        mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_LINGER);
        conn_discard_input(conn); /* what came before: edge triggered, no event for it */
        return;
    }
    if (conn->parsing != NULL)
        return; /* header or body deadline, armed when that part began */
    if (unsent(conn) > 0) {
        if (conn->timer.kind != MF_TIMER_IDLE)
            mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_IDLE);
    } else if (conn->first != NULL) {
        mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_NONE); /* the backend keeps the time */
    } else if (!conn->fresh && conn->timer.kind != MF_TIMER_IDLE) {
        mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_IDLE);
    }
}

void mf_conn_run(struct mf_conn *conn)
{
    if (conn->in_pump || conn->dead)
        return;
    conn->in_pump = true;
    for (;;) {
        conn_flush(conn);
        if (stream_resume(conn))
            continue; /* its output is to flush */
        if (!may_parse(conn))
            break;
        conn_pump(conn);
        conn_flush(conn);
        if (conn->in_off == conn->in_len || conn->proxy_pending || !may_parse(conn))
            break; /* drained, or waiting for answers or the client (or a PROXY header's end) */
    }
    conn->in_pump = false;
    conn_settle(conn);
}

static void conn_ready(struct mf_front_watch *watch, uint32_t events)
{
    struct mf_conn *conn = (struct mf_conn *)watch;
    if (conn->dead)
        return;
    if (conn->lingering) {
        conn_discard_input(conn);
        return;
    }
    if (events & EPOLLERR)
        conn->broken = true;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
        conn->readable = true;
    mf_conn_run(conn);
}

/* The peer's address for the program (REMOTE_ADDR); empty if unknown. A
 * trusted proxy may send a PROXY header first. */
static void peer_name(struct mf_conn *conn)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    const void *raw = NULL;
    if (getpeername(conn->watch.fd, (struct sockaddr *)&addr, &len) < 0)
        return; /* gone already: it will read as such */
    if (addr.ss_family == AF_INET)
        raw = &((struct sockaddr_in *)&addr)->sin_addr;
    else if (addr.ss_family == AF_INET6)
        raw = &((struct sockaddr_in6 *)&addr)->sin6_addr;
    if (raw != NULL && inet_ntop(addr.ss_family, raw, conn->client, sizeof(conn->client)) != NULL)
        conn->client_len = strlen(conn->client);
    conn->peer_known = mf_addr_from_sockaddr((const struct sockaddr *)&addr, &conn->peer);
    const struct mf_routes *routes = conn->loop->routes;
    conn->proxy_pending = conn->peer_known && routes != NULL
                          && mf_proxy_trusted(routes->proxies, routes->proxy_count, &conn->peer);
}

void mf_conn_accept(struct mf_front_loop *loop, int fd)
{
    (void)pthread_once(&settings_once, init_settings); /* cannot fail with a valid once */
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        mf_warn("setsockopt(%d, TCP_NODELAY) failed: %s", fd, strerror(errno)); /* slower, still correct */
    struct mf_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        mf_warn("calloc(connection) failed: %s", strerror(errno));
        (void)close(fd); /* refused for want of memory; its close error adds nothing */
        return;
    }
    conn->watch = (struct mf_front_watch){.fd = fd, .ready = conn_ready};
    conn->loop = loop;
    peer_name(conn);
    conn->fresh = true;
    conn->readable = true; /* bytes may have come with the connection */
    llhttp_init(&conn->parser, HTTP_REQUEST, &settings);
    conn->parser.data = conn;
    if (!mf_front_watch_add(loop, &conn->watch, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)) {
        mf_warn_last();
        (void)close(fd); /* as above */
        free(conn);
        return;
    }
    loop->conns++;
    mf_timer_arm(loop, &conn->timer, MF_TIMER_HEADER);
    mf_conn_run(conn); /* bytes may have arrived with the connection */
}

void mf_conn_timed_out(struct mf_timer *timer)
{
    struct mf_conn *conn = (struct mf_conn *)((char *)timer - offsetof(struct mf_conn, timer));
    if (conn->dead)
        return;
    if (timer->kind == MF_TIMER_LINGER || (!conn->parsing && timer->kind != MF_TIMER_BODY)) {
        proxy_cut_short(conn, "the header timeout");
        conn_close(conn); /* idle, or never said anything: no answer is owed */
        return;
    }
    mf_timer_arm(conn->loop, timer, MF_TIMER_NONE);
    conn_refuse(conn, 408, refusal_text(408));
    mf_conn_run(conn);
}

void mf_conn_close_idle(struct mf_front_loop *loop)
{
    static const enum mf_timer_kind idle_kinds[] = {MF_TIMER_IDLE, MF_TIMER_HEADER};
    for (size_t k = 0; k < sizeof(idle_kinds) / sizeof(idle_kinds[0]); k++) {
        struct mf_timer *timer = loop->timers[idle_kinds[k]].first;
        while (timer != NULL) {
            struct mf_timer *next = timer->next; /* closing disarms it */
            struct mf_conn *conn = (struct mf_conn *)((char *)timer - offsetof(struct mf_conn, timer));
            /* Idle, or in the middle of its first head: nothing was handed
             * to a program yet, and a head may take header_timeout_ms. */
            bool mid_head = conn->first != NULL && conn->first == conn->parsing && !conn->parsing->head_done;
            if (!conn->dead && (conn->first == NULL || mid_head) && unsent(conn) == 0)
                conn_close(conn);
            timer = next;
        }
    }
}

void mf_conn_free_dead(struct mf_front_loop *loop)
{
    while (loop->dead != NULL) {
        struct mf_conn *conn = loop->dead;
        loop->dead = conn->next_dead;
        if (!conn->again) /* else mf_conn_run_again frees it */
            free(conn);
    }
}

void mf_conn_run_again(struct mf_front_loop *loop)
{
    struct mf_conn *conn = loop->again;
    loop->again = NULL;
    while (conn != NULL) {
        struct mf_conn *next = conn->next_again;
        conn->again = false;
        if (conn->dead)
            free(conn);
        else
            mf_conn_run(conn);
        conn = next;
    }
}

void mf_conn_head_done(struct mf_conn *conn, bool has_body)
{
    conn->parsing->arrived_us = mf_monotonic_us(); /* the backend's deadline counts from here */
    if (has_body)
        mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_BODY);
    if (conn->parsing->want_continue)
        conn_flush(conn);
}

