"""Detector training side: network, targets, ONNX export, model card, a quick training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from napari_atomnet.core.detect import decode_heatmap  # noqa: E402
from napari_atomnet.models.detector import detect_atoms  # noqa: E402
from napari_atomnet.models.registry import CARD_KEY, file_sha256, load_model  # noqa: E402
from napari_atomnet.models.tiling import iter_windows  # noqa: E402
from napari_atomnet.training import data  # noqa: E402
from napari_atomnet.training.export import export_detector  # noqa: E402
from napari_atomnet.training.nets import AtomDetector, receptive_field  # noqa: E402

CARD = {
    "name": "test-detect",
    "classes": ["strong", "weak"],
    "stride": 1,
    "pad_multiple": 16,
    "margin": 96,
    "tile": 256,
    "default_threshold": 0.3,
    "normalization": dict(data.DEFAULT_NORMALIZATION),
}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = AtomDetector(channels=(8, 12, 16, 16))
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "test-detect.onnx"
    card = export_detector(net, path, CARD)
    return path, card


def _onnx_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["heatmap", "size"], {"image": x})


@pytest.mark.parametrize("shape", [(64, 96), (112, 48)])
def test_onnx_matches_torch_on_several_sizes(net, exported, shape):
    path, _ = exported
    x = np.random.default_rng(1).normal(size=(2, 1, *shape)).astype(np.float32)
    heat_o, size_o = _onnx_outputs(path, x)
    with torch.no_grad():
        heat_t, size_t = net.inference(torch.from_numpy(x))
    assert heat_o.shape == (2, 2, *shape)
    assert size_o.shape == (2, 1, *shape)
    assert np.abs(heat_o - heat_t.numpy()).max() < 1e-4
    assert np.abs(size_o - size_t.numpy()).max() < 1e-4 * max(1.0, float(size_t.max()))
    assert 0.0 <= heat_o.min() and heat_o.max() <= 1.0 and size_o.min() > 0


def test_onnx_matches_torch_on_padded_odd_size(net, exported):
    path, _ = exported
    img = np.random.default_rng(2).normal(size=(37, 53)).astype(np.float32)
    # what detect_atoms feeds the model: the one window of a lone tile, 32 px border padding
    ((_, padded),) = list(iter_windows(img, 1024, 96, net.pad_multiple, border=32))
    assert padded.shape == (112, 128)  # 37 + 64 and 53 + 64, rounded up to a multiple of 16
    padded = np.ascontiguousarray(padded)
    heat_o, size_o = _onnx_outputs(path, padded[None, None])
    with torch.no_grad():
        heat_t, size_t = net.inference(torch.from_numpy(padded)[None, None])
    assert np.abs(heat_o - heat_t.numpy()).max() < 1e-4
    assert np.abs(size_o - size_t.numpy()).max() < 1e-3


def test_card_written_embedded_and_loadable(exported):
    path, card = exported
    assert path.stat().st_size < 5 * 1024 * 1024
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["sha256"] == file_sha256(path) == card["sha256"]
    assert on_disk["task"] == "detection" and on_disk["classes"] == ["strong", "weak"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    embedded = json.loads(props[CARD_KEY])
    assert "sha256" not in embedded
    assert embedded["margin"] == 96 and embedded["pad_multiple"] == 16
    loaded = load_model(path, task="detection")
    assert loaded.sha256 == card["sha256"]
    assert loaded.info["default_threshold"] == 0.3


def test_exported_model_runs_through_detect_atoms(exported):
    path, _ = exported
    card = load_model(path)
    img = np.random.default_rng(3).poisson(20.0, (70, 90)).astype(np.float32)
    result = detect_atoms(img, model=card, threshold=0.0)
    table = result.table
    assert {"y", "x", "score", "class", "class_name", "y0", "x0", "y1", "x1"} <= set(table)
    assert len(table) > 0  # threshold 0: every local maximum is a peak
    assert table["class_name"].isin(["strong", "weak"]).all()
    assert (table["y"].between(-0.5, 69.5)).all() and (table["x"].between(-0.5, 89.5)).all()
    assert result.device == "cpu"


def test_export_refuses_incomplete_card(net, tmp_path):
    with pytest.raises(ValueError, match="margin"):
        export_detector(net, tmp_path / "x.onnx", {k: v for k, v in CARD.items() if k != "margin"})


def test_receptive_field_matches_architecture():
    model = AtomDetector(channels=(4, 4, 4, 4))
    # PixelUnshuffle(2) + 4-level U-Net of two 3x3 convs per level + 3x3 head: 98 x stride 2
    rf = receptive_field(model, 256)
    assert 180 <= rf <= 200
    assert model.pad_multiple == 16


@pytest.mark.parametrize("kind", ["lattice", "perovskite", "graphene"])
def test_targets_put_blob_maxima_on_the_truth(kind):
    rng = np.random.default_rng({"lattice": 5, "perovskite": 6, "graphene": 7}[kind])
    ex = data.make_example(kind, rng, shape=(96, 96), pad=0, augment=False)
    heat, log_size, mask, _ = data.render_targets(ex.image.shape, ex.atoms)
    assert heat.shape == (2, 96, 96) and heat.max() <= 1.0
    peaks = decode_heatmap(heat, threshold=0.5, min_distance=0.0)
    found = peaks[["y", "x"]].to_numpy()
    atoms = ex.atoms[ex.atoms[:, 2] >= 0]
    inner = (atoms[:, :2].min(axis=1) >= 2) & (atoms[:, :2].max(axis=1) <= 93)
    assert inner.sum() > 5
    for y, x, cls, _, size in atoms[inner]:
        d = np.hypot(found[:, 0] - y, found[:, 1] - x)
        j = int(np.argmin(d))
        assert d[j] < 0.01
        assert int(peaks["class"].iloc[j]) == int(cls)
        assert log_size[round(y), round(x)] == pytest.approx(np.log(size), abs=2e-3)
        assert mask[round(y), round(x)] == 1.0
    # no spurious peaks: every peak inside is one of the columns
    inside = (found.min(axis=1) >= 2) & (found.max(axis=1) <= 93)
    assert inside.sum() == inner.sum()
    if kind == "perovskite":  # B columns (b_ratio <= 0.6) are "weak"
        names = ex.atoms[:, 2]
        assert set(np.unique(names[names >= 0])) == {0.0, 1.0}
    if kind == "graphene":
        assert (ex.atoms[:, 2] == 0).all()


def test_ignored_columns_are_masked_not_negative():
    atoms = np.array([[10.0, 10.0, -1, 1.5, 6.0], [10.0, 30.0, 0, 1.5, 6.0]], np.float32)
    heat, _, mask, weight = data.render_targets((24, 40), atoms)
    assert heat[:, 10, 10].max() == 0.0 and weight[10, 10] == 0.0
    assert heat[0, 10, 30] == 1.0 and weight[10, 30] == 1.0 and mask[10, 30] == 1.0


def test_pool_is_seeded_and_batches_have_the_right_shapes():
    a = data.make_pool(3, 11, shape=(64, 64), pad=8)
    b = data.make_pool(3, 11, shape=(64, 64), pad=8)
    assert [e.source for e in a] == ["lattice", "perovskite", "graphene"]
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea.image, eb.image)
        assert ea.image.shape == (80, 80)
    batch = data.sample_batch(a, np.random.default_rng(0), 4, 48)
    assert batch["image"].shape == (4, 1, 48, 48)
    assert batch["heat"].shape == (4, 2, 48, 48)
    assert np.isfinite(batch["image"]).all() and batch["heat"].max() <= 1.0


@pytest.mark.slow
def test_quick_training_run_end_to_end(tmp_path):
    from napari_atomnet.training.train_detector import main

    assert main(["--out", str(tmp_path), "--quick", "--seed", "3"]) == 0
    card = load_model(tmp_path / "atomnet-detect.onnx", task="detection")
    info = card.info
    assert info["training"]["steps"] == 4 and info["training"]["seed"] == 3
    assert info["margin"] >= info["architecture"]["receptive_field_px"] / 2
    assert 0.0 < info["default_threshold"] < 1.0
    assert "perovskite_dose200" in info["validation"]["metrics_at_default_threshold"]
    assert set(info["validation"]["images_refined_by_fits"]) == {"perovskite_dose200"} | set(
        info["validation"]["cases"]
    )
    assert isinstance(info["refine_default"], bool)
    img = data.validation_image("perovskite_dose200", 5, (64, 64)).image
    detect_atoms(img, model=card)  # runs with the card's defaults


def test_examples_are_oriented_so_atoms_are_bright():
    """Dark-atom images are negated: the network only ever sees bright atoms."""
    from napari_atomnet import synth

    for polarity in ("bright", "dark"):
        sim = synth.lattice_image((96, 96), spacing=12, polarity=polarity, dose=500, seed=3)
        ex = data.make_example("lattice", np.random.default_rng(0), pad=0, augment=False, sim=sim)
        iy, ix = np.round(ex.truth).astype(int).T
        assert ex.meta["polarity"] == (1 if polarity == "bright" else -1)
        assert ex.image[iy, ix].mean() > ex.image.mean() + 0.5


def test_hrtem_images_without_recognisable_atoms_are_not_learnt():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sim = data.random_simulation("graphene", rng, (64, 64))
        ex = data.make_example("graphene", rng, pad=0, augment=False, sim=sim)
        weak = abs(sim.extras["contrast"]) < data.MIN_HRTEM_CONTRAST
        assert (ex.atoms[:, 2] == (-1.0 if weak else 0.0)).all()


def _square_example(spacing: float, dose: float, fill: str) -> tuple[np.ndarray, data.Example]:
    """Labels and the padded (8 px) training example of a 64² square lattice."""
    from napari_atomnet import synth

    sim = synth.lattice_image((64, 64), lattice="square", spacing=spacing, dose=dose, seed=3)
    labels = data.label_atoms(sim.atoms)
    truth = sim.atoms[["y", "x"]].to_numpy()
    return labels, data.labelled_example(sim.image, labels, truth, pad=8, border_fill=fill)


def test_zero_border_fill_pads_with_zeros_and_keeps_labels_inside():
    labels, zero = _square_example(10.0, 200, "zero")
    _, mirror = _square_example(10.0, 200, "reflect")
    inner = np.s_[8:-8, 8:-8]
    np.testing.assert_array_equal(zero.image[inner], mirror.image[inner])
    frame = np.ones(zero.image.shape, bool)
    frame[inner] = False
    assert (zero.image[frame] == 0).all() and np.abs(mirror.image[frame]).max() > 0.5
    # labels: the columns themselves (shifted by the padding), no mirror images
    np.testing.assert_allclose(zero.atoms[:, :2], labels[:, :2] + 8)
    assert len(mirror.atoms) > len(zero.atoms)
    with pytest.raises(ValueError, match="fill"):
        data.normalize_image(np.ones((16, 16)), pad=4, fill="wrap")


@pytest.mark.parametrize(
    ("lattice", "hole_over_nn"),
    [("square", np.sqrt(0.5)), ("hexagonal", np.sqrt(1 / 3)), ("honeycomb", 1.0)],
)
def test_holes_are_the_empty_centres_of_the_cells(lattice, hole_over_nn):
    from napari_atomnet import synth

    sim = synth.lattice_image(
        (96, 96), lattice=lattice, spacing=14.0, rotation_deg=17, dose=500, seed=2
    )
    atoms = data.label_atoms(sim.atoms)
    holes, sigma = data.hole_positions(atoms)
    truth = atoms[:, :2].astype(np.float64)
    nn = float(np.median(cKDTree(truth).query(truth, k=2)[0][:, 1]))
    inner = np.minimum(holes, 95 - holes).min(axis=1) > 20
    assert inner.sum() > 10
    dist = cKDTree(truth).query(holes[inner])[0]
    # every hole lies where the lattice has its empty centres (no column near it) ...
    np.testing.assert_allclose(dist, hole_over_nn * nn, rtol=0.05)
    assert (dist >= 2 * sigma[inner]).all()
    # ... and every interior cell centre has a hole (the centroid of each interior triangle of
    # nearest neighbours is within the cell)
    n_cells = {"square": 1, "hexagonal": 2, "honeycomb": 1}[lattice]
    area = 56.0**2
    cell_area = {
        "square": nn**2,
        "hexagonal": np.sqrt(3) / 2 * nn**2,
        "honeycomb": 3 * np.sqrt(3) / 2 * nn**2,
    }[lattice]
    unique = np.unique(np.round(holes[inner], 1), axis=0)
    assert len(unique) == pytest.approx(n_cells * area / cell_area, rel=0.35)


def test_hole_weight_raises_the_loss_weight_at_holes_only():
    _, plain = _square_example(12.0, 500, "zero")
    _, holes = _square_example(12.0, 500, "zero")
    plain.prerender(hole_weight=1.0)
    holes.prerender(hole_weight=5.0)
    w1, w5 = plain.targets["weight"].astype(float), holes.targets["weight"].astype(float)
    raised = w5 > w1
    np.testing.assert_array_equal(w5[raised], 5 * w1[raised])
    np.testing.assert_array_equal(w5[~raised], w1[~raised])
    # raised at the cell centres, never on a column
    iy, ix = np.round(plain.atoms[:, :2]).astype(int).T
    assert not raised[iy, ix].any()
    centres, _ = data.hole_positions(plain.atoms)
    cy, cx = np.round(centres).astype(int).T
    assert raised[cy, cx].all()


def test_vacuum_is_the_hole_in_the_film_not_the_hexagon_centres():
    from napari_atomnet import synth

    sim = synth.graphene_hrtem((192, 192), defocus=-60, cs_um=-10, dose=1e4, n_holes=1, seed=4)
    hole = sim.extras["holes"][0]
    atoms = data.label_atoms(sim.atoms, all_strong=True)
    ex = data.labelled_example(
        sim.image, atoms, sim.atoms[["y", "x"]].to_numpy(), pad=8, border_fill="zero"
    )
    vacuum = data.vacuum_mask(ex.image.shape, ex.atoms, ex.spacing, ex.pad)
    yy, xx = np.mgrid[: ex.image.shape[0], : ex.image.shape[1]] - 8.0
    inside = (yy >= 0) & (yy < 192) & (xx >= 0) & (xx < 192)
    from_hole = np.hypot(yy - hole["y"], xx - hole["x"])
    # deep in the hole: vacuum; the padding and the film (hexagon centres included): never
    assert vacuum[inside & (from_hole < hole["radius"] - 2 * ex.spacing)].all()
    assert not vacuum[~inside].any()
    centres, _ = data.hole_positions(ex.atoms)
    cy, cx = np.round(centres).astype(int).T
    assert len(centres) > 20 and not vacuum[cy, cx].any()
    dist = cKDTree(ex.atoms[:, :2]).query(np.column_stack([yy[vacuum], xx[vacuum]]) + 8.0)[0]
    assert dist.min() > data.VACUUM_SPACINGS * ex.spacing - 1.0
    # the weight is raised exactly there
    plain = ex.prerender(vacuum_weight=1.0).targets["weight"].astype(float)
    raised = ex.prerender(vacuum_weight=3.0).targets["weight"].astype(float)
    np.testing.assert_array_equal(raised[vacuum], 3 * plain[vacuum])
    np.testing.assert_array_equal(raised[~vacuum], plain[~vacuum])


def test_training_starts_from_given_weights_on_the_chosen_simulators():
    from napari_atomnet.models.registry import builtin_dir
    from napari_atomnet.training.train_detector import (
        TrainConfig,
        _recipe,
        train,
        validation_cases,
    )

    base = builtin_dir() / "atomnet-detect.pt"
    cfg = TrainConfig(
        steps=0, pool=3, batch=2, crop=64, sim_shape=96, pad=16, val_every=0, workers=1
    )
    cfg.mix, cfg.init = {"graphene": 1.0}, str(base)
    model, _ = train(cfg)
    start = torch.load(base, map_location="cpu")
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    recipe = _recipe(cfg)
    assert set(recipe["simulators"]) == {"graphene"}
    assert file_sha256(base)[:16] in recipe["init"]
    assert validation_cases(cfg.mix) == ["graphene_bright_1e4", "graphene_dark_1e4"]
    assert validation_cases(data.DEFAULT_MIX) == list(data.VALIDATION_CASES)


def test_pool_draws_only_from_the_mix():
    pool = data.make_pool(4, 11, mix={"graphene": 1.0}, shape=(96, 96), pad=16)
    assert {e.source for e in pool} == {"graphene"}


@pytest.mark.parametrize(
    "mix", ["graphite=1", "graphene", "graphene=-1", "graphene=0,lattice=0", "graphene=x"]
)
def test_bad_mix_is_refused_with_a_message(mix, tmp_path, capsys):
    from napari_atomnet.training.train_detector import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--quick", "--mix", mix])
    assert exc.value.code != 0
    assert "--mix" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_graphene_draws_set_the_holes_and_the_microscopes():
    """``graphene={"holes", "aligned"}`` changes what is drawn; the default draws stay the same."""
    from napari_atomnet.training.train_detector import TrainConfig, _simulator_text

    def draw(**graphene):
        rng = np.random.default_rng(3)
        sims = [data.random_simulation("graphene", rng, (64, 64), graphene) for _ in range(12)]
        return [s.params["n_holes"] for s in sims], [s.params for s in sims]

    holes, params = draw()
    assert (holes, params) == draw(**data.DEFAULT_GRAPHENE_DRAWS)
    assert max(holes) <= 2
    holes, _ = draw(holes=[0, 0, 0, 0, 1])  # always four holes
    assert holes == [4] * 12
    _, params = draw(aligned=1.0)  # every microscope aligned: astigmatism <= 10 A
    assert all(p["astig_angstrom"] <= 10 for p in params)
    _, params = draw(aligned=0.0)  # none: seed 003's Table 1 draws inside the simulator
    assert any(p["astig_angstrom"] > 10 for p in params)
    cfg = TrainConfig()
    cfg.graphene = {"holes": [1, 1, 1, 1, 1], "aligned": 0.9}
    text = _simulator_text("graphene", cfg)
    assert "0-4 (probabilities 0.2/0.2/0.2/0.2/0.2) holes" in text and "90 % of" in text


@pytest.mark.parametrize(
    "option",
    [["--graphene-holes", "0.5,x"], ["--graphene-holes", "0,0"], ["--aligned-share", "1.5"]],
)
def test_bad_graphene_draws_are_refused_with_a_message(option, tmp_path, capsys):
    from napari_atomnet.training.train_detector import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--quick", *option])
    assert exc.value.code != 0
    assert option[0] in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_fits_used_tells_stem_from_phase_contrast():
    """The card's refine_default rests on this: STEM fits give the positions, HRTEM's do not."""
    from napari_atomnet.training.train_detector import (
        VAL_SEED,
        _checked_runs,
        _validation_runs,
        fits_used,
    )

    def predict(image):  # validation images come oriented (atoms bright)
        return detect_atoms(image, "atomnet-detect", threshold=0.2, polarity="bright").table

    cases = ["perovskite_dose200", "graphene_dark_1e4"]
    raw = _validation_runs(predict, cases, VAL_SEED, 2, (192, 192))
    shares = fits_used(_checked_runs(raw, 2, (0.4, 0.3)), 2)
    assert shares == {"perovskite_dose200": 1.0, "graphene_dark_1e4": 0.0}


def test_auto_precision_follows_the_cpu():
    from napari_atomnet.training.finetune import FineTuneConfig
    from napari_atomnet.training.train_detector import resolve_precision

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert [resolve_precision(p) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        FineTuneConfig(precision="half").check()


def test_bf16_training_tracks_float32_and_exports_float32(tmp_path):
    """bfloat16 autocast (the HRTEM recipe's) learns like float32; the export is float32."""
    from napari_atomnet.training.train_detector import (
        TrainConfig,
        train,
        train_step,
        use_precision,
    )

    pool = data.make_pool(4, 5, shape=(96, 96), pad=16)
    batch = data.sample_batch(pool, np.random.default_rng(0), 4, 64)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = use_precision(AtomDetector(channels=(8, 12, 16, 16)), precision).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses[precision] = np.array(
            [train_step(model, opt, batch, lr=3e-3, precision=precision)[0] for _ in range(15)]
        )
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["bf16"][-1] < 0.5 * losses["bf16"][0]  # it learns
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)

    with pytest.raises(ValueError, match="precision"):
        use_precision(model, "fp16")
    cfg = TrainConfig(
        steps=2, pool=3, batch=2, crop=64, sim_shape=96, pad=16, val_every=0, workers=1
    )
    cfg.channels, cfg.precision = (8, 12, 16, 16), "bf16"
    model, _ = train(cfg)
    assert all(p.is_contiguous() for p in model.parameters())  # default layout again
    path = tmp_path / "bf16.onnx"
    export_detector(model, path, CARD)
    x = np.random.default_rng(1).normal(size=(1, 1, 64, 80)).astype(np.float32)
    with torch.no_grad():
        heat, _ = model.inference(torch.from_numpy(x))
    assert np.abs(_onnx_outputs(path, x)[0] - heat.numpy()).max() < 1e-4


