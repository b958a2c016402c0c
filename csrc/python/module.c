/*
 * The Python module mayflyd._mayfly: module init, the method table, the
 * constants and the bindings of identity, namespaces, mounts, seccomp and
 * cgroups.
 * The request bindings (serve_fork, encode_response, decode_request) are in
 * py_requests.c; serve_reset (py_reset.c) and the DirtyTracker type
 * (py_dirty_pages.c) are built only with the reset engine
 * (MF_HAVE_RESET_ENGINE: x86_64, see setup.py). The shared helpers are in
 * py_util.c. These are the only files that know CPython.
 * Each binding converts its arguments, calls one C function and turns a
 * recorded error (log.c) into OSError (with errno), ValueError (bad
 * frames) or RuntimeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>

#include "base/log.h"
#include "engine/fork_engine.h"
#include "python/py_headers.h"
#include "python/py_immortal.h"
#include "python/py_request.h"
#include "python/py_request_path.h"
#include "python/py_request_state.h"
#include "python/py_requests.h"
#include "python/py_stream.h"
#include "python/py_util.h"
#include "walls/cgroup.h"
#include "walls/host_walls.h"
#include "walls/identity.h"
#include "walls/mounts.h"
#include "walls/ns.h"
#include "walls/seccomp.h"
#include "walls/userns.h"
#include "walls/zygote_fork.h"
#include "wire/proto.h"
#ifdef MF_HAVE_RESET_ENGINE
#include "python/py_dirty_pages.h"
#include "python/py_reset.h"
#include "rewind/rewind.h"
#endif

/* ---- identity, namespaces and mounts ---- */

static PyObject *py_drop_privileges(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"uid", "gid", "set_groups", NULL};
    uint32_t uid, gid;
    int set_groups = 1;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&|p:drop_privileges", kwlist, uint32_converter, &uid,
                                     uint32_converter, &gid, &set_groups))
        return NULL;
    if (!mf_drop_privileges(uid, gid, set_groups != 0))
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *py_enter_user_namespace(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (!mf_enter_user_namespace())
        return raise_last();
    Py_RETURN_NONE;
}

/* Returns only in the new host (pid 1); the caller stays in ns.c's stub. */
static PyObject *py_enter_namespaces(PyObject *self, PyObject *args)
{
    struct mf_ns_hooks hooks = {NULL, hook_before_fork, hook_after_fork_parent, hook_after_fork_child};
    struct mf_ns_config cfg = {.hooks = &hooks};
    py_cleanup_ref PyObject *hostname = NULL;
    const char *network;

    (void)self;
    if (!PyArg_ParseTuple(args, "sO&:enter_namespaces", &network, PyUnicode_FSConverter, &hostname))
        return NULL;
    if (!mf_network_parse(network, &cfg.network))
        return PyErr_Format(PyExc_ValueError, "%s", mf_last_error());
    cfg.hostname = PyBytes_AS_STRING(hostname);
    /* The GIL stays held across the fork, as PyOS_BeforeFork requires. */
    if (!mf_enter_namespaces(&cfg))
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *py_seccomp_load(PyObject *self, PyObject *args)
{
    py_cleanup_buffer Py_buffer bpf = {0};

    (void)self;
    if (!PyArg_ParseTuple(args, "y*:seccomp_load", &bpf))
        return NULL;
    if (!mf_seccomp_check((size_t)bpf.len))
        return PyErr_Format(PyExc_ValueError, "%s", mf_last_error());
    if (!mf_seccomp_load(bpf.buf, (size_t)bpf.len))
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

/* A Python sequence of str paths, encoded for C. */
struct path_list {
    PyObject *seq;
    PyObject **encoded;
    const char **paths;
    Py_ssize_t n, done;
};

static void path_list_free(struct path_list *p)
{
    for (Py_ssize_t i = 0; i < p->done; i++)
        Py_XDECREF(p->encoded[i]);
    PyMem_Free(p->encoded);
    PyMem_Free(p->paths);
    Py_XDECREF(p->seq);
    memset(p, 0, sizeof(*p));
}

#define cleanup_path_list __attribute__((cleanup(path_list_free)))

/* Fills p (zeroed by the caller); on failure what it took stays in p for
 * path_list_free. */
static bool path_list_encode(PyObject *list, struct path_list *p)
{
    p->seq = PySequence_Fast(list, "paths must be a sequence of str");
    if (p->seq == NULL)
        return false;
    p->n = PySequence_Fast_GET_SIZE(p->seq);
    p->encoded = PyMem_Calloc((size_t)p->n + 1, sizeof(*p->encoded));
    p->paths = PyMem_Calloc((size_t)p->n + 1, sizeof(*p->paths));
    if (p->encoded == NULL || p->paths == NULL) {
        PyErr_NoMemory();
        return false;
    }
    for (; p->done < p->n; p->done++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(p->seq, p->done), &p->encoded[p->done]))
            return false;
        p->paths[p->done] = PyBytes_AS_STRING(p->encoded[p->done]);
    }
    return true;
}

