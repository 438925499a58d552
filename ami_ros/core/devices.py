"""Where a model runs: the torch device and the ONNX Runtime execution providers.

One choice, ``device``, for every node and tool that loads a model:

- ``auto``: the GPU when there is one, else the CPU. torch: ``cuda`` when
  ``torch.cuda.is_available()``. ONNX Runtime: TensorRT, then CUDA, then CPU, among
  the providers this onnxruntime build has; when a GPU is visible to torch but the
  build has no GPU provider (the PyPI CPU wheel on a Jetson), the choice says so as a
  warning and runs on the CPU.
- ``cpu``: the CPU.
- ``cuda``: the GPU through CUDA; refused (:class:`DeviceError`) when there is none
  (torch) or the build lacks the CUDA provider (ONNX Runtime): asked for explicitly,
  it never falls back to the CPU in silence.
- ``tensorrt``: ONNX Runtime only, TensorRT first (CUDA, then CPU, for the nodes
  TensorRT does not take); refused without the TensorRT provider. Engines are cached
  on disk (:func:`trt_cache_dir`), keyed by model id, GPU and precision, so a start
  after the first does not rebuild them.

Each answer carries a line saying what was chosen and why, for the caller to log once.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: the device choices of the torch backend and of ONNX Runtime
TORCH_DEVICES = ("auto", "cpu", "cuda")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TRT, CUDA)
#: the providers each choice asks for, in ONNX Runtime's order of preference
PROVIDER_ORDER = {"auto": (TRT, CUDA, CPU), "cpu": (CPU,), "cuda": (CUDA, CPU), "tensorrt": (TRT, CUDA, CPU)}


class DeviceError(ValueError):
    """A device that was asked for and is not there (or not servable by the backend)."""


@dataclass
class Placement:
    """Where a model was put: ``device`` (cpu | cuda, and tensorrt for ONNX Runtime: what runs),
    ``providers`` (ONNX Runtime: what its sessions run, from ``session.get_providers()``),
    ``line``: what was chosen and why; ``warning``: set when a GPU was wanted and is not used."""

    choice: str
    device: str
    line: str
    providers: list = field(default_factory=list)
    warning: str | None = None


def _check_choice(choice: str, allowed) -> None:
    if choice not in allowed:
        raise DeviceError(f"device={choice!r} not one of {list(allowed)}")


def torch_device(choice: str = "auto") -> Placement:
    """The torch device of ``choice`` (auto | cpu | cuda). DeviceError for ``cuda`` without a
    CUDA device, and for ``tensorrt`` (which is ONNX Runtime's: backend onnx)."""
    import torch

    if choice == "tensorrt":
        raise DeviceError("device=tensorrt runs through ONNX Runtime: use backend onnx (or device cuda with torch)")
    _check_choice(choice, TORCH_DEVICES)
    have = torch.cuda.is_available()
    if choice == "cuda" and not have:
        raise DeviceError(f"device=cuda asked for, but torch {torch.__version__} sees no CUDA device "
                          f"(torch.cuda.is_available() is False; a CPU-only torch build, or no GPU): "
                          "set device cpu or auto")
    if choice == "cpu":
        return Placement(choice, "cpu", "torch on cpu (device=cpu)")
    if not have:
        return Placement(choice, "cpu", "torch on cpu (device=auto: torch.cuda.is_available() is False)")
    name = torch.cuda.get_device_name(0)
    why = "device=cuda" if choice == "cuda" else "device=auto: torch.cuda.is_available() is True"
    return Placement(choice, "cuda", f"torch on cuda ({name}; {why})")


def gpu_name() -> str:
    """The GPU's name as a path component: torch's name of CUDA device 0, else the board's
    (/proc/device-tree/model on a Jetson), else ``gpu``."""
    name = ""
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
    except Exception:
        name = ""
    if not name:
        try:
            with open("/proc/device-tree/model") as f:
                name = f.read().strip("\x00\n ")
        except OSError:
            name = ""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "gpu"


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, seen by torch or by its device files (a Jetson's
    integrated GPU, or a discrete one, with a CPU-only torch build)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except Exception:
        pass
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"))


def trt_cache_dir(model_id: str, gpu: str, fp16: bool, root: str | None = None) -> str:
    """Folder of the TensorRT engines of ``model_id`` on ``gpu`` at one precision:
    ``<root>/<model_id>/<gpu>/<fp16|fp32>``; root None or empty: ``$XDG_CACHE_HOME/ami_ros/trt``
    (``~/.cache/ami_ros/trt``). An engine is valid only for the GPU and the TensorRT version it
    was built with; ONNX Runtime rebuilds one it cannot load."""
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ami_ros", "trt")
    safe = lambda s: re.sub(r"[^A-Za-z0-9@._-]+", "_", s)     # noqa: E731
    return os.path.join(root, safe(model_id), safe(gpu), "fp16" if fp16 else "fp32")


def trt_options(cache_dir: str, fp16: bool) -> dict:
    """The TensorRT provider's options: FP16 on or off, engines cached in ``cache_dir``."""
    return {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir}


def onnx_providers(choice: str, available, *, model_id: str = "", gpu: str = "", trt_fp16: bool = False,
                   trt_cache_root: str | None = None, gpu_visible: bool = False):
    """The providers to hand ``onnxruntime.InferenceSession`` for ``choice`` among ``available``
    (``ort.get_available_providers()``) -> (providers, warning or None): a list of names, the
    TensorRT one as ``(name, trt_options(...))``. DeviceError when ``cuda`` or ``tensorrt`` was
    asked for and this build lacks that provider. ``gpu_visible``: a GPU is there (for
    ``auto``'s warning when the build cannot use it)."""
    _check_choice(choice, DEVICES)
    have = list(available)
    wanted = {"cuda": CUDA, "tensorrt": TRT}.get(choice)
    if wanted is not None and wanted not in have:
        raise DeviceError(f"device={choice} asked for, but this onnxruntime has no {wanted} (it has {have}); "
                          "on a Jetson install NVIDIA's onnxruntime-gpu build for JetPack (docs/jetson.md), "
                          "or set device auto or cpu")
    chosen = [p for p in PROVIDER_ORDER[choice] if p in have]
    if CPU not in chosen:
        raise DeviceError(f"this onnxruntime has no {CPU} (it has {have})")
    warning = None
    if choice == "auto" and gpu_visible and not any(p in have for p in GPU_PROVIDERS):
        warning = (f"a GPU is present but this onnxruntime has no GPU provider (it has {have}): running on the CPU; "
                   "install the onnxruntime-gpu build for this platform (docs/jetson.md)")
    if TRT in chosen:
        cache = trt_cache_dir(model_id, gpu or gpu_name(), trt_fp16, trt_cache_root)
        chosen[chosen.index(TRT)] = (TRT, trt_options(cache, trt_fp16))
    return chosen, warning


def provider_names(providers) -> list[str]:
    """The names of a provider list as :func:`onnx_providers` builds it."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def onnx_placement(choice: str, providers, running: list[str], warning: str | None) -> Placement:
    """The placement of ONNX Runtime sessions that asked for ``providers`` and run ``running``
    (``session.get_providers()``). DeviceError when an explicit ``cuda`` / ``tensorrt`` did not
    come up (its libraries failed to load); under ``auto`` that is a warning."""
    asked = provider_names(providers)
    first = asked[0]
    if first not in running:
        msg = (f"onnxruntime was given {asked} but runs {running}: {first} did not start (its libraries, "
               "e.g. CUDA, cuDNN or TensorRT, failed to load?)")
        if choice in ("cuda", "tensorrt"):
            raise DeviceError(f"device={choice}: {msg}")
        warning = f"{warning}; {msg}" if warning else msg
    opts = next((p[1] for p in providers if isinstance(p, tuple)), None)
    extra = "" if opts is None or TRT not in running else \
        f", TensorRT fp16={opts['trt_fp16_enable']}, engine cache {opts['trt_engine_cache_path']}"
    line = f"onnxruntime runs {running[0]} (device={choice}; providers {running}{extra})"
    runs = {TRT: "tensorrt", CUDA: "cuda"}.get(running[0], "cpu")
    return Placement(choice, runs, line, providers=list(running), warning=warning)
