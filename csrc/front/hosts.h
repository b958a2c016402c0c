/*
 * The backend that runs requests on the tenants' sandbox hosts. Each loop
 * keeps its own view, touched by its thread only: per tenant (by name) its
 * state, its hosts' data channels for this loop (newest first) and the
 * requests waiting for one; per request a call (sandbox_call.c): its
 * request channel, the frames out and in, its deadline.
 *
 * A fork host gets a fresh socketpair per request, its end sent with
 * REQUEST. A reset host (HOST_ATTACH's engine) hands this loop one
 * persistent channel per worker slot (WORKER_CHANNEL, WORKER_GONE;
 * worker_channels.c): REQUEST goes without an fd, and DISPATCHED names the
 * worker whose channel the call then borrows until its answer.
 *
 * A call ends its ticket once (the program's answer or a daemon status)
 * and lives on until the host reports how the sandbox ended (CHILD_EXIT
 * or REQUEST_FAILED), or the host's channel ends: a host is drained (its
 * channel closed, HOST_DRAINED sent) once detached with no call left.
 */
#ifndef MAYFLYD_FRONT_HOSTS_H
#define MAYFLYD_FRONT_HOSTS_H

#include <stdbool.h>
#include <stdint.h>

#include "front/front.h"
#include "wire/front_protocol.h"
#include "wire/protocol.h"

#ifndef MF_EXIT_OUT_OF_MEMORY
#define MF_EXIT_OUT_OF_MEMORY 8u /* wire/protocol.h's, once the hosts report it */
#endif

/* How long a call whose request channel ended without an answer waits for
 * the host to say how the sandbox ended (as the supervisor's host_handle). */
#define MF_EXIT_WAIT_MS 200

#define MF_TENANT_BUCKETS 1024

/* How often a request that never reached a program is sent again (each
 * time its host died, or its worker, before it got it). */
#define MF_MAX_RESENDS 8

struct mf_htenant;
struct mf_worker_channels;

enum mf_call_stage {
    MF_CALL_WAITING, /* for a host of its tenant (in the tenant's waiting list) */
    MF_CALL_RUNNING, /* REQUEST sent (in its host's calls) */
    MF_CALL_DONE,    /* answered; waiting for the host's report (in its host's calls) */
};

struct mf_call {
    struct mf_hosts *hosts;
    struct mf_htenant *tenant;
    struct mf_host *host;                   /* RUNNING, DONE */
    enum mf_call_stage stage;
    struct mf_front_ticket *ticket;         /* NULL once answered */
    const struct mf_front_request *request; /* valid while ticket is */
    struct mf_metrics_record *metrics;
    uint64_t req_id;
    uint64_t deadline_ms;                   /* the head's arrival + request_timeout_ms */
    uint32_t timeout_ms, cpu_ms;
    uint64_t max_response;
    bool retried;                           /* sent again after its host or sandbox died (once only) */
    uint8_t resends;                        /* sent again before it reached a program (bounded) */
    bool delivered;                         /* the request may have reached the program: a fork host got
                                               it (its sandbox may have read it), or a reset host
                                               DISPATCHED it to a worker; before that it is safe to
                                               send again whatever its method */
    uint32_t slot, wait_limit;              /* the tenant's metrics slot; concurrency + queue */
    bool counted;                           /* in the tenant's count of waiting requests */
    struct mf_call *prev, *next;            /* in the tenant's waiting list or the host's calls */
    /* The one timer: the deadline, or the wait for the host's report. */
    struct mf_call *timer_prev, *timer_next;
    uint64_t timer_ms;
    bool timer_armed, exit_wait;
    /* The request channel (fd -1 when closed or not yet dispatched). */
    struct mf_front_watch watch;
    int worker;                             /* the reset worker slot it was dispatched to (its channel
                                               borrowed until the answer), else -1 */
    uint8_t *head;                          /* the REQ_HEAD payload */
    uint32_t head_len;
    int send_stage;                         /* 0 head/whole, 1 body, 2 end, 3 all sent */
    uint64_t body_sent;
    bool eof;                               /* the channel ended before a whole answer */
    /* The answer, as it arrives (checked as protocol.py's ResponseDecoder). */
    bool have_head;
    uint8_t *resp_head;
    uint32_t resp_head_len;
    uint32_t status, header_count;
    uint64_t body_len;
    char *body;
    size_t body_received, body_cap;
    struct mf_front_header *headers;
    /* A streamed answer (body_len MF_BODY_STREAMED): its chunks go to the
     * client as they come, never collected. */
    bool streaming;
    bool paused;                            /* the client is behind: reading waits for resume */
    const uint8_t *chunk;                   /* MF_FEED_CHUNK: the chunk, in the loop's packet buffer */
    size_t chunk_len;
    uint64_t streamed;                      /* body bytes so far, against max_response */
    /* The host's report. */
    bool reported, failed;
    struct mf_child_exit exit;
    int32_t error;
};

