"""The optional C extension (the block-key hash). Without a working C compiler the build goes on without it:
flexlb.balancer.prefix then uses the pure-Python hash (same keys, slower) and logs a warning at import."""

from __future__ import annotations

from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile and continues instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError, CCompilerError, OSError, ...)
            self._skipped(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # the compiler ran and failed (CompileError, LinkError)
            self._skipped(exc)

    def _skipped(self, exc: BaseException) -> None:
        print(f"WARNING: the optional C extension was not built ({type(exc).__name__}: {exc}); "
              "flexlb uses the pure-Python block hash instead")


setup(
    ext_modules=[
        Extension("flexlb.balancer._blockhash", ["flexlb/balancer/_blockhash.c"], extra_compile_args=["-O3"],
                  optional=True),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
