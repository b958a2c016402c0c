/*
 * What every binding file of mayflyd._mayfly shares: raising the error
 * log.c recorded, the integer converters, scoped release of Python
 * references and buffers, and CPython's fork hooks. A leaf: it depends on
 * nothing else in csrc/python/.
 */
#ifndef MAYFLYD_PY_UTIL_H
#define MAYFLYD_PY_UTIL_H

/* Python.h must be the first include of the file, after PY_SSIZE_T_CLEAN. */
#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_util.h"
#endif

#include <stdint.h>

/* Raises the error recorded by log.c: MemoryError (ENOMEM), ValueError
 * (EPROTO: bad frames), RuntimeError (no errno) or OSError(errno, msg).
 * Returns NULL. */
PyObject *raise_last(void);

/* "O&" converters. uint32_converter raises OverflowError above 32 bits. */
int uint32_converter(PyObject *obj, void *out);
int uint64_converter(PyObject *obj, void *out);

/* The exception being raised, normalised and taken out (NULL if none);
 * and one so taken, raised again (the reference is stolen). */
PyObject *py_take_exception(void);
void py_restore_exception(PyObject *exc);

/* Fork hooks (ctx unused) for the C helpers that fork: CPython's
 * PyOS_BeforeFork, PyOS_AfterFork_Parent and PyOS_AfterFork_Child. The
 * GIL stays held across the fork, as PyOS_BeforeFork requires. */
void hook_before_fork(void *ctx);
void hook_after_fork_parent(void *ctx);
void hook_after_fork_child(void *ctx);

/* Scoped release, as base/cleanup.h for C resources; the GIL must be held
 * where the variable goes out of scope. */
static inline void py_release_ref(PyObject **obj)
{
    Py_CLEAR(*obj);
}

/* A no-op on a zeroed buffer or one already released. */
static inline void py_release_buffer(Py_buffer *buf)
{
    if (buf->obj != NULL)
        PyBuffer_Release(buf);
}

static inline void py_release_mem(void *p)
{
    PyMem_Free(*(void **)p);
}

#define py_cleanup_ref __attribute__((cleanup(py_release_ref)))
#define py_cleanup_buffer __attribute__((cleanup(py_release_buffer)))
#define py_cleanup_mem __attribute__((cleanup(py_release_mem)))

#endif /* MAYFLYD_PY_UTIL_H */
