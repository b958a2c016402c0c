/* The front end's log lines; see front_log.h. */
#include "front/front_log.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"

static bool log_json;

/* A line, cut short rather than split: the target is the only long part. */
/* A line, cut short rather than split. */
#define LINE_MAX_BYTES 2048

struct line {
    char buf[LINE_MAX_BYTES];
    size_t len;
};

static void add(struct line *l, const char *data, size_t len)
{
    if (len > sizeof(l->buf) - 1 - l->len)
        len = sizeof(l->buf) - 1 - l->len;
    memcpy(l->buf + l->len, data, len);
    l->len += len;
}

static void addf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(struct line *l, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        add(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Escapes as logs.py does: quote, backslash and control bytes, so that a
 * client's bytes cannot forge a line; bytes over 0x7e as \xNN (JSON \u00NN). */
static void add_escaped(struct line *l, const char *s, size_t len, bool json)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '\\': add(l, "\\\\", 2); break;
        case '"': add(l, "\\\"", 2); break;
        case '\n': add(l, "\\n", 2); break;
        case '\t': add(l, "\\t", 2); break;
        case '\r': add(l, "\\r", 2); break;
        default:
            if (c < 0x20 || c >= 0x7f)
                addf(l, json ? "\\u%04x" : "\\x%02x", c);
            else
                add(l, (const char *)&c, 1);
        }
    }
}

/* logfmt: bare when nothing needs quoting, as logs.py's _quote. */
static void add_logfmt_value(struct line *l, const char *s, size_t len)
{
    bool bare = len > 0;
    for (size_t i = 0; i < len && bare; i++) {
        unsigned char c = (unsigned char)s[i];
        bare = c > 0x20 && c < 0x7f && c != '"' && c != '=' && c != '\\';
    }
    if (bare) {
        add(l, s, len);
        return;
    }
    add(l, "\"", 1);
    add_escaped(l, s, len, false);
    add(l, "\"", 1);
}

/* A text field and its separator, in the line's format; nothing if empty. */
static void add_text_field(struct line *l, const char *name, const char *value, size_t len)
{
    if (value == NULL || len == 0)
        return;
    if (log_json) {
        addf(l, "\"%s\": \"", name);
        add_escaped(l, value, len, true);
        add(l, "\", ", 3);
    } else {
        addf(l, "%s=", name);
        add_logfmt_value(l, value, len);
        add(l, " ", 1);
    }
}

static void timestamp(char *out, size_t cap)
{
    struct timespec now;
    struct tm tm;
    char stamp[32];
    (void)clock_gettime(CLOCK_REALTIME, &now); /* cannot fail for CLOCK_REALTIME */
    (void)gmtime_r(&now.tv_sec, &tm);
    (void)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    (void)snprintf(out, cap, "%s.%03ldZ", stamp, (long)(now.tv_nsec / 1000000) % 1000);
}

/* The fields of a line besides its level, logger and message. */
struct fields {
    const char *tenant;
    size_t tenant_len;
    uint64_t req;
    const char *ms;
    const char *client;
    size_t client_len;
};

static void vlog(const char *level, const char *logger, const struct fields *f, const char *fmt, va_list ap)
{
    char ts[64];
    timestamp(ts, sizeof(ts));
    struct line msg = {.len = 0};
    int n = vsnprintf(msg.buf, sizeof(msg.buf) - 1, fmt, ap);
    msg.len = n < 0 ? 0 : (size_t)n < sizeof(msg.buf) - 1 ? (size_t)n : sizeof(msg.buf) - 2;
    struct line l = {.len = 0};
    if (log_json) {
        addf(&l, "{\"ts\": \"%s\", \"level\": \"%s\", \"logger\": \"%s\", ", ts, level, logger);
        add_text_field(&l, "tenant", f->tenant, f->tenant_len);
        if (f->req != 0)
            addf(&l, "\"req\": %" PRIu64 ", ", f->req);
        if (f->ms != NULL)
            addf(&l, "\"ms\": %s, ", f->ms);
        add_text_field(&l, "client", f->client, f->client_len);
        add(&l, "\"msg\": \"", 8);
        add_escaped(&l, msg.buf, msg.len, true);
        add(&l, "\"}", 2);
    } else {
        addf(&l, "ts=%s level=%s logger=%s ", ts, level, logger);
        add_text_field(&l, "tenant", f->tenant, f->tenant_len);
        if (f->req != 0)
            addf(&l, "req=%" PRIu64 " ", f->req);
        if (f->ms != NULL)
            addf(&l, "ms=%s ", f->ms);
        add_text_field(&l, "client", f->client, f->client_len);
        add(&l, "msg=", 4);
        add_logfmt_value(&l, msg.buf, msg.len);
    }
    l.buf[l.len++] = '\n'; /* add() kept a byte for it */
    _Static_assert(LINE_MAX_BYTES <= PIPE_BUF, "one write per line stays atomic");
    if (write(STDERR_FILENO, l.buf, l.len) < 0) {
        /* Nowhere left to say so: stderr is the log. */
    }
}

void mf_front_log(const char *level, const char *logger, const char *tenant, size_t tenant_len, uint64_t req,
                  const char *ms, const char *fmt, ...)
{
    struct fields f = {.tenant = tenant, .tenant_len = tenant_len, .req = req, .ms = ms};
    va_list ap;
    va_start(ap, fmt);
    vlog(level, logger, &f, fmt, ap);
    va_end(ap);
}

void mf_front_access_log(const char *tenant, size_t tenant_len, uint64_t req, const char *ms, const char *client,
                         size_t client_len, const char *fmt, ...)
{
    struct fields f = {.tenant = tenant, .tenant_len = tenant_len, .req = req, .ms = ms, .client = client,
                       .client_len = client_len};
    va_list ap;
    va_start(ap, fmt);
    vlog("info", "mayflyd.access", &f, fmt, ap);
    va_end(ap);
}

static void warning_line(const char *text)
{
    mf_front_log("warning", "mayflyd.front", NULL, 0, 0, NULL, "%s", text);
}

void mf_front_log_init(bool json)
{
    log_json = json;
    mf_log_set_sink(warning_line);
}

void mf_front_limit_hit(struct mf_metrics_record *metrics, enum mf_metrics_limit which, const char *tenant,
                        size_t tenant_len, uint64_t req, const char *detail)
{
    static const char *const names[MF_METRICS_LIMITS] = {
        [MF_METRICS_LIMIT_MAX_BODY] = "max_body", [MF_METRICS_LIMIT_REQUEST_TIMEOUT] = "request_timeout_ms",
        [MF_METRICS_LIMIT_CONCURRENCY] = "concurrency", [MF_METRICS_LIMIT_REQUEST_CPU] = "request_cpu_ms",
        [MF_METRICS_LIMIT_MEMORY] = "memory", [MF_METRICS_LIMIT_MAX_RESPONSE] = "max_response",
        [MF_METRICS_LIMIT_QUEUE] = "queue", [MF_METRICS_LIMIT_RESERVED] = "reserved"};
    mf_metrics_limit(metrics, which);
    mf_front_log("warning", "mayflyd.tenant", tenant, tenant_len, req, NULL, "limit hit: %s (%s)",
                 (unsigned)which < MF_METRICS_LIMITS ? names[which] : "?", detail);
}
