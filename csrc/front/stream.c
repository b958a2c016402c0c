/*
 * A streamed answer (front.h, mf_front_stream_*): the program's head at
 * once, then its body as the backend hands it over, in chunks for an
 * HTTP/1.1 client and as it is for HTTP/1.0 (which reads to the close).
 * The ticket holds what is not yet the connection's; the connection
 * takes it when every earlier answer is out (conn.c's conn_flush), so
 * pipelined answers keep their order. The backend is told to stop when
 * the client's unsent output passes MF_STREAM_HIGH and resumed when it
 * drains (conn.c), so a slow client never makes us hold a whole stream.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "front/conn.h"
#include "front/metrics.h"
#include "front/response.h"

/* What the client has yet to take of this answer: its own part, and the
 * connection's output once it is the first. */
static size_t backlog(const struct mf_front_ticket *t)
{
    return t->out_len + (t->conn->first == t ? mf_conn_unsent(t->conn) : 0);
}

static bool out_add(struct mf_front_ticket *t, const void *data, size_t len)
{
    MF_TRY(mf_reserve(&t->out, &t->out_cap, t->out_len + len, 4096));
    memcpy(t->out + t->out_len, data, len);
    t->out_len += len;
    return true;
}

/* Lets go of a ticket whose client left; the backend stops. */
static enum mf_stream gone(struct mf_front_ticket *t)
{
    mf_metrics_in_flight(t->metrics, -1);
    mf_ticket_free(t);
    return MF_STREAM_GONE;
}

/* Writes what is due on the connection, then says how the stream stands. */
static enum mf_stream go_on(struct mf_front_ticket *t)
{
    mf_conn_run(t->conn); /* may close it: the client left, or a write failed */
    if (t->conn == NULL)
        return gone(t);
    if (backlog(t) <= MF_STREAM_HIGH)
        return MF_STREAM_MORE;
    t->paused = true;
    return MF_STREAM_FULL;
}

/* The answer is over (ended or cut): counted and logged, its request let go of. */
static void over(struct mf_front_ticket *t)
{
    struct mf_conn *conn = t->conn;
    t->answered = true;
    t->paused = false;
    mf_ticket_answered(t, t->status, true);
    mf_metrics_in_flight(t->metrics, -1);
    mf_ticket_free_request(t);
    mf_conn_run(conn);
}

enum mf_stream mf_front_stream_begin(struct mf_front_ticket *t, const struct mf_front_response *response, void *ref)
{
    struct mf_conn *conn = t->conn;
    if (conn == NULL)
        return gone(t);
    bool ok = mf_render_stream_head(t, response);
    if (ok && t->streaming) {
        t->stream_ref = ref;
        return go_on(t);
    }
    /* Out of memory, or a 502 rendered whole for an invalid head. */
    if (!ok) {
        mf_warn_last();
        conn->broken = true;
    }
    mf_metrics_in_flight(t->metrics, -1);
    mf_ticket_free_request(t);
    mf_conn_run(conn);
    return MF_STREAM_GONE;
}

enum mf_stream mf_front_stream_write(struct mf_front_ticket *t, const void *data, size_t len)
{
    if (t->conn == NULL)
        return gone(t);
    if (t->bodyless || len == 0)
        return go_on(t);
    char size[24];
    int n = t->chunked ? snprintf(size, sizeof(size), "%zx\r\n", len) : 0;
    if ((n > 0 && !out_add(t, size, (size_t)n)) || !out_add(t, data, len) || (t->chunked && !out_add(t, "\r\n", 2))) {
        mf_warn_last();
        t->conn->broken = true; /* out of memory: the client only sees the close */
    } else {
        t->body_sent += len;
    }
    return go_on(t);
}

void mf_front_stream_end(struct mf_front_ticket *t)
{
    if (t->conn == NULL) {
        (void)gone(t);
        return;
    }
    if (t->chunked && !out_add(t, "0\r\n\r\n", 5)) {
        mf_warn_last();
        t->conn->broken = true;
    }
    over(t);
}

void mf_front_stream_cut(struct mf_front_ticket *t)
{
    if (t->conn == NULL) {
        (void)gone(t);
        return;
    }
    t->cut = true;
    t->closes = true;
    over(t);
}
