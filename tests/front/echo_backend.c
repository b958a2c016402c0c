/*
 * A test-only backend for mayflyd-front (never part of the installed
 * executable): answers every request with JSON of what it received. The
 * path selects a knob that exercises the front end's answer paths:
 *   /delay/MS/...    the same JSON, MS milliseconds later (timerfd on the loop)
 *   /status/N        status N (1xx and out-of-range ones too)
 *   /bad-value/HH    a header value with the byte 0xHH in it
 *   /bad-name        a header name that is not a token
 *   /hop             every hop-by-hop header, and X-Kept
 *   /big/N           a body of N bytes
 *   /fail            no answer at all (the backend failed)
 *   /__try_unshare   unshare(CLONE_NEWNS), answering its errno (0: it worked)
 *   /__try_open      open("/etc/passwd"), answering its errno (0: it worked)
 * The last two show the front end's seccomp filter at work (test_front_walls).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "front/front.h"

struct buf {
    char *data;
    size_t len, cap;
};

static void add(struct buf *b, const char *data, size_t len)
{
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2 + 256;
        b->data = realloc(b->data, b->cap);
        if (b->data == NULL)
            abort(); /* a test backend: fail loudly */
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void adds(struct buf *b, const char *s)
{
    add(b, s, strlen(s));
}

/* A JSON string; bytes over 0x7f as \u00XX (the test reads it as latin-1). */
static void add_json(struct buf *b, const char *s, size_t len)
{
    adds(b, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            adds(b, esc);
        } else {
            add(b, (const char *)&c, 1);
        }
    }
    adds(b, "\"");
}

static struct buf describe(const struct mf_front_request *r)
{
    struct buf b = {0};
    char num[64];
    snprintf(num, sizeof(num), "{\"id\": %" PRIu64 ", \"method\": ", r->id);
    adds(&b, num);
    add_json(&b, r->method, r->method_len);
    adds(&b, ", \"path\": ");
    add_json(&b, r->path, r->path_len);
    adds(&b, ", \"query\": ");
    add_json(&b, r->query, r->query_len);
    adds(&b, ", \"host\": ");
    add_json(&b, r->host, r->host_len);
    adds(&b, ", \"headers\": [");
    for (size_t i = 0; i < r->header_count; i++) {
        adds(&b, i ? ", [" : "[");
        add_json(&b, r->headers[i].name, r->headers[i].name_len);
        adds(&b, ", ");
        add_json(&b, r->headers[i].value, r->headers[i].value_len);
        adds(&b, "]");
    }
    snprintf(num, sizeof(num), "], \"body_length\": %zu, \"body\": ", r->body_len);
    adds(&b, num);
    add_json(&b, r->body, r->body_len < 65536 ? r->body_len : 0);
    adds(&b, "}");
    return b;
}

static bool path_starts(const struct mf_front_request *r, const char *prefix)
{
    size_t n = strlen(prefix);
    return r->path_len >= n && memcmp(r->path, prefix, n) == 0;
}

static long path_number(const struct mf_front_request *r, const char *prefix)
{
    char digits[32] = {0};
    size_t n = strlen(prefix), len = r->path_len - n < 31 ? r->path_len - n : 31;
    memcpy(digits, r->path + n, len);
    return strtol(digits, NULL, path_starts(r, "/bad-value/") ? 16 : 10);
}

static void answer(struct mf_front_ticket *ticket, const struct mf_front_request *r)
{
    struct mf_front_header headers[16];
    struct mf_front_response resp = {.status = 200, .headers = headers};
    struct buf body = {0};
    char bad[4] = "a?b";
#define HEADER(n, v) headers[resp.header_count++] = (struct mf_front_header){n, strlen(n), v, strlen(v)}
    if (path_starts(r, "/fail")) {
        mf_front_complete(ticket, NULL);
        return;
    } else if (path_starts(r, "/__try_unshare") || path_starts(r, "/__try_open")) {
        int fd = -1, rc = path_starts(r, "/__try_unshare") ? unshare(CLONE_NEWNS)
                                                          : (fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC));
        char text[32];
        snprintf(text, sizeof(text), "%d", rc < 0 ? errno : 0);
        if (fd >= 0)
            close(fd);
        adds(&body, text);
    } else if (path_starts(r, "/status/")) {
        resp.status = (int)path_number(r, "/status/");
        adds(&body, "status");
    } else if (path_starts(r, "/bad-value/")) {
        bad[1] = (char)path_number(r, "/bad-value/");
        headers[resp.header_count++] = (struct mf_front_header){"X-Bad", 5, bad, 3};
    } else if (path_starts(r, "/bad-name")) {
        HEADER("Bad Name", "x");
    } else if (path_starts(r, "/hop")) {
        HEADER("Connection", "close");
        HEADER("Keep-Alive", "timeout=1");
        HEADER("Proxy-Connection", "close");
        HEADER("Transfer-Encoding", "chunked");
        HEADER("TE", "trailers");
        HEADER("Trailer", "X-T");
        HEADER("Upgrade", "websocket");
        HEADER("Content-Length", "999");
        HEADER("X-Request-Id", "from-the-program");
        HEADER("X-Kept", "yes");
        adds(&body, "hop");
    } else if (path_starts(r, "/big/")) {
        long n = path_number(r, "/big/");
        body.data = malloc((size_t)n + 1);
        if (body.data == NULL)
            abort();
        memset(body.data, 'x', (size_t)n);
        body.len = (size_t)n;
    } else {
        HEADER("Content-Type", "application/json");
        body = describe(r);
    }
    resp.body = body.data ? body.data : "";
    resp.body_len = body.len;
    mf_front_complete(ticket, &resp);
    free(body.data);
}

struct delayed {
    struct mf_front_watch watch;
    struct mf_front_loop *loop;
    struct mf_front_ticket *ticket;
    const struct mf_front_request *request;
};

static void delay_done(struct mf_front_watch *watch, uint32_t events)
{
    struct delayed *d = (struct delayed *)watch;
    (void)events;
    if (!mf_front_watch_remove(d->loop, watch))
        abort();
    close(watch->fd);
    answer(d->ticket, d->request);
    free(d);
}

static void submit(void *ctx, struct mf_front_loop *loop, struct mf_front_ticket *ticket,
                   const struct mf_front_request *r)
{
    (void)ctx;
    if (!path_starts(r, "/delay/")) {
        answer(ticket, r);
        return;
    }
    long ms = path_number(r, "/delay/");
    struct delayed *d = calloc(1, sizeof(*d));
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec when = {.it_value = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 + 1}};
    if (d == NULL || fd < 0 || timerfd_settime(fd, 0, &when, NULL) < 0)
        abort();
    *d = (struct delayed){.watch = {.fd = fd, .ready = delay_done}, .loop = loop, .ticket = ticket, .request = r};
    if (!mf_front_watch_add(loop, &d->watch, EPOLLIN))
        abort();
}

int main(int argc, char **argv)
{
    static const struct mf_front_backend echo = {.submit = submit};
    return mf_front_main(argc, argv, &echo);
}
