"""nanoplus checkpoints, upstream NanoDet weights, and local backbone weights.

Our checkpoint is one ``torch.save`` file of plain data (tensors, numbers, strings, lists, dicts),
written atomically, so ``torch.load(weights_only=True)`` reads it without unpickling code::

    {"format": "nanoplus-checkpoint", "format_version": 1, "config": cfg.to_dict(),
     "class_names": [...], "model": state_dict, "ema": state_dict or None,
     "epoch": int, "global_step": int, "best_map": float or None, ...training-resume state}

Loading is safe by default: a file that needs full unpickling is refused unless the caller opts
in with ``allow_pickle=True`` (and then a warning is issued).
"""
from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from nanoplus.atomic import atomic_open
from nanoplus.errors import NanoplusError
from nanoplus.train.weights import fit_state_dict, load_state_dict_non_strict

FORMAT = "nanoplus-checkpoint"
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class CheckpointError(NanoplusError, ValueError):
    """A checkpoint or weights file that cannot be read or used; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# Reading torch files safely


def _torch_load(path: Path, allow_pickle: bool):
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if not allow_pickle and "Unsupported global" in reason:
            raise CheckpointError(
                f"{path}: the file holds Python objects beyond tensors and plain data, and reading it would "
                f"unpickle them, which can run code stored in the file ({reason}). If you trust the file, "
                "opt in with allow_pickle=True (command line: --allow-pickle)"
            ) from None
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: not a readable torch file of plain data (weights-only reader: {reason}); if it is a "
                "legacy checkpoint you trust, opt in with allow_pickle=True (command line: --allow-pickle)"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable torch file ({_first_line(e)}); is it complete and a .ckpt/.pth?") from None
    warnings.warn(
        f"{path}: loading with full unpickling (allow_pickle=True); this can run code stored in the file, "
        "use it only for files you trust",
        UserWarning, stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # an arbitrary pickle can fail in arbitrary ways
        raise CheckpointError(f"{path}: could not be unpickled ({type(e).__name__}: {_first_line(e)})") from None


def _unpickler_reason(e: BaseException) -> str:
    """The informative line of torch's weights_only refusal ('Unsupported global: GLOBAL x.Y ...')."""
    for line in str(e).splitlines():
        if "Unsupported" in line:
            return line.strip().split(" was not ")[0].replace("WeightsUnpickler error: ", "")
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------------
# Our checkpoint format


