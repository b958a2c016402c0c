/*
 * Each answer, once rendered: counted in the tenant's metrics, and logged
 * as one access log line when the routing table asks for it (the
 * supervisor's --access-log). The line matches the supervisor's own
 * (daemon/mayflyd/supervisor/logs.py): logger mayflyd.access, level info,
 * msg "<METHOD> <target> <status>", fields tenant, req, ms, client; logfmt or JSON
 * (--log-format). One write() per line, under PIPE_BUF, so that lines of
 * several loops never interleave.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "front/conn.h"
#include "front/front_log.h"
#include "front/metrics.h"

/* The target is the only long part of an access line: cut short, not split. */
#define TARGET_MAX_BYTES 1024

/* Python's str(round(ms, 2)): at most two decimals, at least one. */
static void format_ms(char *out, size_t cap, uint64_t us)
{
    uint64_t hundredths = (us + 5) / 10;
    (void)snprintf(out, cap, "%" PRIu64 ".%02" PRIu64, hundredths / 100, hundredths % 100);
    size_t len = strlen(out);
    if (out[len - 1] == '0')
        out[len - 1] = '\0';
}

static void write_line(const struct mf_front_ticket *t, int status, uint64_t duration_us)
{
    char ms[32];
    format_ms(ms, sizeof(ms), duration_us);
    const char *method = t->buf != NULL ? t->buf : "";
    const char *target = t->buf != NULL ? t->buf + t->url_off : "";
    size_t target_len = t->buf != NULL ? t->url_len : 0;
    /* A stream's bytes are known at its end only: said after the status. */
    char streamed[64] = "";
    if (t->streaming)
        (void)snprintf(streamed, sizeof(streamed), " (streamed, %s%" PRIu64 " bytes)", t->cut ? "cut after " : "",
                       t->body_sent);
    /* The message: method, target as sent (cut short rather than split), status. */
    mf_front_access_log(t->tenant, t->tenant_len, t->id, ms, t->client, t->client_len, "%.*s %.*s %d%s",
                 (int)(t->buf != NULL ? t->method_len : 0), method,
                 (int)(target_len < TARGET_MAX_BYTES ? target_len : TARGET_MAX_BYTES), target, status, streamed);
}

void mf_ticket_answered(struct mf_front_ticket *t, int status, bool by_program)
{
    uint64_t now = mf_monotonic_us();
    uint64_t since = t->arrived_us != 0 ? t->arrived_us : t->begun_us;
    uint64_t duration_us = now > since ? now - since : 0;
    bool limit_refusal = !by_program && (status == 408 || status == 413 || status == 431);
    if (!by_program && status == 413)
        mf_front_limit_hit(t->metrics, MF_METRICS_LIMIT_MAX_BODY, t->tenant, t->tenant_len, t->id,
                           "request body over the tenant's max_body");
    else if (!by_program && status == 408 && t->tenant_len > 0)
        mf_front_limit_hit(t->metrics, MF_METRICS_LIMIT_REQUEST_TIMEOUT, t->tenant, t->tenant_len, t->id,
                           "the client did not send its body in time");
    mf_metrics_answered(t->metrics, status, duration_us, by_program, limit_refusal);
    struct mf_conn *conn = t->conn;
    if (conn != NULL && conn->loop->routes != NULL && conn->loop->routes->access_log)
        write_line(t, status, duration_us);
}
