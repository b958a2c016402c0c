/* Frame encoding, request decoding and packet I/O; see proto.h. */
#include "wire/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"

/* Most fds one packet may carry before we call it hostile. */
#define MF_RECV_FDS_MAX 8

void mf_frame_init(struct mf_frame_header *hdr, uint16_t type, uint64_t req_id, uint32_t payload_len)
{
    memset(hdr, 0, sizeof(*hdr));
    hdr->magic = MF_MAGIC;
    hdr->type = type;
    hdr->version = MF_PROTOCOL_VERSION;
    hdr->req_id = req_id;
    hdr->payload_len = payload_len;
}

bool mf_frame_parse(const uint8_t *pkt, size_t len, struct mf_frame_header *hdr)
{
    if (len < MF_FRAME_HEADER_SIZE)
        return mf_errx(EPROTO, "frame of %zu bytes is shorter than the %u-byte header", len,
                       MF_FRAME_HEADER_SIZE);
    /* The packet buffer carries no alignment promise. */
    memcpy(hdr, pkt, sizeof(*hdr));
    if (hdr->magic != MF_MAGIC)
        return mf_errx(EPROTO, "bad frame magic 0x%08x", hdr->magic);
    if (hdr->version != MF_PROTOCOL_VERSION)
        return mf_errx(EPROTO, "unsupported protocol version %u", hdr->version);
    if (hdr->reserved != 0)
        return mf_errx(EPROTO, "frame type %u: reserved field is %u, not 0", hdr->type, hdr->reserved);
    if ((uint64_t)hdr->payload_len != (uint64_t)len - MF_FRAME_HEADER_SIZE)
        return mf_errx(EPROTO, "frame type %u: payload_len %u but packet carries %zu payload bytes",
                       hdr->type, hdr->payload_len, len - MF_FRAME_HEADER_SIZE);
    return true;
}

void mf_request_init(struct mf_request *req, uint64_t req_id)
{
    memset(req, 0, sizeof(*req));
    req->req_id = req_id;
    req->state = MF_REQ_WANT_HEAD;
}

void mf_request_free(struct mf_request *req)
{
    free(req->head);
    free(req->body);
    req->head = NULL;
    req->body = NULL;
}

/* Takes the next n bytes of the payload at *off, or fails if they run past end. */
static bool take(const uint8_t *payload, uint32_t end, uint32_t *off, uint64_t n,
                 const uint8_t **out, const char *what)
{
    if (n > (uint64_t)(end - *off))
        return mf_errx(EPROTO, "REQ_HEAD: %s (%llu bytes at offset %u) runs past the %u-byte payload",
                       what, (unsigned long long)n, *off, end);
    *out = payload + *off;
    *off += (uint32_t)n;
    return true;
}

static bool parse_head(struct mf_request *req, const uint8_t *payload, uint32_t len)
{
    struct mf_req_head h;
    const uint8_t *p = NULL;
    uint32_t off = 0;

    MF_TRY(take(payload, len, &off, sizeof(h), &p, "struct mf_req_head"));
    memcpy(&h, p, sizeof(h));
    if (h.reserved != 0)
        return mf_errx(EPROTO, "REQ_HEAD: reserved field is %u, not 0", h.reserved);
    if (h.header_count > MF_MAX_HEADERS)
        return mf_errx(EPROTO, "REQ_HEAD: header_count %u exceeds %u", h.header_count, MF_MAX_HEADERS);
    if (h.body_len > MF_REQUEST_BODY_CAP)
        return mf_errx(EPROTO, "REQ_HEAD: body_len %llu exceeds the %llu-byte cap",
                       (unsigned long long)h.body_len, (unsigned long long)MF_REQUEST_BODY_CAP);

    /* Keep a copy: the strings outlive the packet buffer. */
    req->head = malloc(len);
    if (req->head == NULL)
        return mf_err("malloc(%u) for the request head", len);
    memcpy(req->head, payload, len);
    payload = req->head;

    MF_TRY(take(payload, len, &off, h.method_len, &req->method, "method"));
    MF_TRY(take(payload, len, &off, h.path_len, &req->path, "path"));
    MF_TRY(take(payload, len, &off, h.query_len, &req->query, "query"));
    MF_TRY(take(payload, len, &off, h.client_len, &req->client, "client"));
    req->method_len = h.method_len;
    req->path_len = h.path_len;
    req->query_len = h.query_len;
    req->client_len = h.client_len;

    for (uint32_t i = 0; i < h.header_count; i++) {
        struct mf_header_entry e;
        struct mf_header *out = &req->headers[i];
        MF_TRY(take(payload, len, &off, sizeof(e), &p, "header entry"));
        memcpy(&e, p, sizeof(e));
        MF_TRY(take(payload, len, &off, e.name_len, &out->name, "header name"));
        MF_TRY(take(payload, len, &off, e.value_len, &out->value, "header value"));
        out->name_len = e.name_len;
        out->value_len = e.value_len;
    }
    if (off != len)
        return mf_errx(EPROTO, "REQ_HEAD: %u trailing bytes after the headers", len - off);
    req->header_count = h.header_count;

    req->body_len = h.body_len;
    if (h.body_len > 0) {
        req->body = malloc(h.body_len);
        if (req->body == NULL)
            return mf_err("malloc(%llu) for the request body", (unsigned long long)h.body_len);
    }
    return true;
}

