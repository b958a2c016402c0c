#!/usr/bin/env bash
# The C-level tests again, against the extension built with sanitizers, one
# build per sanitizer: -fsanitize=address (the reset engine's tests skip
# themselves under it, see tests/unit/test_reset_engine_c.py), then
# -fsanitize=undefined for all of them. Not one combined build: with GCC's
# two runtimes in one process, UBSan ignores log_path and writes its report
# to fd 2, which pytest captures and loses when the report ends the process.
# Each build goes to build/sanitized-*/lib, put first on PYTHONPATH; the
# installed package is left alone. Python's own CFLAGS bring -fwrapv, as in
# the real build: signed overflow wraps and is not reported.
#
# Usage: scripts/sanitized_c_tests.sh [PYTHON]   (default .venv/bin/python,
# which needs setuptools and the test dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"

C_TESTS=(tests/unit/test_c_helper.py tests/unit/test_reset_engine_c.py
         tests/unit/test_dirty_pages.py tests/unit/test_protocol.py)

# $1: the sanitizer; $2: the build directory. Rebuilds from scratch
# (--force) so that no object compiled without the flag survives.
build() {
    echo "== building mayflyd with -fsanitize=$1 into $2"
    rm -rf "$2"
    CFLAGS="-fsanitize=$1 -fno-sanitize-recover=all -fno-omit-frame-pointer -g" \
        "$python" setup.py -q build --force --build-base "$2" --build-lib "$2/lib" >/dev/null
}

# $1: the sanitizer; $2: the build directory; then the test files.
# Python itself is not instrumented, so ASan's runtime is preloaded (it must
# come first in the process). CPython leaks at exit by design: no leak check.
# A SIGSEGV stays a plain signal (a test crashes a host on purpose and checks
# the signal it died of). Under a memory limit, an allocation that fails
# returns NULL (Python's MemoryError) rather than aborting.
# Reports go to files, one per process: pytest captures fd 2, and a report
# from a forked child would otherwise be lost. Any report fails the run.
run() {
    local sanitizer=$1 dir=$2 preload="" status=0
    shift 2
    [[ $sanitizer != address ]] || preload="$(gcc -print-file-name=libasan.so)"
    rm -rf "$dir/reports" && mkdir -p "$dir/reports"
    echo "== C-level tests under -fsanitize=$sanitizer"
    PYTHONPATH="$PWD/$dir/lib${PYTHONPATH:+:$PYTHONPATH}" \
        MAYFLYD_SANITIZED_LIB="$PWD/$dir/lib" MAYFLYD_SANITIZERS="$sanitizer" \
        LD_PRELOAD="$preload" \
        ASAN_OPTIONS="detect_leaks=0:handle_segv=0:allocator_may_return_null=1:log_path=$PWD/$dir/reports/asan" \
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$PWD/$dir/reports/ubsan" \
        "$python" -m pytest -q -p no:cacheprovider tests/unit/test_sanitized_build.py "$@" || status=$?
    if compgen -G "$dir/reports/*" >/dev/null; then
        echo "== sanitizer reports ($dir/reports):"
        cat "$dir"/reports/*
        return 1
    fi
    return "$status"
}

build address build/sanitized-address
run address build/sanitized-address "${C_TESTS[@]}"
build undefined build/sanitized-undefined
run undefined build/sanitized-undefined "${C_TESTS[@]}"

# mayflyd-front is an executable of its own: its tests compile it themselves,
# here with both sanitizers (MAYFLYD_FRONT_TEST_CFLAGS). A report aborts the
# front end, whose exit status the tests check; its stderr is in their files.
FRONT_TESTS=(tests/unit/test_front_http.py tests/unit/test_front_control.py tests/unit/test_front_hosts.py
             tests/unit/test_front_streams.py tests/unit/test_front_reset_hosts.py tests/unit/test_front_proxy.py)
echo "== front end tests under -fsanitize=address,undefined"
MAYFLYD_FRONT_TEST_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
    "$python" -m pytest -q -p no:cacheprovider "${FRONT_TESTS[@]}"
