/*
 * mayflyd wire protocol between the supervisor (Python) or the front end
 * and the sandbox host (this C helper). Mirrored field by field in
 * daemon/mayflyd/protocol.py; tests/unit/test_protocol.py
 * (test_struct_layouts_match_the_c_header) checks through struct_layout()
 * that the two agree.
 *
 * Every message is one SOCK_SEQPACKET packet: a mf_frame_header followed by
 * payload_len bytes of payload, in native byte order. Four channels:
 *
 *   control channel (one per host, supervisor <-> host): the host's lifecycle
 *     supervisor -> host : MF_MSG_SHUTDOWN, MF_MSG_DATA_CHANNEL (+ one fd
 *                          in SCM_RIGHTS: a new data channel of the host,
 *                          for one front-end loop: mf_data_channel)
 *     host -> supervisor : MF_MSG_READY, MF_MSG_LOAD_FAILED, MF_MSG_WORKER_REPLACED
 *
 *   data channels (0..MF_MAX_DATA_CHANNELS per host, front end <-> host;
 *   a host starts with none): its requests
 *     front end -> host  : MF_MSG_REQUEST (fork engine: + one fd in
 *                          SCM_RIGHTS, the per-request socket; reset
 *                          engine: no fd), MF_MSG_CANCEL
 *     host -> front end  : MF_MSG_CHILD_EXIT, MF_MSG_REQUEST_FAILED, on
 *                          the channel the request came on; reset engine
 *                          also MF_MSG_WORKER_CHANNEL (+ one fd),
 *                          MF_MSG_WORKER_GONE, MF_MSG_DISPATCHED
 *
 *   The host refuses (warns, ignores, closes any fd) a message of one kind
 *   of channel on the other. The end of the control channel ends the host;
 *   the end (or an error) of a data channel drops that channel and cancels
 *   every request that came on it, with no report. req_id is unique per
 *   host across its data channels (a duplicate fails with EEXIST).
 *
 *   worker channel (reset engine: one per pool worker, host <-> worker):
 *     host -> worker : MF_MSG_REQUEST (payload mf_worker_request: the
 *                      nonce, and which of its request channels to read)
 *     worker -> host : MF_MSG_WORKER_READY, MF_MSG_REQUEST_DONE,
 *                      MF_MSG_WORKER_FAILED
 *
 *   request channel, front end <-> sandbox: fork engine, one socketpair per
 *   request; reset engine, one persistent socketpair per (worker, front-end
 *   loop), made by the host when it forks the worker, the front end's end
 *   sent on that loop's data channel with WORKER_CHANNEL:
 *     front end -> sandbox : REQ_WHOLE, or REQ_HEAD, REQ_BODY*, REQ_END
 *     sandbox -> front end : RESP_WHOLE, or RESP_HEAD, RESP_BODY*, RESP_END
 *   A request or response that fits one packet travels as one *_WHOLE
 *   packet (a send and a receive each instead of three). A RESP_HEAD whose
 *   body_len is MF_BODY_STREAMED starts a streamed response: its length
 *   is not known, RESP_BODY chunks follow as the program makes them, and
 *   RESP_END ends it; a stream that ends without RESP_END was cut (the
 *   program failed mid-way), and the front end cuts the client's
 *   connection rather than let a truncated body look complete.
 *
 * A persistent request channel carries one request at a time: the host
 * sends DISPATCHED (the request's id, the worker's slot) only to an idle
 * worker, and only on the channel the request came on, after that
 * channel's CHILD_EXIT of the worker's previous request. The front end
 * discards what is queued on the channel before it writes the request
 * (nothing a finished request wrote reaches a later one) and reads what is
 * left when CHILD_EXIT arrives; the worker skips frames of another req_id.
 * A request can answer only its own request; req_id in its frames must
 * match.
 */
#ifndef MAYFLYD_PROTOCOL_H
#define MAYFLYD_PROTOCOL_H

#include <stdint.h>

#define MF_MAGIC 0x594C464Du /* "MFLY" read as little-endian bytes */
#define MF_PROTOCOL_VERSION 1u

/* Largest payload of one packet; bodies are split into chunks of this size. */
#define MF_MAX_PAYLOAD (64u * 1024u)
/* A request or response head (with its headers) must fit in one packet. */
#define MF_MAX_HEAD MF_MAX_PAYLOAD
#define MF_MAX_HEADERS 256u
/* Data channels one host holds at most; a DATA_CHANNEL beyond is refused. */
#define MF_MAX_DATA_CHANNELS 64
/* Front-end loops a reset host makes request channels for, at most. */
#define MF_MAX_FRONT_LOOPS 64
/* A reset host's worker slots (mf_worker_slot.worker is below it). */
#define MF_MAX_WORKER_SLOTS 256

