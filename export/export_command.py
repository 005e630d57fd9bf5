"""Export a nanoplus checkpoint to ONNX / OpenVINO IR / NCNN and prove the files give the same answers.

The deploy graph is backbone -> GhostPAN -> NanoDetPlusHead (EMA weights when the checkpoint has
them); the aux branch is not exported, BatchNorm is folded. Every file takes (1, 3, H, W) BGR
input and gives (N, C+32): sigmoid class scores, then the raw box bins (upstream's ONNX contract),
and carries its metadata (class names, input size, strides, mean/std, ...) inside the file where
the format allows and in a sidecar <file>.json always.

Files written (in --out-dir, default: the checkpoint's folder; STEM = --name or the checkpoint's):
  onnx       STEM.onnx                                   fp32
             STEM_int8.onnx                              with --int8 --calib DATA (QDQ, onnxruntime)
  openvino   STEM_openvino.xml/.bin                      fp32
             STEM_openvino_fp16.xml/.bin                 with --half
             STEM_openvino_int8.xml/.bin                 with --int8 --calib DATA (NNCF post-training)
  ncnn       STEM_ncnn.param/.bin                        fp32 weights
             STEM_ncnn_fp16.param/.bin                   with --half (fp16 weight storage)
             STEM_ncnn_int8.param/.bin                   with --int8 --calib DATA (our writer, ncnn's
                                                         int8 format; STEM_ncnn_int8.quant.json says
                                                         which layers stayed float and why)
--half and --int8 add files; the fp32 files are always written. INT8 files are calibrated on
--calib DATA; --int8-budget sets the largest mAP loss (measured on the calibration images) that
mixed precision keeps the NCNN file within.

Parity gate (on by default): the PyTorch model and each file (run through the runtime's Detector,
as users run it) see the same images; the max |difference| must stay within 1e-4 for the fp32
scores and 1e-3 for the fp32 box-bin logits (PyTorch's own float32 round-off in those is ~1e-4),
with looser, documented bounds for fp16 / bf16 / int8 (see nanoplus.export.parity). A file that
fails is kept for inspection as <name>.parity-failed.<ext>, never under its normal name, and the
command exits with status 2.

--check DATA also evaluates the PyTorch model and every file on DATA (COCO / YOLO / VOC, split
--check-split) and prints format, precision, size, max diff, mAP and the mAP change vs PyTorch.

examples:
  nanoplus export runs/exp/best.ckpt --format onnx
  nanoplus export best.ckpt --format all --input-size 320x416 --half
  nanoplus export best.ckpt --format openvino --int8 --calib coco/ --check coco/
  nanoplus export best.ckpt --format ncnn --int8 --calib coco/ --int8-budget 0.005
  nanoplus export m416.ckpt --format all --half --int8 --calib tiny_coco/ --check tiny_coco/ --threads 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from nanoplus.atomic import DiskFullError, disk_is_full, write_json_atomic
from nanoplus.errors import NanoplusError

FORMATS = ("onnx", "openvino", "ncnn")
# ONNX opsets the legacy TorchScript exporter (onnx_export.py) handles reliably; 11 is upstream's
OPSET_MIN, OPSET_MAX = 11, 17


class ExportCommandError(NanoplusError, ValueError):
    """A problem with the export's arguments; the message names the option and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="nanoplus checkpoint (nanoplus train / nanoplus import)")
    parser.add_argument("--format", default="onnx", metavar="FMT",
                        help="onnx, openvino, ncnn or all; several joined by commas (default: onnx)")
    parser.add_argument("--input-size", default=None, metavar="SIZE",
                        help="network input: 416 or HEIGHTxWIDTH such as 320x416, multiples of 32; default: the "
                             "checkpoint's data.input_hw")
    parser.add_argument("--imgsz", type=int, nargs="+", help=argparse.SUPPRESS)  # old spelling: --imgsz H W
    parser.add_argument("--half", action="store_true", help="also write fp16 OpenVINO and NCNN files")
    parser.add_argument("--int8", action="store_true", help="also write an INT8 file of each format (needs --calib)")
    parser.add_argument("--calib", metavar="DATA", help="calibration data for --int8 (COCO folder/json, YOLO YAML or VOC folder)")
    parser.add_argument("--calib-split", default="train", help="split of --calib to use (default: train)")
    parser.add_argument("--calib-images", type=int, default=300, metavar="N", help="calibration images at most (default: 300)")
    parser.add_argument("--int8-method", default="auto", choices=("auto", "kl", "percentile", "minmax"),
                        help="NCNN INT8 activation scales: kl (KL divergence, as ncnn2table), percentile (99.99%% of "
                             "|x|), minmax, or auto (default: kl and percentile measured, the better kept)")
    parser.add_argument("--int8-budget", type=float, default=0.005, metavar="MAP",
                        help="ONNX/NCNN INT8: largest mAP loss against the float file on the calibration images; "
                             "the layers whose quantisation costs most stay float until the file is within it "
                             "(default: 0.005; a negative value: every layer int8, nothing measured)")
    parser.add_argument("--int8-eval-images", type=int, default=100, metavar="N",
                        help="ONNX/NCNN INT8: calibration images that measure the mAP for --int8-budget (default: 100)")
    parser.add_argument("--uint8-input", action="store_true",
                        help="OpenVINO: fold mean/std into the graph; the IR takes the raw warped BGR image as uint8 NCHW")
    parser.add_argument("--dynamic", action="store_true", help="ONNX/OpenVINO: dynamic batch and size (NCNN files always take any size that is a multiple of 32)")
    parser.add_argument("--opset", type=int, default=11,
                        help=f"ONNX opset, {OPSET_MIN}-{OPSET_MAX} (default: 11, as upstream)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim/onnxslim")
    parser.add_argument("--out-dir", metavar="DIR", help="output folder (default: the checkpoint's folder)")
    parser.add_argument("--name", metavar="STEM", help="file name stem (default: the checkpoint's)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity gate (not recommended)")
    parser.add_argument("--parity-images", metavar="DIR",
                        help="folder of photos for the parity gate (default: the first --check/--calib images, else seeded random images)")
    parser.add_argument("--parity-count", type=int, default=4, metavar="N", help="images in the parity gate (default: 4)")
    parser.add_argument("--check", metavar="DATA", help="also evaluate mAP of PyTorch and every file on DATA")
    parser.add_argument("--check-split", default="val", help="split of --check DATA (default: val)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and the runtimes during the checks (default: their own defaults)")
    parser.add_argument("--json", metavar="FILE", help="write the results (files, sizes, diffs, mAP) as JSON")


