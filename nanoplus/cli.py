"""``nanoplus`` command line: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives, in a module with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``nanoplus infer`` on a
Raspberry Pi never imports torch.
"""
from __future__ import annotations

import argparse
import errno
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
from nanoplus.install import OPTIONAL_PACKAGES




def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the commands; each command parses its own arguments."""
    from nanoplus import __version__

    parser = argparse.ArgumentParser(
        prog="nanoplus",
        description="NanoDet-Plus for the edge: train, export, run and measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nanoplus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def build_command_parser(name: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"nanoplus {name}",
        description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run, command=name)
    return parser


def _print_error(command: str, error: Exception) -> int:
    # a file name that is not UTF-8 reaches here as surrogates: show its odd bytes as \xe9
    message = str(error).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    print(f"nanoplus {command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv)  # --help, --version, or a clear error for an unknown command
        parser.print_help(sys.stderr)  # no command given: a usage error, as argparse would say it
        return 2
    # Intermixed parsing lets positionals and key=value overrides follow options in any order
    # (`nanoplus import SRC --out X model.num_classes=3`).
    args = build_command_parser(argv[0]).parse_intermixed_args(argv[1:])
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except NanoplusError as e:
        return _print_error(args.command, e)
    except OSError as e:  # a full disk outside the writes that name their folder (atomic_open, export)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" (writing {e.filename})" if e.filename else ""
        print(f"nanoplus {args.command}: error: no space left on the device{where}; free some space or write "
              "somewhere else, and run again", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package this command needs (torch on a runtime-only install)
        extra = OPTIONAL_PACKAGES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        if extra == "train" and args.command == "export":
            extra = "export"
        from nanoplus.install import install_hint

        print(f"nanoplus {args.command}: error: this command needs the '{e.name}' package, which is not installed; "
              f"install it with: {install_hint(extra)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
