/*
 * What the two CPython files of mayflyd._mayfly share: module.c (module
 * init, method table, identity/namespace/mounts/seccomp/cgroup bindings)
 * defines the error and argument helpers; py_requests.c defines the request
 * and protocol bindings that module.c's method table registers, and the
 * CPython fork hooks that module.c's enter_namespaces uses too;
 * py_dirty_pages.c defines the DirtyTracker type that module init adds.
 */
#ifndef MAYFLYD_PY_BINDINGS_H
#define MAYFLYD_PY_BINDINGS_H

/* Python.h must be the first include of the file, after PY_SSIZE_T_CLEAN. */
#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_bindings.h"
#endif

#include <stdint.h>

/* Raises the error recorded by log.c: MemoryError (ENOMEM), ValueError
 * (EPROTO: bad frames), RuntimeError (no errno) or OSError(errno, msg).
 * Returns NULL. */
PyObject *raise_last(void);

/* "O&" converters. uint32_converter raises OverflowError above 32 bits. */
int uint32_converter(PyObject *obj, void *out);
int uint64_converter(PyObject *obj, void *out);

/* py_requests.c */
PyObject *py_serve_fork(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *py_serve_reset(PyObject *self, PyObject *args, PyObject *kwargs);
/* Fork hooks (ctx unused) for the C helpers that fork: CPython's
 * PyOS_BeforeFork, PyOS_AfterFork_Parent and PyOS_AfterFork_Child. */
void hook_before_fork(void *ctx);
void hook_after_fork_parent(void *ctx);
void hook_after_fork_child(void *ctx);
PyObject *py_encode_response(PyObject *self, PyObject *args);
PyObject *py_decode_request(PyObject *self, PyObject *args);
PyObject *py_struct_layout(PyObject *self, PyObject *unused);

/* py_dirty_pages.c: adds the type DirtyTracker to the module; -1 with an
 * exception set on failure. */
int py_dirty_pages_add(PyObject *module);

#endif /* MAYFLYD_PY_BINDINGS_H */
