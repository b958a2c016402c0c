/*
 * serve_reset, the reset engine's binding: the pool of rewound workers
 * (engine/reset_engine.h) with the runner and hooks of py_requests.c, and
 * a pymalloc arena allocator that suits rewinding. Built only with the
 * reset engine (MF_HAVE_RESET_ENGINE, x86_64); registered in module.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <sys/mman.h>

#include "engine/children.h"
#include "engine/reset_engine.h"
#include "python/py_requests.h"
#include "python/py_reset.h"
#include "python/py_seal.h"
#include "python/py_util.h"

/* A pymalloc arena allocator that never unmaps: an arena freed by a
 * request stays mapped for the next allocation, so the rewind never finds
 * a sealed mapping gone. Its list lives in tracked memory and is rewound
 * with the rest of the allocator's state. */
static void *free_arenas;
static size_t arena_size;

static void *arena_alloc(void *ctx, size_t size)
{
    (void)ctx;
    if (free_arenas != NULL && size == arena_size) {
        void *arena = free_arenas;
        free_arenas = *(void **)arena;
        return arena;
    }
    void *arena = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return arena == MAP_FAILED ? NULL : arena;
}

static void arena_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (arena_size == 0)
        arena_size = size;
    if (size != arena_size) { /* never seen; unmapping is always correct, if slower */
        (void)munmap(ptr, size);
        return;
    }
    *(void **)ptr = free_arenas;
    free_arenas = ptr;
}

struct reset_ctx {
    struct serve_ctx serve;
    PyObject *after_rewind;
};

static void hook_prepare(void *ctx)
{
    PyObjectArenaAllocator alloc = {ctx, arena_alloc, arena_free};
    PyObject_SetArenaAllocator(&alloc);
}

static void hook_after_rewind(void *vctx)
{
    struct reset_ctx *ctx = vctx;
    PyObject *r = PyObject_CallNoArgs(ctx->after_rewind);
    if (r == NULL)
        PyErr_Print(); /* the request still runs; what failed is on stderr */
    Py_XDECREF(r);
}

PyObject *py_serve_reset(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"ctrl_fd", "runner", "close_in_child", "after_rewind", "request_filter",
                             "cpu_ms", "memory_bytes", "nofile", "pool_size", "idle_ms", "verify",
                             "concurrency", "queue", "oom_fd", "front_loops", "load", "gc_freeze", "pid_one",
                             "stop_timeout_ms", NULL};
    struct reset_ctx ctx = {{0}, NULL};
    struct seal_inputs seal = {0};
    struct mf_reset_hooks hooks = {{&ctx, hook_before_fork, hook_after_fork_parent, hook_after_fork_child,
                                    hook_interrupted, hook_handle, NULL},
                                   hook_prepare, hook_after_rewind};
    struct mf_reset_config cfg = {.hooks = &hooks, .pool_size = 1, .oom_fd = -1, .front_loops = 1,
                                  .concurrency = MF_RESET_MAX_WORKERS, .queue = MF_DEFAULT_QUEUE};
    /* Released on every return; its buffer a no-op if a failed parse released it. */
    py_cleanup_serve_inputs struct serve_inputs in = {0};
    PyObject *close_list;
    int verify = 0;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOO|y*O&O&O&IO&pO&O&iI$OOpO&:serve_reset", kwlist, &cfg.ctrl_fd,
                                     &ctx.serve.runner, &close_list, &ctx.after_rewind, &in.filter,
                                     uint32_converter, &cfg.limits.cpu_ms, uint64_converter, &cfg.limits.memory_bytes,
                                     uint32_converter, &cfg.limits.nofile, &cfg.pool_size, uint32_converter,
                                     &cfg.idle_ms, &verify, uint32_converter, &cfg.concurrency, uint32_converter,
                                     &cfg.queue, &cfg.oom_fd, &cfg.front_loops, &seal.load, &seal.gc_freeze,
                                     &seal.pid_one, uint32_converter, &cfg.stop_timeout_ms))
        return NULL;
    if (!PyCallable_Check(ctx.after_rewind))
        return PyErr_Format(PyExc_TypeError, "after_rewind must be callable");
    if (!serve_inputs_take(&in, close_list, &cfg.close_in_child, &cfg.n_close_in_child, &cfg.request_filter,
                           &cfg.request_filter_len))
        return NULL;
    cfg.verify = verify != 0;
    /* Last before serving: the program's loading runs here, if load= is given. */
    if (!seal_or_check_runner(&seal, cfg.ctrl_fd, cfg.oom_fd, &ctx.serve, &hooks.base))
        return NULL;
    if (seal.load != NULL && seal.load != Py_None)
        py_sealed_exit(mf_reset_serve(&cfg));
    return serve_result(mf_reset_serve(&cfg));
}