static PyObject *py_enter_minimal_root(PyObject *self, PyObject *args)
{
    cleanup_path_list struct path_list p = {0};
    py_cleanup_mem bool *skipped = NULL;
    PyObject *list, *skipped_list;

    (void)self;
    if (!PyArg_ParseTuple(args, "O:enter_minimal_root", &list) || !path_list_encode(list, &p))
        return NULL;
    skipped = PyMem_Calloc((size_t)p.n + 1, sizeof(*skipped));
    if (skipped == NULL)
        return PyErr_NoMemory();
    if (!mf_enter_minimal_root(p.paths, (size_t)p.n, skipped))
        return raise_last();
    skipped_list = PyList_New(0);
    for (Py_ssize_t i = 0; skipped_list != NULL && i < p.n; i++)
        if (skipped[i] && PyList_Append(skipped_list, PySequence_Fast_GET_ITEM(p.seq, i)) < 0)
            Py_CLEAR(skipped_list);
    return skipped_list;
}

/* walls = (root, nproc, uid, gid, readonly_paths or None, loading_filter or None) */
struct walls_args {
    struct mf_host_walls w;
    struct path_list paths;
    Py_buffer filter;
};

static void walls_args_free(struct walls_args *a)
{
    path_list_free(&a->paths);
    py_release_buffer(&a->filter);
}

#define cleanup_walls_args __attribute__((cleanup(walls_args_free)))

/* Fills a (zeroed by the caller); on failure what it took stays in a for
 * walls_args_free. */
static bool walls_args_parse(PyObject *tuple, struct walls_args *a)
{
    PyObject *paths, *filter;
    int root;
    unsigned long nproc;
    unsigned int uid, gid;

    if (!PyArg_ParseTuple(tuple, "pkIIOO:walls", &root, &nproc, &uid, &gid, &paths, &filter))
        return false;
    a->w.root = root != 0;
    a->w.nproc = nproc;
    a->w.uid = (uid_t)uid;
    a->w.gid = (gid_t)gid;
    if (paths != Py_None) {
        if (!path_list_encode(paths, &a->paths))
            return false;
        a->w.minimal_root = true;
        a->w.readonly_paths = a->paths.paths;
        a->w.n_paths = (size_t)a->paths.n;
    }
    if (filter != Py_None) {
        if (PyObject_GetBuffer(filter, &a->filter, PyBUF_SIMPLE) < 0)
            return false;
        if (!mf_seccomp_check((size_t)a->filter.len)) {
            PyErr_Format(PyExc_ValueError, "%s", mf_last_error());
            return false;
        }
        a->w.loading_filter = a->filter.buf;
        a->w.filter_len = (size_t)a->filter.len;
    }
    return true;
}

static PyObject *py_build_host_walls(PyObject *self, PyObject *args)
{
    cleanup_walls_args struct walls_args a = {0};
    PyObject *tuple;

    (void)self;
    if (!PyArg_ParseTuple(args, "O!:build_host_walls", &PyTuple_Type, &tuple) || !walls_args_parse(tuple, &a))
        return NULL;
    if (!mf_host_walls_build(&a.w))
        return raise_last();
    Py_RETURN_NONE;
}

