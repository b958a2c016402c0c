/*
 * mayflyd-front: the HTTP front end's public face. A backend (the sandbox
 * hosts, or a test's echo) receives each valid request through submit() and
 * answers it later with mf_front_complete(); everything HTTP stays here.
 */
#ifndef MAYFLYD_FRONT_H
#define MAYFLYD_FRONT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits of a request head (RFC 9112 leaves them to the server). */
#define MF_FRONT_MAX_URL (8 * 1024)     /* request target: over it, 414 */
#define MF_FRONT_MAX_HEAD (64 * 1024)   /* whole head: over it, 431 */
#define MF_FRONT_MAX_HEADERS 256        /* header lines: over it, 431 */

/* One configuration, parsed once, read by every loop. */
struct mf_front_config {
    const char *listen_host;
    uint16_t listen_port;
    int listen_fd;              /* >= 0: an inherited listening socket, instead of listen_host */
    int control_fd;             /* >= 0: the supervisor's SOCK_SEQPACKET channel */
    int metrics_fd;             /* >= 0: the supervisor's metrics area (wire/front_metrics.h) */
    int seccomp_fd;             /* >= 0: the seccomp filter to load before the loops start (walls.h) */
    bool allow_root;            /* run as root without a filter (tests) */
    bool become_user;           /* --user UID:GID: drop to them at start (started as root) */
    uint32_t uid, gid;
    unsigned threads;
    uint64_t header_timeout_ms; /* first byte of a head to its end (and a fresh connection's first byte) */
    uint64_t body_timeout_ms;   /* end of a head to the end of its body */
    uint64_t idle_timeout_ms;   /* keep-alive: between requests, or without write progress */
    uint64_t max_body;
    unsigned max_pipeline;      /* requests of one connection queued before reading pauses */
    bool log_json;              /* --log-format json (else logfmt): the access log's lines */
};

/* A tenant's limits, as its route says (wire/front_protocol.h). */
struct mf_route_limits {
    uint64_t max_body;
    uint64_t max_response;
    uint32_t request_timeout_ms;
    uint32_t concurrency;
    uint32_t queue;
    uint32_t slot;            /* metrics slot */
    uint32_t request_cpu_ms;
};

struct mf_front_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A valid request; every pointer stays valid until mf_front_complete(). */
struct mf_front_request {
    uint64_t id;                 /* the X-Request-Id its answer carries */
    const char *method;
    size_t method_len;
    const char *path;            /* as sent, percent-encoded; "*" for OPTIONS * */
    size_t path_len;
    const char *query;           /* after '?', as sent; empty if none */
    size_t query_len;
    const char *host;            /* lowercase ASCII, no port; empty for HTTP/1.0 without Host */
    size_t host_len;
    const struct mf_front_header *headers; /* as sent, in order, hop-by-hop included */
    size_t header_count;
    const char *body;            /* exactly as sent (chunked: de-chunked, never decoded) */
    size_t body_len;
    const char *client;          /* the peer's address, as text; empty if unknown */
    size_t client_len;
    const char *tenant;          /* the tenant its Host routed it to */
    size_t tenant_len;
    const struct mf_route_limits *limits; /* that tenant's, when its head was read */
    uint64_t arrived_ms;         /* CLOCK_MONOTONIC ms when its head was complete */
};

/* A program's answer. The front end drops its hop-by-hop headers and sets
 * its own; an invalid status or header turns the answer into a 502. */
struct mf_front_response {
    int status;
    const struct mf_front_header *headers;
    size_t header_count;
    const char *body;
    size_t body_len;
};

struct mf_front_loop;
struct mf_front_ticket;

/* A message of the supervisor for a loop (HOST_ATTACH, HOST_DETACH,
 * TENANT_STATE of wire/front_protocol.h), decoded by the control thread
 * and handed to the loop's backend on the loop's thread. */
struct mf_front_mail {
    struct mf_front_mail *next;
    uint16_t type;       /* MF_MSG_HOST_ATTACH, MF_MSG_HOST_DETACH or MF_MSG_TENANT_STATE */
    uint64_t host_id;
    uint32_t state;      /* TENANT_STATE */
    uint32_t engine;     /* HOST_ATTACH: MF_ENGINE_FORK or MF_ENGINE_RESET */
    int fd;              /* HOST_ATTACH: the data channel, the backend's to close; else -1 */
    size_t name_len;
    char name[256];
};

