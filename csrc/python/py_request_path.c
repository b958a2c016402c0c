/*
 * RequestPath, a sandbox's request path in C from the decoded request to
 * the tenant's handler and back to the response struct: every line of
 * Python the daemon ran per request wrote pages (frames, refcounts,
 * specialised bytecode) that the reset engine copies back after the
 * request. It follows program.py's Program.call and normalize(), the
 * reference; normalize() itself still takes the unusual results. The
 * request object is py_request.c's, the streams' flush py_request_state.c's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "python/py_request.h"
#include "python/py_request_path.h"
#include "python/py_request_state.h"
#include "python/py_requests.h"
#include "python/py_stream.h"
#include "python/py_util.h"

/* Interned once at module init: names and the default header values. */
static PyObject *s_code, *s_status, *s_headers, *s_body, *s_content_type_attr, *s_content_type, *s_text_type,
    *s_binary_type, *s_json_type;

/* ---- RequestPath: the handler's call and normalize()'s common cases ---- */

typedef struct {
    PyObject_HEAD
    PyObject *handler;
    int takes_request;
    PyTypeObject *request_type;
    PyTypeObject *response_type;
    PyObject *normalize;
    PyObject *json_dumps;
    PyObject *report; /* report(exc, request): the traceback as one record; NULL: PyErr_Print */
} RequestPathObject;

static PyTypeObject RequestPathType;

static PyObject *call_handler(RequestPathObject *rp, PyObject *request)
{
    if (rp->takes_request)
        return PyObject_CallOneArg(rp->handler, request);
    PyObject *result = PyObject_CallNoArgs(rp->handler);
    /* The seed's form: a callable to call for the response. */
    if (result != NULL && PyCallable_Check(result) && !PyObject_TypeCheck(result, rp->response_type))
        Py_SETREF(result, PyObject_CallNoArgs(result));
    return result;
}

/* program.py's _streams: a body sent as a stream, chunk by chunk. */
static bool streams(PyObject *body)
{
    return !PyUnicode_Check(body) && !PyBytes_Check(body) && !PyByteArray_Check(body) && !PyMemoryView_Check(body)
           && Py_TYPE(body)->tp_iter != NULL;
}

/* program.py's _as_body: bytes and ASCII str as they are, other str as
 * UTF-8, bytearray and memoryview copied; any other iterable kept in
 * r->stream, for respond() to send (or join) once the head is whole. */
static bool set_body(struct py_response *r, PyObject *body)
{
    py_cleanup_ref PyObject *copy = NULL;

    if (PyBytes_Check(body) || (PyUnicode_Check(body) && PyUnicode_IS_ASCII(body)))
        return py_response_set_body(r, body);
    if (PyUnicode_Check(body))
        copy = PyUnicode_AsUTF8String(body);
    else if (PyByteArray_Check(body) || PyMemoryView_Check(body))
        copy = PyBytes_FromObject(body);
    else if (streams(body)) {
        Py_XSETREF(r->stream, Py_NewRef(body));
        return true;
    } else
        PyErr_Format(PyExc_TypeError, "a response body must be str, bytes or an iterable of them, not %s",
                     Py_TYPE(body)->tp_name);
    return copy != NULL && py_response_set_body(r, copy);
}

static PyObject *default_type(PyObject *body)
{
    return PyUnicode_Check(body) ? s_text_type : s_binary_type;
}

/* Header containers _header_list takes here: None, a dict, a list or
 * tuple of 2-tuples or 2-lists; -1 for any other (normalize() takes it). */
static Py_ssize_t simple_header_count(PyObject *headers)
{
    if (headers == Py_None)
        return 0;
    if (PyDict_CheckExact(headers))
        return PyDict_GET_SIZE(headers);
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(headers); i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, i);
        if ((!PyTuple_CheckExact(pair) && !PyList_CheckExact(pair)) || PySequence_Fast_GET_SIZE(pair) != 2)
            return -1;
    }
    return PySequence_Fast_GET_SIZE(headers);
}

static bool is_content_type(PyObject *name)
{
    /* No non-ASCII character lowers to one of "content-type"'s. */
    return PyUnicode_IS_ASCII(name) && PyUnicode_GET_LENGTH(name) == 12 &&
           strncasecmp(PyUnicode_DATA(name), "content-type", 12) == 0;
}