enum mf_msg_type {
    /* to the host: data channel (REQUEST, CANCEL), control channel
     * (SHUTDOWN, DATA_CHANNEL) */
    MF_MSG_REQUEST = 1,        /* payload: mf_request_ctl, fd attached */
    MF_MSG_CANCEL = 2,         /* payload: none; kill the sandbox of req_id, or drop it from the queue */
    MF_MSG_SHUTDOWN = 3,       /* payload: none; kill sandboxes, exit */
    MF_MSG_DATA_CHANNEL = 4,   /* payload: none (loop 0) or mf_data_channel; one fd: a new data channel (SOCK_SEQPACKET) */

    /* from the host: control channel (READY, LOAD_FAILED, WORKER_REPLACED),
     * data channel (CHILD_EXIT, REQUEST_FAILED) */
    MF_MSG_READY = 16,         /* payload: mf_ready */
    MF_MSG_LOAD_FAILED = 17,   /* payload: UTF-8 error text */
    MF_MSG_CHILD_EXIT = 18,    /* payload: mf_child_exit */
    MF_MSG_REQUEST_FAILED = 19,/* payload: mf_request_failed */
    MF_MSG_WORKER_REPLACED = 20,/* payload: UTF-8 reason; a pool worker was replaced */
    /* data channel, reset engine */
    MF_MSG_WORKER_CHANNEL = 21,/* payload: mf_worker_slot; one fd: the front end's end of that worker's
                                  request channel for this data channel's loop (replaces the slot's last) */
    MF_MSG_WORKER_GONE = 22,   /* payload: mf_worker_slot; the slot's worker is gone: close its channel */
    MF_MSG_DISPATCHED = 23,    /* req_id; payload: mf_worker_slot; the request runs on that worker:
                                  write it on the slot's request channel, read the answer there */

    /* request channel, front end -> sandbox */
    MF_MSG_REQ_HEAD = 32,      /* payload: mf_req_head + strings + headers */
    MF_MSG_REQ_BODY = 33,      /* payload: body bytes */
    MF_MSG_REQ_END = 34,       /* payload: none */
    MF_MSG_REQ_WHOLE = 35,     /* payload: a REQ_HEAD payload, then its body_len body bytes */

    /* request channel, sandbox -> front end */
    MF_MSG_RESP_HEAD = 48,     /* payload: mf_resp_head + headers */
    MF_MSG_RESP_BODY = 49,     /* payload: body bytes */
    MF_MSG_RESP_END = 50,      /* payload: none */
    MF_MSG_RESP_WHOLE = 51,    /* payload: a RESP_HEAD payload, then its body_len body bytes */

    /* worker channel, worker -> host (reset engine) */
    MF_MSG_WORKER_READY = 64,  /* payload: mf_worker_ready; snapshot taken */
    MF_MSG_REQUEST_DONE = 65,  /* payload: mf_request_done; rewound, idle */
    MF_MSG_WORKER_FAILED = 66, /* payload: UTF-8 reason; the worker exits */

    /* 96..127: the front end's control channel, in wire/front_protocol.h */
};

struct mf_frame_header {
    uint32_t magic;        /* MF_MAGIC */
    uint16_t type;         /* enum mf_msg_type */
    uint16_t version;      /* MF_PROTOCOL_VERSION */
    uint64_t req_id;       /* 0 for host-level messages */
    uint32_t payload_len;  /* bytes after this header; == packet size - 24 */
    uint32_t reserved;     /* 0 */
};

enum mf_engine { MF_ENGINE_FORK = 1, MF_ENGINE_RESET = 2 };

struct mf_ready {
    int32_t pid;           /* host pid as the supervisor sees it */
    uint32_t engine;       /* enum mf_engine */
};

struct mf_request_ctl {
    uint32_t timeout_ms;   /* wall-clock budget, queued time included; the host kills after it */
    uint32_t reserved;     /* 0; on a worker channel, the host's nonce for this request */
};

/* Why a sandbox ended, as the host saw it. */
enum mf_exit_flags {
    MF_EXIT_TIMED_OUT = 1u,   /* killed by the host at its deadline */
    MF_EXIT_CANCELLED = 2u,   /* killed on MF_MSG_CANCEL */
    MF_EXIT_CPU_EXCEEDED = 4u,/* SIGKILLed after using its whole CPU budget */
    MF_EXIT_OUT_OF_MEMORY = 8u,/* SIGKILLed, not by the host, while its cgroup's oom_kill count moved */
};

