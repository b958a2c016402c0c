/*
 * A client connection and its requests (tickets), kept in arrival order:
 * a request may be parsed while earlier ones are with the backend, but the
 * answers leave strictly in order, each when every earlier one has.
 */
#ifndef MAYFLYD_FRONT_CONN_H
#define MAYFLYD_FRONT_CONN_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "front/front.h"
#include "front/loop.h"
#include "front/proxy.h"
#include "wire/front_protocol.h"

struct mf_metrics_record;

/* What the routing table said of a request's Host. */
enum mf_route_outcome {
    MF_ROUTE_NO_TABLE,    /* none received yet (or no supervisor): 503 */
    MF_ROUTE_NO_TENANT,   /* 404 */
    MF_ROUTE_TENANT,      /* a tenant serves it */
};

struct mf_header_pos {
    uint32_t name_off, name_len, value_off, value_len;
};

/* One request, from its first byte to its answer's last. */
struct mf_front_ticket {
    struct mf_front_ticket *next;
    struct mf_conn *conn;     /* NULL once the client is gone */
    uint64_t id;
    bool submitted, answered; /* given to the backend; answer rendered in out */
    bool head_done;           /* past the head: later header callbacks are trailers */
    bool head_only;           /* HEAD: the answer has no body */
    bool keep_alive;          /* the client keeps the connection after this one */
    bool http10;              /* an HTTP/1.0 client: keep-alive must be said */
    bool want_continue;       /* Expect: 100-continue, not yet answered */
    bool closes;              /* the answer ends the connection */
    bool in_value;            /* the parser is in a header value */
    enum mf_route_outcome route; /* decided when the head is complete */
    uint64_t max_body;        /* the tenant's, within --max-body */
    struct mf_route_limits limits;       /* MF_ROUTE_TENANT: the tenant's, kept as routed */
    char tenant[MF_ROUTE_MAX_NAME];
    size_t tenant_len;
    struct mf_metrics_record *metrics;   /* the tenant's record of this loop, or NULL */
    uint64_t begun_us, arrived_us;       /* monotonic: first byte, head complete (0: not yet) */
    char client[48];                     /* the connection's peer, as text */
    size_t client_len;
    /* The head as sent: method, target, header names and values, then the
     * normalised host, packed in buf; positions are offsets (buf grows). */
    char *buf;
    size_t buf_len, buf_cap;
    uint32_t method_len, url_off, url_len, host_off, host_len;
    struct mf_header_pos pos[MF_FRONT_MAX_HEADERS];
    size_t header_count;
    char *body;
    size_t body_len, body_cap;
    struct mf_front_request request;   /* what submit() sees; points into buf */
    struct mf_front_header *headers;
    char *out;                         /* the rendered answer (streaming: what is not yet the connection's) */
    size_t out_len, out_cap;
    /* A streamed answer (stream.c): its head rendered, its body coming. */
    bool streaming;           /* head rendered; answered once it ends or is cut */
    bool chunked;             /* its body goes in chunks (an HTTP/1.1 answer with a body) */
    bool bodyless;            /* HEAD, 204 or 304: its body is dropped */
    bool cut;                 /* it cannot end: the connection is cut after its output */
    bool paused;              /* the backend was told MF_STREAM_FULL and waits for resume() */
    void *stream_ref;         /* the backend's, for resume() */
    int status;               /* the program's, for the access log at the end */
    uint64_t body_sent;       /* body bytes given to the client's output */
};

struct mf_conn {
    struct mf_front_watch watch; /* first: the loop finds the connection from it */
    struct mf_front_loop *loop;
    struct mf_timer timer;
    llhttp_t parser;
    struct mf_front_ticket *parsing;      /* the request being parsed, if any */
    struct mf_front_ticket *first, *last; /* unanswered or unsent, in order */
    unsigned queued;
    int error_status;         /* why a callback stopped the parser */
    bool fresh;               /* no request yet: its first byte gets the header timeout */
    bool reading_done;        /* no more requests from this client */
    bool close_when_flushed;  /* an answer said Connection: close */
    bool lingering;           /* closed for writing; discarding input until EOF */
    bool in_pump;             /* a completion during parsing must not re-enter */
    bool peer_eof;            /* the client closed its side */
    bool readable;            /* the socket may hold bytes: no short read or EAGAIN since its last event */
    bool broken;              /* a write failed: the client is gone */
    bool cut;                 /* a streamed answer was cut: nothing after it is written */
    bool cut_reset;           /* ... and its body was close-delimited: end with a reset, not a FIN */
    bool dead;                /* closed; freed by the loop after this wake-up */
    struct mf_conn *next_dead;
    bool again;               /* input left after its read budget: runs again next turn */
    struct mf_conn *next_again;
    char in[16 * 1024];       /* read but not yet parsed: in[in_off, in_len) */
    size_t in_off, in_len;
    char byte_before;         /* the stream's byte before in[0] */
    char client[48];          /* the peer's address, as text (empty if unknown); a PROXY header's source */
    size_t client_len;
    struct mf_addr peer;      /* the same, if known, for the trusted_proxies rule */
    bool peer_known;
    bool proxy_pending;       /* a trusted peer's first bytes: a PROXY header may come (proxy.h) */
    char *out;                /* rendered, not yet written: out[out_sent, out_len) */
    size_t out_len, out_sent, out_cap;
};

/* Takes a connected, non-blocking socket; on failure closes it. */
void mf_conn_accept(struct mf_front_loop *loop, int fd);
/* A timer of the connection fired. */
void mf_conn_timed_out(struct mf_timer *timer);
/* Frees the connections closed during this wake-up (an event later in
 * the same batch may still name one). */
void mf_conn_free_dead(struct mf_front_loop *loop);
/* Draining: closes every connection with nothing in progress (no request
 * handed to the backend, no body being read, nothing left to write). */
void mf_conn_close_idle(struct mf_front_loop *loop);
/* Gives the connections that used up their read budget their next turn. */
void mf_conn_run_again(struct mf_front_loop *loop);

/* Bytes rendered for the client but not yet written. */
size_t mf_conn_unsent(const struct mf_conn *conn);

/* Makes *buf hold at least need bytes (doubling from first); false if
 * memory runs out (recorded). */
bool mf_reserve(char **buf, size_t *cap, size_t need, size_t first);

/* Does all that is due on a connection: write answers in order, read and
 * parse more, close or set its deadline. Not re-entered: called during
 * parsing (a backend answering in submit()), it returns at once and the
 * running call writes the answer. The connection may be closed on return. */
void mf_conn_run(struct mf_conn *conn);

/* ticket.c: tickets. */
void mf_ticket_free(struct mf_front_ticket *ticket);
/* Frees what only the request needed, once it is answered or refused. */
void mf_ticket_free_request(struct mf_front_ticket *ticket);

/* For request.c's parser callbacks (ticket.c, but head_done in conn.c). */
bool mf_conn_request_begin(struct mf_conn *conn);
void mf_conn_request_end(struct mf_conn *conn);
void mf_conn_head_done(struct mf_conn *conn, bool has_body);

/* access_log.c: counts an answer just rendered into the tenant's metrics
 * and, if the table asks for it, writes its access log line. */
void mf_ticket_answered(struct mf_front_ticket *ticket, int status, bool by_program);

#endif /* MAYFLYD_FRONT_CONN_H */
