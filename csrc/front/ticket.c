/*
 * A request's ticket, from its first byte to its answer: created when the
 * parser begins a message, handed to the backend when it ends, answered by
 * mf_front_complete(). A ticket whose client left stays with the backend
 * until then (its request memory too), and is freed there.
 */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "front/conn.h"
#include "front/metrics.h"
#include "front/request.h"
#include "front/response.h"

bool mf_reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return true;
    size_t grown_cap = *cap ? *cap : first;
    while (grown_cap < need)
        grown_cap *= 2;
    char *grown = realloc(*buf, grown_cap);
    if (grown == NULL)
        return mf_err("realloc(%zu)", grown_cap);
    *buf = grown;
    *cap = grown_cap;
    return true;
}

void mf_ticket_free_request(struct mf_front_ticket *t)
{
    free(t->buf);
    free(t->body);
    free(t->headers);
    t->buf = t->body = NULL;
    t->headers = NULL;
}

void mf_ticket_free(struct mf_front_ticket *t)
{
    mf_ticket_free_request(t);
    free(t->out);
    free(t);
}

bool mf_conn_request_begin(struct mf_conn *conn)
{
    struct mf_front_ticket *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return mf_err("calloc(request)");
    t->conn = conn;
    t->id = mf_next_request_id();
    t->begun_us = mf_monotonic_us();
    memcpy(t->client, conn->client, conn->client_len);
    t->client_len = conn->client_len;
    if (conn->last != NULL)
        conn->last->next = t;
    else
        conn->first = t;
    conn->last = t;
    conn->queued++;
    conn->parsing = t;
    conn->fresh = false;
    conn->error_status = 0;
    mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_HEADER);
    return true;
}

void mf_conn_request_end(struct mf_conn *conn)
{
    struct mf_front_ticket *t = conn->parsing;
    conn->parsing = NULL;
    t->want_continue = false;
    t->http10 = conn->parser.http_major == 1 && conn->parser.http_minor == 0;
    if (!t->keep_alive || mf_loop_leaving()) {
        conn->reading_done = true; /* llhttp refuses bytes after a closing request anyway */
        t->closes = true;
    }
    mf_timer_arm(conn->loop, &conn->timer, MF_TIMER_NONE);
    const struct mf_front_backend *backend = conn->loop->backend;
    if (!mf_request_finish(t)) {
        mf_warn_last();
        if (!mf_render_daemon(t, 503, "out of memory", "Retry-After: 1", false))
            conn->broken = true;
        mf_ticket_free_request(t);
        return;
    }
    /* No hosts: a routed tenant's program cannot be running. */
    if (t->route == MF_ROUTE_NO_TENANT || backend == NULL) {
        bool ok = t->route == MF_ROUTE_NO_TENANT
                      ? mf_render_daemon(t, 404, "no tenant serves this host", NULL, false)
                      : mf_render_daemon(t, 503, t->route == MF_ROUTE_TENANT ? "the tenant's program is not running"
                                                                             : "no tenant is connected",
                                         "Retry-After: 1", false);
        if (!ok)
            conn->broken = true;
        mf_ticket_free_request(t); /* after: the access log line names it */
        return;
    }
    t->submitted = true;
    mf_metrics_in_flight(t->metrics, 1);
    backend->submit(backend->ctx, conn->loop, t, &t->request);
}

/* Renders the answer (a program's, or the daemon's when response is NULL
 * and status is set) and releases the ticket. */
static void complete(struct mf_front_ticket *t, const struct mf_front_response *response, int status,
                     const char *why, const char *extra_header)
{
    struct mf_conn *conn = t->conn;
    if (t->streaming) {
        /* Its head is out: no other answer can follow it, only the cut. */
        mf_front_stream_cut(t);
        return;
    }
    mf_metrics_in_flight(t->metrics, -1);
    if (conn == NULL) {
        mf_ticket_free(t);
        return;
    }
    /* Rendered before the request is freed: the answer may point into it. */
    bool ok = status != 0 ? mf_render_daemon(t, status, why, extra_header, false) : mf_render_answer(t, response);
    if (!ok) {
        mf_warn_last();
        conn->broken = true;
    }
    mf_ticket_free_request(t);
    mf_conn_run(conn);
}

void mf_front_complete(struct mf_front_ticket *t, const struct mf_front_response *response)
{
    complete(t, response, 0, NULL, NULL);
}

void mf_front_fail(struct mf_front_ticket *t, int status, const char *why, const char *extra_header)
{
    complete(t, NULL, status, why, extra_header);
}

bool mf_front_ticket_waited_for(const struct mf_front_ticket *t)
{
    return t->conn != NULL;
}