struct mf_data_channel {
    uint32_t loop;         /* the front-end loop it serves, < the host's front_loops */
    uint32_t reserved;     /* 0 */
};

struct mf_worker_slot {
    uint32_t worker;       /* the reset pool's slot, < MF_MAX_WORKER_SLOTS */
    uint32_t reserved;     /* 0 */
};

/* MF_MSG_REQUEST on a worker channel. */
struct mf_worker_request {
    uint32_t nonce;        /* REQUEST_DONE must carry it */
    uint32_t loop;         /* read the request on the request channel of this loop */
};

struct mf_child_exit {
    int32_t pid;
    int32_t wait_status;   /* raw status from waitpid() */
    uint32_t flags;        /* enum mf_exit_flags */
    uint32_t cost_us;      /* the host's own cost of this sandbox: its fork() or rewind, in us */
    uint32_t pages;        /* pages rewound after the request (reset engine; 0 for fork) */
    uint32_t reserved;
};

struct mf_worker_ready {
    uint32_t snapshot_pages; /* pages of tracked memory that the snapshot holds */
    uint32_t ranges;         /* tracked ranges */
    uint32_t cost_us;        /* time to take the snapshot */
    uint32_t reserved;
};

struct mf_request_done {
    uint32_t status;       /* 0: answered; else an MF_CHILD_EXIT_* code, as a fork child's exit */
    uint32_t aborted;      /* 1: stopped by the host's abort signal, then rewound */
    uint32_t cost_us;      /* the rewind, in us */
    uint32_t pages;        /* pages copied back */
    uint32_t nonce;        /* the REQUEST's nonce: tenant code cannot forge a completion */
    uint32_t reserved;
};

struct mf_request_failed {
    int32_t error;         /* errno of the failed fork or setup; EAGAIN: concurrency and queue are full;
                              EPIPE: the reset worker it went to was gone (it reached no program) */
    uint32_t reserved;
};

/*
 * REQ_HEAD payload: this struct, then method, path, query and client
 * (each *_len bytes, no terminator), then header_count headers, each
 * encoded as mf_header_entry followed by name and value bytes.
 */
struct mf_req_head {
    uint32_t method_len;
    uint32_t path_len;
    uint32_t query_len;
    uint32_t client_len;
    uint32_t header_count;
    uint32_t reserved;
    uint64_t body_len;     /* exact total of the REQ_BODY chunks */
};

/* RESP_HEAD's body_len of a streamed response (never in RESP_WHOLE). */
#define MF_BODY_STREAMED UINT64_MAX

/* RESP_HEAD payload: this struct, then header_count header entries. */
struct mf_resp_head {
    uint32_t status;       /* 100..599 */
    uint32_t header_count;
    uint64_t body_len;     /* exact total of the RESP_BODY chunks, or MF_BODY_STREAMED */
};

struct mf_header_entry {
    uint32_t name_len;
    uint32_t value_len;
};

#define MF_FRAME_HEADER_SIZE 24u

_Static_assert(sizeof(struct mf_frame_header) == MF_FRAME_HEADER_SIZE, "frame header layout");
_Static_assert(sizeof(struct mf_ready) == 8, "mf_ready layout");
_Static_assert(sizeof(struct mf_request_ctl) == 8, "mf_request_ctl layout");
_Static_assert(sizeof(struct mf_child_exit) == 24, "mf_child_exit layout");
_Static_assert(sizeof(struct mf_data_channel) == 8, "mf_data_channel layout");
_Static_assert(sizeof(struct mf_worker_slot) == 8, "mf_worker_slot layout");
_Static_assert(sizeof(struct mf_worker_request) == 8, "mf_worker_request layout");
_Static_assert(sizeof(struct mf_worker_ready) == 16, "mf_worker_ready layout");
_Static_assert(sizeof(struct mf_request_done) == 24, "mf_request_done layout");
_Static_assert(sizeof(struct mf_request_failed) == 8, "mf_request_failed layout");
_Static_assert(sizeof(struct mf_req_head) == 32, "mf_req_head layout");
_Static_assert(sizeof(struct mf_resp_head) == 16, "mf_resp_head layout");
_Static_assert(sizeof(struct mf_header_entry) == 8, "mf_header_entry layout");

#endif /* MAYFLYD_PROTOCOL_H */
