"""Inference engines behind one small interface: open a model file, run a blob, report what ran.

Every backend has ``name``, ``version`` (of the engine), ``precision`` (what it computes in),
``input_name`` / ``output_name``, ``input_hw`` (the static input size the file declares, or None),
``embedded_meta`` (the nanoplus metadata JSON stored inside the file, or None) and
``run(blob, keep=True) -> output`` with the batch axis removed (a 2-D array: (N, C+32) or
(C+32, N)); the caller's to keep, or with ``keep=False`` possibly a view of the engine's own output
buffer, valid until the next ``run`` (OpenVINO then skips a 1.6 MB copy at 416). Each engine is imported only when a model is opened with it, so an edge
install needs just one of them; torch is imported only by the torch backend.

Threads: one backend object may be shared by any number of threads. ONNX Runtime's session and a
torch model in inference mode take concurrent calls; ncnn makes a fresh extractor per call from the
shared net; OpenVINO keeps one infer request per thread (a request runs one inference at a time).
``keep=False`` outputs are per thread: valid until the same thread's next ``run``.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from nanoplus.errors import NanoplusError
from nanoplus.install import OPTIONAL_PACKAGES, install_hint
from nanoplus.runtime.metadata import meta_from_config

# backend name -> the Python module of its engine (OPTIONAL_PACKAGES says which extra installs it)
ENGINES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "torch": "torch"}
BACKEND_NAMES = tuple(ENGINES)
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt")
# model file suffix -> its format; backend -> the suffixes it opens
MODEL_FORMATS = {".onnx": "onnx", ".xml": "openvino", ".param": "ncnn", **{s: "torch" for s in CHECKPOINT_SUFFIXES}}
BACKEND_SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml"), "ncnn": (".param",),
                    "torch": CHECKPOINT_SUFFIXES}


class BackendUnavailableError(NanoplusError, ImportError):
    """The inference engine a model needs is not installed."""


class ModelFileError(NanoplusError, OSError):
    """A model file that is missing, unreadable or not a model of the expected format."""


def import_engine(backend: str, model_path) -> object:
    """The engine's Python module; not installed: an error naming ``model_path`` and the extra to install."""
    module = ENGINES[backend]
    extra = OPTIONAL_PACKAGES[module]
    try:
        return __import__(module)
    except ImportError as e:
        raise BackendUnavailableError(
            f"{model_path}: the {backend} backend needs the '{module}' package, which is not installed "
            f"({e}); install it with: {install_hint(extra)}"
        ) from None


def _engine_installed(backend: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(ENGINES[backend]) is not None


def resolve_model_path(model_path) -> Path:
    """A model file, or a folder holding exactly one (.onnx, .xml, .param or checkpoint)."""
    path = Path(model_path)
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found; check the path")
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in MODEL_FORMATS)
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise ModelFileError(
                f"{path}: a model folder must hold exactly one model file (.onnx, .xml, .param or a "
                f"checkpoint); found {names}. Pass the model file itself"
            )
        path = found[0]
    if path.suffix == ".bin":  # ncnn weights or OpenVINO weights: find the graph file beside it
        for graph in (path.with_suffix(".param"), path.with_suffix(".xml")):
            if graph.is_file():
                return graph
        raise ModelFileError(f"{path}: a .bin file needs its .param (ncnn) or .xml (OpenVINO) beside it")
    return path


def model_files(path: Path) -> list[Path]:
    """The files one model is made of, present or not: the graph file, the weights beside an
    OpenVINO .xml or ncnn .param (.bin), and an ONNX file's external data."""
    path = Path(path)
    files = [path]
    if path.suffix.lower() in (".xml", ".param"):
        files.append(path.with_suffix(".bin"))
    elif path.suffix.lower() == ".onnx":
        files.extend((path.with_name(path.name + ".data"), path.with_suffix(".onnx_data")))
    return files


