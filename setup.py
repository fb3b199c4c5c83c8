"""Build the Cython kernels in kernels/*.pyx as fastgd._kernels.<name>.

Environment switches:
  FASTGD_NATIVE=0       do not add -march=native (for wheels meant for other machines)
  FASTGD_DEBUG_BUILD=1  bounds checking and wraparound on, -O0 -g: run the tests against this
                        build to catch out-of-bounds access that the fast build would hide
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
DEBUG = os.environ.get("FASTGD_DEBUG_BUILD", "0") == "1"
NATIVE = os.environ.get("FASTGD_NATIVE", "1") == "1"
# Generated C and object files live apart per build mode: otherwise a debug build after an
# optimised one (or the reverse) silently reuses the other mode's up-to-date files.
MODE = "debug" if DEBUG else "release"


def _compiler_accepts(flags, code="int main(void){return 0;}\n", link=True):
    """Compile (and link) a tiny C program with `flags`; True if the compiler accepts them."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(code)
        cmd = [cc, *flags, str(src), "-o", str(Path(tmp) / "probe")]
        if not link:
            cmd.insert(1, "-c")
        return subprocess.run(cmd, capture_output=True).returncode == 0


OMP_PROBE = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"


class BuildExt(build_ext):
    """Pick optimisation and OpenMP flags the compiler actually supports."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(self.build_temp, MODE)
        # Always relink: the finished modules share build/lib between modes, and their timestamps
        # would let a debug module pass for an up-to-date optimised one (and the reverse).
        self.force = True

    def build_extensions(self):
        compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
        if not DEBUG and NATIVE and _compiler_accepts(["-march=native"]):
            compile_args.append("-march=native")
        link_args = []
        if sys.platform != "win32" and _compiler_accepts(["-fopenmp"], OMP_PROBE):
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
            macros = [("FASTGD_OPENMP", "1")]
        else:
            print("fastgd: the C compiler has no OpenMP; kernels build single-threaded", file=sys.stderr)
            macros = []
        if DEBUG:
            macros.append(("FASTGD_DEBUG_BUILD", "1"))
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
            ext.define_macros = macros + ext.define_macros
        super().build_extensions()


def kernel_extensions():
    exts = []
    for pyx in sorted((HERE / "kernels").glob("*.pyx")):
        exts.append(
            Extension(
                f"fastgd._kernels.{pyx.stem}",
                [str(pyx.relative_to(HERE))],
                include_dirs=[np.get_include(), "kernels"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
            )
        )
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, include_path=["kernels"],
                     build_dir=os.path.join("build", f"cython-{MODE}"))


setup(ext_modules=kernel_extensions(), cmdclass={"build_ext": BuildExt})