# ----------------------------------------------------------------------------------------------
# argument checks


def parse_formats(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if "all" in names:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ExportCommandError(f"--format {text!r}: unknown format {unknown or text!r}; choose onnx, openvino, ncnn or all")
    return [f for f in FORMATS if f in names]


def export_input_hw(args, default_hw) -> list[int]:
    """--input-size (416 or HxW), or the old spelling --imgsz H W; default: the checkpoint's size.
    Height and width must be multiples of 32."""
    from nanoplus.runtime.detector import parse_input_size

    text = args.input_size
    if args.imgsz is not None:
        if text is not None:
            raise ExportCommandError("give --input-size only (--imgsz H W is its old spelling)")
        if len(args.imgsz) > 2:
            raise ExportCommandError(f"--imgsz takes H W (or one value for a square input), got {args.imgsz}; "
                                     "write --input-size HxW")
        text = "x".join(str(v) for v in args.imgsz)
        print(f"nanoplus export: --imgsz H W is deprecated; write --input-size {text}", file=sys.stderr)
    try:
        hw = list(parse_input_size(text)) if text is not None else list(default_hw)
    except NanoplusError as e:
        raise ExportCommandError(f"--input-size: {e}") from None
    if any(v <= 0 or v % 32 for v in hw):
        raise ExportCommandError(f"--input-size {hw[0]}x{hw[1]}: height and width must be positive multiples of 32 "
                                 "(the stride-32 feature maps must tile the input)")
    return hw


def file_size(path: Path) -> int:
    """Bytes on disk of a model: the graph file plus its weights file."""
    from nanoplus.runtime.backends import model_files

    return sum(p.stat().st_size for p in model_files(path) if p.is_file())


def companion_files(path: Path) -> list[Path]:
    """The model's files (graph, .bin weights, ONNX external data), its sidecar .json and, for an
    INT8 file of ours, its quantisation report .quant.json."""
    from nanoplus.runtime.backends import model_files
    from nanoplus.runtime.metadata import sidecar_path

    return model_files(path) + [sidecar_path(path), path.with_suffix(".quant.json")]


def move_model(path: Path, dest: Path) -> Path:
    """Move a model file and its companions to ``dest`` (same folder names, os.replace each)."""
    for src, dst in zip(companion_files(path), companion_files(dest)):
        if src.exists():
            os.replace(src, dst)
    return dest


def human_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB"


# ----------------------------------------------------------------------------------------------


def export_meta(cfg, class_names, input_hw):
    """The metadata every exported file starts from (each exporter sets its own names/precision)."""
    from nanoplus.runtime.metadata import meta_from_config

    meta = meta_from_config(cfg, class_names)
    meta.input_hw = [int(input_hw[0]), int(input_hw[1])]
    meta.score_activation = "sigmoid"
    meta.layout = "NC"
    meta.color_order = "BGR"
    meta.input_dtype = "float32"
    meta.model_name = cfg.name
    return meta.validate("export metadata")


def _check_arguments(args, formats: list[str]) -> None:
    if not Path(args.checkpoint).is_file():
        raise ExportCommandError(f"{args.checkpoint}: checkpoint not found; give the file written by "
                                 "nanoplus train or nanoplus import")
    if args.int8 and not args.calib:
        raise ExportCommandError("--int8 needs calibration images: add --calib DATA (e.g. your training data)")
    if args.int8 and (args.calib_images < 1 or args.int8_eval_images < 1):
        raise ExportCommandError("--calib-images and --int8-eval-images must be at least 1")
    if not OPSET_MIN <= args.opset <= OPSET_MAX:
        raise ExportCommandError(f"--opset {args.opset}: use {OPSET_MIN}-{OPSET_MAX} (11 is upstream's)")
    if args.half and not {"openvino", "ncnn"} & set(formats):
        print("note: --half makes fp16 OpenVINO and NCNN files; the ONNX file stays fp32")


def _export_files(graph, meta, args, formats, staging: Path, stem: str, calib_dataset,
                  eval_config) -> list[tuple[str, Path]]:
    """Write every requested file into ``staging``; returns [(format, model file)] in table order."""
    from nanoplus.export.onnx_export import export_onnx
    from nanoplus.runtime.metadata import read_sidecar

    staged = []
    onnx_path = staging / f"{stem}.onnx"
    if "onnx" in formats or "openvino" in formats:  # OpenVINO converts our ONNX file
        export_onnx(graph, meta, onnx_path, opset=args.opset, dynamic=args.dynamic,
                    simplify=not args.no_simplify, prepared=True)
        if "onnx" in formats:
            staged.append(("onnx", onnx_path))
            if args.int8:
                from nanoplus.export.onnx_int8 import quantize_onnx

                print(f"quantising ONNX to INT8 (QDQ) with up to {args.calib_images} images of {calib_dataset.source}")
                int8_path, report = quantize_onnx(
                    onnx_path, read_sidecar(onnx_path), calib_dataset, staging / f"{stem}_int8.onnx",
                    **_int8_options(args, eval_config))
                print(report.summary())
                staged.append(("onnx", int8_path))
    if "openvino" in formats:
        from nanoplus.export.openvino_export import export_openvino

        onnx_meta = read_sidecar(onnx_path)
        ov_fp32 = export_openvino(onnx_path, onnx_meta, staging / f"{stem}_openvino.xml", uint8_input=args.uint8_input)
        staged.append(("openvino", ov_fp32))
        if args.half:
            staged.append(("openvino", export_openvino(onnx_path, onnx_meta, staging / f"{stem}_openvino_fp16.xml",
                                                       half=True, uint8_input=args.uint8_input)))
        if args.int8:
            from nanoplus.export.quantize import quantize_openvino

            print(f"quantising to INT8 with up to {args.calib_images} images of {calib_dataset.source}")
            staged.append(("openvino", quantize_openvino(ov_fp32, read_sidecar(ov_fp32), calib_dataset,
                                                         staging / f"{stem}_openvino_int8.xml",
                                                         subset_size=args.calib_images)))
    if "ncnn" in formats:
        from nanoplus.export.ncnn_export import export_ncnn

        ncnn_fp32 = export_ncnn(graph, meta, staging / f"{stem}_ncnn.param", dynamic=args.dynamic, prepared=True)
        staged.append(("ncnn", ncnn_fp32))
        if args.half:
            staged.append(("ncnn", export_ncnn(graph, meta, staging / f"{stem}_ncnn_fp16.param",
                                               fp16=True, dynamic=args.dynamic, prepared=True)))
        if args.int8:
            from nanoplus.export.ncnn_int8 import quantize_ncnn

            print(f"quantising NCNN to INT8 with up to {args.calib_images} images of {calib_dataset.source}")
            int8_path, report = quantize_ncnn(
                ncnn_fp32, read_sidecar(ncnn_fp32), calib_dataset, staging / f"{stem}_ncnn_int8.param",
                method=args.int8_method, **_int8_options(args, eval_config))
            print(report.summary())
            staged.append(("ncnn", int8_path))
    return staged


def _int8_options(args, eval_config) -> dict:
    """The options the ONNX and NCNN INT8 writers share."""
    return dict(max_images=args.calib_images, budget=None if args.int8_budget < 0 else args.int8_budget,
                eval_images=args.int8_eval_images, score_thr=eval_config.score_thr, iou_thr=eval_config.iou_thr,
                max_det=eval_config.max_det, threads=args.threads)


def _gate_images(args, datasets):
    """--parity-images, else the first images of the --check / --calib data, else seeded noise."""
    from nanoplus.export.parity import parity_images

    if args.parity_images:
        return parity_images(args.parity_images, count=args.parity_count)
    for dataset in datasets:
        if dataset is not None:
            images = _dataset_images(dataset, args.parity_count)
            if images:
                return images
    return parity_images(None, count=args.parity_count)


def _gate_and_place(staged, model, meta, args, out_dir: Path, datasets) -> list[dict]:
    """Parity-check each staged file, then move it to its name in ``out_dir`` (or a flagged name)."""
    from nanoplus.export.parity import check_file, torch_outputs
    from nanoplus.runtime.metadata import read_sidecar

    if not args.no_parity:
        images = _gate_images(args, datasets)
        reference = torch_outputs(model, meta, images)
    rows = []
    for fmt, path in staged:
        row = {"format": fmt, "size_bytes": file_size(path)}
        final, flagged = out_dir / path.name, out_dir / f"{path.stem}.parity-failed{path.suffix}"
        if args.no_parity:
            row.update(precision=read_sidecar(path).precision, parity="skipped")
            passed = True
        else:
            result = check_file(path, fmt, images, reference, threads=args.threads)
            row.update(precision=result.precision, backend=result.backend, runtime_precision=result.runtime_precision,
                       max_score_diff=result.max_score_diff, max_bin_diff=result.max_bin_diff,
                       score_bound=result.score_bound, bin_bound=result.bin_bound,
                       parity="pass" if result.passed else "FAIL")
            passed = result.passed
        if passed:
            _remove_model(flagged)  # a failure left by an earlier run
            row["file"] = str(move_model(path, final))
        else:
            # an older file under the normal name is not this checkpoint's export: take it away too
            _remove_model(final)
            row["file"] = str(move_model(path, flagged))
        rows.append(row)
    return rows


def _remove_model(path: Path) -> None:
    for f in companion_files(path):
        if f.exists():
            f.unlink()


def _check_accuracy(model, meta, cfg, ckpt: Path, rows: list[dict], dataset, threads) -> dict:
    """mAP of the PyTorch model and of every file that passed the gate; fills the rows in place."""
    from nanoplus.export.parity import evaluate_file, evaluate_torch

    print(f"evaluating on {dataset.source} [{dataset.split}], {len(dataset)} images")
    ev = cfg.eval
    torch_metrics = evaluate_torch(model, meta, dataset, ev.score_thr, ev.iou_thr, ev.max_det)
    torch_row = {"format": "pytorch", "file": str(ckpt), "precision": "fp32", "size_bytes": ckpt.stat().st_size,
                 "mAP": torch_metrics["mAP"], "AP50": torch_metrics["AP50"]}
    for row in rows:
        if row.get("parity") == "FAIL":
            continue
        metrics = evaluate_file(row["file"], dataset, ev.score_thr, ev.iou_thr, ev.max_det,
                                threads=threads, label=Path(row["file"]).name)
        row.update(mAP=metrics["mAP"], AP50=metrics["AP50"], delta_mAP=metrics["mAP"] - torch_metrics["mAP"])
    return torch_row


def run(args) -> int:
    formats = parse_formats(args.format)
    _check_arguments(args, formats)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from nanoplus.export.onnx_export import prepare_for_export
    from nanoplus.export.parity import ParityError
    from nanoplus.train.checkpoint import load_model_for_inference

    ckpt = Path(args.checkpoint)
    model, cfg, class_names = load_model_for_inference(str(ckpt))
    input_hw = export_input_hw(args, cfg.data.input_hw)
    meta = export_meta(cfg, class_names, input_hw)
    out_dir = Path(args.out_dir) if args.out_dir else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.name or ckpt.stem
    print(f"exporting {ckpt} ({cfg.name}, {len(class_names)} classes) at {input_hw[0]}x{input_hw[1]} (HxW) "
          f"to {', '.join(formats)} in {out_dir}")

    calib_dataset = check_dataset = None
    if args.int8 or args.check:
        from nanoplus.runtime.datasets import check_num_classes, load_dataset

        if args.int8:
            calib_dataset = load_dataset(args.calib, split=args.calib_split)
        if args.check:
            check_dataset = load_dataset(args.check, split=args.check_split)
            check_num_classes(check_dataset, len(class_names), str(ckpt), class_names)

    graph = prepare_for_export(model)
    # files are written to a staging folder beside the outputs and reach their names only after the gate
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}-export-", dir=out_dir))
    try:
        staged = _export_files(graph, meta, args, formats, staging, stem, calib_dataset, cfg.eval)
        rows = _gate_and_place(staged, model, meta, args, out_dir, (check_dataset, calib_dataset))
    except Exception as error:
        # a full disk shows as OSError, RuntimeError (OpenVINO, torch) or a bad file from pnnx
        if isinstance(error, DiskFullError) or disk_is_full(out_dir, error):
            raise DiskFullError(out_dir) from error  # named by the output folder: the staging one is gone
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    torch_row = None
    if check_dataset is not None:
        torch_row = _check_accuracy(model, meta, cfg, ckpt, rows, check_dataset, args.threads)
    print(format_table(rows, torch_row))
    if args.json:
        write_json_atomic(Path(args.json), {"checkpoint": str(ckpt), "input_hw": input_hw, "pytorch": torch_row, "files": rows})
    failed = [r for r in rows if r.get("parity") == "FAIL"]
    if failed:
        lines = [f"  {r['file']}: score diff {r['max_score_diff']:.3g} (bound {r['score_bound']:.3g}), "
                 f"bin diff {r['max_bin_diff']:.3g} (bound {r['bin_bound']:.3g})" for r in failed]
        raise ParityError("parity check failed: these files differ from the PyTorch model beyond the bound and "
                          "are kept only under a .parity-failed name for inspection:\n" + "\n".join(lines)
                          + "\nplease report it with the checkpoint's config; --no-parity skips the check")
    return 0


