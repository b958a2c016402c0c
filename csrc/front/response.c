/* Writing an answer; see response.h. */
#include "front/response.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"

/* The connection's, not the content's: the program cannot set them. */
static const char *const hop_by_hop[] = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
    "trailer", "upgrade", "content-length",
    "x-request-id", /* ours: one per answer */
};

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool valid_header(const struct mf_front_header *h)
{
    if (h->name_len == 0)
        return false;
    for (size_t i = 0; i < h->name_len; i++)
        if (!is_tchar((unsigned char)h->name[i]))
            return false;
    for (size_t i = 0; i < h->value_len; i++) {
        unsigned char c = (unsigned char)h->value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false; /* CR or LF would split the answer; NUL and the rest are no better */
    }
    return true;
}

static bool is_hop_by_hop(const struct mf_front_header *h)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (h->name_len == strlen(hop_by_hop[i]) && strncasecmp(h->name, hop_by_hop[i], h->name_len) == 0)
            return true;
    return false;
}

/* An answer being rendered into one malloc'd buffer of known size. */
struct writer {
    char *buf;
    size_t len, cap;
};

static void put(struct writer *w, const char *data, size_t len)
{
    memcpy(w->buf + w->len, data, len); /* cap was computed beforehand */
    w->len += len;
}

static void putf(struct writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        w->len += (size_t)n < w->cap - w->len ? (size_t)n : w->cap - w->len - 1;
}

/* The front end's own lines: our id, the length (a stream's chunked
 * coding, or none: HTTP/1.0 reads to the close), the connection's fate. */
#define OWN_LINES_MAX 160

static void put_own_lines(struct writer *w, const struct mf_front_ticket *t, int status, size_t body_len)
{
    putf(w, "X-Request-Id: %" PRIu64 "\r\n", t->id);
    if (status != 204 && status != 304 && !t->streaming)
        putf(w, "Content-Length: %zu\r\n", body_len);
    else if (status != 204 && status != 304 && !t->http10)
        put(w, "Transfer-Encoding: chunked\r\n", 28);
    if (t->closes)
        put(w, "Connection: close\r\n", 19);
    else if (t->http10)
        put(w, "Connection: keep-alive\r\n", 24);
    put(w, "\r\n", 2);
}

static bool finish(struct mf_front_ticket *t, struct writer *w, int status, bool by_program)
{
    free(t->out);
    t->out = w->buf;
    t->out_len = w->len;
    t->out_cap = w->cap;
    t->answered = true;
    mf_ticket_answered(t, status, by_program);
    return true;
}

bool mf_render_daemon(struct mf_front_ticket *t, int status, const char *why, const char *extra_header,
                      bool closes)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "%d %s%s%s\n", status, reason(status), why ? ": " : "", why ? why : "");
    size_t body_len = n < 0 ? 0 : (size_t)n < sizeof(body) ? (size_t)n : sizeof(body) - 1;
    t->closes = t->closes || closes;
    t->streaming = false; /* a stream's invalid head: this answers whole */
    struct writer w = {.cap = 128 + (extra_header ? strlen(extra_header) : 0) + OWN_LINES_MAX + body_len};
    w.buf = malloc(w.cap);
    if (w.buf == NULL)
        return mf_err("malloc(%zu) for an answer", w.cap);
    putf(&w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n", status, reason(status));
    if (extra_header != NULL)
        putf(&w, "%s\r\n", extra_header);
    put_own_lines(&w, t, status, body_len);
    if (!t->head_only)
        put(&w, body, body_len);
    return finish(t, &w, status, false);
}

/* The head of a streamed answer, left in t->out for the stream to go on. */
static bool stream_head(struct mf_front_ticket *t, struct writer *w, int status)
{
    free(t->out);
    t->out = w->buf;
    t->out_len = w->len;
    t->out_cap = w->cap;
    t->status = status;
    return true;
}

bool mf_render_stream_head(struct mf_front_ticket *t, const struct mf_front_response *r)
{
    bool bodyless = t->head_only || r->status == 204 || r->status == 304;
    /* Decided before the head is rendered: its lines say how the body ends. */
    t->streaming = true;
    t->bodyless = bodyless;
    t->chunked = !bodyless && !t->http10;
    t->closes = t->closes || (!bodyless && t->http10);
    struct mf_front_response head = *r;
    head.body_len = 0;
    if (!mf_render_answer(t, &head)) {
        t->streaming = false;
        return false;
    }
    if (t->answered) /* a 502 for an invalid head, rendered whole */
        t->streaming = false;
    return true;
}

bool mf_render_answer(struct mf_front_ticket *t, const struct mf_front_response *r)
{
    if (r == NULL)
        return mf_render_daemon(t, 502, "the program ended without answering", NULL, false);
    if (r->status < 200 || r->status > 599) {
        mf_warn("request %" PRIu64 ": the program answered status %d", t->id, r->status);
        return mf_render_daemon(t, 502, "the program sent an invalid response", NULL, false);
    }
    size_t cap = 64 + OWN_LINES_MAX;
    for (size_t i = 0; i < r->header_count; i++) {
        if (!valid_header(&r->headers[i])) {
            mf_warn("request %" PRIu64 ": the program sent an invalid header", t->id);
            return mf_render_daemon(t, 502, "the program sent an invalid response", NULL, false);
        }
        cap += r->headers[i].name_len + r->headers[i].value_len + 4;
    }
    bool bodyless = t->head_only || r->status == 204 || r->status == 304;
    cap += bodyless ? 0 : r->body_len;
    struct writer w = {.buf = malloc(cap), .cap = cap};
    if (w.buf == NULL)
        return mf_err("malloc(%zu) for an answer", cap);
    putf(&w, "HTTP/1.1 %d %s\r\n", r->status, reason(r->status));
    for (size_t i = 0; i < r->header_count; i++) {
        const struct mf_front_header *h = &r->headers[i];
        if (is_hop_by_hop(h))
            continue;
        put(&w, h->name, h->name_len);
        put(&w, ": ", 2);
        put(&w, h->value, h->value_len);
        put(&w, "\r\n", 2);
    }
    put_own_lines(&w, t, r->status, r->body_len);
    if (t->streaming)
        return stream_head(t, &w, r->status);
    if (!bodyless)
        put(&w, r->body, r->body_len);
    return finish(t, &w, r->status, true);
}
