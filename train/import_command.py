"""Turn published NanoDet-Plus weights into a nanoplus checkpoint.

SOURCE is one of
  - an upstream NanoDet checkpoint: a Lightning .ckpt (its EMA weights 'avg_model.*' win over
    'model.*') or a plain .pth / .pt state dict;
  - a published NCNN model: MODEL.param with MODEL.bin beside it (fp32 or fp16 storage). Its
    convolutions are matched to ours by graph and shape, and the BatchNorm that the converter
    folded into them is un-folded into our conv + BatchNorm form.

The config (built-in name or YAML, then key=value overrides) must describe the same network:
a graph or a state dict that does not fit is refused, naming the first layer that differs.
Weights from a deploy-only source (NCNN, a stripped .pth) carry no aux branch; 'nanoplus train
--weights' re-creates it when fine-tuning.

Files are read safely: no arbitrary unpickling unless --allow-pickle is given for a trusted
legacy file.

examples:
  nanoplus import nanodet-plus-m_416.ckpt --config nanodet-plus-m_416 --out m416.ckpt
  nanoplus import nanodet-plus-m_416.param --config nanodet-plus-m_416 --out m416.ckpt
  nanoplus import model.pth --config my.yaml model.num_classes=3 --names classes.txt --out mine.ckpt
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nanoplus.errors import NanoplusError


class ImportCommandError(NanoplusError, ValueError):
    """A problem with the import's inputs; the message names the file, the field and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", metavar="SOURCE",
                        help="upstream .ckpt / .pth / .pt, or an NCNN .param (with its .bin beside it)")
    # nargs="+": the overrides may follow the config name directly (--config NAME key=value ...)
    parser.add_argument("--config", required=True, nargs="+", metavar="NAME_OR_YAML",
                        help="built-in config name or YAML file describing the network, optionally followed by key=value overrides")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    parser.add_argument("--names", metavar="FILE",
                        help="class names, one per line (default: the config's class_names; COCO names for 80 classes)")
    parser.add_argument("--bin", metavar="FILE", help="NCNN weights file, when it is not SOURCE with a .bin suffix")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full Python unpickling of a legacy upstream checkpoint (runs code from the file: trusted files only)")
    parser.add_argument("--partial", action="store_true",
                        help="upstream checkpoints: keep fresh weights for tensors whose shape differs or that are absent "
                             "(e.g. fine-tuning COCO weights for another class count) instead of refusing")
    parser.add_argument("--approximate-int8", action="store_true",
                        help="import an int8-quantised NCNN model by de-quantising its weights (an approximation)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. model.num_classes=20")


# ----------------------------------------------------------------------------------------------


def _split_config_args(args) -> tuple[str, list[str], Path]:
    """--config NAME [key=value ...] and the positionals -> (config name, overrides, source)."""
    name, *extra = args.config
    overrides = [e for e in extra if "=" in e] + list(args.overrides)
    loose = [e for e in extra if "=" not in e]
    source = args.source
    if source is None and len(loose) == 1:
        source, loose = loose[0], []
    if loose:
        raise ImportCommandError(f"unexpected argument(s) {' '.join(loose)}: overrides look like section.key=value")
    if source is None:
        raise ImportCommandError("name the weights to import: nanoplus import SOURCE --config NAME --out CKPT")
    for text in overrides:
        if "=" not in text:
            raise ImportCommandError(f"override '{text}' must look like section.key=value, e.g. model.num_classes=3")
    return name, overrides, Path(source)


