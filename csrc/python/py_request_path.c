/*
 * A sandbox's request path in C, from the decoded request to the tenant's
 * handler and back to the response struct: every line of Python the daemon
 * ran per request wrote pages (frames, refcounts, specialised bytecode)
 * that the reset engine copies back after the request.
 *
 * - RequestBase: the base of host/program.py's Request, filled from an
 *   mf_request with no Python code run; its headers mapping is made only
 *   when the handler reads it.
 * - RequestPath: one program's handler with the contract's rules, the ones
 *   program.py's Program.call and normalize() state (the reference this
 *   follows; normalize() itself still handles the unusual results).
 * - reseed_random(): what each rewound request needs of random.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "python/py_request_path.h"
#include "python/py_requests.h"
#include "python/py_util.h"

/* Interned once at module init: names and the default header values. */
static PyObject *s_headers_type, *s_flush, *s_buffer, *s_code, *s_status, *s_headers, *s_body, *s_content_type_attr,
    *s_inst, *s_seed, *s_gauss_next, *s_random, *s__random, *s_Random, *s_content_type, *s_text_type, *s_binary_type, *s_json_type;

/* ---- RequestBase ---- */

typedef struct {
    PyObject_HEAD
    PyObject *id, *method, *raw_path, *path, *query, *body, *client;
    PyObject *headers;              /* the mapping, made when first read */
    PyObject *raw_headers;          /* [(name, value)]: given, or made from wire */
    const struct mf_request *wire;  /* the request being served, while it is */
} RequestObject;

static PyTypeObject RequestBaseType;

/* urllib.parse.unquote(s): %XX escapes in each run of ASCII characters
 * decoded as UTF-8 (invalid bytes become U+FFFD), other characters kept. */
static PyObject *unquote(PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    Py_ssize_t percent = PyUnicode_FindChar(s, '%', 0, n, 1);

    if (percent == -2)
        return NULL;
    if (percent == -1)
        return Py_NewRef(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    py_cleanup_mem char *buf = PyMem_Malloc((size_t)n);
    py_cleanup_ref PyObject *parts = PyList_New(0);
    if (buf == NULL || parts == NULL)
        return buf == NULL ? PyErr_NoMemory() : NULL;
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t start = i;
        py_cleanup_ref PyObject *part = NULL;
        if (PyUnicode_READ(kind, data, i) >= 0x80) {
            while (i < n && PyUnicode_READ(kind, data, i) >= 0x80)
                i++;
            part = PyUnicode_Substring(s, start, i);
        } else {
            Py_ssize_t len = 0;
            for (; i < n && PyUnicode_READ(kind, data, i) < 0x80; i++) {
                Py_UCS4 c = PyUnicode_READ(kind, data, i);
                int hi, lo;
                if (c == '%' && i + 2 < n &&
                    (hi = (int)PyUnicode_READ(kind, data, i + 1)) < 0x80 && Py_ISXDIGIT(hi) &&
                    (lo = (int)PyUnicode_READ(kind, data, i + 2)) < 0x80 && Py_ISXDIGIT(lo)) {
                    hi = Py_ISDIGIT(hi) ? hi - '0' : Py_TOLOWER(hi) - 'a' + 10;
                    lo = Py_ISDIGIT(lo) ? lo - '0' : Py_TOLOWER(lo) - 'a' + 10;
                    buf[len++] = (char)(hi * 16 + lo);
                    i += 2;
                } else {
                    buf[len++] = (char)c;
                }
            }
            part = PyUnicode_DecodeUTF8(buf, len, "replace");
        }
        if (part == NULL || PyList_Append(parts, part) < 0)
            return NULL;
    }
    py_cleanup_ref PyObject *empty = PyUnicode_New(0, 0);
    return empty != NULL ? PyUnicode_Join(empty, parts) : NULL;
}

static PyObject *latin1(const uint8_t *p, uint32_t n)
{
    /* Latin-1 maps every byte to one code point: nothing can fail to
     * decode, and the program sees exactly the bytes the client sent. */
    return PyUnicode_DecodeLatin1((const char *)p, n, NULL);
}

