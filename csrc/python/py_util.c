/* Error raising, converters and fork hooks shared by the bindings; see py_util.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "base/log.h"
#include "python/py_util.h"

PyObject *raise_last(void)
{
    int err = mf_last_errno();
    if (err == ENOMEM)
        return PyErr_NoMemory();
    if (err == EPROTO)
        return PyErr_Format(PyExc_ValueError, "%s", mf_last_error());
    if (err == 0)
        return PyErr_Format(PyExc_RuntimeError, "%s", mf_last_error());
    /* OSError(errno, msg) picks the subclass (FileNotFoundError, ...). */
    PyObject *args = Py_BuildValue("(is)", err, mf_last_error());
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyObject *py_take_exception(void)
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

void py_restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

int uint32_converter(PyObject *obj, void *out)
{
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return 0;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return 0;
    }
    *(uint32_t *)out = (uint32_t)v;
    return 1;
}

int uint64_converter(PyObject *obj, void *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    *(uint64_t *)out = v;
    return 1;
}

void hook_before_fork(void *ctx) { (void)ctx; PyOS_BeforeFork(); }
void hook_after_fork_parent(void *ctx) { (void)ctx; PyOS_AfterFork_Parent(); }
void hook_after_fork_child(void *ctx) { (void)ctx; PyOS_AfterFork_Child(); }
