/*
 * RequestBase, the base of host/program.py's Request: a request's fields,
 * filled from an mf_request with no Python code run; its headers mapping
 * (the subclass's _headers_type) is made only when the handler reads it.
 * See py_request.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdbool.h>

#include "base/cleanup.h"
#include "python/py_request.h"
#include "python/py_requests.h"
#include "python/py_util.h"

static PyObject *s_headers_type; /* interned at module init */

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

PyObject *py_request_from_wire(PyTypeObject *type, const struct mf_request *req)
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
void py_request_detach(PyObject *request)
{
    RequestObject *r = (RequestObject *)request;

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

/* Every object field, for the collector's two walks. */
#define REQUEST_OBJECTS(X) \
    X(id) X(method) X(raw_path) X(path) X(query) X(body) X(client) X(headers) X(raw_headers)

static int request_traverse(RequestObject *self, visitproc visit, void *arg)
{
#define VISIT(field) Py_VISIT(self->field);
    REQUEST_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int request_clear(RequestObject *self)
{
#define CLEAR(field) Py_CLEAR(self->field);
    REQUEST_OBJECTS(CLEAR)
#undef CLEAR
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

bool py_request_type_check(PyTypeObject *type)
{
    return PyType_IsSubtype(type, &RequestBaseType);
}

uint64_t py_request_log_id(PyObject *request)
{
    PyObject *id = ((RequestObject *)request)->id;
    unsigned long long n = id != NULL && PyLong_Check(id) ? PyLong_AsUnsignedLongLong(id) : 0;

    if (PyErr_Occurred()) {
        PyErr_Clear();
        n = 0;
    }
    return n;
}

int py_request_add(PyObject *module)
{
    if ((s_headers_type = PyUnicode_InternFromString("_headers_type")) == NULL || PyType_Ready(&RequestBaseType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "RequestBase", (PyObject *)&RequestBaseType);
}
