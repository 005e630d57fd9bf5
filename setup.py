"""The compiled pieces: nanoplus.runtime._native (pre-processing, decode + NMS; see runtime/native/)
and nanoplus.train._winograd (the tile transforms of the aux head's training convolutions; see
train/native/ and train/winograd.py).

Everything else is in pyproject.toml. Both extensions are optional: where no C++ compiler is found the
install goes on without them; the runtime then uses OpenCV + numpy (within a grey level, slower;
``python -m nanoplus.runtime.preprocess`` prints which one is in use) and training PyTorch's direct
convolutions (slower).
"""
import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_EXTENSIONS = {"nanoplus.train._winograd"}


class BuildExt(build_ext):
    """Adds -fopenmp to the Winograd transforms where the compiler takes it: they then run on
    PyTorch's own OpenMP threads (train/native/winograd.cpp); without it, on threads of their own."""

    def build_extension(self, ext):
        if ext.name in OPENMP_EXTENSIONS and self._compiles_with("-fopenmp"):
            ext.extra_compile_args = ext.extra_compile_args + ["-fopenmp"]
            ext.extra_link_args = ext.extra_link_args + ["-fopenmp"]
        super().build_extension(ext)

    def _compiles_with(self, flag: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "check.cpp")
            with open(source, "w") as f:
                f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
            try:
                objects = self.compiler.compile([source], output_dir=tmp, extra_postargs=[flag])
                self.compiler.link_executable(objects, "check", output_dir=tmp, extra_postargs=[flag])
            except Exception:  # any compiler or linker failure: build without it
                return False
        return True


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "nanoplus.runtime._native",
            sources=["runtime/native/module.cpp", "runtime/native/warp_normalize.cpp",
                     "runtime/native/decode_nms_module.cpp", "runtime/native/decode_nms.cpp"],
            depends=["runtime/native/warp_normalize.h", "runtime/native/decode_nms.h",
                     "runtime/native/decode_nms_module.h"],
            language="c++",
            # -ffp-contract=off: the normalisation must round twice, as numpy does
            extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "nanoplus.train._winograd",
            sources=["train/native/winograd.cpp"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-Wno-psabi"],
            optional=True,
        ),
    ],
)
