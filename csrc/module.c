/*
 * The Python module mayflyd._mayfly: module init, the method table, the
 * constants, struct_layout and the bindings of identity, mounts and cgroups.
 * The request bindings (serve_fork, encode_response, decode_request) are in
 * py_requests.c; these two are the only files that know CPython.
 * Each binding converts its arguments, calls one C function and turns a
 * recorded error (log.c) into OSError (with errno), ValueError (bad
 * frames) or RuntimeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stddef.h>

#include "cgroup.h"
#include "fork_engine.h"
#include "identity.h"
#include "log.h"
#include "mounts.h"
#include "proto.h"
#include "py_bindings.h"

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

/* ---- identity and mounts ---- */

static PyObject *py_drop_privileges(PyObject *self, PyObject *args)
{
    uint32_t uid, gid;

    (void)self;
    if (!PyArg_ParseTuple(args, "O&O&:drop_privileges", uint32_converter, &uid, uint32_converter, &gid))
        return NULL;
    if (!mf_drop_privileges(uid, gid))
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *py_set_parent_death_signal(PyObject *self, PyObject *args)
{
    int signum, ppid;

    (void)self;
    if (!PyArg_ParseTuple(args, "ii:set_parent_death_signal", &signum, &ppid))
        return NULL;
    if (!mf_set_parent_death_signal(signum, ppid))
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *py_set_oom_score_adj(PyObject *self, PyObject *args)
{
    int value;

    (void)self;
    if (!PyArg_ParseTuple(args, "i:set_oom_score_adj", &value))
        return NULL;
    if (!mf_set_oom_score_adj(value))
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *py_enter_minimal_root(PyObject *self, PyObject *args)
{
    PyObject *list, *seq, *skipped_list = NULL;
    PyObject **encoded = NULL;
    const char **paths = NULL;
    bool *skipped = NULL;
    Py_ssize_t n, done = 0;

    (void)self;
    if (!PyArg_ParseTuple(args, "O:enter_minimal_root", &list))
        return NULL;
    seq = PySequence_Fast(list, "paths must be a sequence of str");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    encoded = PyMem_Calloc((size_t)n + 1, sizeof(*encoded));
    paths = PyMem_Calloc((size_t)n + 1, sizeof(*paths));
    skipped = PyMem_Calloc((size_t)n + 1, sizeof(*skipped));
    if (encoded == NULL || paths == NULL || skipped == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (; done < n; done++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, done), &encoded[done]))
            goto out;
        paths[done] = PyBytes_AS_STRING(encoded[done]);
    }
    if (!mf_enter_minimal_root(paths, (size_t)n, skipped)) {
        raise_last();
        goto out;
    }
    skipped_list = PyList_New(0);
    for (Py_ssize_t i = 0; skipped_list != NULL && i < n; i++)
        if (skipped[i] && PyList_Append(skipped_list, PySequence_Fast_GET_ITEM(seq, i)) < 0)
            Py_CLEAR(skipped_list);
out:
    for (Py_ssize_t i = 0; i < done; i++)
        Py_XDECREF(encoded[i]);
    PyMem_Free(encoded);
    PyMem_Free(paths);
    PyMem_Free(skipped);
    Py_DECREF(seq);
    return skipped_list;
}

/* ---- cgroups: the GIL is released, remove may wait about a second ---- */

struct cg_args {
    struct mf_cgroup_config cfg;
    PyObject *base, *group;
};

static bool parse_cgroup(PyObject *args, const char *fmt, struct cg_args *a, void *extra_conv, void *extra)
{
    memset(a, 0, sizeof(*a));
    int rc = extra_conv != NULL
                 ? PyArg_ParseTuple(args, fmt, &a->cfg.version, PyUnicode_FSConverter, &a->base,
                                    PyUnicode_FSConverter, &a->group, extra_conv, extra)
                 : PyArg_ParseTuple(args, fmt, &a->cfg.version, PyUnicode_FSConverter, &a->base,
                                    PyUnicode_FSConverter, &a->group);
    if (!rc) {
        Py_XDECREF(a->base);
        Py_XDECREF(a->group);
        return false;
    }
    a->cfg.base = PyBytes_AS_STRING(a->base);
    a->cfg.group = PyBytes_AS_STRING(a->group);
    return true;
}

static PyObject *cg_finish(struct cg_args *a, bool ok)
{
    Py_DECREF(a->base);
    Py_DECREF(a->group);
    if (!ok)
        return raise_last();
    Py_RETURN_NONE;
}

static int pid_converter(PyObject *obj, void *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return 0;
    if (v <= 0 || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "bad pid %ld", v);
        return 0;
    }
    *(pid_t *)out = (pid_t)v;
    return 1;
}

