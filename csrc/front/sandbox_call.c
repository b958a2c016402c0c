/*
 * One request's channel to its sandbox (wire/protocol.h, "request
 * channel"): a fork host's socketpair, the call's own, or a reset worker's
 * persistent channel, borrowed from DISPATCHED to the answer
 * (worker_channels.c). The request's frames out, without blocking the loop
 * (a large body goes as the sandbox reads it), and the answer's frames in, checked
 * exactly as protocol.py's ResponseDecoder checks them: frame order,
 * req_id, status 100..599, at most MF_MAX_HEADERS headers with token names
 * and values without CR, LF or NUL, no trailing bytes, the body's length
 * as announced and within the tenant's max_response. A streamed answer's
 * chunks are handed on one by one, counted against max_response.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "front/conn.h"
#include "front/hosts.h"
#include "wire/proto.h"

static void put(uint8_t *buf, uint32_t *off, const void *data, size_t len)
{
    if (len > 0)
        memcpy(buf + *off, data, len);
    *off += (uint32_t)len;
}

bool mf_call_encode(struct mf_call *call)
{
    const struct mf_front_request *r = call->request;
    if (r->header_count > MF_MAX_HEADERS)
        return mf_errx(E2BIG, "%zu headers, at most %u", r->header_count, MF_MAX_HEADERS);
    /* Sized first: most heads are far below a frame's 64 KiB. */
    uint64_t size = sizeof(struct mf_req_head) + (uint64_t)r->method_len + r->path_len + r->query_len + r->client_len;
    for (size_t i = 0; i < r->header_count; i++)
        size += sizeof(struct mf_header_entry) + (uint64_t)r->headers[i].name_len + r->headers[i].value_len;
    if (size > MF_MAX_PAYLOAD)
        return mf_errx(E2BIG, "a request head of %llu bytes does not fit a %u-byte frame", (unsigned long long)size,
                       MF_MAX_PAYLOAD);
    uint8_t *head = malloc((size_t)size);
    if (head == NULL)
        return mf_err("malloc(%llu) for a request head", (unsigned long long)size);
    struct mf_req_head h = {
        .method_len = (uint32_t)r->method_len, .path_len = (uint32_t)r->path_len,
        .query_len = (uint32_t)r->query_len, .client_len = (uint32_t)r->client_len,
        .header_count = (uint32_t)r->header_count, .body_len = r->body_len};
    uint32_t off = 0;
    put(head, &off, &h, sizeof(h));
    put(head, &off, r->method, r->method_len);
    put(head, &off, r->path, r->path_len);
    put(head, &off, r->query, r->query_len);
    put(head, &off, r->client, r->client_len);
    for (size_t i = 0; i < r->header_count; i++) {
        const struct mf_front_header *hd = &r->headers[i];
        struct mf_header_entry e = {.name_len = (uint32_t)hd->name_len, .value_len = (uint32_t)hd->value_len};
        put(head, &off, &e, sizeof(e));
        put(head, &off, hd->name, hd->name_len);
        put(head, &off, hd->value, hd->value_len);
    }
    call->head = head;
    call->head_len = off;
    call->send_stage = 0;
    call->body_sent = 0;
    return true;
}

