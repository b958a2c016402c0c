"""Builds the C sandbox helper (csrc/) as the extension mayflyd._mayfly.

Everything else is declared in setup.cfg; setuptools needs this file only
because extension modules cannot be declared there.
"""
from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mayflyd._mayfly",
            sources=sorted(glob("csrc/*.c")),
            depends=sorted(glob("csrc/*.h")),
            include_dirs=["csrc"],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                                "-Wno-missing-field-initializers"],
            # Bind every symbol at load time: the host must never enter the
            # dynamic loader once tenant code runs.
            extra_link_args=["-Wl,-z,now", "-Wl,-z,relro"],
        )
    ]
)
