/*
 * Loading a seccomp-bpf filter. The policy is written in Python (pyseccomp)
 * and handed over as raw BPF, so no libseccomp headers here.
 */
#ifndef MAYFLYD_SECCOMP_H
#define MAYFLYD_SECCOMP_H

#include <stdbool.h>
#include <stddef.h>

/* Checks that len bytes can be a BPF program: a non-zero multiple of one
 * instruction (8 bytes), at most BPF_MAXINSNS instructions. EINVAL if not. */
bool mf_seccomp_check(size_t len);

/* Installs the filter on the calling thread (the host and the sandboxes
 * are single-threaded). Needs no_new_privs, set by mf_drop_privileges.
 * Filters stack: a later one can only restrict further. */
bool mf_seccomp_load(const void *bpf, size_t len);

#endif /* MAYFLYD_SECCOMP_H */