/* (str(name), str(value)), as _header_list makes it. */
static bool add_pair(struct py_response *r, PyObject *name, PyObject *value, bool *has_type)
{
    py_cleanup_ref PyObject *n = PyObject_Str(name);
    py_cleanup_ref PyObject *v = n != NULL ? PyObject_Str(value) : NULL;

    if (v == NULL)
        return false;
    *has_type = *has_type || is_content_type(n);
    return py_response_add_header(r, n, v);
}

/* _with_content_type(_header_list(headers), content_type) into r. */
static bool add_headers(struct py_response *r, PyObject *headers, PyObject *content_type)
{
    bool has_type = false;

    if (PyDict_CheckExact(headers)) {
        Py_ssize_t pos = 0;
        PyObject *name, *value;
        while (PyDict_Next(headers, &pos, &name, &value)) {
            py_cleanup_ref PyObject *n = Py_NewRef(name), *v = Py_NewRef(value);
            if (!add_pair(r, n, v, &has_type))
                return false;
        }
    } else if (headers != Py_None) {
        /* Re-checked as it goes: str() of an item may run code that changes the list. */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(headers); i++) {
            py_cleanup_ref PyObject *pair = Py_NewRef(PySequence_Fast_GET_ITEM(headers, i));
            if ((!PyTuple_CheckExact(pair) && !PyList_CheckExact(pair)) || PySequence_Fast_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "each header must be a (name, value) pair");
                return false;
            }
            py_cleanup_ref PyObject *n = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 0));
            py_cleanup_ref PyObject *v = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 1));
            if (!add_pair(r, n, v, &has_type))
                return false;
        }
    }
    return has_type || py_response_prepend_header(r, s_content_type, content_type);
}

/* (status, headers, body) with the Content-Type given or defaulted. */
static bool fill_full(struct py_response *r, PyObject *status, PyObject *headers, Py_ssize_t count,
                      PyObject *content_type, PyObject *body)
{
    return py_response_begin(r, status, count + 1) && add_headers(r, headers, content_type) && set_body(r, body);
}

/* A body with one Content-Type header. */
static bool fill_typed(struct py_response *r, PyObject *content_type, PyObject *body)
{
    py_cleanup_ref PyObject *ok = PyLong_FromLong(200);
    return ok != NULL && py_response_begin(r, ok, 1) && py_response_add_header(r, s_content_type, content_type) &&
           set_body(r, body);
}

static bool fill_response_object(struct py_response *r, PyObject *result, Py_ssize_t count, PyObject *headers)
{
    py_cleanup_ref PyObject *given_type = PyObject_GetAttr(result, s_content_type_attr);
    py_cleanup_ref PyObject *body = given_type != NULL ? PyObject_GetAttr(result, s_body) : NULL;
    py_cleanup_ref PyObject *status_attr = body != NULL ? PyObject_GetAttr(result, s_status) : NULL;
    py_cleanup_ref PyObject *status = status_attr != NULL ? PyNumber_Long(status_attr) : NULL;
    int given = status != NULL ? PyObject_IsTrue(given_type) : -1;

    return given >= 0 && fill_full(r, status, headers, count, given ? given_type : default_type(body), body);
}

enum fill { FILLED, FAILED, UNUSUAL };