/* REQ_WHOLE: a REQ_HEAD payload, then exactly its body_len bytes of body. */
static bool parse_whole(struct mf_request *req, const uint8_t *payload, uint32_t len)
{
    struct mf_req_head h;

    if (len < sizeof(h))
        return mf_errx(EPROTO, "REQ_WHOLE: %u bytes, shorter than struct mf_req_head", len);
    memcpy(&h, payload, sizeof(h));
    if (h.body_len > len - sizeof(h))
        return mf_errx(EPROTO, "REQ_WHOLE: body_len %llu runs past the %u-byte payload",
                       (unsigned long long)h.body_len, len);
    uint32_t head_len = len - (uint32_t)h.body_len;
    MF_TRY(parse_head(req, payload, head_len));
    if (h.body_len > 0)
        memcpy(req->body, payload + head_len, h.body_len);
    req->body_received = h.body_len;
    return true;
}

int mf_request_feed(struct mf_request *req, const uint8_t *pkt, size_t len)
{
    struct mf_frame_header hdr;
    const uint8_t *payload = pkt + MF_FRAME_HEADER_SIZE;

    if (!mf_frame_parse(pkt, len, &hdr))
        return -1;
    if (hdr.req_id != req->req_id) {
        mf_errx(EPROTO, "frame type %u carries req_id %llu, expected %llu", hdr.type,
                (unsigned long long)hdr.req_id, (unsigned long long)req->req_id);
        return -1;
    }
    switch (req->state) {
    case MF_REQ_WANT_HEAD:
        if (hdr.type == MF_MSG_REQ_WHOLE) {
            if (!parse_whole(req, payload, hdr.payload_len))
                return -1;
            req->state = MF_REQ_DONE;
            return 1;
        }
        if (hdr.type != MF_MSG_REQ_HEAD) {
            mf_errx(EPROTO, "expected REQ_HEAD or REQ_WHOLE, got frame type %u", hdr.type);
            return -1;
        }
        if (!parse_head(req, payload, hdr.payload_len))
            return -1;
        req->state = MF_REQ_WANT_BODY;
        return 0;
    case MF_REQ_WANT_BODY:
        if (hdr.type == MF_MSG_REQ_BODY) {
            if (hdr.payload_len > req->body_len - req->body_received) {
                mf_errx(EPROTO, "REQ_BODY: chunks exceed body_len %llu",
                        (unsigned long long)req->body_len);
                return -1;
            }
            if (hdr.payload_len > 0)
                memcpy(req->body + req->body_received, payload, hdr.payload_len);
            req->body_received += hdr.payload_len;
            return 0;
        }
        if (hdr.type == MF_MSG_REQ_END) {
            if (hdr.payload_len != 0) {
                mf_errx(EPROTO, "REQ_END: payload of %u bytes, expected none", hdr.payload_len);
                return -1;
            }
            if (req->body_received != req->body_len) {
                mf_errx(EPROTO, "REQ_END: body chunks total %llu bytes, body_len is %llu",
                        (unsigned long long)req->body_received, (unsigned long long)req->body_len);
                return -1;
            }
            req->state = MF_REQ_DONE;
            return 1;
        }
        mf_errx(EPROTO, "expected REQ_BODY or REQ_END, got frame type %u", hdr.type);
        return -1;
    case MF_REQ_DONE:
        break;
    }
    mf_errx(EPROTO, "frame type %u after REQ_END", hdr.type);
    return -1;
}

