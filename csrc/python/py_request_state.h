/*
 * py_request_state.c: sys.stdout and sys.stderr flushed when a request
 * wrote to them, and reseed_random; registered by module.c.
 */
#ifndef MAYFLYD_PY_REQUEST_STATE_H
#define MAYFLYD_PY_REQUEST_STATE_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_request_state.h"
#endif

#include <stdbool.h>
#include <stddef.h>

/* Adds reseed_random to the module; -1 with a Python exception. */
int py_request_state_add(PyObject *module);

/* sys.stdout and sys.stderr flushed; a stream that cannot be is left be. */
void py_flush_std_streams(void);

#define PY_WATCH_STREAMS 2

/* Copies of io's text streams and their buffered writers, taken before a
 * request, to tell afterwards whether it wrote to them (on the C stack:
 * taking and comparing them writes no page of the interpreter's). */
struct py_stream_watch {
    PyObject *streams[PY_WATCH_STREAMS];    /* borrowed from sys: compared, never dereferenced */
    PyObject *objects[2 * PY_WATCH_STREAMS];
    size_t sizes[2 * PY_WATCH_STREAMS];
    int count;
    bool always;                            /* flush whatever happened */
    unsigned char copy[2048];
};

void py_streams_watch(struct py_stream_watch *w);
void py_streams_flush_if_written(const struct py_stream_watch *w);

#endif /* MAYFLYD_PY_REQUEST_STATE_H */