static PyObject *py_cgroup_detect(PyObject *self, PyObject *args)
{
    PyObject *base;
    int v;

    (void)self;
    if (!PyArg_ParseTuple(args, "O&:cgroup_detect", PyUnicode_FSConverter, &base))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    v = mf_cgroup_detect(PyBytes_AS_STRING(base));
    Py_END_ALLOW_THREADS
    Py_DECREF(base);
    return v < 0 ? raise_last() : PyLong_FromLong(v);
}

static PyObject *py_cgroup_setup(PyObject *self, PyObject *args)
{
    struct cg_args a;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&O&:cgroup_setup", &a, uint64_converter, &a.cfg.memory_max))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_setup(&a.cfg);
    Py_END_ALLOW_THREADS
    return cg_finish(&a, ok);
}

static PyObject *py_cgroup_join(PyObject *self, PyObject *args)
{
    struct cg_args a;
    pid_t pid;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&O&:cgroup_join", &a, pid_converter, &pid))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_join(&a.cfg, pid);
    Py_END_ALLOW_THREADS
    return cg_finish(&a, ok);
}

static PyObject *py_cgroup_remove(PyObject *self, PyObject *args)
{
    struct cg_args a;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&:cgroup_remove", &a, NULL, NULL))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_remove(&a.cfg);
    Py_END_ALLOW_THREADS
    return cg_finish(&a, ok);
}

static PyObject *py_cgroup_stats(PyObject *self, PyObject *args)
{
    struct cg_args a;
    struct mf_cgroup_stats st;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&:cgroup_stats", &a, NULL, NULL))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_stats(&a.cfg, &st);
    Py_END_ALLOW_THREADS
    if (cg_finish(&a, ok) == NULL)
        return NULL;
    Py_DECREF(Py_None); /* cg_finish's return value on success */
    return Py_BuildValue("{sKsK}", "oom_kill", (unsigned long long)st.oom_kill, "memory_current",
                         (unsigned long long)st.memory_current);
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
           FIELD(mf_child_exit, flags), FIELD(mf_child_exit, reserved)),
    STRUCT(mf_request_failed, FIELD(mf_request_failed, error), FIELD(mf_request_failed, reserved)),
    STRUCT(mf_req_head, FIELD(mf_req_head, method_len), FIELD(mf_req_head, path_len),
           FIELD(mf_req_head, query_len), FIELD(mf_req_head, client_len),
           FIELD(mf_req_head, header_count), FIELD(mf_req_head, reserved), FIELD(mf_req_head, body_len)),
    STRUCT(mf_resp_head, FIELD(mf_resp_head, status), FIELD(mf_resp_head, header_count),
           FIELD(mf_resp_head, body_len)),
    STRUCT(mf_header_entry, FIELD(mf_header_entry, name_len), FIELD(mf_header_entry, value_len)),
};

static PyObject *py_struct_layout(PyObject *self, PyObject *unused)
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