bool mf_request_recv(int fd, struct mf_request *req)
{
    uint8_t *buf = malloc(MF_PACKET_MAX);
    bool ok = false;

    if (buf == NULL)
        return mf_err("malloc(%u) for a packet", MF_PACKET_MAX);
    for (;;) {
        size_t len, nfds;
        int rc = mf_recv_packet(fd, 0, buf, MF_PACKET_MAX, &len, NULL, 0, &nfds);
        if (rc < 0)
            break;
        if (rc == 0) {
            mf_errx(EPIPE, "request %llu: channel closed before REQ_END",
                    (unsigned long long)req->req_id);
            break;
        }
        /* A persistent channel may hold the tail of a request that was cut
         * short (the front end sends until it hears the end): not ours. */
        struct mf_frame_header hdr;
        if (len >= MF_FRAME_HEADER_SIZE && mf_frame_parse(buf, len, &hdr) && hdr.req_id != req->req_id)
            continue;
        rc = mf_request_feed(req, buf, len);
        if (rc < 0)
            break;
        if (rc == 1) {
            ok = true;
            break;
        }
    }
    free(buf);
    return ok;
}

/* One frame whose payload is `payload` followed by `tail` (tail_len may be 0). */
static bool emit_frame2(mf_packet_sink sink, void *ctx, uint16_t type, uint64_t req_id,
                        const void *payload, uint32_t len, const void *tail, uint32_t tail_len)
{
    struct mf_frame_header hdr;
    struct iovec iov[3];
    int n = 1;

    mf_frame_init(&hdr, type, req_id, len + tail_len);
    iov[0].iov_base = &hdr;
    iov[0].iov_len = sizeof(hdr);
    /* iov_base is not const in the API; the sink only reads. */
    if (len > 0)
        iov[n++] = (struct iovec){.iov_base = (void *)(uintptr_t)payload, .iov_len = len};
    if (tail_len > 0)
        iov[n++] = (struct iovec){.iov_base = (void *)(uintptr_t)tail, .iov_len = tail_len};
    return sink(ctx, iov, n, sizeof(hdr) + len + tail_len);
}

static bool emit_frame(mf_packet_sink sink, void *ctx, uint16_t type, uint64_t req_id,
                       const void *payload, uint32_t len)
{
    return emit_frame2(sink, ctx, type, req_id, payload, len, NULL, 0);
}

/* Appends n bytes to the head buffer, which holds at most MF_MAX_HEAD bytes. */
static bool put(uint8_t *head, uint32_t *off, const void *src, uint64_t n)
{
    if (n > MF_MAX_HEAD - *off)
        return mf_errx(E2BIG, "response head exceeds %u bytes", MF_MAX_HEAD);
    if (n > 0)
        memcpy(head + *off, src, n);
    *off += (uint32_t)n;
    return true;
}

/* The RESP_HEAD payload of resp, with body_len as given, into head
 * (MF_MAX_HEAD bytes); its length in *len. */
static bool encode_head(const struct mf_response *resp, uint64_t body_len, uint8_t *head, uint32_t *len)
{
    struct mf_resp_head h = {.status = resp->status, .header_count = resp->header_count, .body_len = body_len};
    uint32_t off = 0;

    if (resp->header_count > MF_MAX_HEADERS)
        return mf_errx(E2BIG, "response has %u headers, at most %u allowed", resp->header_count,
                       MF_MAX_HEADERS);
    MF_TRY(put(head, &off, &h, sizeof(h)));
    for (uint32_t i = 0; i < resp->header_count; i++) {
        const struct mf_header *src = &resp->headers[i];
        struct mf_header_entry e = {.name_len = src->name_len, .value_len = src->value_len};
        MF_TRY(put(head, &off, &e, sizeof(e)));
        MF_TRY(put(head, &off, src->name, src->name_len));
        MF_TRY(put(head, &off, src->value, src->value_len));
    }
    *len = off;
    return true;
}

/* RESP_BODY frames of at most MF_MAX_PAYLOAD bytes each. */
static bool emit_chunks(mf_packet_sink sink, void *ctx, uint64_t req_id, const uint8_t *data, uint64_t len)
{
    for (uint64_t sent = 0; sent < len;) {
        uint64_t left = len - sent;
        uint32_t chunk = left < MF_MAX_PAYLOAD ? (uint32_t)left : MF_MAX_PAYLOAD;
        MF_TRY(emit_frame(sink, ctx, MF_MSG_RESP_BODY, req_id, data + sent, chunk));
        sent += chunk;
    }
    return true;
}

bool mf_response_emit(uint64_t req_id, const struct mf_response *resp, mf_packet_sink sink, void *ctx)
{
    mf_cleanup_free uint8_t *head = malloc(MF_MAX_HEAD);
    uint32_t off = 0;

    if (head == NULL)
        return mf_err("malloc(%u) for the response head", MF_MAX_HEAD);
    MF_TRY(encode_head(resp, resp->body_len, head, &off));
    if (resp->body_len <= MF_MAX_PAYLOAD - off)
        return emit_frame2(sink, ctx, MF_MSG_RESP_WHOLE, req_id, head, off, resp->body, (uint32_t)resp->body_len);
    MF_TRY(emit_frame(sink, ctx, MF_MSG_RESP_HEAD, req_id, head, off));
    MF_TRY(emit_chunks(sink, ctx, req_id, resp->body, resp->body_len));
    return emit_frame(sink, ctx, MF_MSG_RESP_END, req_id, NULL, 0);
}