def test_device_pool_draws_the_batches_of_sample_batch():
    """GPU training crops on the device: the same batches, from the same random numbers."""
    from napari_atomnet.training.train_detector import train_step

    pool = data.make_pool(6, 1, mix={"graphene": 1, "lattice": 1}, shape=(96, 96), pad=16)
    pool = [ex.prerender(hole_weight=5.0) for ex in pool]
    on_device = data.DevicePool(pool, "cpu")
    assert len(on_device) == 6
    for seed in range(3):
        expected = data.sample_batch(pool, np.random.default_rng(seed), 16, 64)
        got = on_device.sample(np.random.default_rng(seed), 16, 64)
        assert set(got) == set(expected)
        for key, array in expected.items():
            assert got[key].dtype == torch.float32
            np.testing.assert_array_equal(got[key].numpy(), array, err_msg=key)
    # a training step on the tensors is the step on the arrays
    losses = []
    for batch in (expected, got):
        torch.manual_seed(0)
        model = AtomDetector(channels=(4, 4, 4, 4)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses.append([train_step(model, opt, batch, lr=1e-3) for _ in range(2)])
    assert losses[0] == losses[1]

    with pytest.raises(ValueError, match="exceeds"):
        on_device.sample(np.random.default_rng(0), 2, 200)
    with pytest.raises(ValueError, match="one shape"):
        data.DevicePool([*pool, data.make_pool(1, 2, shape=(64, 64), pad=16)[0]], "cpu")
    with pytest.raises(ValueError, match="pre-rendered"):
        data.DevicePool(data.make_pool(1, 2, shape=(64, 64), pad=16, prerender=False), "cpu")
    with pytest.raises(ValueError, match="empty"):
        data.DevicePool([], "cpu")


def test_training_device_is_checked_before_anything_runs(tmp_path, capsys):
    from napari_atomnet.training.train_detector import TrainConfig, main, train, training_device

    assert training_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        training_device("gpu")
    if torch.cuda.is_available():
        assert training_device("cuda").type == "cuda"
    else:  # no GPU: a clear refusal before the pool is simulated
        with pytest.raises(ValueError, match="CUDA devices"):
            train(TrainConfig(device="cuda", pool=3, sim_shape=96, pad=16, workers=1))
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path), "--quick", "--device", "cuda"])
        assert exc.value.code == 2 and "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--quick", "--device", "tpu"])
    assert exc.value.code == 2 and "unknown device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_time_budget_sets_the_step_count_after_the_warm_up():
    from napari_atomnet.training.train_detector import BUDGET_PROBE, TrainConfig, train

    cfg = TrainConfig(steps=1, pool=2, batch=2, crop=32, sim_shape=48, pad=8, val_every=0)
    # 15 s: the probe's 300 steps take 5-6 s on a 2-core AVX2 CPU, so the budget leaves more
    cfg.channels, cfg.workers, cfg.time_budget_min = (4, 4, 4, 4), 1, 0.25
    _, history = train(cfg)
    # the budget overrode steps=1: the probe's steps ran, then as many as fit in 15 s
    assert cfg.steps > BUDGET_PROBE[1]
    assert history["loss"][-1][0] == cfg.steps  # the loop ran exactly the count it set
    assert history["train_s"] < 15.0 + 10.0  # within the budget, give or take a slow machine
    with pytest.raises(ValueError, match="warm-up"):
        train(TrainConfig(time_budget_min=1.0, warmup=10, pool=2, sim_shape=48, pad=8))