static PyMethodDef methods[] = {
    {"struct_layout", py_struct_layout, METH_NOARGS, "{struct: (size, {field: (offset, size)})}"},
    {"drop_privileges", py_drop_privileges, METH_VARARGS, "drop_privileges(uid, gid)"},
    {"set_parent_death_signal", py_set_parent_death_signal, METH_VARARGS,
     "set_parent_death_signal(signum, expected_ppid)"},
    {"set_oom_score_adj", py_set_oom_score_adj, METH_VARARGS, "set_oom_score_adj(value)"},
    {"enter_minimal_root", py_enter_minimal_root, METH_VARARGS,
     "enter_minimal_root(paths) -> paths skipped because missing"},
    {"cgroup_detect", py_cgroup_detect, METH_VARARGS, "cgroup_detect(base) -> 0, 1 or 2"},
    {"cgroup_setup", py_cgroup_setup, METH_VARARGS, "cgroup_setup(version, base, group, memory_max)"},
    {"cgroup_join", py_cgroup_join, METH_VARARGS, "cgroup_join(version, base, group, pid)"},
    {"cgroup_remove", py_cgroup_remove, METH_VARARGS, "cgroup_remove(version, base, group)"},
    {"cgroup_stats", py_cgroup_stats, METH_VARARGS, "cgroup_stats(version, base, group) -> dict"},
    {"serve_fork", py_serve_fork, METH_VARARGS, "serve_fork(ctrl_fd, runner, close_in_child)"},
    {"encode_response", py_encode_response, METH_VARARGS,
     "encode_response(req_id, status, headers, body) -> [packet, ...]"},
    {"decode_request", py_decode_request, METH_VARARGS,
     "decode_request(req_id, packets) -> (method, path, query, headers, body, client)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "mayflyd._mayfly", "mayflyd's C sandbox helper", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mayfly(void)
{
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"MAGIC", MF_MAGIC}, {"PROTOCOL_VERSION", MF_PROTOCOL_VERSION},
        {"MAX_PAYLOAD", MF_MAX_PAYLOAD}, {"MAX_HEAD", MF_MAX_HEAD}, {"MAX_HEADERS", MF_MAX_HEADERS},
        {"FRAME_HEADER_SIZE", MF_FRAME_HEADER_SIZE},
        {"MSG_REQUEST", MF_MSG_REQUEST}, {"MSG_CANCEL", MF_MSG_CANCEL}, {"MSG_SHUTDOWN", MF_MSG_SHUTDOWN},
        {"MSG_READY", MF_MSG_READY}, {"MSG_LOAD_FAILED", MF_MSG_LOAD_FAILED},
        {"MSG_CHILD_EXIT", MF_MSG_CHILD_EXIT}, {"MSG_REQUEST_FAILED", MF_MSG_REQUEST_FAILED},
        {"MSG_REQ_HEAD", MF_MSG_REQ_HEAD}, {"MSG_REQ_BODY", MF_MSG_REQ_BODY}, {"MSG_REQ_END", MF_MSG_REQ_END},
        {"MSG_RESP_HEAD", MF_MSG_RESP_HEAD}, {"MSG_RESP_BODY", MF_MSG_RESP_BODY},
        {"MSG_RESP_END", MF_MSG_RESP_END},
        {"ENGINE_FORK", MF_ENGINE_FORK}, {"ENGINE_RESET", MF_ENGINE_RESET},
        {"EXIT_TIMED_OUT", MF_EXIT_TIMED_OUT}, {"EXIT_CANCELLED", MF_EXIT_CANCELLED},
        {"REQUEST_BODY_CAP", (long)MF_REQUEST_BODY_CAP},
        {"FORK_MAX_CHILDREN", MF_FORK_MAX_CHILDREN}, {"FORK_GRACE_MS", MF_FORK_GRACE_MS},
        {"CHILD_EXIT_HANDLER", MF_CHILD_EXIT_HANDLER}, {"CHILD_EXIT_BAD_REQUEST", MF_CHILD_EXIT_BAD_REQUEST},
        {"CHILD_EXIT_SETUP", MF_CHILD_EXIT_SETUP},
    };
    PyObject *m = PyModule_Create(&module_def);

    for (size_t i = 0; m != NULL && i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0)
            Py_CLEAR(m);
    return m;
}