/* One frame: header, then up to two pieces of payload. False: not now. */
static bool send_frame(struct mf_call *call, uint16_t type, const void *a, size_t a_len, const void *b, size_t b_len)
{
    struct mf_frame_header hdr;
    mf_frame_init(&hdr, type, call->req_id, (uint32_t)(a_len + b_len));
    struct iovec iov[3] = {{.iov_base = &hdr, .iov_len = sizeof(hdr)}};
    int n = 1;
    /* iov_base is not const in the API; sendmsg only reads. */
    if (a_len > 0)
        iov[n++] = (struct iovec){.iov_base = (void *)(uintptr_t)a, .iov_len = a_len};
    if (b_len > 0)
        iov[n++] = (struct iovec){.iov_base = (void *)(uintptr_t)b, .iov_len = b_len};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    for (;;) {
        if (sendmsg(call->watch.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
            return true;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            call->send_stage = 3; /* the sandbox is gone or closed its end: reading tells how */
        return false;
    }
}

void mf_call_send(struct mf_call *call)
{
    const struct mf_front_request *r = call->request;
    if (call->watch.fd < 0 || r == NULL)
        return;
    while (call->send_stage < 3) {
        switch (call->send_stage) {
        case 0:
            if (call->head_len + r->body_len <= MF_MAX_PAYLOAD) {
                if (!send_frame(call, MF_MSG_REQ_WHOLE, call->head, call->head_len, r->body, r->body_len))
                    return;
                call->send_stage = 3;
                break;
            }
            if (!send_frame(call, MF_MSG_REQ_HEAD, call->head, call->head_len, NULL, 0))
                return;
            call->send_stage = r->body_len > 0 ? 1 : 2;
            break;
        case 1: {
            uint64_t left = r->body_len - call->body_sent;
            size_t chunk = left < MF_MAX_PAYLOAD ? (size_t)left : MF_MAX_PAYLOAD;
            if (!send_frame(call, MF_MSG_REQ_BODY, r->body + call->body_sent, chunk, NULL, 0))
                return;
            call->body_sent += chunk;
            if (call->body_sent == r->body_len)
                call->send_stage = 2;
            break;
        }
        default:
            if (!send_frame(call, MF_MSG_REQ_END, NULL, 0, NULL, 0))
                return;
            call->send_stage = 3;
        }
    }
}

static bool is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RESP_HEAD's payload (or RESP_WHOLE's without its body). */
static enum mf_feed parse_head(struct mf_call *call, const uint8_t *payload, uint32_t len)
{
    struct mf_resp_head h;
    if (len < sizeof(h))
        return mf_errx(EPROTO, "RESP_HEAD too short"), MF_FEED_INVALID;
    memcpy(&h, payload, sizeof(h));
    if (h.status < 100 || h.status > 599)
        return mf_errx(EPROTO, "status %u outside 100-599", h.status), MF_FEED_INVALID;
    if (h.header_count > MF_MAX_HEADERS)
        return mf_errx(EPROTO, "%u headers, at most %u", h.header_count, MF_MAX_HEADERS), MF_FEED_INVALID;
    if (h.body_len != MF_BODY_STREAMED && h.body_len > call->max_response)
        return mf_errx(EFBIG, "response body of %llu bytes exceeds the limit of %llu",
                       (unsigned long long)h.body_len, (unsigned long long)call->max_response),
               MF_FEED_TOO_LARGE;
    call->resp_head = malloc(len);
    call->headers = calloc(h.header_count ? h.header_count : 1, sizeof(*call->headers));
    if (call->resp_head == NULL || call->headers == NULL)
        return mf_err("malloc(%u) for a response head", len), MF_FEED_INVALID;
    memcpy(call->resp_head, payload, len);
    const uint8_t *p = call->resp_head;
    uint32_t off = sizeof(h);
    for (uint32_t i = 0; i < h.header_count; i++) {
        struct mf_header_entry e;
        if (len - off < sizeof(e))
            return mf_errx(EPROTO, "header entry beyond the payload"), MF_FEED_INVALID;
        memcpy(&e, p + off, sizeof(e));
        off += sizeof(e);
        if ((uint64_t)e.name_len + e.value_len > len - off)
            return mf_errx(EPROTO, "header beyond the payload"), MF_FEED_INVALID;
        const uint8_t *name = p + off, *value = p + off + e.name_len;
        off += e.name_len + e.value_len;
        if (e.name_len == 0)
            return mf_errx(EPROTO, "invalid header name ''"), MF_FEED_INVALID;
        for (uint32_t k = 0; k < e.name_len; k++)
            if (!is_tchar(name[k]))
                return mf_errx(EPROTO, "invalid header name"), MF_FEED_INVALID;
        for (uint32_t k = 0; k < e.value_len; k++)
            if (value[k] == '\r' || value[k] == '\n' || value[k] == '\0')
                return mf_errx(EPROTO, "header %.*s carries CR, LF or NUL", (int)e.name_len, (const char *)name),
                       MF_FEED_INVALID;
        call->headers[i] = (struct mf_front_header){
            .name = (const char *)name, .name_len = e.name_len, .value = (const char *)value, .value_len = e.value_len};
    }
    if (off != len)
        return mf_errx(EPROTO, "trailing bytes after the headers"), MF_FEED_INVALID;
    call->status = h.status;
    call->header_count = h.header_count;
    call->body_len = h.body_len;
    call->have_head = true;
    call->streaming = h.body_len == MF_BODY_STREAMED;
    return call->streaming ? MF_FEED_STREAM_HEAD : MF_FEED_MORE;
}

/* A streamed answer's frame after its head: a chunk, or its end. */
static enum mf_feed stream_feed(struct mf_call *call, uint16_t type, const uint8_t *payload, uint32_t len)
{
    if (type == MF_MSG_RESP_END)
        return len == 0 ? MF_FEED_DONE : (mf_errx(EPROTO, "RESP_END carries a payload"), MF_FEED_INVALID);
    if (type != MF_MSG_RESP_BODY)
        return mf_errx(EPROTO, "unexpected frame type %u in a streamed body", type), MF_FEED_INVALID;
    if (len > call->max_response - call->streamed)
        return mf_errx(EFBIG, "streamed response body exceeds the limit of %llu bytes",
                       (unsigned long long)call->max_response),
               MF_FEED_TOO_LARGE;
    call->streamed += len;
    call->chunk = payload;
    call->chunk_len = len;
    return MF_FEED_CHUNK;
}

static enum mf_feed add_body(struct mf_call *call, const uint8_t *data, size_t len)
{
    if (len > call->body_len - call->body_received)
        return mf_errx(EPROTO, "body exceeds announced %llu bytes", (unsigned long long)call->body_len),
               MF_FEED_INVALID;
    if (len == 0)
        return MF_FEED_MORE;
    /* Grown as it arrives, not as announced: an announcement costs nothing. */
    if (!mf_reserve(&call->body, &call->body_cap, call->body_received + len, 64 * 1024))
        return MF_FEED_INVALID;
    memcpy(call->body + call->body_received, data, len);
    call->body_received += len;
    return MF_FEED_MORE;
}

enum mf_feed mf_call_feed(struct mf_call *call, const uint8_t *packet, size_t len)
{
    struct mf_frame_header hdr;
    if (len > MF_PACKET_MAX)
        return mf_errx(EPROTO, "a packet over %u bytes", MF_PACKET_MAX), MF_FEED_INVALID;
    if (!mf_frame_parse(packet, len, &hdr))
        return MF_FEED_INVALID;
    if (hdr.req_id != call->req_id)
        return mf_errx(EPROTO, "frame for request %llu on the channel of %llu", (unsigned long long)hdr.req_id,
                       (unsigned long long)call->req_id),
               MF_FEED_INVALID;
    const uint8_t *payload = packet + MF_FRAME_HEADER_SIZE;
    uint32_t plen = hdr.payload_len;
    if (!call->have_head) {
        if (hdr.type == MF_MSG_RESP_WHOLE) {
            struct mf_resp_head h;
            if (plen < sizeof(h))
                return mf_errx(EPROTO, "RESP_WHOLE too short"), MF_FEED_INVALID;
            memcpy(&h, payload, sizeof(h));
            /* MF_BODY_STREAMED is over any payload: no whole answer streams. */
            if (h.body_len > plen - sizeof(h))
                return mf_errx(EPROTO, "RESP_WHOLE announces %llu body bytes, carries fewer",
                               (unsigned long long)h.body_len),
                       MF_FEED_INVALID;
            uint32_t head_len = plen - (uint32_t)h.body_len;
            enum mf_feed got = parse_head(call, payload, head_len);
            if (got != MF_FEED_MORE)
                return got;
            got = add_body(call, payload + head_len, (size_t)h.body_len);
            return got == MF_FEED_MORE ? MF_FEED_DONE : got;
        }
        if (hdr.type != MF_MSG_RESP_HEAD)
            return mf_errx(EPROTO, "expected RESP_HEAD or RESP_WHOLE, got type %u", hdr.type), MF_FEED_INVALID;
        return parse_head(call, payload, plen);
    }
    if (call->streaming)
        return stream_feed(call, hdr.type, payload, plen);
    if (hdr.type == MF_MSG_RESP_BODY)
        return add_body(call, payload, plen);
    if (hdr.type == MF_MSG_RESP_END) {
        if (plen != 0)
            return mf_errx(EPROTO, "RESP_END carries a payload"), MF_FEED_INVALID;
        if (call->body_received != call->body_len)
            return mf_errx(EPROTO, "body of %zu bytes, announced %llu", call->body_received,
                           (unsigned long long)call->body_len),
                   MF_FEED_INVALID;
        return MF_FEED_DONE;
    }
    return mf_errx(EPROTO, "unexpected frame type %u in a response body", hdr.type), MF_FEED_INVALID;
}

void mf_call_response(struct mf_call *call, struct mf_front_response *out)
{
    *out = (struct mf_front_response){
        .status = (int)call->status, .headers = call->headers, .header_count = call->header_count,
        .body = call->body != NULL ? call->body : "", .body_len = call->body_received};
}

void mf_call_drop_channel(struct mf_call *call)
{
    if (call->watch.fd < 0)
        return;
    if (call->worker >= 0) {
        /* The worker's, for its next request: unwatched, left open. */
        if (!mf_front_watch_remove(call->hosts->loop, &call->watch))
            mf_warn_last();
    } else if (close(call->watch.fd) < 0) { /* also takes it out of the epoll set */
        mf_warn("close(request channel %d) failed: %s", call->watch.fd, strerror(errno));
    }
    call->watch.fd = -1;
}

void mf_call_release(struct mf_call *call)
{
    mf_call_drop_channel(call);
    free(call->head);
    free(call->resp_head);
    free(call->body);
    free(call->headers);
    call->head = call->resp_head = NULL;
    call->body = NULL;
    call->headers = NULL;
    call->body_cap = call->body_received = 0;
    call->have_head = false;
    call->eof = false;
    call->paused = false;
}
