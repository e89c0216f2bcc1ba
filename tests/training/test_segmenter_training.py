"""Segmenter training side: DS-U-Net, targets, loss, ONNX export vs torch, a quick training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from napari_atomnet.models.registry import CARD_KEY, file_sha256, load_model  # noqa: E402
from napari_atomnet.models.segmenter import predict_probability  # noqa: E402
from napari_atomnet.training import seg_data  # noqa: E402
from napari_atomnet.training.seg_export import export_segmenter  # noqa: E402
from napari_atomnet.training.seg_nets import DSConv, DSUNet, count_parameters  # noqa: E402
from napari_atomnet.training.train_segmenter import seg_loss, torch_probability  # noqa: E402

CARD = {
    "name": "test-particles",
    "classes": ["foreground", "boundary"],
    "pad_multiple": 32,
    "margin": 32,
    "tile": 96,
    "threshold": 0.5,
}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = DSUNet(channels=(8, 8, 12, 16, 16))
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64) * 2 + 0.5)
    return model.eval()


def test_network_layout(net):
    # seed 001: depthwise-separable convolutions, 4 downsamplings / 4 upsamplings, 1x1 fusion
    assert net.pad_multiple == 32
    assert len(net.down) == 4 and len(net.fuse) == 4 and len(net.dec) == 4
    ds = [m for m in net.modules() if isinstance(m, DSConv)]
    assert len(ds) == 8 + 4
    for m in ds:
        dw, pw = m[0], m[1]
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
        assert pw.kernel_size == (1, 1)
    assert all(f[0].kernel_size == (1, 1) for f in net.fuse)
    out = net(torch.zeros(1, 1, 96, 64))
    assert out.shape == (1, 2, 96, 64)
    p = net.probability(torch.randn(1, 1, 64, 64))
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    with pytest.raises(ValueError, match="5 entries"):
        DSUNet(channels=(8, 16))
    # the default network is small (a few hundred kB of weights)
    assert count_parameters(DSUNet()) < 100_000


def test_onnx_matches_torch_and_card_is_verified(net, tmp_path):
    path = tmp_path / "test-particles.onnx"
    card = export_segmenter(net, path, dict(CARD))
    assert card["sha256"] == file_sha256(path) and card["task"] == "segmentation"
    assert path.stat().st_size < 5 * 1024 * 1024
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["sha256"] == card["sha256"]
    embedded = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(embedded[CARD_KEY])["classes"] == CARD["classes"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probability"]
    x = np.random.default_rng(1).normal(size=(2, 1, 96, 128)).astype(np.float32)  # dynamic N, H, W
    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        want = net.probability(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert load_model(path, task="segmentation").info["threshold"] == 0.5
    # the tiled runtime path reproduces the torch whole-image pass away from tile seams
    img = np.random.default_rng(2).normal(size=(160, 160)).astype(np.float32)
    tiled, _, _ = predict_probability(img, str(path), tile=256)  # one tile
    whole = torch_probability(net, img, pad=CARD["margin"])
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    with pytest.raises(ValueError, match="lacks"):
        export_segmenter(net, tmp_path / "x.onnx", {"name": "x"})


def test_boundary_target_separates_touching_particles():
    lab = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[0:40, 0:60]
    lab[(yy - 20) ** 2 + (xx - 18) ** 2 <= 100] = 1
    lab[((yy - 20) ** 2 + (xx - 37) ** 2 <= 100) & (lab == 0)] = 2
    rim = seg_data.boundary_target(lab, width=2.0)
    assert not rim[lab == 0].any()
    # every pixel within 2 px of the other particle or the background is rim, none deeper
    from scipy import ndimage

    for k in (1, 2):
        dist = ndimage.distance_transform_edt(lab == k)
        np.testing.assert_array_equal(rim[lab == k], dist[lab == k] <= 2.0)
    _, n = ndimage.label((lab > 0) & ~rim)
    assert n == 2


def test_batches_are_seeded_and_consistent():
    pool = [
        seg_data.make_example(kind, 10 + i, shape=(96, 96), pad=16)
        for i, kind in enumerate(seg_data.KINDS)
    ]
    again = seg_data.make_example("haadf", 11, shape=(96, 96), pad=16)
    np.testing.assert_array_equal(again.image, pool[1].image)
    assert pool[0].image.shape == (128, 128) and pool[0].labels.shape == (128, 128)
    b1 = seg_data.sample_batch(pool, np.random.default_rng(3), 4, 64)
    b2 = seg_data.sample_batch(pool, np.random.default_rng(3), 4, 64)
    np.testing.assert_array_equal(b1["image"], b2["image"])
    assert b1["image"].shape == (4, 1, 64, 64) and b1["target"].shape == (4, 2, 64, 64)
    fg, bnd = b1["target"][:, 0], b1["target"][:, 1]
    assert set(np.unique(fg)) <= {0.0, 1.0} and not (bnd > fg).any()
    with pytest.raises(ValueError, match="simulator"):
        seg_data.random_simulation("sem", np.random.default_rng(0), (64, 64), 0)


def test_loss_prefers_the_truth():
    target = torch.zeros(2, 2, 32, 32)
    target[:, 0, 8:24, 8:24] = 1
    target[:, 1, 8:24, 8:24] = 1
    target[:, 1, 10:22, 10:22] = 0
    good, parts = seg_loss((target * 2 - 1) * 8, target)
    bad, _ = seg_loss(torch.zeros_like(target), target)
    assert float(good) < 0.05 < float(bad)
    assert set(parts) == {"dice_fg", "bce_fg", "dice_b", "bce_b"}


def test_quick_training_run_writes_model_and_card(tmp_path):
    from napari_atomnet.training.train_segmenter import main

    assert main(["--out", str(tmp_path), "--quick", "--threads", "1"]) == 0
    path = tmp_path / "atomnet-particles.onnx"
    card = load_model(path, task="segmentation")
    info = card.info
    assert info["sha256"] == file_sha256(path)
    for key in (
        "classes",
        "pad_multiple",
        "margin",
        "tile",
        "threshold",
        "split",
        "validation",
        "training",
    ):
        assert key in info, key
    assert info["training"]["steps"] == 3 and info["training"]["seed"] == 0
    assert info["training"]["train_seconds"] >= 0 and "recipe" in info["training"]
    assert set(info["validation"]["metrics"]) == {"core_shell", "haadf"}
