#!/usr/bin/env bash
# Every check CI enforces, in order, stopping at the first failure:
#   ruff, mypy (strict), the test suite on each CPython 3.11-3.13 the
#   machine has (one venv each), the C-level tests under sanitizers.
# Installs only what is missing: Debian packages through apt only if
# dpkg-query does not list them (no upgrade of what is there), venvs only if
# absent or of another Python. Run as root (the tests build real sandboxes):
#   bash scripts/test.sh
#
# MAYFLYD_PYTHONS      the versions whose suite runs (default "3.11 3.12 3.13");
#                      a version the machine lacks is skipped with a line saying
#                      so, but 3.11 is required: its .venv runs ruff, mypy and
#                      the sanitizer builds.
# MAYFLYD_PYTEST_ARGS  pytest arguments for those runs (default "-q").
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: for systemd-analyze (tests/integration/test_systemd_unit.py).
# haproxy, iproute2, openssl, curl: nodes behind HAProxy in network namespaces
# (tests/integration/test_haproxy_nodes.py).
SYSTEM_PACKAGES=(python3-venv python3-dev gcc node-llhttp systemd haproxy iproute2 openssl curl)
read -ra PYTHONS <<<"${MAYFLYD_PYTHONS:-3.11 3.12 3.13}"
read -ra PYTEST_ARGS <<<"${MAYFLYD_PYTEST_ARGS:--q}"

install_missing_packages() {
    local missing=() pkg
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" == installed ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        echo "== system packages present: ${SYSTEM_PACKAGES[*]}"
        return
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# $1: an interpreter; prints its major.minor, or nothing if it does not run
# (a pyenv shim for a version not selected, a venv whose base is gone).
version_of() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

# $1: a version such as 3.12; prints an interpreter of it, or nothing.
# pyenv's newest build of it first, then pythonX.Y on PATH.
find_python() {
    local candidate candidates
    mapfile -t candidates < <(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python 2>/dev/null | sort -rV
                              command -v "python$1" || true)
    for candidate in "${candidates[@]}"; do
        if [[ "$(version_of "$candidate")" == "$1" ]]; then
            echo "$candidate"
            return
        fi
    done
}

# $1: an interpreter; $2: the venv directory; then extras beyond test.
# Creates the venv if it is missing or of another Python, and installs the
# package (rebuilt: the tests import the installed one) with whatever the
# extras still lack.
prepare_venv() {
    local python=$1 venv=$2 extras=test extra
    shift 2
    for extra in "$@"; do extras+=",$extra"; done
    if [[ "$(version_of "$venv/bin/python")" != "$(version_of "$python")" ]]; then
        echo "== creating $venv with $python"
        "$python" -m venv --clear "$venv"
    fi
    echo "== installing mayflyd[$extras] into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check ".[$extras]"
}

install_missing_packages
python311="$(find_python 3.11)"
if [[ -z $python311 ]]; then
    echo "Python 3.11 is required: found neither in pyenv nor as python3.11 on PATH" >&2
    exit 1
fi
prepare_venv "$python311" .venv lint

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy

for version in "${PYTHONS[@]}"; do
    python="$(find_python "$version")"
    if [[ -z $python ]]; then
        echo "== skipping the tests on Python $version: not on this machine"
        continue
    fi
    venv=.venv
    if [[ $version != 3.11 ]]; then
        venv=".venv-$version"
        prepare_venv "$python" "$venv"
    fi
    echo "== pytest on Python $version ($venv): ${PYTEST_ARGS[*]}"
    "$venv/bin/python" -m pytest "${PYTEST_ARGS[@]}"
done

bash scripts/sanitized_c_tests.sh .venv/bin/python
