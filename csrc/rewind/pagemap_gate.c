/* PAGEMAP_SCAN only from the rewinder's own syscall; see pagemap_gate.h. */
#define _GNU_SOURCE
#include "rewind/pagemap_gate.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#include "rewind/gate_filter.h"
#include "base/log.h"
#include "walls/seccomp.h"

#if !defined(__x86_64__)
#error "the pagemap gate's syscall stub and filter are written for x86_64"
#endif

/* ioctl(2) from a known address (gate_filter.h). */
long mf_pagemap_syscall(long fd, long cmd, long arg);
extern const char mf_pagemap_syscall_after[];
MF_GATE_STUB(mf_pagemap_syscall, SYS_ioctl, "");

long mf_pagemap_scan(int fd, struct pm_scan_arg *arg)
{
    long ret = mf_pagemap_syscall(fd, (long)PAGEMAP_SCAN, (long)(uintptr_t)arg);
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

bool mf_pagemap_gate_load(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)mf_pagemap_syscall_after;
    /* Everything else passes here; the request filter below decides it. */
    struct sock_filter prog[] = {
        MF_GATE_HEAD(SYS_ioctl, 2),
        /* The kernel reads cmd as 32 bits: compare only those. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_LOW(MF_GATE_DATA(args[1]))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)PAGEMAP_SCAN, 0, 4),
        MF_GATE_TAIL(ip, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 12, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
