"""``nanoplus`` command line: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives, in a module with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``nanoplus infer`` on a
Raspberry Pi never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line description)
COMMANDS = {
    "train": ("nanoplus.train.train_command", "train NanoDet-Plus on COCO / YOLO / VOC data (needs torch)"),
    "eval": ("nanoplus.runtime.eval_command", "COCO mAP of a checkpoint or exported model on a dataset"),
    "export": ("nanoplus.export.export_command", "export a checkpoint to ONNX / OpenVINO / NCNN with a parity check"),
    "infer": ("nanoplus.runtime.infer_command", "detect objects in images, folders, videos or a webcam"),
    "bench": ("nanoplus.runtime.bench_command", "measure latency (model-only and end to end) per backend"),
    "import": ("nanoplus.train.import_command", "turn published weights (upstream .ckpt/.pth, NCNN) into a nanoplus checkpoint"),
}

EPILOG = """examples:
  nanoplus train --config nanodet-plus-m_416 --data data.yaml train.epochs=50
  nanoplus eval runs/exp/best.ckpt --data coco/ --split val
  nanoplus export runs/exp/best.ckpt --format all
  nanoplus infer model.onnx photos/ --save-dir out/
  nanoplus bench model.onnx model.xml --threads 1,2
Run 'nanoplus COMMAND --help' for a command's options."""


from nanoplus.errors import NanoplusError


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from nanoplus import __version__

    parser = argparse.ArgumentParser(
        prog="nanoplus",
        description="NanoDet-Plus for the edge: train, export, run and measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nanoplus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if command is not None and name == command:
            module = importlib.import_module(module_name)
            sub_parser = sub.add_parser(
                name, help=help_text, description=(module.__doc__ or help_text).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except NanoplusError as e:
        print(f"nanoplus {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
