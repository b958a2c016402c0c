/* The sealed host's bindings side; see py_seal.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "engine/fork_engine.h"
#include "python/py_request_state.h"
#include "python/py_requests.h"
#include "python/py_seal.h"
#include "python/py_util.h"
#include "walls/host_seal.h"
#include "walls/private_files.h"

/* What the seal took from the host, for every sandbox forked from it to
 * take back: process-wide by nature (one seal per process), written once
 * in the host before the first fork. */
static struct mf_sealed_signals sealed_signals;
static int collector_was_enabled;
/* _imp.acquire_lock and _imp.release_lock, taken before any tenant code:
 * builtins, so calling them runs C only. */
static PyObject *import_lock_acquire, *import_lock_release;

/* The import lock is what PyOS_AfterFork_Child expects the fork to have
 * been made under (3.13 releases it there, and aborts if it is not held);
 * _PyImport_AcquireLock is not exported in 3.13, _imp's methods are. */
static bool take_import_lock_methods(void)
{
    py_cleanup_ref PyObject *imp = PyImport_ImportModule("_imp");

    if (imp == NULL)
        return false;
    import_lock_acquire = PyObject_GetAttrString(imp, "acquire_lock");
    import_lock_release = PyObject_GetAttrString(imp, "release_lock");
    return import_lock_acquire != NULL && import_lock_release != NULL;
}

static void call_import_lock(PyObject *method, const char *what)
{
    PyObject *r = PyObject_CallNoArgs(method);

    if (r == NULL) {
        /* Not PyErr_Print: it would call the program's sys.excepthook. */
        PyErr_Clear();
        mf_warn("host: %s the import lock around a fork failed", what);
    }
    Py_XDECREF(r);
}

/* What load() returned: a runner, or (runner, stop) with stop callable or
 * None; new references in *runner and *stop (NULL: no stop hook). */
static bool split_loaded(PyObject *loaded, PyObject **runner, PyObject **stop)
{
    PyObject *r = loaded, *s = NULL;

    if (PyTuple_Check(loaded)) {
        if (PyTuple_GET_SIZE(loaded) != 2)
            return PyErr_Format(PyExc_TypeError, "load() returned a tuple of %zd, expected (runner, stop)",
                                PyTuple_GET_SIZE(loaded)), false;
        r = PyTuple_GET_ITEM(loaded, 0);
        s = PyTuple_GET_ITEM(loaded, 1);
        if (s == Py_None)
            s = NULL;
        else if (!PyCallable_Check(s))
            return PyErr_Format(PyExc_TypeError, "the stop hook must be callable, not %s",
                                Py_TYPE(s)->tp_name), false;
    }
    if (!runner_check(r))
        return false;
    *runner = Py_NewRef(r);
    *stop = Py_XNewRef(s);
    return true;
}

PyObject *py_seal_host(const struct seal_inputs *in, const int *keep, size_t n_keep, PyObject **stop)
{
    py_cleanup_ref PyObject *loaded = NULL;
    py_cleanup_ref PyObject *runner = NULL;
    py_cleanup_ref PyObject *stop_hook = NULL;
    py_cleanup_ref PyObject *frozen = NULL;

    if (!take_import_lock_methods())
        return NULL;
    loaded = PyObject_CallNoArgs(in->load);
    if (loaded == NULL || !split_loaded(loaded, &runner, &stop_hook))
        return NULL;
    /* Freed now: after the seal the host drops no reference. */
    Py_CLEAR(loaded);
    /* A signal that came during on_init() has its handler run now, while
     * the host is still loading, rather than never or after the seal. */
    if (PyErr_CheckSignals() < 0)
        return NULL;
    /* From here on, only C: whatever the program replaced or registered
     * is not called. */
    if (!mf_seal_leftovers(in->pid_one != 0) || !mf_private_files_check(keep, n_keep) || !mf_seal_process())
        return raise_last();
    /* The collector must not dirty the sealed pages in every sandbox, nor
     * ever run a finalizer in the host: frozen, then off in the host (each
     * sandbox turns it back on). gc.freeze is a builtin: C, no audit event. */
    frozen = PyObject_CallNoArgs(in->gc_freeze);
    if (frozen == NULL)
        return NULL;
    collector_was_enabled = PyGC_Disable();
    /* Last: no Python runs after this that could want its handlers. With
     * CPython's handler gone, no wakeup fd the program set is written either. */
    if (!mf_seal_signals(&sealed_signals))
        return raise_last();
    *stop = mf_steal_pointer(&stop_hook);
    return mf_steal_pointer(&runner);
}

_Noreturn void py_sealed_exit(bool ok)
{
    if (!ok)
        mf_warn("host: serving stopped: %s", mf_last_error());
    /* Straight out: Python's finalisation would run the program's atexit
     * handlers and finalizers in the host. */
    _exit(ok ? 0 : 1);
}

/* PyOS_BeforeFork and PyOS_AfterFork_Parent without the program's before=
 * and after_in_parent= callbacks: the import lock (the runtime's other
 * locks guard against threads the sealed host does not have, and the
 * child re-creates them). */
void hook_sealed_before_fork(void *ctx)
{
    (void)ctx;
    call_import_lock(import_lock_acquire, "taking");
}

void hook_sealed_after_fork_parent(void *ctx)
{
    (void)ctx;
    call_import_lock(import_lock_release, "releasing");
}

void hook_sealed_after_fork_child(void *ctx)
{
    (void)ctx;
    mf_unseal_signals(&sealed_signals);
    if (collector_was_enabled)
        (void)PyGC_Enable(); /* the previous state, known: off */
    /* CPython's own after-fork work, then the program's after_in_child=
     * callbacks: in the sandbox, where the program's code belongs. */
    PyOS_AfterFork_Child();
}

bool hook_sealed_interrupted(void *ctx)
{
    (void)ctx; /* no Python handler is left in the host to run */
    return true;
}

bool hook_sealed_stop(void *vctx)
{
    struct serve_ctx *ctx = vctx;
    py_cleanup_ref PyObject *r = PyObject_CallNoArgs(ctx->stop);

    if (r == NULL) {
        if (PyErr_ExceptionMatches(PyExc_SystemExit)) {
            /* PyErr_Print would run the host's exit path (atexit) in a sandbox. */
            PyErr_Clear();
            mf_warn("the stop hook raised SystemExit");
        } else {
            mf_warn("the stop hook raised an exception:");
            PyErr_Print();
        }
    }
    py_flush_std_streams();
    return r != NULL;
}

bool seal_or_check_runner(const struct seal_inputs *in, int ctrl_fd, int oom_fd, struct serve_ctx *ctx,
                          struct mf_fork_hooks *hooks)
{
    const int keep[] = {ctrl_fd, oom_fd};

    if (in->load == NULL || in->load == Py_None) {
        return runner_check(ctx->runner);
    }
    if (!PyCallable_Check(in->load) || in->gc_freeze == NULL || !PyCallable_Check(in->gc_freeze))
        return PyErr_Format(PyExc_TypeError, "load and gc_freeze must be callable"), false;
    /* Owned by the host until it exits: py_sealed_exit never returns. */
    ctx->runner = py_seal_host(in, keep, oom_fd >= 0 ? 2 : 1, &ctx->stop);
    if (ctx->runner == NULL)
        return false;
    hooks->before_fork = hook_sealed_before_fork;
    hooks->after_fork_parent = hook_sealed_after_fork_parent;
    hooks->after_fork_child = hook_sealed_after_fork_child;
    hooks->interrupted = hook_sealed_interrupted;
    hooks->stop = ctx->stop != NULL ? hook_sealed_stop : NULL;
    return true;
}
