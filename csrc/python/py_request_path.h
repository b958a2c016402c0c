/*
 * py_request_path.c: a sandbox's request path in C (the RequestBase and
 * RequestPath types, reseed_random), registered by module.c.
 */
#ifndef MAYFLYD_PY_REQUEST_PATH_H
#define MAYFLYD_PY_REQUEST_PATH_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_request_path.h"
#endif

#include <stdbool.h>

#include "python/py_requests.h"
#include "wire/proto.h"

/* Adds RequestBase, RequestPath and reseed_random to the module; -1 with a Python exception. */
int py_request_path_add(PyObject *module);

/* Whether a runner is a RequestPath. */
bool py_request_path_check(PyObject *runner);

/* One request through a RequestPath into out: the handler's response, or
 * a 500 for anything it raised (SystemExit ends the process as
 * Program.call does). false with a Python exception for lack of memory. */
bool py_request_path_handle(PyObject *runner, const struct mf_request *req, struct py_response *out);

/* sys.stdout and sys.stderr flushed; a stream that cannot be is left be. */
void py_flush_std_streams(void);

#endif /* MAYFLYD_PY_REQUEST_PATH_H */