/* normalize()'s rules, in its order, for the results that need no Python. */
static enum fill fill_common(RequestPathObject *rp, PyObject *result, struct py_response *r)
{
    if (PyObject_TypeCheck(result, rp->response_type)) {
        py_cleanup_ref PyObject *headers = PyObject_GetAttr(result, s_headers);
        if (headers == NULL)
            return FAILED;
        Py_ssize_t count = simple_header_count(headers);
        if (count < 0)
            return UNUSUAL;
        return fill_response_object(r, result, count, headers) ? FILLED : FAILED;
    }
    if (result == Py_None) {
        py_cleanup_ref PyObject *no_content = PyLong_FromLong(204);
        py_cleanup_ref PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        return no_content != NULL && empty != NULL && py_response_begin(r, no_content, 0) &&
               py_response_set_body(r, empty) ? FILLED : FAILED;
    }
    if (PyUnicode_Check(result) || PyBytes_Check(result) || PyByteArray_Check(result) || PyMemoryView_Check(result))
        return fill_typed(r, default_type(result), result) ? FILLED : FAILED;
    if (PyDict_Check(result) || PyList_Check(result)) {
        py_cleanup_ref PyObject *text = PyObject_CallOneArg(rp->json_dumps, result);
        return text != NULL && fill_typed(r, s_json_type, text) ? FILLED : FAILED;
    }
    if (PyTuple_Check(result) && PyTuple_GET_SIZE(result) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(result, 0)))
        return fill_typed(r, PyTuple_GET_ITEM(result, 0), PyTuple_GET_ITEM(result, 1)) ? FILLED : FAILED;
    if (PyTuple_Check(result) && PyTuple_GET_SIZE(result) == 3 && PyLong_Check(PyTuple_GET_ITEM(result, 0)) &&
        !PyBool_Check(PyTuple_GET_ITEM(result, 0))) {
        PyObject *headers = PyTuple_GET_ITEM(result, 1), *body = PyTuple_GET_ITEM(result, 2);
        Py_ssize_t count = simple_header_count(headers);
        if (count < 0)
            return UNUSUAL;
        return fill_full(r, PyTuple_GET_ITEM(result, 0), headers, count, default_type(body), body) ? FILLED
                                                                                                 : FAILED;
    }
    return UNUSUAL;
}

/* The result as a response in r; false with a Python exception (r empty). */
static bool fill(RequestPathObject *rp, PyObject *result, struct py_response *r)
{
    memset(r, 0, sizeof(*r)); /* released below whether or not begun */
    enum fill how = fill_common(rp, result, r);

    if (how == UNUSUAL) {
        /* Anything else: normalize() decides, or raises the TypeError. */
        py_cleanup_ref PyObject *triple = PyObject_CallOneArg(rp->normalize, result);
        py_cleanup_ref PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *body = triple != NULL && PyTuple_Check(triple) && PyTuple_GET_SIZE(triple) == 3
                             ? PyTuple_GET_ITEM(triple, 2) : NULL;
        bool stream = body != NULL && streams(body);
        how = body != NULL && empty != NULL &&
              py_response_build(r, PyTuple_GET_ITEM(triple, 0), PyTuple_GET_ITEM(triple, 1), stream ? empty : body)
                  ? FILLED : FAILED;
        if (how == FILLED && stream)
            r->stream = Py_NewRef(body);
        if (triple != NULL && how == FAILED && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "normalize() returned no (status, headers, body)");
    }
    if (how == FILLED)
        return true;
    py_response_release(r);
    return false;
}

/* Program.call's answer to SystemExit: the sandbox ends without answering. */
static _Noreturn void exit_for_system_exit(void)
{
    py_cleanup_ref PyObject *exc = py_take_exception();
    py_cleanup_ref PyObject *value = exc != NULL ? PyObject_GetAttr(exc, s_code) : NULL;
    int code = 1;

    if (value != NULL && PyLong_Check(value)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(value, &overflow);
        code = overflow == 0 && v >= INT_MIN && v <= INT_MAX ? (int)v : 1;
    }
    PyErr_Clear();
    py_flush_std_streams();
    _exit(code);
}

/* The exception raised to the tenant's log: one record through report()
 * (program.py's report_exception) about the request, or its id alone
 * (request NULL); without report() the lines PyErr_Print writes. */
static void report_error(RequestPathObject *rp, PyObject *request, uint64_t id)
{
    if (rp->report == NULL) {
        PySys_WriteStderr("request %llu: the program raised an exception\n", (unsigned long long)id);
        PyErr_Print();
        return;
    }
    py_cleanup_ref PyObject *exc = py_take_exception();
    py_cleanup_ref PyObject *id_only = request == NULL ? PyLong_FromUnsignedLongLong(id) : NULL;
    if (request == NULL && id_only == NULL)
        PyErr_Clear(); /* out of memory: the record goes without its id */
    PyObject *about = request != NULL ? request : id_only != NULL ? id_only : Py_None;
    py_cleanup_ref PyObject *done = PyObject_CallFunctionObjArgs(rp->report, exc != NULL ? exc : Py_None,
                                                                 about, NULL);
    if (done == NULL)
        PyErr_Print(); /* report() itself failed: what it raised, at least */
}