/* Returns the child's pid in the zygote and 0 in the host (zygote_fork.c). */
static PyObject *py_zygote_fork(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"ctrl_fd", "oom_fd", "stdout_fd", "stderr_fd", "walls", "user_namespace",
                             "cgroup_version", "cgroup_base", "cgroup_group", "network", "hostname",
                             "parent_pidfd", NULL};
    struct mf_ns_hooks hooks = {NULL, hook_before_fork, hook_after_fork_parent, hook_after_fork_child};
    struct mf_zygote_fork_config cfg = {.hooks = &hooks, .parent_pidfd = -1};
    struct mf_cgroup_config cgroup = {0};
    struct mf_ns_config ns = {0};
    /* Released on every return, in the zygote and in the host alike. */
    py_cleanup_ref PyObject *base = NULL;
    py_cleanup_ref PyObject *group = NULL;
    py_cleanup_ref PyObject *hostname = NULL;
    cleanup_walls_args struct walls_args w = {0};
    PyObject *walls;
    const char *network = NULL;
    int user_namespace = 0;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiO!|piO&O&zO&i:zygote_fork", kwlist, &cfg.ctrl_fd,
                                     &cfg.oom_fd, &cfg.stdout_fd, &cfg.stderr_fd, &PyTuple_Type, &walls,
                                     &user_namespace, &cgroup.version, PyUnicode_FSConverter, &base,
                                     PyUnicode_FSConverter, &group, &network, PyUnicode_FSConverter, &hostname,
                                     &cfg.parent_pidfd))
        return NULL;
    if (!walls_args_parse(walls, &w))
        return NULL;
    cfg.walls = &w.w;
    cfg.user_namespace = user_namespace != 0;
    if (cgroup.version != 0) {
        if (base == NULL || group == NULL)
            return PyErr_Format(PyExc_ValueError, "a cgroup needs cgroup_base and cgroup_group");
        cgroup.base = PyBytes_AS_STRING(base);
        cgroup.group = PyBytes_AS_STRING(group);
        cfg.cgroup = &cgroup;
    }
    if (network != NULL) {
        if (hostname == NULL)
            return PyErr_Format(PyExc_ValueError, "namespaces need a hostname");
        if (!mf_network_parse(network, &ns.network))
            return PyErr_Format(PyExc_ValueError, "%s", mf_last_error());
        ns.hostname = PyBytes_AS_STRING(hostname);
        cfg.ns = &ns;
    }
    /* The GIL stays held across the fork, as PyOS_BeforeFork requires. */
    pid_t pid = mf_zygote_fork(&cfg);
    return pid < 0 ? raise_last() : PyLong_FromLong(pid);
}

/* ---- cgroups: the GIL is released, remove may wait about a second ---- */

/* A cgroup binding's config; base and group are released at scope exit. */
struct cg_args {
    struct mf_cgroup_config cfg;
    PyObject *base, *group;
};

static void cg_args_free(struct cg_args *a)
{
    Py_CLEAR(a->base);
    Py_CLEAR(a->group);
}

#define cleanup_cg_args __attribute__((cleanup(cg_args_free)))

/* "iO&O&" (version, base, group), then one optional converter of the caller's. */
static bool parse_cgroup(PyObject *args, const char *fmt, struct cg_args *a, void *extra_conv, void *extra)
{
    int rc = extra_conv != NULL
                 ? PyArg_ParseTuple(args, fmt, &a->cfg.version, PyUnicode_FSConverter, &a->base,
                                    PyUnicode_FSConverter, &a->group, extra_conv, extra)
                 : PyArg_ParseTuple(args, fmt, &a->cfg.version, PyUnicode_FSConverter, &a->base,
                                    PyUnicode_FSConverter, &a->group);
    if (!rc)
        return false;
    a->cfg.base = PyBytes_AS_STRING(a->base);
    a->cfg.group = PyBytes_AS_STRING(a->group);
    return true;
}

static PyObject *cg_result(bool ok)
{
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
    py_cleanup_ref PyObject *base = NULL;
    int v;

    (void)self;
    if (!PyArg_ParseTuple(args, "O&:cgroup_detect", PyUnicode_FSConverter, &base))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    v = mf_cgroup_detect(PyBytes_AS_STRING(base));
    Py_END_ALLOW_THREADS
    return v < 0 ? raise_last() : PyLong_FromLong(v);
}

static PyObject *py_cgroup_setup(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"version", "base", "group", "memory_max", "pids_max", "cpu_quota_us",
                             "cpu_period_us", NULL};
    cleanup_cg_args struct cg_args a = {.cfg.cpu_period_us = 100000};
    bool ok;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO&O&O&|O&O&O&:cgroup_setup", kwlist, &a.cfg.version,
                                     PyUnicode_FSConverter, &a.base, PyUnicode_FSConverter, &a.group,
                                     uint64_converter, &a.cfg.memory_max, uint64_converter, &a.cfg.pids_max,
                                     uint64_converter, &a.cfg.cpu_quota_us, uint64_converter,
                                     &a.cfg.cpu_period_us))
        return NULL;
    a.cfg.base = PyBytes_AS_STRING(a.base);
    a.cfg.group = PyBytes_AS_STRING(a.group);
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_setup(&a.cfg);
    Py_END_ALLOW_THREADS
    return cg_result(ok);
}

static PyObject *py_cgroup_join(PyObject *self, PyObject *args)
{
    cleanup_cg_args struct cg_args a = {0};
    pid_t pid;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&O&:cgroup_join", &a, pid_converter, &pid))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_join(&a.cfg, pid);
    Py_END_ALLOW_THREADS
    return cg_result(ok);
}

