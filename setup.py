"""Builds the C sandbox helper (csrc/) as the extension mayflyd._mayfly, the
C front end (csrc/front/) as the executable mayflyd/bin/mayflyd-front, and
bundles config/ as the package's default configuration.

The reset engine (csrc/rewind/, csrc/engine/reset_*.c and its bindings) is
written for x86_64 only: its seccomp gates check the address of their own
`syscall` instruction. Elsewhere, or with MAYFLYD_WITHOUT_RESET_ENGINE=1,
the extension is built without it and mayflyd runs every tenant on the
fork engine (the module then lacks serve_reset, DirtyTracker and
HOT_LEARN_REWINDS). mayflyd-front is a plain C executable, no Python inside; it is compiled
with llhttp's C sources from Debian's node-llhttp package. Everything else is
declared in setup.cfg; setuptools needs this file only because extension
modules and executables cannot be declared there.
"""
import os
import platform
import shlex
import shutil
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# What only the reset engine needs, sources and headers alike.
RESET_ENGINE_FILES = frozenset(
    glob("csrc/rewind/*")
    + glob("csrc/engine/reset_*")
    + ["csrc/python/py_reset.c", "csrc/python/py_reset.h",
       "csrc/python/py_dirty_pages.c", "csrc/python/py_dirty_pages.h"]
)


def with_reset_engine() -> bool:
    if os.environ.get("MAYFLYD_WITHOUT_RESET_ENGINE", "") not in ("", "0"):
        return False
    return platform.machine() in ("x86_64", "AMD64")


# The front end is an executable of its own, not part of the extension.
FRONT_FILES = frozenset(glob("csrc/front/*"))
# What mayflyd-front links of the rest of csrc/ (tests/unit/test_front_http.py builds it the same way).
FRONT_SHARED_SOURCES = ["csrc/base/log.c", "csrc/base/wait_status.c", "csrc/wire/proto.c"]
LLHTTP_SOURCES = ["/usr/share/llhttp/api.c", "/usr/share/llhttp/http.c", "/usr/share/llhttp/llhttp.c"]
LLHTTP_INCLUDE = "/usr/share/include/llhttp"
STRICT_C = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]
# Bind every symbol at load time: the host must never enter the dynamic
# loader once tenant code runs (and the front end need not either).
LINK_NOW = ["-Wl,-z,now", "-Wl,-z,relro"]


def files(pattern: str, reset_engine: bool) -> list[str]:
    return sorted(f for f in glob(pattern)
                  if (reset_engine or f not in RESET_ENGINE_FILES) and f not in FRONT_FILES)


class BuildExtWithFront(build_ext):
    """Builds the extension, then mayflyd-front with the same compiler
    (and so with the same CFLAGS, sanitizers included)."""

    def run(self) -> None:
        missing = [p for p in [*LLHTTP_SOURCES, f"{LLHTTP_INCLUDE}/llhttp.h"] if not os.path.exists(p)]
        if missing:  # before the extension's long build, not after it
            raise SystemExit(f"mayflyd-front needs llhttp's C sources ({missing[0]} is missing): "
                             "apt-get install node-llhttp")
        super().run()
        self.build_front()

    def build_front(self) -> None:
        temp = os.path.join(self.build_temp, "front")
        options = {"macros": [("LLHTTP_STRICT_MODE", "1")], "include_dirs": ["csrc", LLHTTP_INCLUDE]}
        headers = sorted(glob("csrc/front/*.h") + glob("csrc/wire/*.h") + glob("csrc/base/*.h"))
        ours = self.compiler.compile(sorted(glob("csrc/front/*.c")) + FRONT_SHARED_SOURCES,
                                     output_dir=temp,
                                     extra_postargs=STRICT_C, depends=headers, **options)
        # llhttp's generated code has unused parameters everywhere: only that is relaxed.
        theirs = self.compiler.compile(LLHTTP_SOURCES, output_dir=temp,
                                       extra_postargs=[*STRICT_C, "-Wno-unused-parameter"], **options)
        flags = shlex.split(os.environ.get("CFLAGS", "")) + shlex.split(os.environ.get("LDFLAGS", ""))
        self.compiler.link_executable(ours + theirs, "mayflyd-front",
                                      output_dir=os.path.join(self.build_lib, "mayflyd", "bin"),
                                      libraries=["pthread"], extra_postargs=[*flags, *LINK_NOW])


class BuildPyWithDefaultConfig(build_py):
    """Copies config/ into the package as mayflyd/default_config."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mayflyd" / "default_config"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree("config", target, ignore=shutil.ignore_patterns("__pycache__"))


RESET_ENGINE = with_reset_engine()

setup(
    cmdclass={"build_py": BuildPyWithDefaultConfig, "build_ext": BuildExtWithFront},
    ext_modules=[
        Extension(
            "mayflyd._mayfly",
            sources=files("csrc/*/*.c", RESET_ENGINE),
            depends=files("csrc/*/*.h", RESET_ENGINE),
            include_dirs=["csrc"],
            define_macros=[("MF_HAVE_RESET_ENGINE", "1")] if RESET_ENGINE else [],
            extra_compile_args=STRICT_C,
            extra_link_args=LINK_NOW,
        )
    ],
)