static PyObject *request_from_wire(PyTypeObject *type, const struct mf_request *req)
{
    py_cleanup_ref PyObject *obj = type->tp_alloc(type, 0);
    RequestObject *r = (RequestObject *)obj;

    if (obj == NULL)
        return NULL;
    r->id = PyLong_FromUnsignedLongLong(req->req_id);
    r->method = latin1(req->method, req->method_len);
    r->raw_path = latin1(req->path, req->path_len);
    r->path = r->raw_path != NULL ? unquote(r->raw_path) : NULL;
    r->query = latin1(req->query, req->query_len);
    r->body = PyBytes_FromStringAndSize((const char *)req->body, (Py_ssize_t)req->body_len);
    r->client = latin1(req->client, req->client_len);
    if (r->id == NULL || r->method == NULL || r->path == NULL || r->query == NULL || r->body == NULL ||
        r->client == NULL)
        return NULL;
    r->wire = req;
    return mf_steal_pointer(&obj);
}

/* After the handler: a request it kept must not point at the wire's
 * buffers, which the next request reuses. */
static void request_detach(RequestObject *r)
{
    if (r->headers == NULL && r->raw_headers == NULL && Py_REFCNT(r) > 1) {
        r->raw_headers = py_header_list(r->wire);
        if (r->raw_headers == NULL)
            PyErr_Clear(); /* out of memory: its headers read as missing */
    }
    r->wire = NULL;
}

static PyObject *request_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"id", "method", "path", "query", "headers", "body", "client", NULL};
    PyObject *f[7] = {NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOOOO:Request", kwlist, &f[0], &f[1], &f[2], &f[3],
                                     &f[4], &f[5], &f[6]))
        return NULL;
    for (int i = 0; i < 7; i++)
        if (f[i] == NULL)
            return PyErr_Format(PyExc_TypeError, "Request() missing keyword argument '%s'", kwlist[i]);
    if (!PyUnicode_Check(f[2]))
        return PyErr_Format(PyExc_TypeError, "path must be str, not %s", Py_TYPE(f[2])->tp_name);
    py_cleanup_ref PyObject *obj = type->tp_alloc(type, 0);
    RequestObject *r = (RequestObject *)obj;
    if (obj == NULL)
        return NULL;
    r->id = Py_NewRef(f[0]);
    r->method = Py_NewRef(f[1]);
    r->raw_path = Py_NewRef(f[2]);
    r->query = Py_NewRef(f[3]);
    r->raw_headers = Py_NewRef(f[4]);
    r->body = Py_NewRef(f[5]);
    r->client = Py_NewRef(f[6]);
    r->path = unquote(f[2]);
    return r->path != NULL ? mf_steal_pointer(&obj) : NULL;
}

static PyObject *request_get_headers(RequestObject *self, void *closure)
{
    (void)closure;
    if (self->headers != NULL)
        return Py_NewRef(self->headers);
    if (self->raw_headers == NULL && self->wire != NULL)
        self->raw_headers = py_header_list(self->wire);
    if (self->raw_headers == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_AttributeError, "headers");
    /* The mapping class is the subclass's: program.py's Headers. */
    py_cleanup_ref PyObject *cls = PyObject_GetAttr((PyObject *)Py_TYPE(self), s_headers_type);
    if (cls == NULL)
        return NULL;
    self->headers = PyObject_CallOneArg(cls, self->raw_headers);
    return Py_XNewRef(self->headers);
}

static int request_set_headers(RequestObject *self, PyObject *value, void *closure)
{
    (void)closure;
    Py_XSETREF(self->headers, Py_XNewRef(value));
    return 0;
}

static int request_traverse(RequestObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->id);
    Py_VISIT(self->method);
    Py_VISIT(self->raw_path);
    Py_VISIT(self->path);
    Py_VISIT(self->query);
    Py_VISIT(self->body);
    Py_VISIT(self->client);
    Py_VISIT(self->headers);
    Py_VISIT(self->raw_headers);
    return 0;
}

static int request_clear(RequestObject *self)
{
    Py_CLEAR(self->id);
    Py_CLEAR(self->method);
    Py_CLEAR(self->raw_path);
    Py_CLEAR(self->path);
    Py_CLEAR(self->query);
    Py_CLEAR(self->body);
    Py_CLEAR(self->client);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->raw_headers);
    return 0;
}

