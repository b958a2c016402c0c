/*
 * py_request_path.c: a sandbox's request path in C (the RequestPath
 * type), registered by module.c.
 */
#ifndef MAYFLYD_PY_REQUEST_PATH_H
#define MAYFLYD_PY_REQUEST_PATH_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_request_path.h"
#endif

#include <stdbool.h>

#include "python/py_requests.h"
#include "wire/proto.h"

/* Adds RequestPath to the module; -1 with a Python exception. */
int py_request_path_add(PyObject *module);

/* Whether a runner is a RequestPath. */
bool py_request_path_check(PyObject *runner);

/* One request through a RequestPath into out: the handler's response, or
 * a 500 for anything it raised (SystemExit ends the process as
 * Program.call does). false with a Python exception for lack of memory. */
bool py_request_path_handle(PyObject *runner, const struct mf_request *req, struct py_response *out);

/* The Python exception set (py_request_path_handle's failure) to the
 * tenant's log as one record for request id; clears it. */
void py_request_path_report(PyObject *runner, uint64_t id);

#endif /* MAYFLYD_PY_REQUEST_PATH_H */
