"""Builds the C sandbox helper (csrc/) as the extension mayflyd._mayfly, and
bundles config/ as the package's default configuration.

Everything else is declared in setup.cfg; setuptools needs this file only
because extension modules cannot be declared there.
"""
import shutil
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithDefaultConfig(build_py):
    """Copies config/ into the package as mayflyd/default_config."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mayflyd" / "default_config"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree("config", target, ignore=shutil.ignore_patterns("__pycache__"))


setup(
    cmdclass={"build_py": BuildPyWithDefaultConfig},
    ext_modules=[
        Extension(
            "mayflyd._mayfly",
            sources=sorted(glob("csrc/*/*.c")),
            depends=sorted(glob("csrc/*/*.h")),
            include_dirs=["csrc"],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"],
            # Bind every symbol at load time: the host must never enter the
            # dynamic loader once tenant code runs.
            extra_link_args=["-Wl,-z,now", "-Wl,-z,relro"],
        )
    ],
)
