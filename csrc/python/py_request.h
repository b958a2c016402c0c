/*
 * py_request.c: RequestBase, the C side of the tenant-facing Request,
 * registered by module.c and filled by the request path.
 */
#ifndef MAYFLYD_PY_REQUEST_H
#define MAYFLYD_PY_REQUEST_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_request.h"
#endif

#include <stdbool.h>
#include <stdint.h>

#include "wire/proto.h"

/* Adds RequestBase to the module; -1 with a Python exception. */
int py_request_add(PyObject *module);

/* Whether type is RequestBase or a subclass of it. */
bool py_request_type_check(PyTypeObject *type);

/* A request of type (a RequestBase subclass) with req's fields; its
 * headers read from req until py_request_detach. NULL with an exception. */
PyObject *py_request_from_wire(PyTypeObject *type, const struct mf_request *req);

/* After the handler, before req's buffers go: a request still referenced
 * keeps its headers. */
void py_request_detach(PyObject *request);

/* The request's id for the log: 0 if it is no such number. */
uint64_t py_request_log_id(PyObject *request);

#endif /* MAYFLYD_PY_REQUEST_H */
