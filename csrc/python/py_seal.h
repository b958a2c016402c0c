/*
 * The sealed host's side of the bindings: serve_fork and serve_reset
 * given load= run the program's loading (load(), which returns the
 * runner) from C, seal the host, serve, and _exit without returning to
 * Python. Between load() returning and the host's exit no Python runs in
 * the host: nothing the program registered (at-fork callbacks, signal
 * handlers, atexit, finalizers, audit hooks) and nothing it could have
 * replaced (a module's functions). The sandboxes get back what the seal
 * took (signal handlers, the collector) and run CPython's after-fork work.
 */
#ifndef MAYFLYD_PY_SEAL_H
#define MAYFLYD_PY_SEAL_H

#ifndef Py_PYTHON_H
#error "#define PY_SSIZE_T_CLEAN and #include <Python.h> before py_seal.h"
#endif

#include <stdbool.h>
#include <stddef.h>

/* The keyword arguments that ask for a sealed host; all zero: not sealed. */
struct seal_inputs {
    PyObject *load;       /* () -> runner or (runner, stop): imports the program and runs on_init() */
    PyObject *gc_freeze;  /* gc.freeze, taken before any tenant code ran */
    int pid_one;          /* the host is pid 1 of its pid namespace: kill the rest */
};

/* Calls load(), then seals; the runner (a new reference) or NULL with a
 * Python exception set, and in *stop the stop hook load() gave (a new
 * reference), or NULL. keep: the host's own fds (control channel, memory
 * events), which the file check skips. */
PyObject *py_seal_host(const struct seal_inputs *in, const int *keep, size_t n_keep, PyObject **stop);

/* After serving: reports a failure on stderr and exits, never returning
 * to Python (no atexit, no finalizer, no excepthook). */
_Noreturn void py_sealed_exit(bool ok);

struct mf_fork_hooks;
struct serve_ctx;

/* For serve_fork and serve_reset: without load, checks that ctx->runner
 * is callable; with it, seals (py_seal_host), sets ctx->runner, ctx->stop
 * and the sealed hooks below (hook_sealed_stop if there is a stop hook).
 * false with a Python exception set. The caller then serves and, if
 * sealed, ends with py_sealed_exit. */
bool seal_or_check_runner(const struct seal_inputs *in, int ctrl_fd, int oom_fd, struct serve_ctx *ctx,
                          struct mf_fork_hooks *hooks);

/* Engine fork hooks for a sealed host: in the host, only the import lock
 * taken and released around the fork (PyOS_BeforeFork and
 * PyOS_AfterFork_Parent would run the program's at-fork callbacks there);
 * in the sandbox the seal undone, then PyOS_AfterFork_Child. */
void hook_sealed_before_fork(void *ctx);
void hook_sealed_after_fork_parent(void *ctx);
void hook_sealed_after_fork_child(void *ctx);
/* Between requests: no Python signal handler runs in a sealed host. */
bool hook_sealed_interrupted(void *ctx);
/* In the stop sandbox (engine/stop_sandbox.h): ctx->stop() called, an
 * exception's traceback printed (false), the standard streams flushed. */
bool hook_sealed_stop(void *ctx);

#endif /* MAYFLYD_PY_SEAL_H */
