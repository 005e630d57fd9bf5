"""Torch-free runtime: pre-processing, inference backends, decoding, NMS, evaluation, benchmarks.

    from nanoplus.runtime import Detector
    detections = Detector("nanodet-plus-m_416_openvino.xml")("photo.jpg")
"""

__all__ = ["Detector", "Detections"]


def __getattr__(name: str):
    # imported on first use: `import nanoplus.runtime` (every CLI start) must not load numpy or cv2
    if name in __all__:
        from nanoplus.runtime import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'nanoplus.runtime' has no attribute '{name}'")
