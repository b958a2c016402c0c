/* Per-request resource limits; see request_limits.h. */
#define _GNU_SOURCE
#include "walls/request_limits.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/wait_status.h"

/* rusage truncates user and system time to microseconds each; the timer
 * only fires once the budget is spent, so this much slack is plenty. */
#define CPU_SLACK_US 1000u

/* soft = hard = value, but never above the hard limit in force. */
static bool set_limit(int resource, const char *name, rlim_t value)
{
    struct rlimit rl;

    if (getrlimit(resource, &rl) < 0)
        return mf_err("getrlimit(%s)", name);
    if (value > rl.rlim_max)
        value = rl.rlim_max;
    rl.rlim_cur = rl.rlim_max = value;
    if (setrlimit(resource, &rl) < 0)
        return mf_err("setrlimit(%s, %llu)", name, (unsigned long long)value);
    return true;
}

/* VmSize in bytes: the first field of statm, in pages. */
static bool address_space_size(uint64_t *out)
{
    const char *path = "/proc/self/statm";
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long pages;
    char buf[128], *end;
    ssize_t n;
    int fd;

    if (page <= 0)
        return mf_err("sysconf(_SC_PAGESIZE)");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mf_err("open(%s, O_RDONLY)", path);
    while ((n = read(fd, buf, sizeof(buf) - 1)) < 0 && errno == EINTR)
        ;
    if (n < 0) {
        mf_err("read(%s)", path);
        (void)close(fd); /* the read error is the one to report */
        return false;
    }
    if (close(fd) < 0)
        return mf_err("close(%s)", path);
    buf[n] = '\0';
    errno = 0;
    pages = strtoull(buf, &end, 10);
    if (errno != 0 || end == buf)
        return mf_errx(EINVAL, "%s: '%s' does not start with a number", path, buf);
    *out = (uint64_t)pages * (uint64_t)page;
    return true;
}

/* The cap counts from what the sandbox already maps (the whole host), so
 * that memory_bytes is what the request itself can add. */
static bool limit_memory(uint64_t memory_bytes)
{
    uint64_t size = 0;

    MF_TRY(address_space_size(&size));
    if (memory_bytes > RLIM_INFINITY - 1 - size)
        return set_limit(RLIMIT_AS, "RLIMIT_AS", RLIM_INFINITY - 1);
    return set_limit(RLIMIT_AS, "RLIMIT_AS", size + memory_bytes);
}

/* A CPU-time timer has millisecond precision where RLIMIT_CPU has whole
 * seconds; the kernel delivers its SIGKILL like any signal (checked on
 * Linux 6.18), so the sandbox cannot catch it. The rlimit stays as a
 * backstop: it survives an execve(), which deletes timers. */
static bool limit_cpu(uint32_t cpu_ms)
{
    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGKILL};
    struct itimerspec budget = {
        .it_value = {.tv_sec = cpu_ms / 1000u, .tv_nsec = (long)(cpu_ms % 1000u) * 1000000L},
    };
    timer_t timer;

    if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &sev, &timer) < 0)
        return mf_err("timer_create(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL SIGKILL)");
    /* Never deleted: it ends with the sandbox. */
    if (timer_settime(timer, 0, &budget, NULL) < 0)
        return mf_err("timer_settime(CPU timer, %u ms)", cpu_ms);
    /* soft = hard: at the hard limit the kernel sends SIGKILL, not SIGXCPU. */
    return set_limit(RLIMIT_CPU, "RLIMIT_CPU", (rlim_t)(cpu_ms + 999u) / 1000u + 1u);
}

bool mf_limits_apply(const struct mf_limits *lim)
{
    /* No core file of tenant memory, whatever the host's dumpable flag. */
    MF_TRY(set_limit(RLIMIT_CORE, "RLIMIT_CORE", 0));
    if (lim->nofile != 0)
        MF_TRY(set_limit(RLIMIT_NOFILE, "RLIMIT_NOFILE", lim->nofile));
    if (lim->memory_bytes != 0)
        MF_TRY(limit_memory(lim->memory_bytes));
    /* Last: the budget should not pay for the set-up above. */
    if (lim->cpu_ms != 0)
        MF_TRY(limit_cpu(lim->cpu_ms));
    return true;
}

bool mf_limits_cpu_exceeded(const struct mf_limits *lim, int wait_status, const struct rusage *ru)
{
    uint64_t used_us;

    if (lim->cpu_ms == 0 || !mf_killed_by(wait_status, SIGKILL))
        return false;
    used_us = (uint64_t)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1000000u +
              (uint64_t)(ru->ru_utime.tv_usec + ru->ru_stime.tv_usec);
    return used_us + CPU_SLACK_US >= (uint64_t)lim->cpu_ms * 1000u;
}
