/* Helpers shared by the engines; see engine_common.h. */
#define _GNU_SOURCE
#include "engine/engine_common.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"

uint64_t mf_now_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

bool mf_now_ms(uint64_t *out)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return mf_err("clock_gettime(CLOCK_MONOTONIC)");
    *out = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return true;
}

void mf_close_or_warn(int fd, const char *what)
{
    if (fd >= 0 && close(fd) < 0)
        mf_warn("close(%s fd %d) failed: %s", what, fd, strerror(errno));
}

int mf_poll_timeout(uint64_t now, uint64_t next)
{
    if (next == UINT64_MAX)
        return -1;
    if (next <= now)
        return 0;
    return next - now > INT_MAX ? INT_MAX : (int)(next - now);
}

bool mf_is_seqpacket_unix(int fd)
{
    int type = 0, domain = 0;
    socklen_t len = sizeof(type);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return mf_err("getsockopt(fd %d, SO_TYPE)", fd);
    len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
        return mf_err("getsockopt(fd %d, SO_DOMAIN)", fd);
    if (type != SOCK_SEQPACKET || domain != AF_UNIX)
        return mf_errx(EPROTOTYPE, "request fd %d is not an AF_UNIX SOCK_SEQPACKET socket", fd);
    return true;
}
