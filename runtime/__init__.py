"""Torch-free runtime: pre-processing, inference backends, decoding, NMS, evaluation, benchmarks."""