/* The traceback to the tenant's log, a 500 naming the request to the client. */
static bool fill_error(RequestPathObject *rp, PyObject *request, struct py_response *r, uint64_t id)
{
    memset(r, 0, sizeof(*r));
    char text[128];
    int n = snprintf(text, sizeof(text),
                     "500 Internal Server Error: the program raised an exception (request %llu)\n",
                     (unsigned long long)id);

    report_error(rp, request, id);
    py_cleanup_ref PyObject *status = PyLong_FromLong(500);
    py_cleanup_ref PyObject *body = PyBytes_FromStringAndSize(text, n);
    if (status != NULL && body != NULL && py_response_begin(r, status, 1) &&
        py_response_add_header(r, s_content_type, s_text_type) && py_response_set_body(r, body))
        return true;
    py_response_release(r);
    return false;
}

/* A failure once the stream's head is out: no 500 can follow it. The
 * traceback goes to the tenant's log, and the stream is cut (no RESP_END:
 * the front end cuts the client off rather than end the body). */
static bool cut_stream(RequestPathObject *rp, PyObject *request, struct py_response *r, uint64_t id)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit))
        exit_for_system_exit();
    report_error(rp, request, id);
    py_response_release(r);
    memset(r, 0, sizeof(*r));
    r->resp.streamed = r->resp.cut = true;
    return true;
}

/* The handler called response_start: it answered on the channel, and
 * returns None (anything else is logged and ignored). */
static bool streamed_by_handler(RequestPathObject *rp, PyObject *request, PyObject *result,
                                struct py_response *r, uint64_t id)
{
    memset(r, 0, sizeof(*r));
    if (result == NULL)
        return cut_stream(rp, request, r, id);
    if (result != Py_None)
        PySys_WriteStderr("request %llu: the program returned %.100s after response_start(); ignored\n",
                          (unsigned long long)id, Py_TYPE(result)->tp_name);
    r->resp.streamed = true;
    return true;
}

/* r's iterable body: in a sandbox's request sent as a stream (head, then
 * each chunk); elsewhere (respond()) joined into a whole body. */
static bool send_stream(RequestPathObject *rp, PyObject *request, struct py_response *r, uint64_t id)
{
    py_cleanup_ref PyObject *iterable = r->stream;
    r->stream = NULL;
    if (!py_stream_active()) {
        py_cleanup_ref PyObject *body = py_stream_collect(iterable);
        return body != NULL && py_response_set_body(r, body);
    }
    r->resp.streamed = true;
    return py_stream_iterable(&r->resp, iterable) || cut_stream(rp, request, r, id);
}

/* Program.call: never fails but for lack of memory (a Python exception). */
static bool respond(RequestPathObject *rp, PyObject *request, uint64_t id, struct py_response *r)
{
    memset(r, 0, sizeof(*r)); /* released below whether or not filled */
    py_cleanup_ref PyObject *result = call_handler(rp, request);

    if (py_stream_started())
        return streamed_by_handler(rp, request, result, r, id);
    if (result != NULL && fill(rp, result, r) && (r->stream == NULL || send_stream(rp, request, r, id)))
        return true;
    if (py_stream_started())
        return cut_stream(rp, request, r, id);
    py_response_release(r);
    if (PyErr_ExceptionMatches(PyExc_SystemExit))
        exit_for_system_exit();
    return fill_error(rp, request, r, id);
}

void py_request_path_report(PyObject *self, uint64_t id)
{
    report_error((RequestPathObject *)self, NULL, id);
}

bool py_request_path_check(PyObject *obj)
{
    return PyObject_TypeCheck(obj, &RequestPathType);
}

bool py_request_path_handle(PyObject *self, const struct mf_request *req, struct py_response *out)
{
    RequestPathObject *rp = (RequestPathObject *)self;
    py_cleanup_ref PyObject *request = py_request_from_wire(rp->request_type, req);
    struct py_stream_watch watch;

    if (request == NULL)
        return false;
    py_streams_watch(&watch);
    bool ok = respond(rp, request, req->req_id, out);
    py_request_detach(request);
    py_streams_flush_if_written(&watch);
    return ok;
}

