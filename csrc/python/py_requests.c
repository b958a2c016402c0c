/*
 * The request bindings of mayflyd._mayfly: conversion between Python
 * objects and struct mf_request / mf_response (proto.h), the engine hooks
 * and serve_fork, and the protocol test bindings encode_response,
 * decode_request and struct_layout. Registered in module.c's method table;
 * see py_requests.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stddef.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "engine/children.h"
#include "engine/fork_engine.h"
#include "python/py_request_path.h"
#include "python/py_requests.h"
#include "python/py_seal.h"
#include "python/py_stream.h"
#include "python/py_util.h"
#include "walls/seccomp.h"
#include "wire/proto.h"

/* ---- response building, shared by the runner, the request path and encode_response ---- */

/* Points *ptr at obj's encoding, holding obj (or its encoding) in r->keep:
 * bytes as they are; a str whose characters are all below U+0100 straight
 * from its latin-1 storage, any other as UTF-8. */
static bool add_text(struct py_response *r, PyObject *obj, const uint8_t **ptr, uint32_t *len)
{
    py_cleanup_ref PyObject *b = NULL;
    const char *data;
    Py_ssize_t n;

    if (PyUnicode_Check(obj) && PyUnicode_KIND(obj) == PyUnicode_1BYTE_KIND) {
        b = Py_NewRef(obj);
        data = (const char *)PyUnicode_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else {
        if (PyBytes_Check(obj))
            b = Py_NewRef(obj);
        else if (PyUnicode_Check(obj))
            b = PyUnicode_AsUTF8String(obj);
        else
            return PyErr_Format(PyExc_TypeError, "header name/value must be str, not %s",
                                Py_TYPE(obj)->tp_name) != NULL;
        if (b == NULL)
            return false;
        data = PyBytes_AS_STRING(b);
        n = PyBytes_GET_SIZE(b);
    }
    if ((size_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "header too long");
        return false;
    }
    if (r->keep == NULL && (r->keep = PyList_New(0)) == NULL)
        return false;
    if (PyList_Append(r->keep, b) < 0)
        return false;
    *ptr = (const uint8_t *)data;
    *len = (uint32_t)n;
    return true;
}

void py_response_release(struct py_response *r)
{
    PyMem_Free(r->headers);
    Py_CLEAR(r->keep);
    Py_CLEAR(r->stream);
    py_release_buffer(&r->body);
    r->headers = NULL;
}

bool py_response_begin(struct py_response *r, PyObject *status, Py_ssize_t capacity)
{
    memset(r, 0, sizeof(*r));
    if (capacity > (Py_ssize_t)MF_MAX_HEADERS) {
        PyErr_Format(PyExc_ValueError, "%zd headers, at most %u allowed", capacity, MF_MAX_HEADERS);
        return false;
    }
    if (!uint32_converter(status, &r->resp.status))
        return false;
    r->headers = PyMem_Calloc(capacity > 0 ? (size_t)capacity : 1, sizeof(*r->headers));
    if (r->headers == NULL) {
        PyErr_NoMemory();
        return false;
    }
    r->capacity = (uint32_t)capacity;
    r->resp.headers = r->headers;
    return true;
}

bool py_response_add_header(struct py_response *r, PyObject *name, PyObject *value)
{
    if (r->resp.header_count >= r->capacity) {
        PyErr_Format(PyExc_ValueError, "more than %u headers", r->capacity);
        return false;
    }
    struct mf_header *h = &r->headers[r->resp.header_count];
    if (!add_text(r, name, &h->name, &h->name_len) || !add_text(r, value, &h->value, &h->value_len))
        return false;
    r->resp.header_count++;
    return true;
}

bool py_response_prepend_header(struct py_response *r, PyObject *name, PyObject *value)
{
    if (!py_response_add_header(r, name, value))
        return false;
    struct mf_header last = r->headers[r->resp.header_count - 1];
    memmove(&r->headers[1], &r->headers[0], (r->resp.header_count - 1) * sizeof(*r->headers));
    r->headers[0] = last;
    return true;
}

bool py_response_set_body(struct py_response *r, PyObject *body)
{
    py_release_buffer(&r->body);
    if (PyUnicode_Check(body) && PyUnicode_IS_ASCII(body)) {
        /* Its storage is its UTF-8 encoding: no copy. */
        if (PyBuffer_FillInfo(&r->body, body, PyUnicode_DATA(body), PyUnicode_GET_LENGTH(body), 1,
                              PyBUF_SIMPLE) < 0)
            return false;
    } else if (PyObject_GetBuffer(body, &r->body, PyBUF_SIMPLE) < 0) {
        return false;
    }
    r->resp.body = r->body.buf;
    r->resp.body_len = (uint64_t)r->body.len;
    return true;
}

/* Sets a Python exception and returns false on failure. */
bool py_response_build(struct py_response *r, PyObject *status, PyObject *headers, PyObject *body)
{
    py_cleanup_ref PyObject *seq = PySequence_Fast(headers, "headers must be a sequence of (name, value) pairs");

    memset(r, 0, sizeof(*r));
    if (seq == NULL || !py_response_begin(r, status, PySequence_Fast_GET_SIZE(seq)))
        return false;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "each header must be a (name, value) tuple");
            goto fail;
        }
        if (!py_response_add_header(r, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)))
            goto fail;
    }
    if (PyUnicode_Check(body))
        PyErr_SetString(PyExc_TypeError, "a body must be bytes-like, not str");
    else if (py_response_set_body(r, body))
        return true;
