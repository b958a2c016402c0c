/* py_reset.c: serve_reset, the reset engine's binding (reset-engine builds only). */
#ifndef MAYFLYD_PY_RESET_H
#define MAYFLYD_PY_RESET_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_reset.h"
#endif

PyObject *py_serve_reset(PyObject *self, PyObject *args, PyObject *kwargs);

#endif /* MAYFLYD_PY_RESET_H */