static PyObject *rp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"handler", "takes_request", "request_type", "response_type", "normalize", "report",
                             NULL};
    PyObject *handler, *request_type, *response_type, *normalize, *report = Py_None;
    int takes_request;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OpO!O!O|$O:RequestPath", kwlist, &handler, &takes_request,
                                     &PyType_Type, &request_type, &PyType_Type, &response_type, &normalize,
                                     &report))
        return NULL;
    if (!py_request_type_check((PyTypeObject *)request_type))
        return PyErr_Format(PyExc_TypeError, "request_type must be a subclass of RequestBase");
    if (!PyCallable_Check(handler) || !PyCallable_Check(normalize))
        return PyErr_Format(PyExc_TypeError, "handler and normalize must be callable");
    if (report != Py_None && !PyCallable_Check(report))
        return PyErr_Format(PyExc_TypeError, "report must be callable or None");
    py_cleanup_ref PyObject *json = PyImport_ImportModule("json");
    py_cleanup_ref PyObject *dumps = json != NULL ? PyObject_GetAttrString(json, "dumps") : NULL;
    if (dumps == NULL)
        return NULL;
    RequestPathObject *rp = (RequestPathObject *)type->tp_alloc(type, 0);
    if (rp == NULL)
        return NULL;
    rp->handler = Py_NewRef(handler);
    rp->takes_request = takes_request;
    rp->request_type = (PyTypeObject *)Py_NewRef(request_type);
    rp->response_type = (PyTypeObject *)Py_NewRef(response_type);
    rp->normalize = Py_NewRef(normalize);
    rp->json_dumps = mf_steal_pointer(&dumps);
    rp->report = report != Py_None ? Py_NewRef(report) : NULL;
    return (PyObject *)rp;
}

static void rp_dealloc(RequestPathObject *rp)
{
    Py_XDECREF(rp->handler);
    Py_XDECREF(rp->request_type);
    Py_XDECREF(rp->response_type);
    Py_XDECREF(rp->normalize);
    Py_XDECREF(rp->json_dumps);
    Py_XDECREF(rp->report);
    Py_TYPE(rp)->tp_free((PyObject *)rp);
}

/* What the sandbox would send, as Python objects (headers as bytes). */
static PyObject *response_tuple(const struct mf_response *resp)
{
    py_cleanup_ref PyObject *headers = PyList_New(resp->header_count);

    for (uint32_t i = 0; headers != NULL && i < resp->header_count; i++) {
        const struct mf_header *h = &resp->headers[i];
        PyObject *pair = Py_BuildValue("(y#y#)", h->name, (Py_ssize_t)h->name_len, h->value,
                                       (Py_ssize_t)h->value_len);
        if (pair == NULL)
            return NULL;
        PyList_SET_ITEM(headers, i, pair);
    }
    if (headers == NULL)
        return NULL;
    return Py_BuildValue("(IOy#)", resp->status, headers, resp->body, (Py_ssize_t)resp->body_len);
}

static PyObject *rp_respond(RequestPathObject *rp, PyObject *request)
{
    struct py_response r;

    if (!PyObject_TypeCheck(request, rp->request_type))
        return PyErr_Format(PyExc_TypeError, "respond() takes a %s", rp->request_type->tp_name);
    struct py_stream_watch watch;
    py_streams_watch(&watch);
    bool ok = respond(rp, request, py_request_log_id(request), &r);
    py_streams_flush_if_written(&watch);
    if (!ok)
        return NULL;
    PyObject *out = response_tuple(&r.resp);
    py_response_release(&r);
    return out;
}

static PyMethodDef rp_methods[] = {
    {"respond", (PyCFunction)rp_respond, METH_O,
     "respond(request) -> (status, [(name, value)], body) as bytes, as a sandbox answers it "
     "(SystemExit ends the process)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RequestPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mayflyd._mayfly.RequestPath",
    .tp_doc = "RequestPath(handler, takes_request, request_type, response_type, normalize, *, report=None): "
              "a program's request path, given to serve_fork and serve_reset as their runner; "
              "report(exc, request) logs what a handler raised",
    .tp_basicsize = sizeof(RequestPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = rp_new,
    .tp_dealloc = (destructor)rp_dealloc,
    .tp_methods = rp_methods,
};

int py_request_path_add(PyObject *module)
{
    static const struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_code, "code"}, {&s_status, "status"},
        {&s_headers, "headers"}, {&s_body, "body"}, {&s_content_type_attr, "content_type"},
        {&s_content_type, "Content-Type"}, {&s_text_type, "text/plain; charset=utf-8"},
        {&s_binary_type, "application/octet-stream"}, {&s_json_type, "application/json"},
    };

    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return -1;
    if (PyType_Ready(&RequestPathType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "RequestPath", (PyObject *)&RequestPathType);
}
