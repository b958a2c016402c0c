/* PAGEMAP_SCAN only from the rewinder's own syscall; see pagemap_gate.h. */
#define _GNU_SOURCE
#include "pagemap_gate.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#include "log.h"
#include "seccomp.h"

#if !defined(__x86_64__)
#error "the pagemap gate's syscall stub and filter are written for x86_64"
#endif

#define MF_STR2(x) #x
#define MF_STRINGIFY(x) MF_STR2(x)

/* ioctl(2) with the syscall instruction at a known address: the kernel
 * reports the address after it as seccomp_data.instruction_pointer. */
long mf_pagemap_syscall(long fd, long cmd, long arg);
extern const char mf_pagemap_syscall_after[];
__asm__(".text\n"
        ".globl mf_pagemap_syscall\n"
        ".hidden mf_pagemap_syscall\n"
        ".type mf_pagemap_syscall, @function\n"
        "mf_pagemap_syscall:\n"
        "    mov $" MF_STRINGIFY(SYS_ioctl) ", %eax\n"
        "    syscall\n"
        ".globl mf_pagemap_syscall_after\n"
        ".hidden mf_pagemap_syscall_after\n"
        "mf_pagemap_syscall_after:\n"
        "    ret\n"
        ".size mf_pagemap_syscall, . - mf_pagemap_syscall\n");

long mf_pagemap_scan(int fd, struct pm_scan_arg *arg)
{
    long ret = mf_pagemap_syscall(fd, (long)PAGEMAP_SCAN, (long)(uintptr_t)arg);
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

#define DATA(field) offsetof(struct seccomp_data, field)
#define LOW(off) (off)
#define HIGH(off) ((off) + 4)

bool mf_pagemap_gate_load(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)mf_pagemap_syscall_after;
    /* Everything else passes here; the request filter below decides it. */
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA(arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 8),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA(nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 6),
        /* The kernel reads cmd as 32 bits: compare only those. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LOW(DATA(args[1]))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)PAGEMAP_SCAN, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LOW(DATA(instruction_pointer))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ip, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, HIGH(DATA(instruction_pointer))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(ip >> 32), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 12, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
