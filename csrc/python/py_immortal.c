/* Immortal objects for a sealed process; see py_immortal.h. */
#include "python/py_immortal.h"

#include <stdbool.h>
#include <stdlib.h>

#if PY_VERSION_HEX >= 0x030C0000

/* Objects made immortal whose referents are still to be visited. */
struct pending {
    PyObject **items;
    size_t n, cap;
    size_t made;
    bool out_of_memory;
};

static void push(struct pending *p, PyObject *o)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 4096;
        PyObject **items = realloc(p->items, cap * sizeof(*items));
        if (items == NULL) {
            p->out_of_memory = true;
            return;
        }
        p->items = items;
        p->cap = cap;
    }
    p->items[p->n++] = o;
}

static bool mark(struct pending *p, PyObject *o)
{
    if (o == NULL || _Py_IsImmortal(o))
        return false;
    Py_SET_REFCNT(o, _Py_IMMORTAL_REFCNT);
    p->made++;
    return true;
}

/* Immortality doubles as the visited mark: an object is pushed once. */
static void make_immortal(struct pending *p, PyObject *o)
{
    if (mark(p, o))
        push(p, o);
}

static int visit(PyObject *o, void *arg)
{
    make_immortal(arg, o);
    return 0;
}

static void visit_referents(struct pending *p, PyObject *o)
{
    if (PyObject_IS_GC(o)) {
        traverseproc traverse = Py_TYPE(o)->tp_traverse;
        if (traverse != NULL)
            (void)traverse(o, visit, p);
    } else if (PyCode_Check(o)) {
        /* Code objects are not the collector's, but their constants and
         * names are what LOAD_CONST and LOAD_GLOBAL take references to. */
        PyCodeObject *code = (PyCodeObject *)o;
        make_immortal(p, code->co_consts);
        make_immortal(p, code->co_names);
        make_immortal(p, code->co_localsplusnames);
        make_immortal(p, code->co_localspluskinds);
        make_immortal(p, code->co_filename);
        make_immortal(p, code->co_name);
        make_immortal(p, code->co_qualname);
        make_immortal(p, code->co_linetable);
        make_immortal(p, code->co_exceptiontable);
    }
    make_immortal(p, (PyObject *)Py_TYPE(o));
}

PyObject *py_immortalize_tracked(PyObject *self, PyObject *noargs)
{
    struct pending p = {0};
    (void)self;
    (void)noargs;

    PyObject *gc = PyImport_ImportModule("gc");
    if (gc == NULL)
        return NULL;
    PyObject *roots = PyObject_CallMethod(gc, "get_objects", NULL);
    Py_DECREF(gc);
    if (roots == NULL)
        return NULL;
    if (!PyList_Check(roots)) {
        Py_DECREF(roots);
        return PyErr_Format(PyExc_TypeError, "gc.get_objects() returned %.100s", Py_TYPE(roots)->tp_name);
    }
    /* The roots' referents first (the list holds each root meanwhile),
     * then whatever that reached, until nothing new is found. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(roots); i++) {
        PyObject *o = PyList_GET_ITEM(roots, i);
        (void)mark(&p, o);
        visit_referents(&p, o);
    }
    while (p.n > 0 && !p.out_of_memory)
        visit_referents(&p, p.items[--p.n]);
    free(p.items);
    Py_DECREF(roots);
    if (p.out_of_memory)
        return PyErr_NoMemory();
    return PyLong_FromSize_t(p.made);
}

#else

PyObject *py_immortalize_tracked(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLong(0);
}

#endif