static void request_dealloc(RequestObject *self)
{
    PyObject_GC_UnTrack(self);
    (void)request_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define MEMBER(name) {#name, T_OBJECT_EX, offsetof(RequestObject, name), 0, NULL}
static PyMemberDef request_members[] = {
    MEMBER(id), MEMBER(method), MEMBER(raw_path), MEMBER(path), MEMBER(query), MEMBER(body), MEMBER(client),
    {NULL, 0, 0, 0, NULL},
};
#undef MEMBER

static PyGetSetDef request_getset[] = {
    {"headers", (getter)request_get_headers, (setter)request_set_headers,
     "the headers mapping, made from the raw fields when first read", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mayflyd._mayfly.RequestBase",
    .tp_doc = "RequestBase(*, id, method, path, query, headers, body, client): a request's fields; "
              "subclasses name their headers mapping class in _headers_type",
    .tp_basicsize = sizeof(RequestObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = request_new,
    .tp_dealloc = (destructor)request_dealloc,
    .tp_traverse = (traverseproc)request_traverse,
    .tp_clear = (inquiry)request_clear,
    .tp_members = request_members,
    .tp_getset = request_getset,
};

/* ---- RequestPath: the handler's call and normalize()'s common cases ---- */

typedef struct {
    PyObject_HEAD
    PyObject *handler;
    int takes_request;
    PyTypeObject *request_type;
    PyTypeObject *response_type;
    PyObject *normalize;
    PyObject *json_dumps;
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

/* program.py's _as_bytes: bytes and ASCII str as they are, other str as
 * UTF-8, bytearray and memoryview copied. */
static bool set_body(struct py_response *r, PyObject *body)
{
    py_cleanup_ref PyObject *copy = NULL;

    if (PyBytes_Check(body) || (PyUnicode_Check(body) && PyUnicode_IS_ASCII(body)))
        return py_response_set_body(r, body);
    if (PyUnicode_Check(body))
        copy = PyUnicode_AsUTF8String(body);
    else if (PyByteArray_Check(body) || PyMemoryView_Check(body))
        copy = PyBytes_FromObject(body);
    else
        PyErr_Format(PyExc_TypeError, "a response body must be str or bytes, not %s", Py_TYPE(body)->tp_name);
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
        how = triple != NULL && PyTuple_Check(triple) && PyTuple_GET_SIZE(triple) == 3 &&
              py_response_build(r, PyTuple_GET_ITEM(triple, 0), PyTuple_GET_ITEM(triple, 1),
                                PyTuple_GET_ITEM(triple, 2)) ? FILLED : FAILED;
        if (triple != NULL && how == FAILED && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "normalize() returned no (status, headers, body)");
    }
    if (how == FILLED)
        return true;
    py_response_release(r);
    return false;
}

/* The exception being raised, normalised; NULL if none. */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL)
        (void)PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
#endif
}

/* Program.call's answer to SystemExit: the sandbox ends without answering. */
static _Noreturn void exit_for_system_exit(void)
{
    py_cleanup_ref PyObject *exc = take_exception();
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

/* "request N: ..." and the traceback to the tenant's log, a 500 to the client. */
static bool fill_error(struct py_response *r, uint64_t id)
{
    memset(r, 0, sizeof(*r));
    char text[128];
    int n = snprintf(text, sizeof(text),
                     "500 Internal Server Error: the program raised an exception (request %llu)\n",
                     (unsigned long long)id);

    PySys_WriteStderr("request %llu: the program raised an exception\n", (unsigned long long)id);
    PyErr_Print();
    py_cleanup_ref PyObject *status = PyLong_FromLong(500);
    py_cleanup_ref PyObject *body = PyBytes_FromStringAndSize(text, n);
    if (status != NULL && body != NULL && py_response_begin(r, status, 1) &&
        py_response_add_header(r, s_content_type, s_text_type) && py_response_set_body(r, body))
        return true;
    py_response_release(r);
    return false;
}

/* Program.call: never fails but for lack of memory (a Python exception). */
static bool respond(RequestPathObject *rp, PyObject *request, uint64_t id, struct py_response *r)
{
    py_cleanup_ref PyObject *result = call_handler(rp, request);

    if (result != NULL && fill(rp, result, r))
        return true;
    if (PyErr_ExceptionMatches(PyExc_SystemExit))
        exit_for_system_exit();
    return fill_error(r, id);
}

void py_flush_std_streams(void)
{
    static const char *const names[] = {"stdout", "stderr"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        PyObject *stream = PySys_GetObject(names[i]); /* borrowed */
        if (stream == NULL || stream == Py_None)
            continue;
        py_cleanup_ref PyObject *r = PyObject_CallMethodNoArgs(stream, s_flush);
        if (r != NULL)
            continue;
        /* A program that closed its own stdout keeps its answer. */
        if (PyErr_ExceptionMatches(PyExc_OSError) || PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear();
        else
            PyErr_Print();
    }
}

/* Flushing sys.stdout and sys.stderr when there is nothing to flush
 * writes about fifteen pages (locks, refcounts, the streams' fields) that
 * the rewind copies back. A request that wrote to a text stream changed
 * it or its buffered writer; copies of both taken before the handler
 * tell, and reading them writes nothing. Streams of any other kind (or
 * replaced ones) are always flushed. */
#define WATCH_STREAMS 2
#define WATCH_BYTES 2048

struct stream_watch {
    PyObject *streams[WATCH_STREAMS];   /* borrowed from sys: compared, never dereferenced */
    PyObject *objects[2 * WATCH_STREAMS];
    size_t sizes[2 * WATCH_STREAMS];
    int count;
    bool always;                        /* flush whatever happened */
    unsigned char copy[WATCH_BYTES];
};

static const char *const stream_names[WATCH_STREAMS] = {"stdout", "stderr"};

static void watch_object(struct stream_watch *w, PyObject *obj, size_t *used)
{
    size_t size = (size_t)Py_TYPE(obj)->tp_basicsize;

    if (*used + size > sizeof(w->copy)) {
        w->always = true;
        return;
    }
    memcpy(w->copy + *used, obj, size);
    w->objects[w->count] = obj;
    w->sizes[w->count++] = size;
    *used += size;
}

/* io's text stream and its buffered writer, read through the "buffer"
 * member's offset: getattr would write the writer's refcount. */
static PyObject *buffered_writer_of(PyObject *stream)
{
    PyObject *dict = Py_TYPE(stream)->tp_dict;
    if (strcmp(Py_TYPE(stream)->tp_name, "_io.TextIOWrapper") != 0 || dict == NULL)
        return NULL;
    PyObject *member = PyDict_GetItemWithError(dict, s_buffer); /* borrowed */
    if (member == NULL || !Py_IS_TYPE(member, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)member)->d_member->type != T_OBJECT)
        return NULL;
    PyObject *buffer = *(PyObject **)((char *)stream + ((PyMemberDescrObject *)member)->d_member->offset);
    return buffer != NULL && strcmp(Py_TYPE(buffer)->tp_name, "_io.BufferedWriter") == 0 ? buffer : NULL;
}

static void watch_streams(struct stream_watch *w)
{
    size_t used = 0;

    w->count = 0;
    w->always = false;
    for (int i = 0; i < WATCH_STREAMS; i++) {
        PyObject *stream = w->streams[i] = PySys_GetObject(stream_names[i]);
        if (stream == NULL || stream == Py_None)
            continue;
        PyObject *buffer = buffered_writer_of(stream);
        if (buffer == NULL) {
            w->always = true;
            continue;
        }
        watch_object(w, stream, &used);
        watch_object(w, buffer, &used);
    }
    PyErr_Clear(); /* a failed lookup only means flushing */
}

static bool streams_written(const struct stream_watch *w)
{
    size_t used = 0;

    if (w->always)
        return true;
    for (int i = 0; i < WATCH_STREAMS; i++)
        if (PySys_GetObject(stream_names[i]) != w->streams[i])
            return true;
    /* The same streams, so alive; each text stream is compared before the
     * writer it holds, so the writer is the one it still holds. */
    for (int i = 0; i < w->count; i++) {
        if (memcmp(w->objects[i], w->copy + used, w->sizes[i]) != 0)
            return true;
        used += w->sizes[i];
    }
    return false;
}

bool py_request_path_check(PyObject *obj)
{
    return PyObject_TypeCheck(obj, &RequestPathType);
}

bool py_request_path_handle(PyObject *self, const struct mf_request *req, struct py_response *out)
{
    RequestPathObject *rp = (RequestPathObject *)self;
    py_cleanup_ref PyObject *request = request_from_wire(rp->request_type, req);

    struct stream_watch watch;

    if (request == NULL)
        return false;
    watch_streams(&watch);
    bool ok = respond(rp, request, req->req_id, out);
    request_detach((RequestObject *)request);
    if (streams_written(&watch))
        py_flush_std_streams();
    return ok;
}

static PyObject *rp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"handler", "takes_request", "request_type", "response_type", "normalize", NULL};
    PyObject *handler, *request_type, *response_type, *normalize;
    int takes_request;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OpO!O!O:RequestPath", kwlist, &handler, &takes_request,
                                     &PyType_Type, &request_type, &PyType_Type, &response_type, &normalize))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)request_type, &RequestBaseType))
        return PyErr_Format(PyExc_TypeError, "request_type must be a subclass of RequestBase");
    if (!PyCallable_Check(handler) || !PyCallable_Check(normalize))
        return PyErr_Format(PyExc_TypeError, "handler and normalize must be callable");
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
    return (PyObject *)rp;
}

