/*
 * py_headers.c: HeadersBase, the C side of the tenant's request headers
 * mapping, registered by module.c.
 */
#ifndef MAYFLYD_PY_HEADERS_H
#define MAYFLYD_PY_HEADERS_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_headers.h"
#endif

/* Adds HeadersBase to the module; -1 with a Python exception. */
int py_headers_add(PyObject *module);

#endif /* MAYFLYD_PY_HEADERS_H */
