/* The one PAGEMAP_SCAN walk, and the filter that allows the call only
 * from it; see pagemap_gate.h. */
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

/* ioctl(fd, PAGEMAP_SCAN, arg) through the gate; like ioctl(): -1 and errno. */
static long pagemap_scan(int fd, struct pm_scan_arg *arg)
{
    long ret = mf_pagemap_syscall(fd, (long)PAGEMAP_SCAN, (long)(uintptr_t)arg);
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

bool mf_pagemap_walk(struct mf_pagemap_walk *w, mf_pagemap_visit visit, void *ctx)
{
    while (w->at < w->end) {
        if (w->vec_len == 0)
            return mf_errx(EINVAL, "PAGEMAP_SCAN walk at %#llx with room for no regions",
                           (unsigned long long)w->at);
        struct pm_scan_arg arg = {
            .size = sizeof(arg), .flags = w->flags, .start = w->at, .end = w->end,
            .vec = (uint64_t)(uintptr_t)w->vec, .vec_len = w->vec_len,
            .category_mask = w->category_mask, .category_anyof_mask = w->category_anyof_mask,
            .return_mask = w->return_mask,
        };
        long got = pagemap_scan(w->fd, &arg);
        if (got < 0)
            return mf_err("ioctl(PAGEMAP_SCAN, %#llx-%#llx, flags=%#llx, categories=%#llx, any of %#llx)",
                          (unsigned long long)w->at, (unsigned long long)w->end, (unsigned long long)w->flags,
                          (unsigned long long)w->category_mask, (unsigned long long)w->category_anyof_mask);
        /* Short of end only when vec filled: the next batch starts there. */
        w->at = arg.walk_end;
        if (!visit(w, (size_t)got, ctx))
            return true;
    }
    return true;
}

bool mf_pagemap_probe(int fd)
{
    struct pm_scan_arg probe = {.size = sizeof(probe)};

    if (pagemap_scan(fd, &probe) < 0)
        return mf_err("ioctl(/proc/self/pagemap, PAGEMAP_SCAN, empty range)");
    return true;
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
