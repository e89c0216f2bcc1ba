"""Shared fixtures: synthetic lattices with exact ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_atomnet.models.registry import CARD_KEY, file_sha256
from napari_atomnet.synth import render_gaussians


@pytest.fixture
def square_lattice():
    """A noisy square lattice (spacing 17 px, sigma 2.5 px, 300 counts peak), with its truth."""
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[0:14, 0:14] * 17.0 + 8.0
    truth = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-0.5, 0.5, (196, 2))
    clean = render_gaussians((240, 240), truth[:, 0], truth[:, 1], 300.0, 2.5) + 20.0
    image = rng.poisson(clean).astype(np.float32)
    return image, truth


# A tiny hand-built ONNX detector for plumbing tests (tiling, registry, runtime, widgets):
# a fixed Laplacian-of-Gaussian filter and a sigmoid, which lights up at bright column centres.
# Tests of detection quality use the real built-in model.


def make_log_detector(path, *, sigma=2.0, gain=3.0, bias=2.0, card=None, embed=False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = 3
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    g = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    log = g * (1 - (yy**2 + xx**2) / (2 * sigma**2))
    log -= log.mean()
    log /= np.abs(log).sum() / 4
    weight = numpy_helper.from_array((gain * log)[None, None].astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([-bias], np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logit"], pads=[r, r, r, r]),
        helper.make_node("Sigmoid", ["logit"], ["heatmap"]),
    ]
    graph = helper.make_graph(
        nodes,
        "log_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[weight, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = {
        "task": "detection",
        "stride": 1,
        "pad_multiple": 1,
        "margin": 8,
        "tile": 128,
        "classes": ["atom"],
        "default_threshold": 0.5,
        "normalization": {"factor": 3.0, "minimum": 16.0, "maximum": 120.0, "fallback": 48.0},
        **(card or {}),
    }
    if embed:
        helper.set_model_props(model, {CARD_KEY: json.dumps(info)})
    onnx.save(model, str(path))
    if not embed:
        info["sha256"] = file_sha256(path)
        path.with_suffix(".json").write_text(json.dumps(info))
    return path


@pytest.fixture
def tiny_detector(tmp_path):
    return make_log_detector(tmp_path / "tiny-log.onnx")


def nn_spacing(points) -> float:
    """Median nearest-neighbour distance of (y, x) points."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=float)
    return float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))


def score_atoms(atoms, truth, shape) -> dict:
    """Detection scores of an atoms table against the truth (``y, x`` tables or arrays).

    Match radius 0.25 × the truth's spacing; a band of half a spacing along the image edge is
    left out, as the truth lists only centres inside the image.
    """
    from napari_atomnet.core.metrics import detection_scores

    def yx(points):
        return np.asarray(points[["y", "x"]] if hasattr(points, "columns") else points, float)

    true = yx(truth)
    spacing = nn_spacing(true)
    return detection_scores(yx(atoms), true, 0.25 * spacing, shape=shape, border=0.5 * spacing)


@pytest.fixture
def napari_bars(monkeypatch):
    """Record the napari progress bars (napari's activity dock) that jobs open: their names."""
    import napari.utils

    opened: list[str] = []

    class Recording(napari.utils.progress):
        def __init__(self, *args, **kwargs):
            opened.append(kwargs.get("desc", ""))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(napari.utils, "progress", Recording)
    return opened
