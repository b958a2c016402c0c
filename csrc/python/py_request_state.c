/*
 * What a request leaves to the daemon: its output in sys.stdout and
 * sys.stderr, flushed (only when it wrote some), and, after a rewind,
 * random's generator to reseed (reseed_random). See py_request_state.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdbool.h>
#include <string.h>

#include "python/py_request_state.h"
#include "python/py_util.h"

/* Interned at module init. */
static PyObject *s_flush, *s_buffer, *s_inst, *s_seed, *s_gauss_next, *s_random, *s__random, *s_Random;

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
static const char *const stream_names[PY_WATCH_STREAMS] = {"stdout", "stderr"};

static void watch_object(struct py_stream_watch *w, PyObject *obj, size_t *used)
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

void py_streams_watch(struct py_stream_watch *w)
{
    size_t used = 0;

    w->count = 0;
    w->always = false;
    for (int i = 0; i < PY_WATCH_STREAMS; i++) {
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

static bool streams_written(const struct py_stream_watch *w)
{
    size_t used = 0;

    if (w->always)
        return true;
    for (int i = 0; i < PY_WATCH_STREAMS; i++)
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

void py_streams_flush_if_written(const struct py_stream_watch *w)
{
    if (streams_written(w))
        py_flush_std_streams();
}

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

int py_request_state_add(PyObject *module)
{
    static const struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_flush, "flush"}, {&s_buffer, "buffer"}, {&s_inst, "_inst"}, {&s_seed, "seed"},
        {&s_gauss_next, "gauss_next"}, {&s_random, "random"}, {&s__random, "_random"}, {&s_Random, "Random"},
    };

    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return -1;
    return PyModule_AddFunctions(module, functions);
}
