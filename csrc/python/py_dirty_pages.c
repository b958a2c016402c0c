/*
 * mayflyd._mayfly.DirtyTracker: the dirty-page tracker (dirty_pages.h) as
 * a small Python type, for the tests and the microbenchmark. Ranges are
 * (start, end) byte addresses, end exclusive. Added to the module by
 * module.c through py_dirty_pages_add, in reset-engine builds only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "base/log.h"
#include "python/py_dirty_pages.h"
#include "python/py_util.h"
#include "rewind/dirty_pages.h"

/* Regions per call into C; a walk that fills them continues (pending). */
#define BATCH 256

typedef struct {
    PyObject_HEAD
    struct mf_dirty_tracker tracker;
} DirtyTracker;

static PyObject *dt_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    DirtyTracker *self;

    if (!PyArg_ParseTuple(args, ":DirtyTracker") || (kwargs != NULL && PyDict_Size(kwargs) > 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "DirtyTracker() takes no arguments");
        return NULL;
    }
    self = (DirtyTracker *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (!mf_dirty_open(&self->tracker)) {
        Py_DECREF(self); /* dt_dealloc's close is safe on a failed open */
        return raise_last();
    }
    return (PyObject *)self;
}

static void dt_dealloc(DirtyTracker *self)
{
    mf_dirty_close(&self->tracker);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *dt_track(DirtyTracker *self, PyObject *args)
{
    unsigned long long address, length;

    if (!PyArg_ParseTuple(args, "KK:track", &address, &length))
        return NULL;
    if (!mf_dirty_track(&self->tracker, (void *)(uintptr_t)address, (size_t)length))
        return raise_last();
    Py_RETURN_NONE;
}

/* Calls scan or collect until the walk is complete; [(start, end), ...].
 * cap (keyword, tests only) bounds the regions per C call; joined (scan
 * only) makes it mf_dirty_scan_joined. */
static PyObject *walk_all(DirtyTracker *self, PyObject *args, PyObject *kwargs, bool reprotect)
{
    static char *collect_kw[] = {"cap", NULL};
    static char *scan_kw[] = {"cap", "joined", NULL};
    struct mf_dirty_region out[BATCH];
    Py_ssize_t cap = BATCH;
    int joined = 0;
    size_t n, pages;
    PyObject *list;

    if (reprotect ? !PyArg_ParseTupleAndKeywords(args, kwargs, "|n:collect", collect_kw, &cap)
                  : !PyArg_ParseTupleAndKeywords(args, kwargs, "|np:scan", scan_kw, &cap, &joined))
        return NULL;
    if (cap < 1 || cap > BATCH)
        return PyErr_Format(PyExc_ValueError, "cap must be in 1..%d", BATCH);
    list = PyList_New(0);
    if (list == NULL)
        return NULL;
    do {
        bool ok = reprotect ? mf_dirty_collect(&self->tracker, out, (size_t)cap, &n, &pages)
                  : joined  ? mf_dirty_scan_joined(&self->tracker, out, (size_t)cap, &n, &pages)
                            : mf_dirty_scan(&self->tracker, out, (size_t)cap, &n, &pages);
        if (!ok) {
            Py_DECREF(list);
            return raise_last();
        }
        for (size_t i = 0; i < n; i++) {
            PyObject *item = Py_BuildValue("(KK)", (unsigned long long)out[i].start, (unsigned long long)out[i].end);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(item);
        }
    } while (mf_dirty_pending(&self->tracker));
    return list;
}

static PyObject *dt_collect(DirtyTracker *self, PyObject *args, PyObject *kwargs)
{
    return walk_all(self, args, kwargs, true);
}

static PyObject *dt_scan(DirtyTracker *self, PyObject *args, PyObject *kwargs)
{
    return walk_all(self, args, kwargs, false);
}

static PyObject *dt_protect(DirtyTracker *self, PyObject *args)
{
    struct mf_dirty_region batch[BATCH];
    PyObject *ranges;
    size_t n = 0;

    if (!PyArg_ParseTuple(args, "O:protect", &ranges))
        return NULL;
    py_cleanup_ref PyObject *seq = PySequence_Fast(ranges, "ranges must be a sequence of (start, end)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < total; i++) {
        unsigned long long start, end;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK:protect", &start, &end))
            return NULL;
        batch[n++] = (struct mf_dirty_region){start, end, 0};
        if ((n == BATCH || i + 1 == total) && !mf_dirty_protect(&self->tracker, batch, n))
            return raise_last();
        if (n == BATCH)
            n = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *dt_close(DirtyTracker *self, PyObject *unused)
{
    (void)unused;
    mf_dirty_close(&self->tracker);
    Py_RETURN_NONE;
}

static PyMethodDef dt_methods[] = {
    {"track", (PyCFunction)dt_track, METH_VARARGS,
     "track(address, length): register and write-protect a page-aligned private range"},
    {"collect", (PyCFunction)(void (*)(void))dt_collect, METH_VARARGS | METH_KEYWORDS,
     "collect(cap=256) -> [(start, end)]: written ranges, re-protected"},
    {"scan", (PyCFunction)(void (*)(void))dt_scan, METH_VARARGS | METH_KEYWORDS,
     "scan(cap=256) -> [(start, end)]: written ranges, left unprotected"},
    {"protect", (PyCFunction)dt_protect, METH_VARARGS, "protect(ranges): write-protect these (start, end) ranges"},
    {"close", (PyCFunction)dt_close, METH_NOARGS, "close(): release the userfaultfd and pagemap fds"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DirtyTrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mayflyd._mayfly.DirtyTracker",
    .tp_doc = "DirtyTracker(): pages written in tracked ranges (userfaultfd async WP + PAGEMAP_SCAN)",
    .tp_basicsize = sizeof(DirtyTracker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = dt_new,
    .tp_dealloc = (destructor)dt_dealloc,
    .tp_methods = dt_methods,
};

int py_dirty_pages_add(PyObject *module)
{
    if (PyType_Ready(&DirtyTrackerType) < 0)
        return -1;
    Py_INCREF(&DirtyTrackerType);
    if (PyModule_AddObject(module, "DirtyTracker", (PyObject *)&DirtyTrackerType) < 0) {
        Py_DECREF(&DirtyTrackerType);
        return -1;
    }
    return 0;
}