static PyObject *py_cgroup_remove(PyObject *self, PyObject *args)
{
    cleanup_cg_args struct cg_args a = {0};
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&:cgroup_remove", &a, NULL, NULL))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_remove(&a.cfg);
    Py_END_ALLOW_THREADS
    return cg_result(ok);
}

static PyObject *py_cgroup_stats(PyObject *self, PyObject *args)
{
    cleanup_cg_args struct cg_args a = {0};
    struct mf_cgroup_stats st;
    bool ok;

    (void)self;
    if (!parse_cgroup(args, "iO&O&:cgroup_stats", &a, NULL, NULL))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = mf_cgroup_stats(&a.cfg, &st);
    Py_END_ALLOW_THREADS
    if (!ok)
        return raise_last();
    PyObject *out = Py_BuildValue("{sKsK}", "oom_kill", (unsigned long long)st.oom_kill, "memory_current",
                                  (unsigned long long)st.memory_current);
    if (out != NULL && st.have_pids_current) {
        py_cleanup_ref PyObject *v = PyLong_FromUnsignedLongLong(st.pids_current);
        if (v == NULL || PyDict_SetItemString(out, "pids_current", v) < 0)
            Py_CLEAR(out);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"struct_layout", py_struct_layout, METH_NOARGS, "{struct: (size, {field: (offset, size)})}"},
    {"immortalize_tracked", py_immortalize_tracked, METH_NOARGS,
     "immortalize_tracked() -> int: objects the collector tracks (and what they reach) made immortal"},
    {"drop_privileges", (PyCFunction)(void (*)(void))py_drop_privileges, METH_VARARGS | METH_KEYWORDS,
     "drop_privileges(uid, gid, set_groups=True)"},
    {"build_host_walls", py_build_host_walls, METH_VARARGS,
     "build_host_walls((root, nproc, uid, gid, readonly_paths or None, loading_filter or None))"},
    {"enter_user_namespace", py_enter_user_namespace, METH_NOARGS, "enter_user_namespace()"},
    {"zygote_fork", (PyCFunction)(void (*)(void))py_zygote_fork, METH_VARARGS | METH_KEYWORDS,
     "zygote_fork(ctrl_fd, oom_fd, stdout_fd, stderr_fd, walls, user_namespace=False, cgroup_version=0, "
     "cgroup_base=None, cgroup_group=None, network=None, hostname=None, parent_pidfd=-1) -> pid, 0 in the host"},
    {"enter_namespaces", py_enter_namespaces, METH_VARARGS,
     "enter_namespaces(network, hostname); returns in pid 1 of the new pid namespace only"},
    {"seccomp_load", py_seccomp_load, METH_VARARGS, "seccomp_load(bpf)"},
    {"set_parent_death_signal", py_set_parent_death_signal, METH_VARARGS,
     "set_parent_death_signal(signum, expected_ppid)"},
    {"set_oom_score_adj", py_set_oom_score_adj, METH_VARARGS, "set_oom_score_adj(value)"},
    {"enter_minimal_root", py_enter_minimal_root, METH_VARARGS,
     "enter_minimal_root(paths) -> paths skipped because missing"},
    {"cgroup_detect", py_cgroup_detect, METH_VARARGS, "cgroup_detect(base) -> 0, 1 or 2"},
    {"cgroup_setup", (PyCFunction)(void (*)(void))py_cgroup_setup, METH_VARARGS | METH_KEYWORDS,
     "cgroup_setup(version, base, group, memory_max, pids_max=0, cpu_quota_us=0, cpu_period_us=100000)"},
    {"cgroup_join", py_cgroup_join, METH_VARARGS, "cgroup_join(version, base, group, pid)"},
    {"cgroup_remove", py_cgroup_remove, METH_VARARGS, "cgroup_remove(version, base, group)"},
    {"cgroup_stats", py_cgroup_stats, METH_VARARGS, "cgroup_stats(version, base, group) -> dict"},
#ifdef MF_HAVE_RESET_ENGINE
    {"serve_reset", (PyCFunction)(void (*)(void))py_serve_reset, METH_VARARGS | METH_KEYWORDS,
     "serve_reset(ctrl_fd, runner, close_in_child, after_rewind, request_filter=b'', cpu_ms=0, "
     "memory_bytes=0, nofile=0, pool_size=1, idle_ms=0, verify=False, concurrency=256, queue=256, oom_fd=-1, front_loops=1)"},
#endif
    {"serve_fork", (PyCFunction)(void (*)(void))py_serve_fork, METH_VARARGS | METH_KEYWORDS,
     "serve_fork(ctrl_fd, runner, close_in_child, request_filter=b'', cpu_ms=0, memory_bytes=0, nofile=0, "
     "concurrency=4096, queue=256, oom_fd=-1)"},
    {"response_start", py_response_start, METH_VARARGS,
     "response_start(status, headers): in a sandbox's request, send the head of a streamed response"},
    {"response_can_stream", py_response_can_stream, METH_NOARGS,
     "response_can_stream() -> bool: whether response_start would start a stream now (in a sandbox's "
     "request, not yet started)"},
    {"response_write", py_response_write, METH_O,
     "response_write(data): in a sandbox's request, after response_start, send body bytes"},
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
        {"MSG_DATA_CHANNEL", MF_MSG_DATA_CHANNEL}, {"MAX_DATA_CHANNELS", MF_MAX_DATA_CHANNELS},
        {"MSG_READY", MF_MSG_READY}, {"MSG_LOAD_FAILED", MF_MSG_LOAD_FAILED},
        {"MSG_CHILD_EXIT", MF_MSG_CHILD_EXIT}, {"MSG_REQUEST_FAILED", MF_MSG_REQUEST_FAILED},
        {"MSG_REQ_HEAD", MF_MSG_REQ_HEAD}, {"MSG_REQ_BODY", MF_MSG_REQ_BODY}, {"MSG_REQ_END", MF_MSG_REQ_END},
        {"MSG_RESP_HEAD", MF_MSG_RESP_HEAD}, {"MSG_RESP_BODY", MF_MSG_RESP_BODY},
        {"MSG_RESP_END", MF_MSG_RESP_END}, {"MSG_REQ_WHOLE", MF_MSG_REQ_WHOLE},
        {"MSG_RESP_WHOLE", MF_MSG_RESP_WHOLE}, {"MSG_WORKER_REPLACED", MF_MSG_WORKER_REPLACED},
        {"MSG_WORKER_READY", MF_MSG_WORKER_READY}, {"MSG_REQUEST_DONE", MF_MSG_REQUEST_DONE},
        {"MSG_WORKER_FAILED", MF_MSG_WORKER_FAILED}, {"MSG_WORKER_CHANNEL", MF_MSG_WORKER_CHANNEL},
        {"MSG_WORKER_GONE", MF_MSG_WORKER_GONE}, {"MSG_DISPATCHED", MF_MSG_DISPATCHED},
        {"MAX_FRONT_LOOPS", MF_MAX_FRONT_LOOPS},
        {"ENGINE_FORK", MF_ENGINE_FORK}, {"ENGINE_RESET", MF_ENGINE_RESET},
        {"EXIT_TIMED_OUT", MF_EXIT_TIMED_OUT}, {"EXIT_CANCELLED", MF_EXIT_CANCELLED},
        {"EXIT_CPU_EXCEEDED", MF_EXIT_CPU_EXCEEDED}, {"EXIT_OUT_OF_MEMORY", MF_EXIT_OUT_OF_MEMORY},
        {"REQUEST_BODY_CAP", (long)MF_REQUEST_BODY_CAP},
        {"FORK_MAX_CHILDREN", MF_FORK_MAX_CHILDREN}, {"FORK_GRACE_MS", MF_FORK_GRACE_MS},
        {"CHILD_EXIT_HANDLER", MF_CHILD_EXIT_HANDLER}, {"CHILD_EXIT_BAD_REQUEST", MF_CHILD_EXIT_BAD_REQUEST},
        {"CHILD_EXIT_SETUP", MF_CHILD_EXIT_SETUP},
#ifdef MF_HAVE_RESET_ENGINE
        {"HOT_LEARN_REWINDS", MF_HOT_LEARN_REWINDS},
#endif
    };
    PyObject *m = PyModule_Create(&module_def);

    for (size_t i = 0; m != NULL && i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0)
            Py_CLEAR(m);
    /* Beyond a long: its own call. */
    py_cleanup_ref PyObject *streamed = PyLong_FromUnsignedLongLong(MF_BODY_STREAMED);
    if (m != NULL && (streamed == NULL || PyModule_AddObjectRef(m, "BODY_STREAMED", streamed) < 0))
        Py_CLEAR(m);
    if (m != NULL && (py_headers_add(m) < 0 || py_request_add(m) < 0 || py_request_path_add(m) < 0 || py_request_state_add(m) < 0))
        Py_CLEAR(m);
#ifdef MF_HAVE_RESET_ENGINE
    if (m != NULL && py_dirty_pages_add(m) < 0)
        Py_CLEAR(m);
#endif
    return m;
}