fail:
    py_response_release(r);
    return false;
}

PyObject *py_header_list(const struct mf_request *req)
{
    PyObject *headers = PyList_New(req->header_count);
    if (headers == NULL)
        return NULL;
    for (uint32_t i = 0; i < req->header_count; i++) {
        const struct mf_header *h = &req->headers[i];
        PyObject *pair = Py_BuildValue("(NN)",
                                       PyUnicode_DecodeLatin1((const char *)h->name, h->name_len, NULL),
                                       PyUnicode_DecodeLatin1((const char *)h->value, h->value_len, NULL));
        if (pair == NULL) {
            Py_DECREF(headers);
            return NULL;
        }
        PyList_SET_ITEM(headers, i, pair);
    }
    return headers;
}

static PyObject *request_tuple(const struct mf_request *req, bool with_id)
{
    PyObject *headers = py_header_list(req);
    if (headers == NULL)
        return NULL;
    /* Latin-1 maps every byte to one code point: nothing can fail to
     * decode, and the program sees exactly the bytes the client sent. */
#define LATIN1(field) PyUnicode_DecodeLatin1((const char *)req->field, req->field##_len, NULL)
    PyObject *body = PyBytes_FromStringAndSize((const char *)req->body, (Py_ssize_t)req->body_len);
    if (with_id)
        return Py_BuildValue("(KNNNNNN)", (unsigned long long)req->req_id, LATIN1(method), LATIN1(path),
                             LATIN1(query), headers, body, LATIN1(client));
    return Py_BuildValue("(NNNNNN)", LATIN1(method), LATIN1(path), LATIN1(query), headers, body,
                         LATIN1(client));
#undef LATIN1
}

/* ---- serve_fork ---- */

bool hook_interrupted(void *ctx) { (void)ctx; return PyErr_CheckSignals() == 0; }

/* A plain runner: called with the request's fields, returns (status, headers, body). */
static bool call_runner(PyObject *runner, const struct mf_request *req, struct py_response *out)
{
    py_cleanup_ref PyObject *args = request_tuple(req, true);
    py_cleanup_ref PyObject *result = args != NULL ? PyObject_CallObject(runner, args) : NULL;

    if (result != NULL && (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 3)) {
        PyErr_Format(PyExc_TypeError, "runner returned %s, expected (status, headers, body)",
                     Py_TYPE(result)->tp_name);
        return false;
    }
    return result != NULL && py_response_build(out, PyTuple_GET_ITEM(result, 0), PyTuple_GET_ITEM(result, 1),
                                                PyTuple_GET_ITEM(result, 2));
}

bool runner_check(PyObject *runner)
{
    if (PyCallable_Check(runner) || py_request_path_check(runner))
        return true;
    PyErr_SetString(PyExc_TypeError, "runner must be a RequestPath or callable");
    return false;
}

