/* The supervisor's control channel; see control.h. */
#include "front/control.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/routes.h"
#include "wire/front_protocol.h"
#include "wire/proto.h"

/* An answer is small and the supervisor reads it: a blocking send on the
 * main thread, which serves nothing else. */
static bool send_answer(int fd, uint16_t type, uint64_t generation, const char *reason)
{
    size_t reason_len = reason ? strlen(reason) : 0;
    if (reason_len > 1024)
        reason_len = 1024;
    char packet[MF_FRAME_HEADER_SIZE + sizeof(struct mf_routes_ack) + 1024];
    struct mf_routes_ack ack = {.generation = generation};
    struct mf_frame_header header;
    mf_frame_init(&header, type, 0, (uint32_t)(sizeof(ack) + reason_len));
    memcpy(packet, &header, sizeof(header));
    memcpy(packet + sizeof(header), &ack, sizeof(ack));
    if (reason_len > 0)
        memcpy(packet + sizeof(header) + sizeof(ack), reason, reason_len);
    size_t len = sizeof(header) + sizeof(ack) + reason_len;
    ssize_t sent = send(fd, packet, len, MSG_NOSIGNAL);
    if (sent < 0)
        return mf_err("send(control %d, type %u)", fd, type);
    return true;
}

/* One message: a bad one is logged and refused, the old table stays. */
static bool handle(int fd, const char *packet, size_t len, struct mf_front_loop *loops, unsigned count)
{
    struct mf_frame_header header;
    uint64_t generation = 0;
    struct mf_routes *routes = NULL;
    bool ok = false;
    if (len >= sizeof(header) + sizeof(generation))
        memcpy(&generation, packet + sizeof(header), sizeof(generation)); /* to name it in a refusal */
    if (mf_frame_parse((const uint8_t *)packet, len, &header)) { /* else: its error says why */
        if (header.type != MF_MSG_ROUTES)
            (void)mf_errx(EINVAL, "control: unexpected message type %u", header.type);
        else
            ok = mf_routes_decode(packet + sizeof(header), header.payload_len, &routes);
    }
    if (!ok) {
        mf_warn_last();
        return send_answer(fd, MF_MSG_ROUTES_REFUSED, generation, mf_last_error());
    }
    generation = routes->generation;
    mf_routes_publish(loops, count, routes); /* routes belongs to the loops now */
    return send_answer(fd, MF_MSG_ROUTES_ACK, generation, NULL);
}

bool mf_control_run(int control_fd, const sigset_t *signals, struct mf_front_loop *loops, unsigned count)
{
    mf_cleanup_fd int signal_fd = signalfd(-1, signals, SFD_CLOEXEC);
    if (signal_fd < 0)
        return mf_err("signalfd(TERM|INT)");
    /* One byte more than the largest message: a longer one shows as too long. */
    size_t cap = MF_FRAME_HEADER_SIZE + MF_MAX_ROUTES_PAYLOAD + 1;
    mf_cleanup_free char *packet = malloc(cap);
    if (packet == NULL)
        return mf_err("malloc(%zu)", cap);
    for (;;) {
        struct pollfd fds[2] = {{.fd = signal_fd, .events = POLLIN}, {.fd = control_fd, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return mf_err("poll(signalfd %d, control %d)", signal_fd, control_fd);
        }
        if (fds[0].revents != 0)
            return true; /* SIGTERM or SIGINT */
        if (fds[1].revents == 0)
            continue;
        ssize_t n = recv(control_fd, packet, cap, MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return mf_err("recv(control %d)", control_fd);
        }
        if (n == 0) {
            mf_warn("control channel closed: the supervisor is gone, ending");
            return true;
        }
        if ((size_t)n >= cap) {
            mf_warn("control: a message of %zd bytes, over %u", n, MF_FRAME_HEADER_SIZE + MF_MAX_ROUTES_PAYLOAD);
            MF_TRY(send_answer(control_fd, MF_MSG_ROUTES_REFUSED, 0, "message too long"));
            continue;
        }
        MF_TRY(handle(control_fd, packet, (size_t)n, loops, count));
    }
}
