/*
 * Immortal objects (PEP 683, CPython 3.12+) for what a host or zygote
 * seals: every object alive then lives as long as the process anyway, and
 * an immortal one's reference count is never written. Each request takes
 * and drops references to dozens of long-lived objects (functions, code,
 * strings, dicts); every such write copies a page into a fork sandbox and
 * has to be rewound in a reset worker. See docs/reset-engine.md.
 */
#ifndef MAYFLYD_PY_IMMORTAL_H
#define MAYFLYD_PY_IMMORTAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* immortalize_tracked() -> int: makes immortal every object the collector
 * tracks outside its permanent generation (what gc.get_objects() lists),
 * and everything reachable from them, and returns how many were mortal.
 * A no-op returning 0 before CPython 3.12. */
PyObject *py_immortalize_tracked(PyObject *self, PyObject *noargs);

#endif /* MAYFLYD_PY_IMMORTAL_H */
