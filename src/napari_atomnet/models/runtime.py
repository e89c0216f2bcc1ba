"""ONNX Runtime sessions: CUDA when the machine really has it, the CPU otherwise, quietly.

``onnxruntime`` is imported lazily, inside functions, so that importing napari-atomnet stays fast
and works without it.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: Set to "cpu" to never try CUDA, e.g. to compare timings.
DEVICE_ENV = "NAPARI_ATOMNET_DEVICE"


@functools.cache
def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is installed (without it CUDA cannot work, so it is not tried).

    Checked once per process (``ctypes.util.find_library`` costs milliseconds, and this is asked
    for every image).
    """
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


#: Most sessions kept alive at once (least recently used ones are dropped).
MAX_SESSIONS = 8

_SESSIONS: OrderedDict[tuple[str, float, tuple[str, ...], int], Any] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()


def _new_session(path: str, providers: tuple[str, ...], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # A missing CUDA library is reported by onnxruntime as an error-level log line and a warning
    # that Python's warnings module never sees; fatal-only logging keeps CPU users' consoles clean.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    # idle worker threads sleep instead of spinning: on a shared machine (a GUI, other batch
    # workers, a training run) spinning threads burn the cores the other work needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    previous = 2
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=list(providers))
    finally:
        ort.set_default_logger_severity(previous)


def _cached_session(path: str, mtime: float, providers: tuple[str, ...], threads: int) -> Any:
    """Return the cached session for this key, creating it (once, under a lock) if needed."""
    key = (path, mtime, providers, threads)
    with _SESSIONS_LOCK:  # two threads asking at once get one session, not two
        session = _SESSIONS.get(key)
        if session is None:
            session = _new_session(path, providers, threads)
            _SESSIONS[key] = session
            while len(_SESSIONS) > MAX_SESSIONS:
                _SESSIONS.popitem(last=False)
        else:
            _SESSIONS.move_to_end(key)
        return session


def clear_session_cache() -> None:
    """Forget every cached session (their memory is freed once no caller holds them)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


def create_session(path: str | os.PathLike, *, device: str | None = None, threads: int = 0) -> Any:
    """Create (or reuse) an inference session for an ONNX file.

    Sessions are cached by (path, modification time, providers, threads), at most
    :data:`MAX_SESSIONS` of them, least recently used dropped first; so re-running a model (every
    frame of a movie, every image of a batch) costs nothing and an edited file is reloaded.  The
    cache is thread-safe, and ``InferenceSession.run`` may be called from several threads.

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