bool hook_handle(void *vctx, int fd, const struct mf_request *req, struct mf_response *out)
{
    struct serve_ctx *ctx = vctx;

    /* The channel is the handler's to stream on while it runs, no longer. */
    py_stream_enter(fd, req->req_id);
    /* The response holds what its pointers point into until _exit or the rewind. */
    bool ok = py_request_path_check(ctx->runner) ? py_request_path_handle(ctx->runner, req, &ctx->resp)
                                                 : call_runner(ctx->runner, req, &ctx->resp);
    bool started = py_stream_leave();
    if (ok) {
        /* A runner that streamed: what it returned is moot. */
        ctx->resp.resp.streamed = ctx->resp.resp.streamed || started;
        *out = ctx->resp.resp;
        return true;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit)) {
        /* PyErr_Print would run the host's exit path (atexit) in a sandbox. */
        PyErr_Clear();
        mf_warn("request %llu: runner raised SystemExit", (unsigned long long)req->req_id);
    } else if (py_request_path_check(ctx->runner)) {
        py_request_path_report(ctx->runner, req->req_id);
    } else {
        PyErr_Print();
    }
    return false;
}

/* A sequence of fds as a PyMem array (one spare slot, so never NULL on success). */
static int *fd_array(PyObject *list, size_t *n)
{
    py_cleanup_ref PyObject *seq = PySequence_Fast(list, "close_in_child must be a sequence of fds");
    py_cleanup_mem int *fds = NULL;

    if (seq == NULL)
        return NULL;
    *n = (size_t)PySequence_Fast_GET_SIZE(seq);
    fds = PyMem_Calloc(*n + 1, sizeof(int));
    if (fds == NULL)
        return (int *)PyErr_NoMemory();
    for (size_t i = 0; i < *n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if ((fd == -1 && PyErr_Occurred()) || fd < 0 || fd > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "bad fd %ld in close_in_child", fd);
            return NULL;
        }
        fds[i] = (int)fd;
    }
    return mf_steal_pointer(&fds);
}

void serve_inputs_release(struct serve_inputs *in)
{
    py_release_buffer(&in->filter);
    PyMem_Free(in->fds);
    in->fds = NULL;
}

bool serve_inputs_take(struct serve_inputs *in, PyObject *close_list, const int **close_in_child,
                       size_t *n_close_in_child, const void **request_filter, size_t *request_filter_len)
{
    if (in->filter.len > 0 && !mf_seccomp_check((size_t)in->filter.len)) {
        PyErr_Format(PyExc_ValueError, "request_filter: %s", mf_last_error());
        return false;
    }
    in->fds = fd_array(close_list, n_close_in_child);
    if (in->fds == NULL)
        return false;
    *close_in_child = in->fds;
    *request_filter = in->filter.buf;
    *request_filter_len = (size_t)in->filter.len;
    return true;
}

PyObject *serve_result(bool ok)
{
    if (PyErr_Occurred())
        return NULL;
    if (!ok)
        return raise_last();
    Py_RETURN_NONE;
}

