/*
 * Per-request limits that a sandbox sets on itself right after its fork:
 * no core files, open files, address space, CPU time. The request's
 * seccomp filter comes after them (fork_engine.c), so that the sandbox
 * cannot lift them once tenant code runs.
 */
#ifndef MAYFLYD_REQUEST_LIMITS_H
#define MAYFLYD_REQUEST_LIMITS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>

struct mf_limits {
    uint32_t cpu_ms;        /* CPU time budget; 0 = none */
    uint64_t memory_bytes;  /* address space the request may add; 0 = no cap */
    uint32_t nofile;        /* RLIMIT_NOFILE (soft = hard); 0 = inherited */
};

/*
 * In the sandbox: RLIMIT_CORE 0; RLIMIT_NOFILE; RLIMIT_AS = current size
 * (from /proc/self/statm) + memory_bytes; a CPU-time timer that SIGKILLs
 * at cpu_ms, with RLIMIT_CPU ceil(cpu_ms / 1000) + 1 s as a backstop. No
 * limit is set above the hard limit already in force (raising one needs
 * CAP_SYS_RESOURCE, and the lower one is stricter anyway).
 */
bool mf_limits_apply(const struct mf_limits *lim);

/* In the host: whether a reaped sandbox died of its CPU budget (SIGKILL
 * after using at least cpu_ms of CPU time). */
bool mf_limits_cpu_exceeded(const struct mf_limits *lim, int wait_status, const struct rusage *ru);

#endif /* MAYFLYD_REQUEST_LIMITS_H */
