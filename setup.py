"""The compiled pieces: nanoplus.runtime._native (pre-processing, decode + NMS; see runtime/native/)
and nanoplus.train._winograd (the tile transforms of the aux head's training convolutions; see
train/native/ and train/winograd.py).

Everything else is in pyproject.toml. Both extensions are optional: where no C++ compiler is found the
install goes on without them; the runtime then uses OpenCV + numpy (within a grey level, slower;
``python -m nanoplus.runtime.preprocess`` prints which one is in use) and training PyTorch's direct
convolutions (slower).
"""
from setuptools import Extension, setup

setup(
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
