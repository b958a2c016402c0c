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

static struct mf_front_mail *new_mail(uint16_t type, const char *name, size_t name_len)
{
    struct mf_front_mail *mail = calloc(1, sizeof(*mail));
    if (mail == NULL) {
        mf_err("calloc(mail)");
        return NULL;
    }
    mail->type = type;
    mail->fd = -1;
    if (name_len > MF_ROUTE_MAX_NAME || (name_len == 0 && type != MF_MSG_HOST_DETACH)) {
        free(mail);
        mf_errx(EINVAL, "control: a tenant name of %zu bytes", name_len);
        return NULL;
    }
    if (name_len > 0)
        memcpy(mail->name, name, name_len);
    mail->name_len = name_len;
    return mail;
}

/* HOST_ATTACH: to the loop named; takes *fd. */
static bool host_attach(const char *payload, size_t len, int *fd, struct mf_front_loop *loops, unsigned count)
{
    struct mf_host_attach attach;
    if (len < sizeof(attach))
        return mf_errx(EINVAL, "HOST_ATTACH of %zu bytes", len);
    memcpy(&attach, payload, sizeof(attach));
    if (attach.name_len != len - sizeof(attach) || attach.thread >= count || *fd < 0)
        return mf_errx(EINVAL, "HOST_ATTACH: name of %u bytes in %zu, thread %u of %u, %s fd", attach.name_len,
                       len - sizeof(attach), attach.thread, count, *fd < 0 ? "no" : "an");
    if (attach.engine > MF_ENGINE_RESET) /* 0: a sender from before the field, a fork host */
        return mf_errx(EINVAL, "HOST_ATTACH: engine %u", attach.engine);
    struct mf_front_mail *mail = new_mail(MF_MSG_HOST_ATTACH, payload + sizeof(attach), attach.name_len);
    if (mail == NULL)
        return false;
    mail->host_id = attach.host_id;
    mail->engine = attach.engine == MF_ENGINE_RESET ? MF_ENGINE_RESET : MF_ENGINE_FORK;
    mail->fd = mf_steal_fd(fd);
    mf_loop_post(&loops[attach.thread], mail);
    return true;
}

/* HOST_DETACH and TENANT_STATE: to every loop. */
static bool broadcast(uint16_t type, uint64_t host_id, uint32_t state, const char *name, size_t name_len,
                      struct mf_front_loop *loops, unsigned count)
{
    for (unsigned i = 0; i < count; i++) {
        struct mf_front_mail *mail = new_mail(type, name, name_len);
        if (mail == NULL)
            return false;
        mail->host_id = host_id;
        mail->state = state;
        mf_loop_post(&loops[i], mail);
    }
    return true;
}

static bool tenant_state(const char *payload, size_t len, struct mf_front_loop *loops, unsigned count)
{
    struct mf_tenant_state state;
    if (len < sizeof(state))
        return mf_errx(EINVAL, "TENANT_STATE of %zu bytes", len);
    memcpy(&state, payload, sizeof(state));
    if (state.name_len > len - sizeof(state) || (state.state != MF_TENANT_STARTING && state.state != MF_TENANT_DOWN))
        return mf_errx(EINVAL, "TENANT_STATE: state %u, name of %u bytes in %zu", state.state, state.name_len,
                       len - sizeof(state));
    const char *name = payload + sizeof(state);
    const char *reason = name + state.name_len;
    size_t reason_len = len - sizeof(state) - state.name_len;
    MF_TRY(broadcast(MF_MSG_TENANT_STATE, 0, state.state, name, state.name_len, loops, count));
    /* Once per change here, not once per request in the loops. */
    if (state.state == MF_TENANT_DOWN)
        mf_warn("tenant %.*s is down: %.*s", (int)state.name_len, name, (int)(reason_len > 1024 ? 1024 : reason_len),
                reason);
    return true;
}

