"""Where OpenVINO's time goes in one model, and how close its convolutions run to the CPU's peak.

    python3 bench/profile_openvino.py runs/bench-models/nanodet-plus-m_416_openvino.xml [--threads 1] [--runs 50]

Prints Markdown: per operation kind (OpenVINO's per-node counters, median over the runs), the
multiply-accumulates of each convolution kind counted from the graph, and the arithmetic rate the
1x1 convolutions reach. It explains the speed-up over PyTorch: an engine cannot beat the
convolutions' arithmetic, and on a CPU where they already run near peak there is little left.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict

import numpy as np


def conv_kind(op) -> str:
    """'1x1', 'depthwise' or 'kxk' for a (Group)Convolution node."""
    weights = op.input(1).get_partial_shape()
    if op.get_type_name() == "GroupConvolution":
        return "depthwise"
    return "1x1" if weights[2].get_length() == 1 and weights[3].get_length() == 1 else "kxk"


def macs(op) -> int:
    """Multiply-accumulates of a convolution: output elements x (input channels per group x kh x kw)."""
    out = [d.get_length() for d in op.output(0).get_partial_shape()]
    weights = [d.get_length() for d in op.input(1).get_partial_shape()]
    # Convolution weights (O, I, kh, kw); GroupConvolution (G, O/G, I/G, kh, kw): the last three
    return int(np.prod(out)) * int(np.prod(weights[-3:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="OpenVINO IR (.xml) or ONNX file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)

    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(args.model)
    except RuntimeError as e:
        sys.exit(f"profile_openvino: {args.model}: OpenVINO cannot read this model "
                 f"({str(e).strip().splitlines()[-1]}); give an .xml IR or an .onnx file")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads,
              "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    shape = [d.get_length() for d in model.input(0).get_partial_shape()]
    blob = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    # the original graph's convolutions, by name (the compiled graph keeps them, fused with their
    # bias and activation)
    kinds, counts = {}, defaultdict(int)
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            kind = conv_kind(op)
            kinds[op.get_friendly_name()] = kind
            counts[kind] += macs(op)

    for _ in range(10):
        request.infer({0: blob})
    per_kind = defaultdict(list)
    totals = []
    for _ in range(args.runs):
        request.infer({0: blob})
        times = defaultdict(float)
        for info in request.profiling_info:
            ms = info.real_time.total_seconds() * 1e3
            key = kinds.get(info.node_name)
            label = f"{info.node_type} ({key})" if key else info.node_type
            times[label] += ms
        for label, ms in times.items():
            per_kind[label].append(ms)
        totals.append(sum(times.values()))

    total = statistics.median(totals)
    lines = [
        "",
        f"## Where OpenVINO's time goes ({args.model.rsplit('/', 1)[-1]}, fp32, {args.threads} thread(s))",
        "",
        f"`python3 bench/profile_openvino.py {args.model} --threads {args.threads} --runs {args.runs}`: "
        "OpenVINO's per-node counters, median of each operation kind over the runs "
        f"(their sum {total:.2f} ms; a plain run takes a little longer).",
        "",
        "| operation | ms | share |",
        "|---|---:|---:|",
    ]
    medians = {label: statistics.median(v) for label, v in per_kind.items()}
    for label, ms in sorted(medians.items(), key=lambda kv: -kv[1]):
        if ms >= 0.005:
            lines.append(f"| {label} | {ms:.2f} | {100 * ms / total:.1f}% |")
    lines.append("")
    all_macs = sum(counts.values())
    lines.append(f"Arithmetic, counted from the graph: {all_macs / 1e9:.3f} G multiply-accumulates "
                 f"({2 * all_macs / 1e9:.2f} GFLOP), of which " +
                 ", ".join(f"{kind} convolutions {m / 1e9:.3f} G" for kind, m in sorted(counts.items(), key=lambda kv: -kv[1])) + ".")
    pointwise_ms = medians.get("Convolution (1x1)")
    if pointwise_ms:
        rate = 2 * counts["1x1"] / (pointwise_ms / 1e3) / 1e9
        lines.append(f"The 1x1 convolutions run at **{rate:.0f} GFLOP/s** on {args.threads} thread(s) "
                     f"({pointwise_ms:.2f} ms for {2 * counts['1x1'] / 1e9:.2f} GFLOP).")
    lines.append("")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
