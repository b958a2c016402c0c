/*
 * Each answer, once rendered: counted in the tenant's metrics, and logged
 * as one access log line when the routing table asks for it (the
 * supervisor's --access-log). The line matches the supervisor's own
 * (daemon/mayflyd/supervisor/logs.py): logger mayflyd.access, level info,
 * msg "<METHOD> <target> <status>", fields tenant, req, ms; logfmt or JSON
 * (--log-format). One write() per line, under PIPE_BUF, so that lines of
 * several loops never interleave.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "front/conn.h"
#include "front/metrics.h"

/* A line, cut short rather than split: the target is the only long part. */
#define LINE_MAX_BYTES 2048
#define TARGET_MAX_BYTES 1024

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

/* Python's str(round(ms, 2)): at most two decimals, at least one. */
static void format_ms(char *out, size_t cap, uint64_t us)
{
    uint64_t hundredths = (us + 5) / 10;
    (void)snprintf(out, cap, "%" PRIu64 ".%02" PRIu64, hundredths / 100, hundredths % 100);
    size_t len = strlen(out);
    if (out[len - 1] == '0')
        out[len - 1] = '\0';
}

static void write_line(const struct mf_front_ticket *t, int status, uint64_t duration_us, bool json)
{
    struct timespec now;
    struct tm tm;
    char ts[64], stamp[32], ms[32];
    (void)clock_gettime(CLOCK_REALTIME, &now); /* cannot fail for CLOCK_REALTIME */
    (void)gmtime_r(&now.tv_sec, &tm);
    (void)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    (void)snprintf(ts, sizeof(ts), "%s.%03ldZ", stamp, (long)(now.tv_nsec / 1000000) % 1000);
    format_ms(ms, sizeof(ms), duration_us);
    /* The message: method, target as sent, status. */
    struct line msg = {.len = 0};
    const char *method = t->buf != NULL ? t->buf : "";
    const char *target = t->buf != NULL ? t->buf + t->url_off : "";
    size_t target_len = t->buf != NULL ? t->url_len : 0;
    add(&msg, method, t->buf != NULL ? t->method_len : 0);
    add(&msg, " ", 1);
    add(&msg, target, target_len < TARGET_MAX_BYTES ? target_len : TARGET_MAX_BYTES);
    addf(&msg, " %d", status);

    struct line l = {.len = 0};
    if (json) {
        addf(&l, "{\"ts\": \"%s\", \"level\": \"info\", \"logger\": \"mayflyd.access\", ", ts);
        if (t->tenant_len > 0) {
            add(&l, "\"tenant\": \"", 11);
            add_escaped(&l, t->tenant, t->tenant_len, true);
            add(&l, "\", ", 3);
        }
        addf(&l, "\"req\": %" PRIu64 ", \"ms\": %s, \"msg\": \"", t->id, ms);
        add_escaped(&l, msg.buf, msg.len, true);
        add(&l, "\"}", 2);
    } else {
        addf(&l, "ts=%s level=info logger=mayflyd.access ", ts);
        if (t->tenant_len > 0) {
            add(&l, "tenant=", 7);
            add_logfmt_value(&l, t->tenant, t->tenant_len);
            add(&l, " ", 1);
        }
        addf(&l, "req=%" PRIu64 " ms=%s msg=", t->id, ms);
        add_logfmt_value(&l, msg.buf, msg.len);
    }
    l.buf[l.len++] = '\n'; /* add() kept a byte for it */
    _Static_assert(LINE_MAX_BYTES <= PIPE_BUF, "one write per line stays atomic");
    if (write(STDERR_FILENO, l.buf, l.len) < 0) {
        /* Nowhere left to say so: stderr is the log. */
    }
}

void mf_ticket_answered(struct mf_front_ticket *t, int status, bool by_program)
{
    uint64_t now = mf_monotonic_us();
    uint64_t since = t->arrived_us != 0 ? t->arrived_us : t->begun_us;
    uint64_t duration_us = now > since ? now - since : 0;
    bool limit_refusal = !by_program && (status == 408 || status == 413 || status == 431);
    if (!by_program && status == 413)
        mf_metrics_limit(t->metrics, MF_METRICS_LIMIT_MAX_BODY);
    else if (!by_program && status == 408)
        mf_metrics_limit(t->metrics, MF_METRICS_LIMIT_REQUEST_TIMEOUT); /* its body came too late */
    mf_metrics_answered(t->metrics, status, duration_us, by_program, limit_refusal);
    struct mf_conn *conn = t->conn;
    if (conn != NULL && conn->loop->routes != NULL && conn->loop->routes->access_log)
        write_line(t, status, duration_us, conn->loop->config->log_json);
}
