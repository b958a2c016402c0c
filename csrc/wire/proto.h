/*
 * Frames of protocol.h: building, validating, sending and receiving them.
 * The request decoder and response encoder are shared by the sandbox child
 * (fork_engine.c) and the test bindings in py_requests.c, so the tests
 * exercise the exact code the child runs.
 */
#ifndef MAYFLYD_PROTO_H
#define MAYFLYD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "wire/protocol.h"

/* Largest packet either side may send. */
#define MF_PACKET_MAX (MF_FRAME_HEADER_SIZE + MF_MAX_PAYLOAD)
/* Largest request body a sandbox accepts (it is held in memory at once). */
#define MF_REQUEST_BODY_CAP (1ull << 30)

struct mf_header {
    const uint8_t *name;
    uint32_t name_len;
    const uint8_t *value;
    uint32_t value_len;
};

enum mf_request_state { MF_REQ_WANT_HEAD, MF_REQ_WANT_BODY, MF_REQ_DONE };

/* A request being decoded; strings point into head (no terminators). */
struct mf_request {
    uint64_t req_id;
    enum mf_request_state state;
    uint8_t *head;              /* copy of the REQ_HEAD payload */
    const uint8_t *method, *path, *query, *client;
    uint32_t method_len, path_len, query_len, client_len;
    uint32_t header_count;
    struct mf_header headers[MF_MAX_HEADERS];
    uint8_t *body;              /* body_len bytes, NULL when empty */
    uint64_t body_len;
    uint64_t body_received;
};

struct mf_response {
    uint32_t status;
    uint32_t header_count;
    const struct mf_header *headers;
    const uint8_t *body;
    uint64_t body_len;
    bool streamed;  /* the handler sent the head and the body itself (mf_stream_*): RESP_END is left */
    bool cut;       /* streamed, then failed: no RESP_END, so the front end cuts the client off */
};

/* Receives one encoded packet, given as iovecs totalling len bytes. */
typedef bool (*mf_packet_sink)(void *ctx, const struct iovec *iov, int iovcnt, size_t len);

void mf_frame_init(struct mf_frame_header *hdr, uint16_t type, uint64_t req_id, uint32_t payload_len);
/* Checks magic, version, reserved and payload_len == len - 24. */
bool mf_frame_parse(const uint8_t *pkt, size_t len, struct mf_frame_header *hdr);

void mf_request_init(struct mf_request *req, uint64_t req_id);
/* Consumes one packet: -1 invalid (error recorded, errno EPROTO), 0 more
 * packets expected, 1 request complete (REQ_END or REQ_WHOLE seen). */
int mf_request_feed(struct mf_request *req, const uint8_t *pkt, size_t len);
/* Reads packets from fd until the request is complete, skipping frames of
 * another req_id (left on a persistent channel by an earlier request). */
bool mf_request_recv(int fd, struct mf_request *req);
void mf_request_free(struct mf_request *req);

/* Encodes the response into sink: one RESP_WHOLE packet when it fits, else
 * RESP_HEAD, RESP_BODY chunks and RESP_END. */
bool mf_response_emit(uint64_t req_id, const struct mf_response *resp, mf_packet_sink sink, void *ctx);
/* mf_response_emit to a socket (blocking sends). */
bool mf_response_send(int fd, uint64_t req_id, const struct mf_response *resp);

/* A streamed response (protocol.h, MF_BODY_STREAMED): its RESP_HEAD
 * (resp's status and headers; its body is ignored), then its body in
 * RESP_BODY frames of at most MF_MAX_PAYLOAD bytes, as it comes; the
 * caller ends it with a RESP_END frame (mf_send_packet). */
bool mf_stream_head_emit(uint64_t req_id, const struct mf_response *resp, mf_packet_sink sink, void *ctx);
bool mf_stream_body_emit(uint64_t req_id, const void *data, uint64_t len, mf_packet_sink sink, void *ctx);
/* The two above to a socket (blocking sends: the socket's buffer is the
 * backpressure). */
bool mf_stream_head_send(int fd, uint64_t req_id, const struct mf_response *resp);
bool mf_stream_body_send(int fd, uint64_t req_id, const void *data, uint64_t len);

/* What is left to send after the handler: the whole response, or a
 * stream's RESP_END. A cut stream gets none (false, errno ECANCELED). */
bool mf_response_finish(int fd, uint64_t req_id, const struct mf_response *resp);

/* Sends one frame; never raises SIGPIPE (EPIPE is returned instead). */
bool mf_send_packet(int fd, uint16_t type, uint64_t req_id, const void *payload, uint32_t len);
/* Sends a ready-made packet with one fd attached (SCM_RIGHTS). */
bool mf_send_packet_fd(int sock, const void *packet, size_t len, int fd);
/* Receives one packet into buf with MSG_CMSG_CLOEXEC. Returns 1 with a
 * packet, 0 at EOF, -1 on error (EAGAIN included). Passed fds land in fds
 * (at most max_fds; surplus ones are closed and the packet rejected). A
 * packet larger than cap is an error. */
int mf_recv_packet(int fd, int flags, uint8_t *buf, size_t cap, size_t *len,
                   int *fds, size_t max_fds, size_t *nfds);

#endif /* MAYFLYD_PROTO_H */