@pytest.mark.slow
def test_train_only_then_evaluate_and_export_elsewhere(tmp_path, capsys):
    """A GPU machine trains (--train-only); this machine evaluates and exports (--weights)."""
    from napari_atomnet.training.train_detector import main, resolve_precision

    weights = tmp_path / "w.pt"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--quick", "--train-only"])  # where do the weights go?
    assert "--save-torch" in capsys.readouterr().err
    args = ["--out", str(tmp_path), "--quick", "--seed", "4", "--name", "gpu-run"]
    train = [*args, "--train-only", "--save-torch", str(weights), "--precision", "auto"]
    assert main(train) == 0
    record = tmp_path / "gpu-run.training.json"
    assert weights.is_file() and record.is_file()
    assert not (tmp_path / "gpu-run.onnx").exists()
    training = json.loads(record.read_text())["training"]
    assert training["seed"] == 4 and training["config"]["device"] == "cpu"
    # "auto" is resolved once, by this CPU, and the record says what was used
    assert training["config"]["precision"] == resolve_precision("auto")
    assert "CPU" in training["machine"]
    assert main([*args, "--weights", str(weights), "--record", str(record)]) == 0
    card = load_model(tmp_path / "gpu-run.onnx", task="detection")
    assert card.info["training"]["seed"] == 4
    assert "evaluation_redone_seconds" in card.info["training"]
    state = torch.load(weights, map_location="cpu")
    model = AtomDetector(channels=tuple(training["config"]["channels"]))
    model.load_state_dict(state)
    x = np.random.default_rng(2).normal(size=(1, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        heat, _ = model.eval().inference(torch.from_numpy(x))
    np.testing.assert_allclose(_onnx_outputs(card.path, x)[0], heat.numpy(), atol=1e-4)

    # the evaluation redone on the exported network alone, with more threshold images: the
    # same graph and weights, a new card that says how its thresholds were chosen
    redo = ["--out", str(tmp_path / "redo"), "--quick", "--name", "gpu-run"]
    assert main([*redo, "--evaluate-onnx", str(card.path), "--threshold-images", "5"]) == 0
    again = load_model(tmp_path / "redo" / "gpu-run.onnx", task="detection")
    assert again.sha256 != card.sha256  # the card is embedded, so the file changed
    assert again.info["training"]["seed"] == 4
    assert again.info["training"]["config"]["threshold_images"] == 5
    assert again.info["validation"]["images"].startswith(
        "held-out simulations (seeds never used in training): 5 per case"
    )
    assert again.info["created"] == card.info["created"]  # when the graph was exported
    outputs, before = _onnx_outputs(again.path, x), _onnx_outputs(card.path, x)
    assert len(outputs) == len(before)
    for now, then in zip(outputs, before, strict=True):
        np.testing.assert_array_equal(now, then)
    with pytest.raises(SystemExit):
        main([*redo, "--evaluate-onnx", str(tmp_path / "none.onnx")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_training_script_runs_its_command(tmp_path):
    """scripts/train_hrtem_gpu.sh, run small on the CPU: the command a GPU machine runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "DEVICE": "cpu",
        "POOL": "4",
        "BATCH": "2",
        "WORKERS": "1",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(root / "scripts" / "train_hrtem_gpu.sh"), "0.01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    training = json.loads((tmp_path / "atomnet-hrtem.training.json").read_text())["training"]
    assert training["config"]["channels"] == [16, 48, 72, 96]
    assert training["config"]["mix"] == {"graphene": 1.0}
    assert training["steps"] == 300  # a budget this small ends with the timed steps
    model = AtomDetector(channels=(16, 48, 72, 96))
    model.load_state_dict(torch.load(tmp_path / "atomnet-hrtem.pt", map_location="cpu"))
    assert "time budget" in (tmp_path / "train.log").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (a lent device)")
def test_training_on_the_gpu_matches_the_cpu_batches():
    """On a GPU: the pool's crops are the CPU's, and a short run trains and comes back."""
    from napari_atomnet.training.train_detector import TrainConfig, train

    pool = data.make_pool(4, 1, mix={"graphene": 1.0}, shape=(96, 96), pad=16)
    on_gpu = data.DevicePool(pool, "cuda")
    expected = data.sample_batch(pool, np.random.default_rng(0), 16, 64)
    got = on_gpu.sample(np.random.default_rng(0), 16, 64)
    for key, array in expected.items():
        assert got[key].is_cuda
        np.testing.assert_array_equal(got[key].cpu().numpy(), array, err_msg=key)
    cfg = TrainConfig(steps=400, pool=4, batch=8, crop=64, sim_shape=96, pad=16, val_every=200)
    cfg.channels, cfg.workers, cfg.precision, cfg.device = (8, 12, 16, 16), 1, "bf16", "cuda"
    cfg.mix = {"graphene": 1.0}
    model, history = train(cfg)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert "CUDA" in history["device"]
    assert history["loss"][-1][1] < 0.5 * history["loss"][0][1]  # it learns