def choose_backend(model_path: Path, backend: str = "auto") -> str:
    """The backend for a file: the user's choice, or from the file suffix."""
    suffix = model_path.suffix.lower()
    if backend != "auto":
        if backend not in ENGINES:
            raise NanoplusError(f"unknown backend '{backend}'; choose one of auto, {', '.join(ENGINES)}")
        allowed = BACKEND_SUFFIXES[backend]
        if suffix not in allowed:
            raise ModelFileError(
                f"{model_path}: the {backend} backend opens {'/'.join(allowed)} files, not '{suffix}'"
            )
        return backend
    if suffix == ".onnx":
        if _engine_installed("onnxruntime") or not _engine_installed("openvino"):
            return "onnxruntime"
        return "openvino"
    if suffix == ".xml":
        return "openvino"
    if suffix == ".param":
        return "ncnn"
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    raise ModelFileError(
        f"{model_path}: unknown model file type '{suffix}'; expected .onnx (onnxruntime/OpenVINO), "
        f".xml (OpenVINO IR), .param (ncnn) or a checkpoint (.ckpt/.pth/.pt)"
    )


def _static_hw(shape) -> Optional[tuple[int, int]]:
    """(H, W) from an NCHW input shape when both are fixed numbers."""
    if shape is None or len(shape) != 4:
        return None
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return int(h), int(w)
    return None


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: Optional[int] = None, precision: Optional[str] = None):
        ort = import_engine("onnxruntime", path)
        if precision not in (None, "auto", "fp32"):
            raise NanoplusError(f"onnxruntime computes in the precision the file stores (its CPU engine has no "
                                f"{precision} mode); got precision '{precision}': use fp32 or auto, or OpenVINO for "
                                "bf16 / fp16 compute")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"{path}: onnxruntime cannot load this file ({e}); is it a complete ONNX model?") from None
        if len(self.session.get_inputs()) != 1 or not self.session.get_outputs():
            raise ModelFileError(f"{path}: this ONNX graph has {len(self.session.get_inputs())} inputs and "
                                 f"{len(self.session.get_outputs())} outputs; a NanoDet-Plus model has one image input "
                                 "and an output")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_hw = _static_hw(model_input.shape)
        self._input_type = np.float16 if model_input.type == "tensor(float16)" else None
        if model_input.type == "tensor(uint8)":
            self._input_type = np.uint8
        self.precision = "fp16" if self._input_type is np.float16 else "fp32"
        self.version = ort.__version__
        self.embedded_meta = self.session.get_modelmeta().custom_metadata_map.get("nanoplus")

    def run(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        if self._input_type is not None and blob.dtype != self._input_type:
            blob = blob.astype(self._input_type)
        out = self.session.run([self.output_name], {self.input_name: blob})[0]
        return out[0] if out.ndim == 3 else out


class OpenVinoBackend:
    name = "openvino"
    PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}

    def __init__(self, path: Path, threads: Optional[int] = None, precision: Optional[str] = None):
        ov = import_engine("openvino", path)
        precision = precision or "fp32"
        if precision not in self.PRECISION_HINTS and precision != "auto":
            raise NanoplusError(f"OpenVINO precision must be one of fp32, fp16, bf16, auto; got '{precision}'")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise ModelFileError(f"{path}: OpenVINO cannot read this model ({e}); for .xml the .bin must be beside it") from None
        if len(model.inputs) != 1 or not model.outputs:
            raise ModelFileError(f"{path}: OpenVINO reads {len(model.inputs)} inputs and {len(model.outputs)} outputs "
                                 "in this model; a NanoDet-Plus IR has one image input and an output (is the file "
                                 "complete? export it again)")
        self.embedded_meta = self._read_rt_info(model)
        self.input_name = model.inputs[0].get_any_name()
        self.output_name = model.outputs[0].get_any_name()
        shape = model.inputs[0].get_partial_shape()
        self.input_hw = None
        if shape.rank.is_static and len(shape) == 4 and shape[2].is_static and shape[3].is_static:
            self.input_hw = (shape[2].get_length(), shape[3].get_length())
        self._input_type = np.uint8 if model.inputs[0].get_element_type() == ov.Type.u8 else None
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = self.PRECISION_HINTS[precision]
        try:
            compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ModelFileError(f"{path}: OpenVINO cannot compile this model for the CPU ({e})") from None
        self.compiled = compiled
        # An infer request runs one inference at a time ("Infer Request is busy" from a second
        # thread): each thread gets its own, made on its first call, all sharing the compiled model.
        self._requests = threading.local()
        # report what the plugin actually computes in (its own default is bf16 on CPUs that have it)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(hint, hint)
        self.version = ov.get_version()

    @staticmethod
    def _read_rt_info(model) -> Optional[str]:
        # an IR saved by nanoplus: rt_info['nanoplus']; an ONNX file read by OpenVINO: its
        # metadata_props appear under rt_info['framework']
        for key in (["nanoplus"], ["framework", "nanoplus"]):
            try:
                if model.has_rt_info(key):
                    value = model.get_rt_info(key)
                    return value.astype(str) if hasattr(value, "astype") else str(value)
            except (RuntimeError, TypeError):  # a key whose value is not text: not ours
                continue
        return None

    @property
    def request(self):
        """This thread's infer request."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request

    def run(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        if self._input_type is not None and blob.dtype != self._input_type:
            blob = blob.astype(self._input_type)
        # share_outputs=False: a fresh array that this thread's next run cannot overwrite
        out = self.request.infer({0: blob}, share_inputs=True, share_outputs=not keep)[0]
        return out[0] if out.ndim == 3 else out


def read_ncnn_blob_names(param_path: Path) -> tuple[str, str]:
    """(input blob, output blob) of an ncnn .param: the first Input layer's blob, and the blob no
    layer consumes (the last layer's output when several are unconsumed)."""
    from nanoplus.runtime.ncnn_param import NcnnFormatError, input_blobs, output_blobs, parse_param

    try:
        layers = parse_param(param_path)
    except NcnnFormatError as e:
        raise ModelFileError(str(e)) from None
    inputs, outputs = input_blobs(layers), output_blobs(layers)
    if not inputs or not outputs:
        raise ModelFileError(f"{param_path}: no Input layer or no output blob found in the ncnn .param")
    return inputs[0], outputs[-1]


class NcnnBackend:
    name = "ncnn"

    def __init__(self, path: Path, threads: Optional[int] = None, precision: Optional[str] = None,
                 input_name: Optional[str] = None, output_name: Optional[str] = None):
        ncnn = import_engine("ncnn", path)
        self._ncnn = ncnn
        precision = precision or "auto"
        if precision not in ("auto", "fp32"):
            raise NanoplusError(f"ncnn precision must be 'auto' (ncnn's defaults: fp16 storage where the "
                                f"CPU has it, int8 layers run quantised) or 'fp32'; got '{precision}'")
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise ModelFileError(f"{path}: the ncnn weights {weights.name} are missing beside the .param")
        detected_in, detected_out = read_ncnn_blob_names(path)
        self.input_name = input_name or detected_in
        self.output_name = output_name or detected_out
        self.net = ncnn.Net()
        if threads:
            self.net.opt.num_threads = int(threads)
        if precision == "fp32":
            for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                         "use_bf16_storage", "use_bf16_packed"):
                if hasattr(self.net.opt, flag):
                    setattr(self.net.opt, flag, False)
        # A failed load leaves a half-built net that crashes later: check both return codes.
        if self.net.load_param(str(path)) != 0:
            raise ModelFileError(f"{path}: ncnn cannot parse this .param file (corrupt or a newer ncnn format)")
        if self.net.load_model(str(weights)) != 0:
            raise ModelFileError(f"{weights}: ncnn cannot load these weights (truncated, or not the .bin of {path.name})")
        names = set(self.net.input_names()) if hasattr(self.net, "input_names") else {self.input_name}
        if self.input_name not in names:
            raise ModelFileError(f"{path}: no input blob '{self.input_name}' (inputs: {sorted(names)}); fix --input-name")
        self.input_hw = None  # ncnn Input layers rarely record a size
        self.precision = precision
        self.version = ncnn.__version__
        self.embedded_meta = None

    def run(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        ncnn = self._ncnn
        image = np.ascontiguousarray(blob[0], dtype=np.float32)
        extractor = self.net.create_extractor()
        # ncnn.Mat borrows the numpy buffer: ``image`` must stay alive until extract() returns
        ret = extractor.input(self.input_name, ncnn.Mat(image))
        if ret != 0:
            raise ModelFileError(f"ncnn: cannot feed blob '{self.input_name}' (code {ret}); fix --input-name")
        ret, out = extractor.extract(self.output_name)
        if ret != 0:
            raise ModelFileError(f"ncnn: cannot extract blob '{self.output_name}' (code {ret}); fix --output-name")
        return np.asarray(out)  # shares the Mat's refcounted memory; no copy


class TorchBackend:
    """A torch model: a nanoplus checkpoint (EMA weights, deploy model; ``meta`` from its config), or
    with ``from_model`` a model in memory (the trainer's, the exporter's), so that it runs through
    a ``Detector`` exactly as an exported file does."""

    name = "torch"

    def __init__(self, path: Path, threads: Optional[int] = None, precision: Optional[str] = None):
        torch = import_engine("torch", path)
        try:
            from nanoplus.train.checkpoint import load_model_for_inference
        except ImportError as e:
            raise BackendUnavailableError(f"{path}: the torch backend needs nanoplus's training code ({e})") from None
        self._check_precision(precision, torch.device("cpu"))
        if threads:
            torch.set_num_threads(int(threads))
        model, self.config, class_names = load_model_for_inference(str(path))
        meta = meta_from_config(self.config, class_names)
        if getattr(getattr(model, "head", None), "sigmoid_scores", False):
            meta.score_activation = "sigmoid"
        self._attach(torch, model, meta, precision, torch.device("cpu"))

    @classmethod
    def from_model(cls, model, meta, precision: Optional[str] = None, device=None) -> "TorchBackend":
        """A model in memory: (B, 3, H, W) float -> (B, N, C+32), described by ``meta`` (raw logits:
        ``score_activation`` "none"). It runs in the mode the caller left it in (eval for
        predictions) on ``device`` (default: where its parameters are). precision: fp32 (default),
        bf16 (autocast), fp16 (CUDA autocast, the trainer's AMP)."""
        import torch

        device = torch.device(device) if device is not None else next(model.parameters()).device
        backend = cls.__new__(cls)
        backend._check_precision(precision, device)
        backend.config = None
        backend._attach(torch, model, meta, precision, device)
        return backend

    @staticmethod
    def _check_precision(precision: Optional[str], device) -> None:
        allowed = ("fp32", "auto", "bf16", "fp16") if device.type == "cuda" else ("fp32", "auto", "bf16")
        if (precision or "fp32") not in allowed:
            raise NanoplusError(f"the torch backend runs fp32 (default, also 'auto') or bf16 (autocast)"
                                f"{', or fp16 on CUDA' if device.type == 'cuda' else ''}; got '{precision}'")

    def _attach(self, torch, model, meta, precision: Optional[str], device) -> None:
        self._torch = torch
        self.model, self.meta, self._device = model, meta, device
        # bf16 / fp16: torch.autocast, what PyTorch users run for reduced precision (convolutions in it)
        self.precision = "fp32" if (precision or "fp32") == "auto" else (precision or "fp32")
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.input_name, self.output_name = "images", "output"
        self.input_hw = None  # fully convolutional: any multiple-of-32 size the meta asks for
        self.version = torch.__version__
        self.embedded_meta = None

    def run(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32)).to(self._device)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=self._autocast or torch.bfloat16,
                                                    enabled=self._autocast is not None):
            out = self.model(x)
        return out[0].float().cpu().numpy()


class FunctionBackend:
    """A function ``blob (1, 3, H, W) -> raw output`` as a backend, for tools that hold an engine
    session of their own (the INT8 writers measuring candidate files): a ``Detector`` over it
    pre-processes, decodes and scores like any model file."""

    def __init__(self, run, name: str = "function", precision: str = "unknown", version: str = ""):
        self._run = run
        self.name, self.precision, self.version = name, precision, version
        self.input_name = self.output_name = None
        self.input_hw = None
        self.embedded_meta = None

    def run(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        return np.asarray(self._run(blob))


def open_backend(model_path, backend: str = "auto", threads: Optional[int] = None, precision: Optional[str] = None,
                 input_name: Optional[str] = None, output_name: Optional[str] = None):
    """Open a model file with an engine. Returns a backend object (see the module docstring)."""
    path = resolve_model_path(model_path)
    name = choose_backend(path, backend)
    if name == "ncnn":
        return NcnnBackend(path, threads, precision, input_name=input_name, output_name=output_name)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, threads, precision)
    if name == "openvino":
        return OpenVinoBackend(path, threads, precision)
    return TorchBackend(path, threads, precision)