def _check_plain(value, where: str) -> None:
    """Refuse, at save time, anything ``weights_only`` loading would refuse later."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint field '{where}' has a key of type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"checkpoint field '{where}' holds a {type(value).__module__}.{type(value).__name__}; a checkpoint keeps only "
        "tensors, numbers, strings, lists and dicts (convert it, e.g. numpy arrays with .tolist())"
    )


def save_checkpoint(path, **fields) -> Path:
    """Write a nanoplus checkpoint atomically (temp file in the same folder, then os.replace).

    ``fields``: at least ``model`` (a state dict); usually config, class_names, ema, epoch,
    global_step, best_map, and for resuming optimizer, scheduler, rng.
    """
    path = Path(path)
    if "model" not in fields:
        raise CheckpointError(f"{path}: a checkpoint needs the 'model' field (a state dict)")
    data = {"format": FORMAT, "format_version": FORMAT_VERSION}
    defaults = {"config": None, "class_names": None, "ema": None, "epoch": 0, "global_step": 0, "best_map": None}
    data.update(defaults)
    data.update(fields)
    for key in ("model", "ema"):
        if data[key] is not None:
            data[key] = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in data[key].items()}
    for key, value in data.items():
        _check_plain(value, key)
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(data, f)
    return path


def load_checkpoint(path, allow_pickle: bool = False) -> dict:
    """Read a nanoplus checkpoint (weights_only unless ``allow_pickle``); other files are refused."""
    path = Path(path)
    data = _torch_load(path, allow_pickle)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and ("state_dict" in data or all(isinstance(v, torch.Tensor) for v in data.values())):
            hint = " It looks like upstream NanoDet weights: convert them with 'nanoplus import'."
        raise CheckpointError(f"{path}: not a nanoplus checkpoint (no format field '{FORMAT}').{hint}")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is newer than this nanoplus reads ({FORMAT_VERSION}); "
            "upgrade nanoplus"
        )
    if not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: the checkpoint has no 'model' state dict")
    return data


def load_model_for_inference(path, allow_pickle: bool = False):
    """-> (deploy model in eval mode, Config, class_names). EMA weights win when present."""
    from nanoplus.train.config import ConfigError, config_from_dict
    from nanoplus.train.model import AUX_PREFIXES, build_model

    path = Path(path)
    ckpt = load_checkpoint(path, allow_pickle)
    if ckpt.get("config") is None:
        raise CheckpointError(f"{path}: the checkpoint carries no config, so the model cannot be rebuilt")
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config is not valid for this nanoplus: {e}") from None
    model = build_model(cfg.model, deploy=True, load_pretrained=False)
    weights = ckpt.get("ema") or ckpt["model"]
    weights = {k: v for k, v in weights.items() if not k.startswith(AUX_PREFIXES)}
    own = model.state_dict()
    fit = fit_state_dict(own, weights)
    if fit.missing_weights or fit.mismatched:
        what = (f"missing {fit.missing_weights[:3]}" if fit.missing_weights
                else f"shape mismatch at {[m[0] for m in fit.mismatched[:3]]}")
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes ({what})")
    model.load_state_dict({**own, **fit.usable})
    model.eval()
    class_names = ckpt.get("class_names") or cfg.class_names or [f"class{i}" for i in range(cfg.model.num_classes)]
    return model, cfg, list(class_names)


# ------------------------------------------------------------------------------------------------
# Upstream NanoDet weights


def upstream_prefix_rule(state_dict: dict) -> dict:
    """Upstream's loader, key by key (fixture README §4).

    1. ``avg_model.<name>`` (the EMA copy) replaces ``model.<name>``: the EMA weights win.
    2. If the first key starts with ``module.``, that prefix is cut from every key; then, again
       judged by the first key, ``model.`` is cut from every key.
    """
    state = dict(state_dict)
    for key in list(state_dict):
        if key.startswith("avg_model."):
            state[key[len("avg_"):]] = state.pop(key)
    for prefix in ("module.", "model."):
        if state and next(iter(state)).startswith(prefix):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_upstream_weights(path, allow_pickle: bool = False, model: Optional[nn.Module] = None) -> dict:
    """State dict from an upstream NanoDet ``.ckpt`` (Lightning: ``{"state_dict": ...}``) or ``.pth``
    (a plain state dict), by upstream's prefix rule. With ``model``, also load it into the model
    non-strictly (see ``load_state_dict_non_strict``)."""
    path = Path(path)
    data = _torch_load(path, allow_pickle)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        raise CheckpointError(f"{path}: this is a nanoplus checkpoint, not upstream weights; load it with load_checkpoint")
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: no state dict found (expected an upstream Lightning checkpoint with 'state_dict', or a dict "
            "of tensors)"
        )
    state = upstream_prefix_rule(state)
    if model is not None:
        load_state_dict_non_strict(model, state, str(path))
    return state


# ------------------------------------------------------------------------------------------------
# Local ImageNet weights for a backbone


def load_backbone_weights(backbone: nn.Module, path, rename: Optional[Callable[[str], str]] = None) -> dict:
    """Load local ImageNet weights into a backbone by name (torchvision layout; never downloaded).

    Accepts a plain state dict, ``{"state_dict": ...}`` / ``{"model": ...}``, and names prefixed
    ``backbone.`` or ``module.``; ``rename`` maps foreign names (e.g. torchvision MobileNetV2's).
    Refuses a file that matches none of the backbone's tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"model.backbone.pretrained_weights: {path} does not exist; give the path of a local ImageNet state dict "
            "(nothing is downloaded) or remove the field"
        )
    data = _torch_load(path, allow_pickle=False)
    state = data
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.backbone.pretrained_weights: {path} holds no state dict")
    renamed = {}
    for name, value in state.items():
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        renamed[rename(name) if rename else name] = value
    report = load_state_dict_non_strict(backbone, renamed, f"pretrained backbone {path}")
    if not report["loaded"]:
        raise CheckpointError(
            f"model.backbone.pretrained_weights: {path} has no tensor that fits this backbone "
            f"(first names in the file: {list(state)[:3]}); is it the right architecture and size?"
        )
    log.info("pretrained backbone %s: %d tensors loaded, %d skipped, %d unused", path, len(report["loaded"]),
             len(report["skipped"]), len(report["unexpected"]))
    return report