static void rp_dealloc(RequestPathObject *rp)
{
    Py_XDECREF(rp->handler);
    Py_XDECREF(rp->request_type);
    Py_XDECREF(rp->response_type);
    Py_XDECREF(rp->normalize);
    Py_XDECREF(rp->json_dumps);
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
    /* Only for the log line: a request whose id is no such number says 0. */
    PyObject *id_field = ((RequestObject *)request)->id;
    unsigned long long id = id_field != NULL && PyLong_Check(id_field) ? PyLong_AsUnsignedLongLong(id_field) : 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        id = 0;
    }
    struct stream_watch watch;
    watch_streams(&watch);
    bool ok = respond(rp, request, id, &r);
    if (streams_written(&watch))
        py_flush_std_streams();
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
    .tp_doc = "RequestPath(handler, takes_request, request_type, response_type, normalize): a program's "
              "request path, given to serve_fork and serve_reset as their runner",
    .tp_basicsize = sizeof(RequestPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = rp_new,
    .tp_dealloc = (destructor)rp_dealloc,
    .tp_methods = rp_methods,
};

/* ---- reseed_random ---- */

/* The rewind brings random's generator back to its sealed state: every
 * request would draw the same numbers. _random.Random.seed(inst, None)
 * (from the kernel) dirties half the pages random.seed() does; gauss_next
 * is the one piece of state random.Random keeps beside it. */
