/* py_dirty_pages.c: the DirtyTracker type (reset-engine builds only). */
#ifndef MAYFLYD_PY_DIRTY_PAGES_H
#define MAYFLYD_PY_DIRTY_PAGES_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_dirty_pages.h"
#endif

/* Adds the type DirtyTracker to the module; -1 with an exception set on failure. */
int py_dirty_pages_add(PyObject *module);

#endif /* MAYFLYD_PY_DIRTY_PAGES_H */