/* A host's data channel in one loop, and what runs on it. */
struct mf_host {
    struct mf_front_watch watch; /* first: the data channel; fd -1 once it ended */
    struct mf_hosts *hosts;
    struct mf_htenant *tenant;
    uint64_t host_id;
    bool detached;
    bool reading;                /* in host_ready: freed by it, not under it */
    struct mf_worker_channels *workers; /* a reset host's; NULL: a fork host's */
    struct mf_call *calls;       /* RUNNING and DONE */
    struct mf_host *next;        /* in its tenant's list */
};

/* One loop's view (hosts.c). */
struct mf_hosts {
    struct mf_front_loop *loop;
    struct mf_front_watch timer;  /* timerfd: the earliest call timer */
    struct mf_call *timers_first, *timers_last; /* sorted by timer_ms */
    uint64_t timer_set_ms;        /* what the timerfd is set to (0: disarmed) */
    uint8_t *packet;              /* MF_PACKET_MAX + 1: one byte more shows a longer packet */
    /* Freed at the end of the loop's turn: an event later in the same
     * batch may still name them. */
    struct mf_call *dead_calls;
    struct mf_host *dead_hosts;
    struct mf_htenant *buckets[MF_TENANT_BUCKETS];
};

/* sandbox_call.c */
enum mf_feed {
    MF_FEED_MORE, MF_FEED_DONE, MF_FEED_INVALID, MF_FEED_TOO_LARGE,
    MF_FEED_STREAM_HEAD, /* a streamed answer's head: status and headers in the call */
    MF_FEED_CHUNK,       /* a streamed answer's chunk: call->chunk, call->chunk_len */
};

/* Encodes the REQ_HEAD payload; false when it does not fit one frame. */
bool mf_call_encode(struct mf_call *call);
/* Sends what the channel takes now; after a failed send, nothing more
 * (the sandbox closed its end: its answer, or its end, shows on reading). */
void mf_call_send(struct mf_call *call);
/* One packet of the answer: validated, collected (error recorded if invalid). */
enum mf_feed mf_call_feed(struct mf_call *call, const uint8_t *packet, size_t len);
/* The collected answer, once MF_FEED_DONE (pointers into the call). */
void mf_call_response(struct mf_call *call, struct mf_front_response *out);
/* Lets go of the request channel: closes its own, unwatches a borrowed one. */
void mf_call_drop_channel(struct mf_call *call);
/* Frees what the request channel and the answer held. */
void mf_call_release(struct mf_call *call);

/* hosts.c: a RUNNING call's channel */
/* The channel's events: sends what is left of the request, reads. */
void mf_call_ready(struct mf_front_watch *watch, uint32_t events);
/* Reads what the sandbox sent; answers once it is whole, or wrong. True
 * while the call still waits for its answer (false: it may be gone). */
bool mf_call_read(struct mf_call *call);
/* Answers 502 for a bad answer (the error recorded says why) and cancels. */
void mf_call_invalid(struct mf_call *call, enum mf_feed why);

/* worker_channels.c: a reset host's persistent request channels */
/* The table of a reset host's channels in one loop, all empty; NULL
 * (error recorded) without memory. Freed with free(). */
struct mf_worker_channels *mf_worker_channels_new(void);
/* Closes every channel in it (NULL: a fork host, nothing). */
void mf_worker_channels_close(struct mf_worker_channels *w);
/* WORKER_CHANNEL (its fd taken from *fd) or WORKER_GONE. */
void mf_worker_changed(struct mf_host *host, const struct mf_frame_header *header, const uint8_t *payload, int *fd);
/* DISPATCHED for a call of the host. */
void mf_worker_dispatched(struct mf_host *host, struct mf_call *call, const struct mf_frame_header *header,
                          const uint8_t *payload);
/* The host reported request req_id, whose call borrowed worker's channel,
 * ended: what it wrote after its answer is read and dropped. */
void mf_worker_reported(struct mf_host *host, int worker, uint64_t req_id);

/* The backend for mf_front_main. */
extern const struct mf_front_backend mf_hosts_backend;

#endif /* MAYFLYD_FRONT_HOSTS_H */
