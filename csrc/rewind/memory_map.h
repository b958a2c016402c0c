/*
 * The process's own mappings, read from /proc/self/maps: what the reset
 * engine snapshots, and how it tells which mappings a request added or
 * removed. Parsing allocates nothing: the rewinder calls it with signals
 * blocked, on its own stack, while the heap is being rewound.
 */
#ifndef MAYFLYD_MEMORY_MAP_H
#define MAYFLYD_MEMORY_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mf_vma {
    uint64_t start, end;
    uint64_t offset;
    uint64_t inode;
    bool readable, writable, executable, shared;
    char name[16];  /* "[heap]", "[stack]", "[vvar]"...; "" for files and anonymous */
    bool file;      /* backed by a file (a path after the inode) */
};

/* Reads the whole of /proc/self/maps through fd (pread from 0) into buf,
 * NUL-terminated. ENOSPC if it does not fit in cap - 1 bytes. */
bool mf_maps_read(int fd, char *buf, size_t cap, size_t *len);

/* Parses maps text into out[0..*n). ENOSPC past cap entries, EPROTO on a
 * line it does not understand. */
bool mf_maps_parse(const char *text, size_t len, struct mf_vma *out, size_t cap, size_t *n);

#endif /* MAYFLYD_MEMORY_MAP_H */
