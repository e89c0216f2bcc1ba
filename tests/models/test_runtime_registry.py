import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_log_detector
from napari_atomnet.core.metrics import match_points
from napari_atomnet.models import registry
from napari_atomnet.models.detector import detect_atoms
from napari_atomnet.models.registry import ModelError, load_model
from napari_atomnet.models.runtime import create_session, session_device
from napari_atomnet.synth import render_gaussians


def lattice(shape, spacing=12.0, sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    ny, nx = int(shape[0] // spacing), int(shape[1] // spacing)
    yy, xx = np.mgrid[0:ny, 0:nx] * spacing + spacing / 2
    truth = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-1, 1, (ny * nx, 2))
    img = render_gaussians(shape, truth[:, 0], truth[:, 1], 100.0, sigma) + 10
    return rng.poisson(img).astype(np.float32), truth


def test_load_by_path_verifies_sha256(tiny_detector):
    card = load_model(tiny_detector, task="detection")
    assert card.sha256 == registry.file_sha256(tiny_detector)
    tiny_detector.write_bytes(tiny_detector.read_bytes() + b"\0")  # corrupt the file
    with pytest.raises(ModelError, match="does not match its model card"):
        load_model(tiny_detector)


def test_wrong_task_and_unknown_name_and_missing_card(tiny_detector, tmp_path):
    with pytest.raises(ModelError, match="not a segmentation model"):
        load_model(tiny_detector, task="segmentation")
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    tiny_detector.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no model card"):
        load_model(tiny_detector)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path / "junk.onnx")


def test_embedded_card_and_user_folder(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    folder.mkdir()
    make_log_detector(folder / "my-finetuned.onnx", embed=True)
    monkeypatch.setenv(registry.MODELS_ENV, str(folder))
    assert registry.user_model_dir() == folder
    names = [c.name for c in registry.list_models("detection")]
    assert "my-finetuned" in names
    card = load_model("my-finetuned")
    assert card.info["classes"] == ["atom"] and not card.builtin


def test_cpu_session_is_quiet_and_reports_cpu(tiny_detector):
    # A fresh process, so onnxruntime's C++ logging would reach this stderr if not silenced.
    code = (
        "from napari_atomnet.models.runtime import create_session, session_device;"
        f"s = create_session(r'{tiny_detector}');"
        "print(session_device(s), s.get_providers())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cpu"), out.stdout
    assert "libcublas" not in out.stderr and "CUDA" not in out.stderr, out.stderr
    assert session_device(create_session(tiny_detector, device="cpu")) == "cpu"


def test_tiled_detection_equals_whole_image_and_has_no_duplicates(tiny_detector):
    img, truth = lattice((300, 260))
    whole = detect_atoms(img, tiny_detector, tile=1024).table
    tiled = detect_atoms(img, tiny_detector, tile=64).table  # 5×5 tiles, many borders
    assert len(whole) == len(truth)
    assert len(tiled) == len(whole)
    pairs, lone_tiled, lone_whole = match_points(
        tiled[["y", "x"]].to_numpy(), whole[["y", "x"]].to_numpy(), 0.5
    )
    assert len(pairs) == len(whole) and not len(lone_tiled) and not len(lone_whole)
    diff = tiled[["y", "x"]].to_numpy()[pairs[:, 0]] - whole[["y", "x"]].to_numpy()[pairs[:, 1]]
    assert np.abs(diff).max() < 1e-4  # tiles reproduce the whole-image result
    d = np.hypot(
        *(tiled[["y", "x"]].to_numpy()[:, None] - tiled[["y", "x"]].to_numpy()[None]).transpose(
            2, 0, 1
        )
    )
    np.fill_diagonal(d, np.inf)
    assert d.min() > 5  # no duplicate at tile borders
    assert {"y", "x", "score", "class", "class_name", "y0", "x0", "y1", "x1"} <= set(tiled)
    assert (tiled["y0"] < tiled["y"]).all() and (tiled["y1"] > tiled["y"]).all()


def test_threshold_progress_and_cancel(tiny_detector):
    img, _ = lattice((200, 200))
    calls = []
    low = detect_atoms(
        img, tiny_detector, threshold=0.2, tile=64, progress=lambda d, t: calls.append((d, t))
    ).table
    high = detect_atoms(img, tiny_detector, threshold=0.99, tile=64).table
    assert len(high) < len(low)
    assert calls[-1][0] == calls[-1][1] == len(calls) == 16
    with pytest.raises(InterruptedError):
        detect_atoms(img, tiny_detector, tile=64, cancelled=lambda: True)


def test_card_json_is_plain(tiny_detector):
    info = json.loads(tiny_detector.with_suffix(".json").read_text())
    assert info["task"] == "detection" and len(info["sha256"]) == 64


def test_sessions_are_cached_shared_between_threads_and_bounded(tiny_detector, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from napari_atomnet.models import runtime

    monkeypatch.delenv("NAPARI_ATOMNET_THREADS", raising=False)

    runtime.clear_session_cache()
    first = create_session(tiny_detector, device="cpu")
    assert create_session(tiny_detector, device="cpu") is first  # not a new session per call
    assert create_session(tiny_detector, device="cpu", threads=1) is not first  # another key
    runtime.clear_session_cache()
    with ThreadPoolExecutor(4) as pool:  # concurrent first calls make one session
        sessions = list(pool.map(lambda _: create_session(tiny_detector, device="cpu"), range(8)))
    assert all(s is sessions[0] for s in sessions)
    # at most MAX_SESSIONS live in the cache; the least recently used goes first
    for threads in range(1, runtime.MAX_SESSIONS + 2):
        create_session(tiny_detector, device="cpu", threads=threads)
    assert len(runtime._SESSIONS) == runtime.MAX_SESSIONS
    assert create_session(tiny_detector, device="cpu") is not sessions[0]
    # an edited model file is reloaded
    again = create_session(tiny_detector, device="cpu")
    os.utime(tiny_detector, (0, 12345))
    assert create_session(tiny_detector, device="cpu") is not again
    runtime.clear_session_cache()
