/*
 * PAGEMAP_SCAN is how the rewinder finds and re-protects written pages; in
 * tenant code the same call (PM_SCAN_WP_MATCHING) would mark a written page
 * clean and hide it from the next rewind. seccomp cannot read the call's
 * struct, but it can read the instruction pointer: the rewinder issues the
 * call from one `syscall` instruction of its own (mf_pagemap_scan), and a
 * filter the worker adds over the request filter refuses PAGEMAP_SCAN from
 * anywhere else (libc's ioctl(), which fcntl.ioctl uses, included).
 * Code that can jump to arbitrary addresses (ctypes) is beyond this wall;
 * see docs/reset-engine.md.
 */
#ifndef MAYFLYD_PAGEMAP_GATE_H
#define MAYFLYD_PAGEMAP_GATE_H

#include <stdbool.h>

#include "base/kernel_uapi.h"

/* ioctl(fd, PAGEMAP_SCAN, arg) through the gate; like ioctl(): -1 and errno. */
long mf_pagemap_scan(int fd, struct pm_scan_arg *arg);

/* Loads the filter that allows PAGEMAP_SCAN only from mf_pagemap_scan. */
bool mf_pagemap_gate_load(void);

#endif /* MAYFLYD_PAGEMAP_GATE_H */
