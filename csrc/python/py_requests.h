/*
 * py_requests.c: the request bindings module.c registers (serve_fork and
 * the protocol test bindings), and what serve_reset (py_reset.c) shares
 * with serve_fork: the runner's call per request and the checked inputs.
 */
#ifndef MAYFLYD_PY_REQUESTS_H
#define MAYFLYD_PY_REQUESTS_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_requests.h"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/proto.h"

PyObject *py_serve_fork(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *py_encode_response(PyObject *self, PyObject *args);
PyObject *py_decode_request(PyObject *self, PyObject *args);
PyObject *py_struct_layout(PyObject *self, PyObject *unused);

/* A Python response held for encoding: the pointers of resp point into
 * the objects keep and body hold. Built with py_response_begin, then
 * headers and a body; every function sets a Python exception and returns
 * false on failure, and py_response_release frees what was built. */
struct py_response {
    struct mf_response resp;
    struct mf_header *headers;  /* PyMem, capacity slots */
    uint32_t capacity;
    PyObject *keep;             /* what the header pointers point into */
    Py_buffer body;
    PyObject *stream;           /* an iterable body, sent as a stream (py_stream.h); else NULL */
};

bool py_response_begin(struct py_response *r, PyObject *status, Py_ssize_t capacity);
/* name and value: str (latin-1 if they can be, else UTF-8) or bytes. */
bool py_response_add_header(struct py_response *r, PyObject *name, PyObject *value);
bool py_response_prepend_header(struct py_response *r, PyObject *name, PyObject *value);
/* Any contiguous buffer, or an ASCII str (its own bytes, not copied). */
bool py_response_set_body(struct py_response *r, PyObject *body);
/* All at once from Python objects: headers a sequence of (name, value) tuples. */
bool py_response_build(struct py_response *r, PyObject *status, PyObject *headers, PyObject *body);
void py_response_release(struct py_response *r);

/* A request's headers as [(name, value)], decoded as latin-1. */
PyObject *py_header_list(const struct mf_request *req);

/* The context of the engine hooks below: the runner (a RequestPath, or
 * any callable taking the request's fields and returning (status,
 * headers, body)), the program's stop hook (NULL: none; py_seal.c), and
 * the response of the request being served. */
struct serve_ctx {
    PyObject *runner;
    PyObject *stop;
    struct py_response resp;
};

/* Whether runner can be one; false with a TypeError if not. */
bool runner_check(PyObject *runner);

/* Engine hooks (ctx: struct serve_ctx): PyErr_CheckSignals between
 * requests, and one call of the runner. */
bool hook_interrupted(void *ctx);
bool hook_handle(void *ctx, int fd, const struct mf_request *req, struct mf_response *out);

/* What both engines take besides their own arguments: the request filter
 * (a buffer the binding's parse fills) and the fds no sandbox may keep.
 * Released at scope exit with py_cleanup_serve_inputs. */
struct serve_inputs {
    Py_buffer filter;
    int *fds;       /* PyMem */
};

void serve_inputs_release(struct serve_inputs *in);
#define py_cleanup_serve_inputs __attribute__((cleanup(serve_inputs_release)))

/* Checks the filter once here rather than failing every sandbox, converts
 * close_list, and points the engine's config fields at both. false with a
 * Python exception set. */
bool serve_inputs_take(struct serve_inputs *in, PyObject *close_list, const int **close_in_child,
                       size_t *n_close_in_child, const void **request_filter, size_t *request_filter_len);

/* After an engine returned: the Python error, the engine's, or None. */
PyObject *serve_result(bool ok);

#endif /* MAYFLYD_PY_REQUESTS_H */
