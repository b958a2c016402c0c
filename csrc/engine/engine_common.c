/* Helpers shared by the engines; see engine_common.h. */
#define _GNU_SOURCE
#include "engine/engine_common.h"

#include <errno.h>
#include <string.h>
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
