"""ONNX Runtime sessions: CUDA when the machine really has it, the CPU otherwise, quietly.

``onnxruntime`` is imported lazily, inside functions, so that importing napari-atomnet stays fast
and works without it.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: Set to "cpu" to never try CUDA, e.g. to compare timings.
DEVICE_ENV = "NAPARI_ATOMNET_DEVICE"


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is installed (without it CUDA cannot work, so it is not tried)."""
    return Path("/proc/driver/nvidia/version").exists() or bool(ctypes.util.find_library("cuda"))


def requested_providers(device: str | None = None) -> list[str]:
    """Return the providers to ask for, best first.

    Parameters
    ----------
    device : {"auto", "cuda", "cpu"}, optional
        ``"auto"`` (default, or the ``NAPARI_ATOMNET_DEVICE`` environment variable) asks for CUDA
        only where onnxruntime was built with it and an NVIDIA driver is present.

    Returns
    -------
    list of str
    """
    import onnxruntime as ort

    device = (device or os.environ.get(DEVICE_ENV) or "auto").lower()
    if device == "cpu":
        return [CPU]
    has_cuda_build = CUDA in ort.get_available_providers()
    if device == "cuda" or (device == "auto" and has_cuda_build and cuda_driver_present()):
        return [CUDA, CPU] if has_cuda_build else [CPU]
    return [CPU]


@functools.lru_cache(maxsize=8)
def _cached_session(path: str, mtime: float, providers: tuple[str, ...], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # A missing CUDA library is reported by onnxruntime as an error-level log line and a warning
    # that Python's warnings module never sees; fatal-only logging keeps CPU users' consoles clean.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    previous = 2
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=list(providers))
    finally:
        ort.set_default_logger_severity(previous)


def create_session(path: str | os.PathLike, *, device: str | None = None, threads: int = 0) -> Any:
    """Create (or reuse) an inference session for an ONNX file.

    Sessions are cached by (path, modification time, providers, threads), so re-running a model
    costs nothing and an edited file is reloaded.

    Parameters
    ----------
    path : path-like
        ONNX model file.
    device : {"auto", "cuda", "cpu"}, optional
        See :func:`requested_providers`.
    threads : int
        Intra-op threads (0: onnxruntime's default, all cores).

    Returns
    -------
    onnxruntime.InferenceSession
        ``session.get_providers()`` tells what it really uses: CUDA is listed only if it loaded.
    """
    path = Path(path)
    # batch workers set NAPARI_ATOMNET_THREADS=1 so that N workers use N cores
    threads = threads or int(os.environ.get("NAPARI_ATOMNET_THREADS", 0))
    return _cached_session(
        str(path.resolve()), path.stat().st_mtime, tuple(requested_providers(device)), threads
    )


def session_device(session: Any) -> str:
    """Return ``"cuda"`` if the session really runs on CUDA, else ``"cpu"``."""
    return "cuda" if CUDA in session.get_providers() else "cpu"


def run_session(
    session: Any, inputs: dict[str, NDArray], outputs: Sequence[str] | None = None
) -> dict[str, NDArray[np.float32]]:
    """Run a session and return its outputs by name."""
    names = list(outputs) if outputs else [o.name for o in session.get_outputs()]
    values = session.run(names, inputs)
    return dict(zip(names, values, strict=True))