def _dataset_images(dataset, count: int):
    from nanoplus.runtime.images import ImageReadError, read_image

    images = []
    for record in dataset.records[: max(count * 2, count)]:
        try:
            images.append(read_image(record.path))
        except ImageReadError:  # the dataset loader reported it already
            pass
        if len(images) == count:
            break
    return images or None


def format_table(rows: list[dict], torch_row: dict | None = None) -> str:
    """The summary table: format, precision, runtime, size, max diffs, parity, mAP, ΔmAP."""
    header = ["format", "precision", "runtime", "size", "max|Δscore|", "max|Δbin|", "parity", "mAP", "ΔmAP", "file"]
    table = []
    if torch_row is not None:
        table.append(["pytorch", "fp32", "torch", human_size(torch_row["size_bytes"]), "-", "-", "-",
                      f"{torch_row['mAP']:.4f}", "-", Path(torch_row["file"]).name])
    for r in rows:
        table.append([
            r["format"], r.get("precision") or "?",
            f"{r.get('backend', '-')}/{r.get('runtime_precision', '-')}" if "backend" in r else "-",
            human_size(r["size_bytes"]),
            f"{r['max_score_diff']:.2e}" if "max_score_diff" in r else "-",
            f"{r['max_bin_diff']:.2e}" if "max_bin_diff" in r else "-",
            r.get("parity", "-"),
            f"{r['mAP']:.4f}" if "mAP" in r else "-",
            f"{r['delta_mAP']:+.4f}" if "delta_mAP" in r else "-",
            Path(r["file"]).name,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header] + table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m nanoplus.export.export_command CKPT ...
    from nanoplus.cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