/* The boundary to whoever answers requests. submit() runs on a loop's
 * thread for every valid request, in the order they arrive on their
 * connection; the backend then calls mf_front_complete(ticket) exactly once,
 * on that same thread, now or later. Answers are written in request order
 * whatever order they complete in. */
struct mf_front_backend {
    void *ctx;
    void (*submit)(void *ctx, struct mf_front_loop *loop, struct mf_front_ticket *ticket,
                   const struct mf_front_request *request);
    /* A supervisor's message for this loop; NULL: they are dropped (fds closed). */
    void (*mail)(void *ctx, struct mf_front_loop *loop, struct mf_front_mail *mail);
    /* After each turn of the loop (every event of a wake-up handled); may be NULL. */
    void (*turn_end)(void *ctx, struct mf_front_loop *loop);
    /* A stream that answered MF_STREAM_FULL may go on (its client took
     * enough of its output, or left): ref is mf_front_stream_begin's.
     * NULL for a backend that never streams. */
    void (*resume)(void *ctx, void *ref);
};

/* Answers the ticket's request (NULL: the backend failed, 502) and releases
 * it. The response is copied: its memory is the caller's again on return. */
void mf_front_complete(struct mf_front_ticket *ticket, const struct mf_front_response *response);
/* Answers with the daemon's own "<status> <reason>: <why>" and an extra
 * header line ("Name: value") or NULL, and releases the ticket. */
void mf_front_fail(struct mf_front_ticket *ticket, int status, const char *why, const char *extra_header);
/*
 * A streamed answer, of a length not known beforehand: its head at once
 * (HTTP/1.1: Transfer-Encoding: chunked; HTTP/1.0: no length and
 * Connection: close), its body as it comes, in request order like any
 * answer. Each call but end and cut says whether the backend may go on:
 * MORE; FULL: the client's unsent output is over MF_STREAM_HIGH, so stop
 * until the backend's resume(ref); GONE: the ticket is released (the
 * client left, or begin answered 502 for an invalid head), so stop and
 * forget it. mf_front_complete or mf_front_fail on a streaming ticket
 * cuts it: once a head is out, no other answer can follow.
 */
#define MF_STREAM_HIGH (256 * 1024)
enum mf_stream { MF_STREAM_MORE, MF_STREAM_FULL, MF_STREAM_GONE };
/* The program's status and headers (response's body is ignored); ref is
 * for resume(). */
enum mf_stream mf_front_stream_begin(struct mf_front_ticket *ticket, const struct mf_front_response *response,
                                     void *ref);
/* Body bytes (copied); counted as sent, dropped for HEAD, 204 and 304. */
enum mf_stream mf_front_stream_write(struct mf_front_ticket *ticket, const void *data, size_t len);
/* The end of the body; the ticket is released, the connection goes on. */
void mf_front_stream_end(struct mf_front_ticket *ticket);
/* The body cannot end: what was given is sent, then the connection is
 * cut (a chunked body without its last chunk; for HTTP/1.0, a reset), so
 * that the client sees the failure. The ticket is released. */
void mf_front_stream_cut(struct mf_front_ticket *ticket);

/* False once the client is gone: the backend may stop working on it (it
 * still completes the ticket, which then only frees it). */
bool mf_front_ticket_waited_for(const struct mf_front_ticket *ticket);

/* Something a loop watches: the backend's own fds use this too. */
struct mf_front_watch {
    int fd;
    void (*ready)(struct mf_front_watch *watch, uint32_t events);
};

/* Adds (with the given epoll events, EPOLLET if wanted) or removes an fd
 * watched by the loop; ready() runs on the loop's thread. */
bool mf_front_watch_add(struct mf_front_loop *loop, struct mf_front_watch *watch, uint32_t events);
bool mf_front_watch_remove(struct mf_front_loop *loop, struct mf_front_watch *watch);

/* Parses argv, listens and runs one loop per thread until SIGTERM or
 * SIGINT. backend NULL: every request gets 503 (no tenant is connected). */
int mf_front_main(int argc, char **argv, const struct mf_front_backend *backend);

#endif /* MAYFLYD_FRONT_H */
