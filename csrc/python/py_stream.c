/*
 * A streamed response from a sandbox (wire/protocol.h, MF_BODY_STREAMED);
 * see py_stream.h. One request runs at a time in a sandbox process, so
 * the current one is a file static, set only while its handler runs; the
 * reset engine's rewind restores it with the rest of the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "base/log.h"
#include "python/py_requests.h"
#include "python/py_stream.h"
#include "python/py_util.h"

static struct {
    int fd;            /* the request's channel; -1: no request */
    uint64_t req_id;
    bool started;      /* RESP_HEAD sent */
} current = {.fd = -1};

void py_stream_enter(int fd, uint64_t req_id)
{
    current.fd = fd;
    current.req_id = req_id;
    current.started = false;
}

bool py_stream_leave(void)
{
    bool started = current.started;
    current.fd = -1;
    current.started = false;
    return started;
}

bool py_stream_active(void)
{
    return current.fd >= 0;
}

bool py_stream_started(void)
{
    return current.fd >= 0 && current.started;
}

/* The send failed: OSError with the errno log.c recorded. */
static bool raise_send(void)
{
    raise_last();
    return false;
}

bool py_stream_start(const struct mf_response *resp)
{
    bool ok;

    if (current.fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "response_start() outside a request of a sandbox");
        return false;
    }
    if (current.started) {
        PyErr_SetString(PyExc_RuntimeError, "response_start() called twice in one request");
        return false;
    }
    if (resp->status < 100 || resp->status > 599) {
        PyErr_Format(PyExc_ValueError, "status %u outside 100-599", resp->status);
        return false;
    }
    /* Set first: whatever the send does, a second start is an error. */
    current.started = true;
    /* A blocking send: the front end reads as its client does. */
    Py_BEGIN_ALLOW_THREADS
    ok = mf_stream_head_send(current.fd, current.req_id, resp);
    Py_END_ALLOW_THREADS
    return ok || raise_send();
}

bool py_stream_write(const void *data, size_t len)
{
    bool ok;

    if (current.fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "response_write() outside a request of a sandbox");
        return false;
    }
    if (!current.started) {
        PyErr_SetString(PyExc_RuntimeError, "response_write() before response_start()");
        return false;
    }
    if (len == 0)
        return true; /* an empty chunk would say nothing */
    Py_BEGIN_ALLOW_THREADS
    ok = mf_stream_body_send(current.fd, current.req_id, data, len);
    Py_END_ALLOW_THREADS
    return ok || raise_send();
}

/* One chunk of an iterable body: a new reference to bytes or a buffer. */
static PyObject *chunk_bytes(PyObject *chunk)
{
    if (PyUnicode_Check(chunk))
        return PyUnicode_AsUTF8String(chunk);
    if (PyObject_CheckBuffer(chunk))
        return Py_NewRef(chunk);
    return PyErr_Format(PyExc_TypeError, "a response body's chunk must be str or bytes, not %s",
                        Py_TYPE(chunk)->tp_name);
}

/* iterable.close() if it has one (WSGI's rule). An exception already
 * raised wins; close()'s own is then printed, else it is raised. */
static bool close_iterable(PyObject *iterable)
{
    PyObject *earlier = py_take_exception();
    py_cleanup_ref PyObject *close = PyObject_GetAttrString(iterable, "close");
    py_cleanup_ref PyObject *done = NULL;

    if (close == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    else if (close != NULL)
        done = PyObject_CallNoArgs(close);
    if (earlier == NULL)
        return !PyErr_Occurred();
    if (PyErr_Occurred())
        PyErr_Print();
    py_restore_exception(earlier);
    return false;
}

/* Each chunk of iterable to sink (false with a Python exception stops),
 * then close(). */
static bool each_chunk(PyObject *iterable, bool (*sink)(void *ctx, PyObject *bytes), void *ctx)
{
    py_cleanup_ref PyObject *it = PyObject_GetIter(iterable);
    bool ok = it != NULL;

    while (ok) {
        py_cleanup_ref PyObject *chunk = PyIter_Next(it);
        if (chunk == NULL) {
            ok = !PyErr_Occurred();
            break;
        }
        py_cleanup_ref PyObject *bytes = chunk_bytes(chunk);
        ok = bytes != NULL && sink(ctx, bytes);
    }
    return close_iterable(iterable) && ok;
}

static bool send_chunk(void *ctx, PyObject *bytes)
{
    py_cleanup_buffer Py_buffer view = {0};
    (void)ctx;
    return PyObject_GetBuffer(bytes, &view, PyBUF_SIMPLE) == 0 && py_stream_write(view.buf, (size_t)view.len);
}

static bool append_chunk(void *ctx, PyObject *bytes)
{
    py_cleanup_ref PyObject *copy = PyBytes_FromObject(bytes);
    return copy != NULL && PyList_Append(ctx, copy) == 0;
}

bool py_stream_iterable(const struct mf_response *head, PyObject *iterable)
{
    if (!py_stream_start(head)) {
        (void)close_iterable(iterable); /* never iterated, but its close() is owed */
        return false;
    }
    return each_chunk(iterable, send_chunk, NULL);
}

PyObject *py_stream_collect(PyObject *iterable)
{
    py_cleanup_ref PyObject *chunks = PyList_New(0);
    py_cleanup_ref PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);

    if (chunks == NULL || empty == NULL || !each_chunk(iterable, append_chunk, chunks))
        return NULL;
    return PyObject_CallMethod(empty, "join", "O", chunks);
}

PyObject *py_response_start(PyObject *self, PyObject *args)
{
    PyObject *status, *headers;
    struct py_response r;

    (void)self;
    if (!PyArg_ParseTuple(args, "OO:response_start", &status, &headers))
        return NULL;
    /* Checked before the headers are: outside a request nothing is built. */
    if (current.fd < 0 || current.started) {
        (void)py_stream_start(&(struct mf_response){0}); /* raises the RuntimeError */
        return NULL;
    }
    py_cleanup_ref PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL || !py_response_build(&r, status, headers, empty))
        return NULL;
    bool ok = py_stream_start(&r.resp);
    py_response_release(&r);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *py_response_can_stream(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(current.fd >= 0 && !current.started);
}

PyObject *py_response_write(PyObject *self, PyObject *data)
{
    py_cleanup_buffer Py_buffer view = {0};

    (void)self;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!py_stream_write(view.buf, (size_t)view.len))
        return NULL;
    Py_RETURN_NONE;
}