bool mf_stream_head_emit(uint64_t req_id, const struct mf_response *resp, mf_packet_sink sink, void *ctx)
{
    mf_cleanup_free uint8_t *head = malloc(MF_MAX_HEAD);
    uint32_t off = 0;

    if (head == NULL)
        return mf_err("malloc(%u) for the response head", MF_MAX_HEAD);
    MF_TRY(encode_head(resp, MF_BODY_STREAMED, head, &off));
    return emit_frame(sink, ctx, MF_MSG_RESP_HEAD, req_id, head, off);
}

bool mf_stream_body_emit(uint64_t req_id, const void *data, uint64_t len, mf_packet_sink sink, void *ctx)
{
    return emit_chunks(sink, ctx, req_id, data, len);
}

static bool socket_sink(void *ctx, const struct iovec *iov, int iovcnt, size_t len)
{
    int fd = *(const int *)ctx;
    /* iov is not modified by sendmsg; the cast only satisfies its prototype. */
    struct msghdr msg = {.msg_iov = (struct iovec *)(uintptr_t)iov, .msg_iovlen = (size_t)iovcnt};
    ssize_t n;

    do
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return mf_err("sendmsg(fd %d, %zu bytes)", fd, len);
    if ((size_t)n != len)
        return mf_errx(EIO, "sendmsg(fd %d) sent %zd of %zu bytes", fd, n, len);
    return true;
}

bool mf_response_send(int fd, uint64_t req_id, const struct mf_response *resp)
{
    return mf_response_emit(req_id, resp, socket_sink, &fd);
}

bool mf_stream_head_send(int fd, uint64_t req_id, const struct mf_response *resp)
{
    return mf_stream_head_emit(req_id, resp, socket_sink, &fd);
}

bool mf_stream_body_send(int fd, uint64_t req_id, const void *data, uint64_t len)
{
    return mf_stream_body_emit(req_id, data, len, socket_sink, &fd);
}

bool mf_response_finish(int fd, uint64_t req_id, const struct mf_response *resp)
{
    if (resp->cut)
        return mf_errx(ECANCELED, "request %llu: the stream was cut", (unsigned long long)req_id);
    if (resp->streamed)
        return mf_send_packet(fd, MF_MSG_RESP_END, req_id, NULL, 0);
    return mf_response_send(fd, req_id, resp);
}

bool mf_send_packet(int fd, uint16_t type, uint64_t req_id, const void *payload, uint32_t len)
{
    return emit_frame(socket_sink, &fd, type, req_id, payload, len);
}

bool mf_send_packet_fd(int sock, const void *packet, size_t len, int fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec iov = {.iov_base = (void *)packet, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    ssize_t n;

    memset(control.buf, 0, sizeof(control.buf));
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return mf_err("sendmsg(fd %d, %zu bytes + fd %d)", sock, len, fd);
    return true;
}

static void close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        (void)close(fds[i]); /* unwanted fds; nothing to do if close fails */
}

int mf_recv_packet(int fd, int flags, uint8_t *buf, size_t cap, size_t *len,
                   int *fds, size_t max_fds, size_t *nfds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MF_RECV_FDS_MAX)];
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    int got[MF_RECV_FDS_MAX];
    size_t ngot = 0;
    ssize_t n;

    *nfds = 0;
    do
        n = recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        mf_err("recvmsg(fd %d)", fd);
        return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && ngot < MF_RECV_FDS_MAX; i++)
            memcpy(&got[ngot++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_fds(got, ngot);
        mf_errx(EMSGSIZE, "recvmsg(fd %d): packet or its fds exceed %zu bytes / %d fds", fd, cap,
                MF_RECV_FDS_MAX);
        return -1;
    }
    if (ngot > max_fds) {
        close_fds(got, ngot);
        mf_errx(EPROTO, "recvmsg(fd %d): packet carries %zu fds, at most %zu expected", fd, ngot,
                max_fds);
        return -1;
    }
    if (n == 0 && ngot == 0) {
        *len = 0;
        return 0;
    }
    if (ngot > 0)
        memcpy(fds, got, ngot * sizeof(int));
    *nfds = ngot;
    *len = (size_t)n;
    return 1;
}
