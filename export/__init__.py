"""Export: aux-stripped ONNX, OpenVINO IR and NCNN with metadata and a parity gate."""
