/*
 * Scoped cleanup: a variable declared with one of these attributes is
 * released when it goes out of scope, on every return path. A function that
 * hands the resource on takes it out of the variable with mf_steal_fd() or
 * mf_steal_pointer(), which leaves -1 or NULL behind.
 *
 *     mf_cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
 *     if (fd < 0)
 *         return mf_err("open(%s)", path);
 *     ...
 *     out->fd = mf_steal_fd(&fd);
 *
 * Cleanup runs after the return value is computed, so errno set by a
 * failing call survives: the handlers save and restore it.
 */
#ifndef MAYFLYD_CLEANUP_H
#define MAYFLYD_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static inline void mf_close_fd_ptr(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        (void)close(*fd); /* nothing to report it to on an error path */
        errno = saved;
    }
}

static inline void mf_free_ptr(void *p)
{
    void **pp = (void **)p;
    int saved = errno;
    free(*pp);
    errno = saved;
}

/* A mapping: its address and length, unmapped at scope exit unless taken. */
struct mf_mapping {
    void *addr;
    size_t len;
};

static inline void mf_unmap_ptr(struct mf_mapping *m)
{
    if (m->addr != NULL && m->addr != MAP_FAILED) {
        int saved = errno;
        (void)munmap(m->addr, m->len); /* cannot fail for a mapping we made */
        errno = saved;
    }
}

#define mf_cleanup_fd __attribute__((cleanup(mf_close_fd_ptr)))
#define mf_cleanup_free __attribute__((cleanup(mf_free_ptr)))
#define mf_cleanup_mapping __attribute__((cleanup(mf_unmap_ptr)))

static inline int mf_steal_fd(int *fd)
{
    int taken = *fd;
    *fd = -1;
    return taken;
}

static inline void *mf_steal_pointer(void *pp)
{
    void **p = (void **)pp;
    void *taken = *p;
    *p = NULL;
    return taken;
}

static inline struct mf_mapping mf_steal_mapping(struct mf_mapping *m)
{
    struct mf_mapping taken = *m;
    m->addr = NULL;
    m->len = 0;
    return taken;
}

#endif
