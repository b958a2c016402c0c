/*
 * What the two CPython files of mayflyd._mayfly share: module.c (module
 * init, method table, identity/mounts/cgroup bindings) defines the error and
 * argument helpers; py_requests.c defines the request bindings that
 * module.c's method table registers.
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
PyObject *py_serve_fork(PyObject *self, PyObject *args);
PyObject *py_encode_response(PyObject *self, PyObject *args);
PyObject *py_decode_request(PyObject *self, PyObject *args);

#endif /* MAYFLYD_PY_BINDINGS_H */
