"""The built-in particle segmenter through the ONNX runtime: tiling, accuracy, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet import synth
from napari_atomnet.core.image import InvalidImageError
from napari_atomnet.core.segment import segmentation_scores
from napari_atomnet.models.registry import ModelError, list_models, load_model
from napari_atomnet.models.segmenter import (
    DEFAULT_SEGMENTER,
    normalize_image,
    segment_particles,
)
from napari_atomnet.models.tiling import iter_windows


@pytest.fixture(scope="module")
def card():
    return load_model(DEFAULT_SEGMENTER, task="segmentation")


def test_builtin_model_is_registered_with_a_complete_card(card):
    assert DEFAULT_SEGMENTER in [c.name for c in list_models("segmentation")]
    info = card.info
    assert card.builtin and info["task"] == "segmentation"
    assert info["classes"] == ["foreground", "boundary"]
    assert (
        info["pad_multiple"] == 32
        and info["margin"] >= info["architecture"]["receptive_field_px"] / 2
    )
    assert card.path.stat().st_size < 5 * 1024 * 1024
    for key in ("recipe", "seed", "steps", "train_seconds"):
        assert key in info["training"], key
    assert set(info["validation"]["metrics"]) >= {"core_shell", "haadf"}


def test_segmenter_tiles_cover_the_image_on_the_pooling_grid():
    # the segmenter's tiling: margin-wide symmetric padding, windows on the 32 px pooling grid
    img = np.arange(300 * 470, dtype=np.float32).reshape(300, 470)
    covered = np.zeros(img.shape, int)
    for t, window in iter_windows(img, 128, 40, 32, border=40, mode="symmetric"):
        r, c = t.core
        assert (t.offset[0] + 40) % 32 == 0 and (t.offset[1] + 40) % 32 == 0  # on the grid
        assert window.shape[0] % 32 == 0 and window.shape[1] % 32 == 0
        (wr, wc) = t.core_in_window()
        covered[r, c] += 1
        np.testing.assert_array_equal(window[wr, wc], img[r, c])
        if t.offset[0] < 0:  # mirrored half a pixel outside ("symmetric"), as in training
            np.testing.assert_array_equal(window[-t.offset[0] - 1, wc], img[0, c])
    assert (covered == 1).all()


@pytest.mark.parametrize("kind", ["core_shell", "haadf"])
def test_tiled_equals_whole_image(kind, card):
    make = synth.core_shell_particles if kind == "core_shell" else synth.haadf_particles
    sim = make((300, 420), seed=902_500)
    whole = segment_particles(sim.image, card, tile=4096, device="cpu")
    tiled = segment_particles(sim.image, card, tile=96, device="cpu")
    assert len(tiled.params) and tiled.params["tile"] == 96
    # the margin covers the receptive field and the cores sit on the pooling grid: identical
    np.testing.assert_allclose(tiled.probability, whole.probability, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    assert tiled.table.equals(whole.table)


def test_accuracy_and_table_on_held_out_images(card):
    for make, seed in ((synth.core_shell_particles, 903_100), (synth.haadf_particles, 903_200)):
        sim = make((384, 384), seed=seed)
        seg = segment_particles(sim.image, card, pixel_size_nm=0.5, device="cpu")
        s = segmentation_scores(seg.labels, sim.labels, sim.extras["touching_pairs"])
        assert s["dice"] > 0.95 and s["recall"] > 0.9 and s["precision"] > 0.9
        assert s["median_d_rel_error"] < 0.03
        assert s["pairs_split"] >= 0.75 * s["pairs"]
        t = seg.table
        assert t["label"].tolist() == sorted(np.unique(seg.labels[seg.labels > 0]).tolist())
        np.testing.assert_allclose(t["equivalent_diameter_nm"], t["equivalent_diameter_px"] * 0.5)
        stats = seg.statistics()
        assert stats.loc["equivalent_diameter_nm", "n"] == (~t["touches_border"]).sum()
        assert seg.device == "cpu" and seg.params["seconds"]["total"] > 0


def test_progress_cancel_and_bad_input(card):
    sim = synth.haadf_particles((200, 200), seed=903_300)
    seen = []
    segment_particles(sim.image, card, tile=64, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1] == 4 * 4 + 1
    with pytest.raises(InterruptedError):
        segment_particles(sim.image, card, tile=64, cancelled=lambda: True)
    with pytest.raises(InvalidImageError, match="RGB"):
        segment_particles(np.zeros((64, 64, 3)), card)
    with pytest.raises(InvalidImageError, match="NaN"):
        segment_particles(np.full((64, 64), np.nan), card)
    with pytest.raises(ModelError, match="unknown model"):
        segment_particles(sim.image, "no-such-model")


def test_normalization_is_robust_to_hot_pixels():
    img = np.random.default_rng(0).normal(100, 10, (256, 256)).astype(np.float32)
    ref = normalize_image(img)
    hot = img.copy()
    hot[::50, ::50] = 1e6  # 36 zingers
    out = normalize_image(hot)
    mask = hot < 1e5
    assert np.abs(out[mask] - ref[mask]).max() < 0.05
