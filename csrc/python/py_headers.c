/*
 * HeadersBase, the C side of host/program.py's Headers (a Mapping): a
 * request's header fields looked up case-insensitively, repeated ones
 * joined by ", ". In C because a handler that reads one header would
 * otherwise run the daemon's Python (the index's loop, Mapping.get,
 * __getitem__) and write its pages in every request. See py_headers.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "base/cleanup.h"
#include "python/py_headers.h"
#include "python/py_util.h"

typedef struct {
    PyObject_HEAD
    PyObject *raw;      /* [(name, value)] as given */
    PyObject *index;    /* {name.lower(): value, or the values joined by ", "} */
} HeadersObject;

static PyObject *s_lower; /* interned at module init */

static PyObject *index_of(PyObject *raw)
{
    py_cleanup_ref PyObject *index = PyDict_New();
    py_cleanup_ref PyObject *items = PySequence_Fast(raw, "headers must be a sequence of (name, value) pairs");

    if (index == NULL || items == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); i++) {
        py_cleanup_ref PyObject *pair = PySequence_Fast(PySequence_Fast_GET_ITEM(items, i),
                                                        "each header must be a (name, value) pair");
        if (pair == NULL)
            return NULL;
        if (PySequence_Fast_GET_SIZE(pair) != 2)
            return PyErr_Format(PyExc_ValueError, "a header pair of %zd items", PySequence_Fast_GET_SIZE(pair));
        PyObject *name = PySequence_Fast_GET_ITEM(pair, 0), *value = PySequence_Fast_GET_ITEM(pair, 1);
        py_cleanup_ref PyObject *key = PyObject_CallMethodNoArgs(name, s_lower);
        if (key == NULL)
            return NULL;
        PyObject *seen = PyDict_GetItemWithError(index, key); /* borrowed */
        if (seen == NULL && PyErr_Occurred())
            return NULL;
        py_cleanup_ref PyObject *joined = seen != NULL ? PyUnicode_FromFormat("%S, %S", seen, value) : Py_NewRef(value);
        if (joined == NULL || PyDict_SetItem(index, key, joined) < 0)
            return NULL;
    }
    return mf_steal_pointer(&index);
}

static PyObject *headers_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"raw", NULL};
    PyObject *raw;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Headers", kwlist, &raw))
        return NULL;
    py_cleanup_ref PyObject *index = index_of(raw);
    HeadersObject *h = index != NULL ? (HeadersObject *)type->tp_alloc(type, 0) : NULL;
    if (h == NULL)
        return NULL;
    h->raw = Py_NewRef(raw);
    h->index = mf_steal_pointer(&index);
    return (PyObject *)h;
}

/* The value for name in any case; NULL with KeyError (of the lowered name) if none. */
static PyObject *headers_getitem(HeadersObject *h, PyObject *name)
{
    py_cleanup_ref PyObject *key = PyObject_CallMethodNoArgs(name, s_lower);
    PyObject *value = key != NULL ? PyDict_GetItemWithError(h->index, key) : NULL;

    if (value == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, key);
    return Py_XNewRef(value);
}

static int headers_contains(HeadersObject *h, PyObject *name)
{
    py_cleanup_ref PyObject *value = headers_getitem(h, name);

    if (value != NULL)
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_KeyError))
        return -1;
    PyErr_Clear();
    return 0;
}

static PyObject *headers_get(HeadersObject *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2)
        return PyErr_Format(PyExc_TypeError, "get() takes 1 or 2 arguments (%zd given)", nargs);
    PyObject *value = headers_getitem(h, args[0]);
    if (value != NULL || !PyErr_ExceptionMatches(PyExc_KeyError))
        return value;
    PyErr_Clear();
    return Py_NewRef(nargs > 1 ? args[1] : Py_None);
}

static PyObject *headers_raw(HeadersObject *h, PyObject *unused)
{
    (void)unused;
    return PySequence_List(h->raw);
}

static Py_ssize_t headers_len(HeadersObject *h)
{
    return PyDict_GET_SIZE(h->index);
}

static PyObject *headers_iter(HeadersObject *h)
{
    return PyObject_GetIter(h->index);
}

static int headers_traverse(HeadersObject *h, visitproc visit, void *arg)
{
    Py_VISIT(h->raw);
    Py_VISIT(h->index);
    return 0;
}

static int headers_clear(HeadersObject *h)
{
    Py_CLEAR(h->raw);
    Py_CLEAR(h->index);
    return 0;
}

static void headers_dealloc(HeadersObject *h)
{
    PyObject_GC_UnTrack(h);
    (void)headers_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyMethodDef headers_methods[] = {
    {"get", (PyCFunction)(void (*)(void))headers_get, METH_FASTCALL,
     "get(name, default=None): the value for name in any case, or default"},
    {"raw", (PyCFunction)headers_raw, METH_NOARGS, "raw() -> every field as received, in order, with its case"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods headers_mapping = {
    .mp_length = (lenfunc)headers_len,
    .mp_subscript = (binaryfunc)headers_getitem,
};

static PySequenceMethods headers_sequence = {
    .sq_contains = (objobjproc)headers_contains,
};

static PyTypeObject HeadersBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mayflyd._mayfly.HeadersBase",
    .tp_doc = "HeadersBase(raw): header fields looked up case-insensitively, repeated ones joined by ', '",
    .tp_basicsize = sizeof(HeadersObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = headers_new,
    .tp_dealloc = (destructor)headers_dealloc,
    .tp_traverse = (traverseproc)headers_traverse,
    .tp_clear = (inquiry)headers_clear,
    .tp_iter = (getiterfunc)headers_iter,
    .tp_as_mapping = &headers_mapping,
    .tp_as_sequence = &headers_sequence,
    .tp_methods = headers_methods,
};

int py_headers_add(PyObject *module)
{
    if ((s_lower = PyUnicode_InternFromString("lower")) == NULL || PyType_Ready(&HeadersBaseType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "HeadersBase", (PyObject *)&HeadersBaseType);
}
