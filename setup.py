"""The one compiled piece: nanoplus.runtime._native (pre-processing, decode + NMS; see runtime/native/).

Everything else is in pyproject.toml. The extension is optional: where no C++ compiler is found the
install goes on without it and the runtime uses OpenCV + numpy (within a grey level, slower);
``python -m nanoplus.runtime.preprocess`` prints which one is in use.
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
        )
    ],
)
