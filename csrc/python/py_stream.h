/*
 * py_stream.c: the current request's streamed response, in a sandbox. The
 * engine hook (py_requests.c) names the request's channel for the
 * handler's call only; response_start and response_write, and the
 * request path's iterable bodies (py_request_path.c), send on it.
 */
#ifndef MAYFLYD_PY_STREAM_H
#define MAYFLYD_PY_STREAM_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_stream.h"
#endif

#include <stdbool.h>
#include <stdint.h>

#include "wire/proto.h"

/* Around the handler's call: the request's channel and id, then none
 * (py_stream_leave says whether the response was started). */
void py_stream_enter(int fd, uint64_t req_id);
bool py_stream_leave(void);
/* Whether a request's channel is named (a sandbox, during the handler). */
bool py_stream_active(void);
/* Whether this request's RESP_HEAD went out. */
bool py_stream_started(void);

/* RESP_HEAD(streamed) with resp's status and headers; then body bytes.
 * false with a Python exception: RuntimeError outside a request, started
 * twice or written before the start; OSError if the channel fails. */
bool py_stream_start(const struct mf_response *resp);
bool py_stream_write(const void *data, size_t len);

/* Sends an iterable body as a stream: head's RESP_HEAD, each chunk
 * (bytes-like as is, str as UTF-8), then the iterable's close() if it
 * has one, also on errors. false with a Python exception (a bad chunk:
 * TypeError). */
bool py_stream_iterable(const struct mf_response *head, PyObject *iterable);
/* The same chunks joined, for a caller outside a sandbox (respond()). */
PyObject *py_stream_collect(PyObject *iterable);

/* _mayfly.response_start(status, headers) and response_write(data). */
PyObject *py_response_start(PyObject *self, PyObject *args);
PyObject *py_response_write(PyObject *self, PyObject *data);
/* response_can_stream(): whether response_start() would start a stream now. */
PyObject *py_response_can_stream(PyObject *self, PyObject *unused);

#endif /* MAYFLYD_PY_STREAM_H */
