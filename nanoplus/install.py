"""What to type when an optional package is missing.

nanoplus is installed from a checkout, a wheel or an sdist, not from a package index, so a hint of
the form ``pip install "nanoplus[extra]"`` fails for most users. The hint names the packages the
extra brings instead, with the version ranges pyproject.toml gives them (read from the installed
distribution's metadata, so there is no second list to keep in step).
"""
from __future__ import annotations

import re
from importlib import metadata

# optional package -> the extra of pyproject.toml that installs it
OPTIONAL_PACKAGES = {
    "torch": "train", "matplotlib": "train", "onnx": "export", "onnxslim": "export", "onnxsim": "export",
    "pnnx": "export", "nncf": "export", "onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn",
}

# PyPI's default torch is a multi-GB CUDA build; this is the CPU wheel the project is tested with
# (the same pin as requirements/lock.txt)
TORCH_CPU = "torch==2.13.0"


def extra_requirements(extra: str) -> list[str]:
    """The requirements the extra ``extra`` of the installed nanoplus adds, e.g. ['torch>=2.1', 'matplotlib>=3.5']."""
    try:
        requires = metadata.requires("nanoplus") or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for requirement in requires:
        name_part, _, marker = requirement.partition(";")
        if re.search(r"""extra\s*==\s*["']%s["']""" % re.escape(extra), marker):
            name_part = name_part.strip()
            if name_part.startswith("nanoplus"):  # an extra made of extras: nanoplus[train,export]
                for inner in re.findall(r"\[(.*)\]", name_part)[0].split(","):
                    found += [r for r in extra_requirements(inner.strip()) if r not in found]
            elif name_part not in found:
                found.append(name_part.replace(" ", ""))
    return found


def install_hint(extra: str) -> str:
    """'pip install torch==2.13.0 "matplotlib>=3.5"': the command that installs what ``extra`` needs."""
    requirements = extra_requirements(extra)
    if not requirements:  # metadata unreadable (not installed as a distribution): the extra's name is all we have
        return f'pip install "nanoplus[{extra}]" (from the nanoplus checkout or wheel)'
    words = [TORCH_CPU if re.match(r"torch\b", r) else (f'"{r}"' if re.search(r"[<>=!~]", r) else r)
             for r in requirements]
    torch_note = " (torch: the CPU build)" if TORCH_CPU in words else ""
    return "pip install " + " ".join(words) + torch_note
