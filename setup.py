"""Builds the C sandbox helper (csrc/) as the extension mayflyd._mayfly, and
bundles config/ as the package's default configuration.

The reset engine (csrc/rewind/, csrc/engine/reset_*.c and its bindings) is
written for x86_64 only: its seccomp gates check the address of their own
`syscall` instruction. Elsewhere, or with MAYFLYD_WITHOUT_RESET_ENGINE=1,
the extension is built without it and mayflyd runs every tenant on the
fork engine (the module then lacks serve_reset, DirtyTracker and
HOT_LEARN_REWINDS). Everything else is declared in setup.cfg; setuptools
needs this file only because extension modules cannot be declared there.
"""
import os
import platform
import shutil
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
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


def files(pattern: str, reset_engine: bool) -> list[str]:
    return sorted(f for f in glob(pattern) if reset_engine or f not in RESET_ENGINE_FILES)


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
    cmdclass={"build_py": BuildPyWithDefaultConfig},
    ext_modules=[
        Extension(
            "mayflyd._mayfly",
            sources=files("csrc/*/*.c", RESET_ENGINE),
            depends=files("csrc/*/*.h", RESET_ENGINE),
            include_dirs=["csrc"],
            define_macros=[("MF_HAVE_RESET_ENGINE", "1")] if RESET_ENGINE else [],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"],
            # Bind every symbol at load time: the host must never enter the
            # dynamic loader once tenant code runs.
            extra_link_args=["-Wl,-z,now", "-Wl,-z,relro"],
        )
    ],
)
