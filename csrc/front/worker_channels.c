/*
 * A reset host's persistent request channels in one loop (wire/protocol.h,
 * "request channel"): per worker slot the front end's end of that worker's
 * channel, which the host sends with WORKER_CHANNEL and withdraws with
 * WORKER_GONE. A call borrows its worker's channel from DISPATCHED to its
 * answer and then only unwatches it (sandbox_call.c); a slot's channel is
 * closed here, once no call holds it. A channel outlives its requests,
 * so whatever a finished request wrote on it (junk after its answer, a
 * forged frame for the next one) is read and dropped here, before the next
 * request is written and once the host reports the last one ended: no
 * request's bytes ever reach another's answer.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/hosts.h"

/* The front end's end of each worker slot's channel, -1: none. */
struct mf_worker_channels {
    int fd[MF_MAX_WORKER_SLOTS];
};

/* What one drain reads at most. The worker is idle or done when we drain
 * (no new packets come), so only a host's mistake could reach it; the
 * bound keeps the loop's turn short whatever happens. */
#define DISCARD_MAX 4096u

struct mf_worker_channels *mf_worker_channels_new(void)
{
    struct mf_worker_channels *w = malloc(sizeof(*w));
    if (w == NULL) {
        mf_err("malloc(%zu) for worker channels", sizeof(*w));
        return NULL;
    }
    for (size_t i = 0; i < MF_MAX_WORKER_SLOTS; i++)
        w->fd[i] = -1;
    return w;
}

/* The slot a WORKER_CHANNEL, WORKER_GONE or DISPATCHED names; -1 (warned) if bad. */
static int slot_of(uint64_t host_id, const struct mf_frame_header *header, const uint8_t *payload)
{
    struct mf_worker_slot slot;
    if (header->payload_len != sizeof(slot)) {
        mf_warn("host %" PRIu64 ": message type %u of %u bytes, not a worker slot's %zu", host_id, header->type,
                header->payload_len, sizeof(slot));
        return -1;
    }
    memcpy(&slot, payload, sizeof(slot));
    if (slot.worker >= MF_MAX_WORKER_SLOTS) {
        mf_warn("host %" PRIu64 ": message type %u names worker %u, slots end at %u", host_id, header->type,
                slot.worker, MF_MAX_WORKER_SLOTS);
        return -1;
    }
    return (int)slot.worker;
}

/* The slot's channel becomes fd (taken; -1: none); the old one is closed. */
static void set_channel(struct mf_worker_channels *w, int slot, int fd)
{
    /* Nobody watches it now: the calls that borrowed it let go first. */
    if (w->fd[slot] >= 0 && close(w->fd[slot]) < 0)
        mf_warn("close(worker %d's request channel %d) failed: %s", slot, w->fd[slot], strerror(errno));
    w->fd[slot] = fd;
}

/* Reads and drops what is queued on the slot's channel, warning with the
 * count: before request req_id runs there, or after its answer. */
static void discard(const struct mf_worker_channels *w, int slot, uint64_t host_id, uint64_t req_id, bool after)
{
    int fd = w->fd[slot];
    if (fd < 0)
        return;
    unsigned dropped = 0;
    char byte;
    while (dropped < DISCARD_MAX) {
        /* One byte takes the whole packet off a SOCK_SEQPACKET queue. */
        ssize_t n = recv(fd, &byte, sizeof(byte), MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* EAGAIN: all of it; EOF or an error: the worker is gone, its
             * request's reading (or the host) says so. */
            if (n < 0 && errno != EAGAIN && errno != ECONNRESET)
                mf_warn("recv(worker %d's request channel %d) failed: %s", slot, fd, strerror(errno));
            break;
        }
        dropped++;
    }
    if (dropped == 0)
        return;
    if (after)
        mf_warn("host %" PRIu64 ": dropped %u%s packets request %" PRIu64 " sent after its answer on worker %d's "
                "channel", host_id, dropped, dropped == DISCARD_MAX ? " or more" : "", req_id, slot);
    else
        mf_warn("host %" PRIu64 ": dropped %u%s packets an earlier request left on worker %d's channel, before "
                "request %" PRIu64, host_id, dropped, dropped == DISCARD_MAX ? " or more" : "", slot, req_id);
}

void mf_worker_channels_close(struct mf_worker_channels *w)
{
    if (w == NULL)
        return;
    for (int slot = 0; slot < MF_MAX_WORKER_SLOTS; slot++)
        set_channel(w, slot, -1);
}

/* WORKER_CHANNEL (the slot's new channel, its fd taken) or WORKER_GONE. */
void mf_worker_changed(struct mf_host *host, const struct mf_frame_header *header, const uint8_t *payload, int *fd)
{
    int slot = slot_of(host->host_id, header, payload);
    if (slot < 0)
        return;
    if ((header->type == MF_MSG_WORKER_CHANNEL) != (*fd >= 0)) {
        mf_warn("host %" PRIu64 ": message type %u for worker %d with%s an fd", host->host_id, header->type, slot,
                *fd >= 0 ? "" : "out");
        return;
    }
    /* The host sends these after the worker's last CHILD_EXIT, so no call
     * should still hold the old channel; one that does lost its worker. */
    for (struct mf_call *c = host->calls, *next; c != NULL; c = next) {
        next = c->next;
        if (c->worker != slot)
            continue;
        mf_call_drop_channel(c); /* out of epoll before the close */
        c->worker = -1;
        if (c->stage == MF_CALL_RUNNING && !c->eof) {
            c->eof = true;
            (void)mf_call_read(c);
        }
    }
    set_channel(host->workers, slot, mf_steal_fd(fd));
}

static bool slot_busy(const struct mf_host *host, int slot)
{
    for (const struct mf_call *c = host->calls; c != NULL; c = c->next)
        if (c->worker == slot)
            return true;
    return false;
}

/* DISPATCHED: the request runs on that worker; the call borrows its
 * channel (it writes the request there and reads the answer) until the
 * answer. */
void mf_worker_dispatched(struct mf_host *host, struct mf_call *call, const struct mf_frame_header *header,
                          const uint8_t *payload)
{
    if (call->stage != MF_CALL_RUNNING)
        return; /* answered already (CANCEL sent): the host aborts the worker */
    int slot = slot_of(host->host_id, header, payload);
    const char *problem = slot < 0                      ? "no such slot"
                          : call->worker >= 0           ? "the request was dispatched already"
                          : host->workers->fd[slot] < 0 ? "it has no request channel here"
                          : slot_busy(host, slot)       ? "another request holds its channel"
                                                        : NULL;
    if (problem != NULL) {
        mf_errx(EPROTO, "DISPATCHED to worker %d: %s", slot, problem);
        mf_call_invalid(call, MF_FEED_INVALID);
        return;
    }
    /* Nothing a finished request wrote reaches this one. */
    discard(host->workers, slot, host->host_id, call->req_id, false);
    call->watch = (struct mf_front_watch){.fd = host->workers->fd[slot], .ready = mf_call_ready};
    if (!mf_front_watch_add(host->hosts->loop, &call->watch, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)) {
        call->watch.fd = -1; /* never watched, not ours */
        mf_call_invalid(call, MF_FEED_INVALID);
        return;
    }
    call->worker = slot;
    call->delivered = true; /* from here on the worker may read it */
    mf_call_send(call);
    (void)mf_call_read(call); /* edge triggered: what is there already */
}

/* What it wrote after its answer must not reach the worker's next request. */
void mf_worker_reported(struct mf_host *host, int worker, uint64_t req_id)
{
    discard(host->workers, worker, host->host_id, req_id, true);
}