static PyObject *py_reseed_random(PyObject *self, PyObject *unused)
{
    py_cleanup_ref PyObject *random = PyImport_GetModule(s_random);
    py_cleanup_ref PyObject *core = random != NULL ? PyImport_GetModule(s__random) : NULL;
    py_cleanup_ref PyObject *core_type = core != NULL ? PyObject_GetAttr(core, s_Random) : NULL;
    py_cleanup_ref PyObject *inst = random != NULL ? PyObject_GetAttr(random, s_inst) : NULL;

    (void)self;
    (void)unused;
    if (inst == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    if (PyErr_Occurred())
        return NULL;
    if (random == NULL)
        Py_RETURN_NONE; /* never imported: a request that imports it seeds it */
    if (inst == NULL || core_type == NULL || !PyType_Check(core_type) ||
        !PyObject_TypeCheck(inst, (PyTypeObject *)core_type))
        return PyObject_CallMethodNoArgs(random, s_seed);
    py_cleanup_ref PyObject *seed = PyObject_GetAttr(core_type, s_seed);
    py_cleanup_ref PyObject *done = seed != NULL ? PyObject_CallFunctionObjArgs(seed, inst, Py_None, NULL) : NULL;
    if (done == NULL || PyObject_SetAttr(inst, s_gauss_next, Py_None) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"reseed_random", py_reseed_random, METH_NOARGS,
     "reseed_random(): random's generator reseeded from the kernel, as after a fork (a no-op without random)"},
    {NULL, NULL, 0, NULL},
};

int py_request_path_add(PyObject *module)
{
    static const struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_headers_type, "_headers_type"}, {&s_flush, "flush"}, {&s_buffer, "buffer"}, {&s_code, "code"}, {&s_status, "status"},
        {&s_headers, "headers"}, {&s_body, "body"}, {&s_content_type_attr, "content_type"},
        {&s_inst, "_inst"}, {&s_seed, "seed"}, {&s_gauss_next, "gauss_next"}, {&s_random, "random"},
        {&s__random, "_random"}, {&s_Random, "Random"},
        {&s_content_type, "Content-Type"}, {&s_text_type, "text/plain; charset=utf-8"},
        {&s_binary_type, "application/octet-stream"}, {&s_json_type, "application/json"},
    };

    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return -1;
    if (PyType_Ready(&RequestBaseType) < 0 || PyType_Ready(&RequestPathType) < 0 ||
        PyModule_AddFunctions(module, functions) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "RequestBase", (PyObject *)&RequestBaseType) < 0 ||
        PyModule_AddObjectRef(module, "RequestPath", (PyObject *)&RequestPathType) < 0)
        return -1;
    return 0;
}