/* A message other than ROUTES: a bad one is logged and dropped. */
static void handle_host_message(const struct mf_frame_header *header, const char *payload, int *fd,
                                struct mf_front_loop *loops, unsigned count)
{
    bool ok;
    if (header->type == MF_MSG_HOST_ATTACH) {
        ok = host_attach(payload, header->payload_len, fd, loops, count);
    } else if (*fd >= 0) {
        ok = mf_errx(EINVAL, "control: message type %u carries an fd", header->type);
    } else if (header->type == MF_MSG_HOST_DETACH) {
        struct mf_host_detach detach;
        ok = header->payload_len == sizeof(detach);
        if (ok) {
            memcpy(&detach, payload, sizeof(detach));
            ok = broadcast(MF_MSG_HOST_DETACH, detach.host_id, 0, NULL, 0, loops, count);
        } else {
            mf_errx(EINVAL, "HOST_DETACH of %u bytes", header->payload_len);
        }
    } else {
        ok = tenant_state(payload, header->payload_len, loops, count);
    }
    if (!ok)
        mf_warn_last();
}

/* One message: a bad table is logged and refused, the old table stays. */
static bool handle(int fd, const char *packet, size_t len, int *passed_fd, struct mf_front_loop *loops,
                   unsigned count)
{
    struct mf_frame_header header;
    uint64_t generation = 0;
    struct mf_routes *routes = NULL;
    bool ok = false;
    if (len >= sizeof(header) + sizeof(generation))
        memcpy(&generation, packet + sizeof(header), sizeof(generation)); /* to name it in a refusal */
    if (mf_frame_parse((const uint8_t *)packet, len, &header)) { /* else: its error says why */
        if (header.type == MF_MSG_LEAVING) {
            if (header.payload_len != 0 || *passed_fd >= 0)
                mf_warn("control: LEAVING with a payload of %u bytes%s: ignored", header.payload_len,
                        *passed_fd >= 0 ? " and an fd" : "");
            else
                mf_loops_leave();
            return true;
        }
        if (header.type == MF_MSG_HOST_ATTACH || header.type == MF_MSG_HOST_DETACH
            || header.type == MF_MSG_TENANT_STATE) {
            handle_host_message(&header, packet + sizeof(header), passed_fd, loops, count);
            return true;
        }
        if (header.type != MF_MSG_ROUTES)
            (void)mf_errx(EINVAL, "control: unexpected message type %u", header.type);
        else if (*passed_fd >= 0)
            (void)mf_errx(EINVAL, "control: ROUTES carries an fd");
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

bool mf_control_run(int control_fd, const sigset_t *signals, struct mf_front_loop *loops, unsigned count,
                    bool *signalled)
{
    *signalled = false;
    mf_cleanup_fd int signal_fd = signalfd(-1, signals, SFD_CLOEXEC);
    if (signal_fd < 0)
        return mf_err("signalfd(TERM|INT)");
    size_t cap = MF_FRAME_HEADER_SIZE + MF_MAX_ROUTES_PAYLOAD;
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
        if (fds[0].revents != 0) { /* SIGTERM or SIGINT: taken, so that only another one counts as a second */
            struct signalfd_siginfo info;
            if (read(signal_fd, &info, sizeof(info)) < 0)
                return mf_err("read(signalfd %d)", signal_fd);
            *signalled = true;
            return true;
        }
        if (fds[1].revents == 0)
            continue;
        size_t n, nfds;
        mf_cleanup_fd int fd = -1;
        int got = mf_recv_packet(control_fd, MSG_DONTWAIT, (uint8_t *)packet, cap, &n, &fd, 1, &nfds);
        if (got < 0) {
            if (errno == EAGAIN)
                continue;
            if (errno == EMSGSIZE || errno == EPROTO) { /* too long, or too many fds: closed */
                mf_warn_last();
                MF_TRY(send_answer(control_fd, MF_MSG_ROUTES_REFUSED, 0, mf_last_error()));
                continue;
            }
            return false; /* recorded */
        }
        if (got == 0) {
            mf_warn("control channel closed: the supervisor is gone, ending");
            return true;
        }
        MF_TRY(handle(control_fd, packet, n, &fd, loops, count));
    }
}