def read_class_names(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ImportCommandError(f"--names {path}: cannot read it: {e.strerror}") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise ImportCommandError(f"--names {path}: the file has no names (one class name per line)")
    return names


def resolve_class_names(cfg, names_file: str | None) -> tuple[list[str], str]:
    """(class names, where they came from): --names, else the config, else COCO for 80 classes,
    else class0..N-1."""
    num_classes = cfg.model.num_classes
    if names_file:
        names = read_class_names(Path(names_file))
        if len(names) != num_classes:
            raise ImportCommandError(
                f"--names {names_file}: has {len(names)} names but model.num_classes is {num_classes}; "
                "give one name per class (or set model.num_classes to match)"
            )
        return names, names_file
    if cfg.class_names:
        return list(cfg.class_names), "the config's class_names"
    if num_classes == 80:
        from nanoplus.runtime.coco import COCO_CLASS_NAMES

        return list(COCO_CLASS_NAMES), "COCO (80 classes)"
    return [f"class{i}" for i in range(num_classes)], "placeholders (no --names given)"


def _config_label(name: str, overrides: list[str]) -> str:
    return " ".join([name, *overrides])


def _import_ncnn(source: Path, args, cfg, label: str):
    from nanoplus.train.model import build_model
    from nanoplus.train.ncnn_import import ncnn_to_state_dict, trace_size
    from nanoplus.train.ncnn_model import load_ncnn_model

    ncnn = load_ncnn_model(source, args.bin)
    model = build_model(cfg.model, deploy=True, load_pretrained=False)
    state, report = ncnn_to_state_dict(ncnn, model, trace_size(cfg), label, allow_int8=args.approximate_int8)
    lines = [
        f"imported NCNN model {source} ({report.storage} weights, {len(report.matched)} layers matched, "
        f"BatchNorm un-folded)",
        f"  {report.tensors_written} tensors written; deploy-only weights (no aux_* entries: training re-creates the aux branch)",
    ]
    if report.approximate:
        lines.append("  warning: int8 weights were de-quantised; the result approximates the float model, it is not it")
    return state, lines


def _import_upstream(source: Path, args, cfg):
    from nanoplus.train.checkpoint import load_upstream_weights
    from nanoplus.train.model import build_model
    from nanoplus.train.weights import fit_state_dict, has_aux_entries

    weights = load_upstream_weights(source, allow_pickle=args.allow_pickle)
    has_aux = has_aux_entries(weights)
    model = build_model(cfg.model, deploy=not has_aux, load_pretrained=False)
    own = model.state_dict()
    fit = fit_state_dict(own, weights)
    # Counters such as num_batches_tracked do not change what the model computes.
    missing = fit.missing_weights
    if (fit.mismatched or missing) and not args.partial:
        parts = []
        if fit.mismatched:
            k, theirs, ours = fit.mismatched[0]
            parts.append(
                f"{len(fit.mismatched)} tensor(s) have another shape, first {k}: {list(theirs)} in the file, "
                f"{list(ours)} for config {cfg.name}"
                + (" (a different model.num_classes?)" if k.startswith(("head.gfl_cls", "aux_head.gfl")) else "")
            )
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the config are absent, first {missing[0]}")
        raise ImportCommandError(
            f"{source}: does not fit config {cfg.name}: " + "; ".join(parts)
            + ". Choose the config the weights were trained with, or pass --partial to keep fresh weights "
            "for those tensors (for fine-tuning)"
        )
    for k, v in fit.usable.items():
        own[k] = v.detach().to(own[k].dtype).clone()
    loaded = len(fit.usable)
    model.load_state_dict(own)  # strict: the result must be a complete state dict of our model
    kind = "Lightning checkpoint" if source.suffix == ".ckpt" else "state dict"
    lines = [f"imported upstream {kind} {source}: {loaded} tensors loaded"
             + ("" if has_aux else " (deploy-only: no aux_* entries, training re-creates the aux branch)")]
    if fit.unexpected:
        lines.append(f"  skipped {len(fit.unexpected)} entries our model does not have: "
                     f"{', '.join(fit.unexpected[:6])}{' ...' if len(fit.unexpected) > 6 else ''}")
    if fit.mismatched:
        lines.append(f"  kept fresh weights for {len(fit.mismatched)} tensors of another shape: "
                     + ", ".join(f"{k} {list(t)}->{list(o)}" for k, t, o in fit.mismatched[:4])
                     + (" ..." if len(fit.mismatched) > 4 else ""))
    if missing:
        lines.append(f"  kept fresh weights for {len(missing)} tensors absent from the file: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return model.state_dict(), lines


def run(args: argparse.Namespace) -> int:
    from nanoplus.train.checkpoint import save_checkpoint
    from nanoplus.train.config import load_config

    name, overrides, source = _split_config_args(args)
    if not source.is_file():
        raise ImportCommandError(f"{source}: no such file (SOURCE is an upstream .ckpt/.pth or an NCNN .param)")
    cfg = load_config(name, overrides)
    label = _config_label(name, overrides)
    class_names, names_from = resolve_class_names(cfg, args.names)
    cfg.class_names = class_names

    from nanoplus.runtime.backends import CHECKPOINT_SUFFIXES

    suffix = source.suffix.lower()
    if suffix == ".param":
        state, lines = _import_ncnn(source, args, cfg, label)
    elif suffix == ".bin":
        raise ImportCommandError(f"{source}: give the NCNN .param file as SOURCE (its .bin is found beside it)")
    elif suffix in CHECKPOINT_SUFFIXES:
        state, lines = _import_upstream(source, args, cfg)
    else:
        raise ImportCommandError(
            f"{source}: unknown kind of file '{source.suffix}'; SOURCE is an upstream .ckpt / .pth / .pt or an NCNN .param"
        )

    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out, config=cfg.to_dict(), class_names=class_names, model=state, ema=None,
        epoch=0, global_step=0, best_map=None,
    )
    for line in lines:
        print(line)
    print(f"  config {label}: {cfg.model.num_classes} classes, names from {names_from}")
    if names_from.startswith("placeholders"):
        print(f"  notice: class names are class0..class{cfg.model.num_classes - 1}; pass --names FILE to name them")
    print(f"  wrote {out}")
    return 0