PyObject *py_serve_fork(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"ctrl_fd", "runner", "close_in_child", "request_filter", "cpu_ms",
                             "memory_bytes", "nofile", "concurrency", "queue", "oom_fd", "load", "gc_freeze", "pid_one",
                             "stop_timeout_ms", NULL};
    struct serve_ctx ctx = {0};
    struct seal_inputs seal = {0};
    struct mf_fork_hooks hooks = {&ctx, hook_before_fork, hook_after_fork_parent, hook_after_fork_child,
                                  hook_interrupted, hook_handle, NULL};
    struct mf_fork_config cfg = {.hooks = &hooks, .oom_fd = -1, .concurrency = MF_FORK_MAX_CHILDREN,
                                 .queue = MF_DEFAULT_QUEUE};
    /* Released on every return; its buffer a no-op if a failed parse released it. */
    py_cleanup_serve_inputs struct serve_inputs in = {0};
    PyObject *close_list;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO|y*O&O&O&O&O&i$OOpO&:serve_fork", kwlist, &cfg.ctrl_fd,
                                     &ctx.runner, &close_list, &in.filter, uint32_converter,
                                     &cfg.limits.cpu_ms, uint64_converter, &cfg.limits.memory_bytes,
                                     uint32_converter, &cfg.limits.nofile, uint32_converter, &cfg.concurrency,
                                     uint32_converter, &cfg.queue, &cfg.oom_fd, &seal.load, &seal.gc_freeze,
                                     &seal.pid_one, uint32_converter, &cfg.stop_timeout_ms))
        return NULL;
    if (!serve_inputs_take(&in, close_list, &cfg.close_in_child, &cfg.n_close_in_child, &cfg.request_filter,
                           &cfg.request_filter_len))
        return NULL;
    /* Last before serving: the program's loading runs here, if load= is given. */
    if (!seal_or_check_runner(&seal, cfg.ctrl_fd, cfg.oom_fd, &ctx, &hooks))
        return NULL;
    /* The GIL stays held: the host is single-threaded and forks under it. */
    if (seal.load != NULL && seal.load != Py_None)
        py_sealed_exit(mf_fork_serve(&cfg));
    return serve_result(mf_fork_serve(&cfg));
}

/* ---- protocol test bindings: the same code paths the sandbox uses ---- */

/* A decoded request in PyMem: its buffers and itself, freed at scope exit. */
static void release_request(struct mf_request **req)
{
    if (*req != NULL)
        mf_request_free(*req);
    PyMem_Free(*req);
}
#define py_cleanup_request __attribute__((cleanup(release_request)))

static bool list_sink(void *ctx, const struct iovec *iov, int iovcnt, size_t len)
{
    PyObject *pkt = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    char *dst;

    if (pkt == NULL)
        return mf_errx(ENOMEM, "out of memory for a packet");
    dst = PyBytes_AS_STRING(pkt);
    for (int i = 0; i < iovcnt; i++) {
        memcpy(dst, iov[i].iov_base, iov[i].iov_len);
        dst += iov[i].iov_len;
    }
    int rc = PyList_Append(ctx, pkt);
    Py_DECREF(pkt); /* the list holds it */
    return rc == 0 || mf_errx(ENOMEM, "out of memory for the packet list");
}

PyObject *py_encode_response(PyObject *self, PyObject *args)
{
    uint64_t req_id;
    PyObject *status, *headers, *body, *packets;
    struct py_response r;

    (void)self;
    if (!PyArg_ParseTuple(args, "O&OOO:encode_response", uint64_converter, &req_id, &status, &headers,
                          &body))
        return NULL;
    if (!py_response_build(&r, status, headers, body))
        return NULL;
    packets = PyList_New(0);
    if (packets != NULL && !mf_response_emit(req_id, &r.resp, list_sink, packets)) {
        Py_CLEAR(packets);
        if (!PyErr_Occurred())
            raise_last();
    }
    py_response_release(&r);
    return packets;
}

PyObject *py_decode_request(PyObject *self, PyObject *args)
{
    uint64_t req_id;
    PyObject *packets;

    (void)self;
    if (!PyArg_ParseTuple(args, "O&O:decode_request", uint64_converter, &req_id, &packets))
        return NULL;
    py_cleanup_ref PyObject *seq = PySequence_Fast(packets, "packets must be a sequence of bytes");
    if (seq == NULL)
        return NULL;
    py_cleanup_request struct mf_request *req = PyMem_Malloc(sizeof(*req)); /* about 8 KiB of header slots */
    if (req == NULL)
        return PyErr_NoMemory();
    mf_request_init(req, req_id);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pkt = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(pkt)) {
            PyErr_SetString(PyExc_TypeError, "packets must be bytes");
            return NULL;
        }
        if (mf_request_feed(req, (const uint8_t *)PyBytes_AS_STRING(pkt), (size_t)PyBytes_GET_SIZE(pkt)) < 0)
            return raise_last();
    }
    if (req->state != MF_REQ_DONE) {
        PyErr_SetString(PyExc_ValueError, "request incomplete: no REQ_END");
        return NULL;
    }
    return request_tuple(req, false);
}

