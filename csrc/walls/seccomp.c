/* seccomp-bpf loader; see seccomp.h. */
#define _GNU_SOURCE
#include "walls/seccomp.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

#include "base/log.h"

bool mf_seccomp_check(size_t len)
{
    size_t insn = sizeof(struct sock_filter);

    if (len == 0 || len % insn != 0)
        return mf_errx(EINVAL, "seccomp filter of %zu bytes is not a whole number of %zu-byte instructions",
                       len, insn);
    if (len / insn > BPF_MAXINSNS)
        return mf_errx(EINVAL, "seccomp filter of %zu instructions exceeds BPF_MAXINSNS (%d)", len / insn,
                       BPF_MAXINSNS);
    return true;
}

bool mf_seccomp_load(const void *bpf, size_t len)
{
    /* The kernel copies the program; the cast only drops const for the
     * struct's field type. */
    struct sock_fprog prog = {
        .len = (unsigned short)(len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)bpf,
    };

    MF_TRY(mf_seccomp_check(len));
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == 0)
        return true;
    if (errno == EACCES)
        return mf_err("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, %u instructions) without no_new_privs "
                      "(call drop_privileges first)", prog.len);
    return mf_err("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, %u instructions)", prog.len);
}