/* ---- layout of protocol.h, for the test against the Python mirror ---- */

struct field_desc {
    const char *name;
    size_t offset, size;
};

#define FIELD(s, f) {#f, offsetof(struct s, f), sizeof(((struct s *)0)->f)}
#define STRUCT(s, ...)                                                        \
    {#s, sizeof(struct s), (const struct field_desc[]){__VA_ARGS__, {NULL, 0, 0}}}

static const struct {
    const char *name;
    size_t size;
    const struct field_desc *fields;
} layouts[] = {
    STRUCT(mf_frame_header, FIELD(mf_frame_header, magic), FIELD(mf_frame_header, type),
           FIELD(mf_frame_header, version), FIELD(mf_frame_header, req_id),
           FIELD(mf_frame_header, payload_len), FIELD(mf_frame_header, reserved)),
    STRUCT(mf_ready, FIELD(mf_ready, pid), FIELD(mf_ready, engine)),
    STRUCT(mf_request_ctl, FIELD(mf_request_ctl, timeout_ms), FIELD(mf_request_ctl, reserved)),
    STRUCT(mf_child_exit, FIELD(mf_child_exit, pid), FIELD(mf_child_exit, wait_status),
           FIELD(mf_child_exit, flags), FIELD(mf_child_exit, cost_us), FIELD(mf_child_exit, pages),
           FIELD(mf_child_exit, reserved)),
    STRUCT(mf_data_channel, FIELD(mf_data_channel, loop), FIELD(mf_data_channel, reserved)),
    STRUCT(mf_worker_slot, FIELD(mf_worker_slot, worker), FIELD(mf_worker_slot, reserved)),
    STRUCT(mf_worker_request, FIELD(mf_worker_request, nonce), FIELD(mf_worker_request, loop)),
    STRUCT(mf_worker_ready, FIELD(mf_worker_ready, snapshot_pages), FIELD(mf_worker_ready, ranges),
           FIELD(mf_worker_ready, cost_us), FIELD(mf_worker_ready, reserved)),
    STRUCT(mf_request_done, FIELD(mf_request_done, status), FIELD(mf_request_done, aborted),
           FIELD(mf_request_done, cost_us), FIELD(mf_request_done, pages), FIELD(mf_request_done, nonce),
           FIELD(mf_request_done, reserved)),
    STRUCT(mf_request_failed, FIELD(mf_request_failed, error), FIELD(mf_request_failed, reserved)),
    STRUCT(mf_req_head, FIELD(mf_req_head, method_len), FIELD(mf_req_head, path_len),
           FIELD(mf_req_head, query_len), FIELD(mf_req_head, client_len),
           FIELD(mf_req_head, header_count), FIELD(mf_req_head, reserved), FIELD(mf_req_head, body_len)),
    STRUCT(mf_resp_head, FIELD(mf_resp_head, status), FIELD(mf_resp_head, header_count),
           FIELD(mf_resp_head, body_len)),
    STRUCT(mf_header_entry, FIELD(mf_header_entry, name_len), FIELD(mf_header_entry, value_len)),
};

PyObject *py_struct_layout(PyObject *self, PyObject *unused)
{
    PyObject *out = PyDict_New();

    (void)self;
    (void)unused;
    for (size_t i = 0; out != NULL && i < sizeof(layouts) / sizeof(layouts[0]); i++) {
        PyObject *fields = PyDict_New();
        for (const struct field_desc *f = layouts[i].fields; fields != NULL && f->name != NULL; f++) {
            PyObject *v = Py_BuildValue("(nn)", (Py_ssize_t)f->offset, (Py_ssize_t)f->size);
            if (v == NULL || PyDict_SetItemString(fields, f->name, v) < 0)
                Py_CLEAR(fields);
            Py_XDECREF(v);
        }
        PyObject *entry = fields != NULL ? Py_BuildValue("(nN)", (Py_ssize_t)layouts[i].size, fields) : NULL;
        if (entry == NULL || PyDict_SetItemString(out, layouts[i].name, entry) < 0)
            Py_CLEAR(out);
        Py_XDECREF(entry);
    }
    return out;
}
