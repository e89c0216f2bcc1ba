"""Adapting the HRTEM detector to a microscope's conditions (training.adapt, atomnet adapt)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from napari_atomnet.cli import main  # noqa: E402
from napari_atomnet.models.registry import load_model  # noqa: E402
from napari_atomnet.training import adapt  # noqa: E402
from napari_atomnet.training.adapt import (  # noqa: E402
    ImagingConditions,
    adapt_config,
    adapt_detector,
    simulate_conditions,
)
from napari_atomnet.training.finetune import FineTuneConfig  # noqa: E402
from napari_atomnet.training.train_detector import (  # noqa: E402
    PRECISION_CHOICES,
    resolve_precision,
)

# the detect benchmark's dark-atom HRTEM case: defocus +60 Å, Cs -10 µm, 0.12 Å/px
DARK = ImagingConditions(defocus=60.0, cs_um=-10.0, pixel_size_angstrom=0.12)


def test_simulations_follow_the_conditions_and_are_labelled():
    images = simulate_conditions(DARK, 4, seed=1, shape=(128, 128))
    again = simulate_conditions(DARK, 4, seed=1, shape=(128, 128))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(images, again, strict=True))
    for part in images:
        assert part.polarity == "dark"  # this condition images graphene's atoms dark
        defocus = float(part.labels.split("defocus ")[1].split(",")[0])
        cs = float(part.labels.split("cs_um ")[1].split(",")[0])
        assert abs(defocus - 60) <= 20 and abs(cs + 10) <= 5
        y, x = part.truth.T
        assert len(y) > 50 and (y > -1).all() and (y < 129).all() and (x < 129).all()
        # the atoms sit on dark pixels: the image is lower at the labels than on average
        iy, ix = np.clip(np.round(y).astype(int), 0, 127), np.clip(np.round(x).astype(int), 0, 127)
        assert part.image[iy, ix].mean() < part.image.mean()
    other = simulate_conditions(DARK, 1, seed=2, shape=(128, 128))[0]
    assert not np.array_equal(other.image, images[0].image)


def test_conditions_without_atom_contrast_are_refused(monkeypatch):
    monkeypatch.setattr(adapt, "MIN_CONTRAST", 2.0)  # no image reaches it (|contrast| <= 1)
    with pytest.raises(ValueError, match="no atom contrast"):
        simulate_conditions(DARK, 1, shape=(64, 64))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pixel_size_angstrom", 0.01, "pixel size"),
        ("dose", 0.0, "dose"),
        ("defocus", float("nan"), "defocus"),
        ("cs_tolerance_um", -1.0, "cs_tolerance_um"),
    ],
)
def test_bad_conditions_say_which_value(field, value, message, tmp_path):
    bad = ImagingConditions(**{**DARK.__dict__, field: value})
    with pytest.raises(ValueError, match=message):
        adapt_detector(bad, name="x", out_dir=tmp_path, config=adapt_config(steps=1))
    assert not any(tmp_path.iterdir())


def test_adapted_model_is_written_with_its_conditions(tmp_path):
    result = adapt_detector(
        DARK,
        name="my-microscope",
        out_dir=tmp_path,
        n_images=5,
        config=adapt_config(steps=6, batch=4, threads=1),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "my-microscope.json",
        "my-microscope.onnx",
        "my-microscope.pt",
    ]
    card = load_model(tmp_path / "my-microscope.onnx", task="detection")
    record = card.info["fine_tuning"]
    assert record["conditions"]["defocus"] == 60.0 and record["simulated_at_conditions"] == 5
    assert card.info["base"]["name"] == "atomnet-hrtem"
    assert "defocus 60 ± 20 Å" in card.info["description"]
    assert record["polarity"] == "dark" and record["config"]["user_fraction"] == 1.0
    held = record["heldout"]
    assert held["split"].startswith("whole images") and len(held["parts"]) == 1
    # the base model finds atoms; six steps from scratch need not (bench ``adapt`` measures
    # what the default run reaches)
    assert 0.0 < result.f1_before <= 1.0 and 0.0 <= result.f1_after <= 1.0
    assert card.refine_default is False  # inherited from the HRTEM model
    # adaptations train in bfloat16 where the CPU has it natively, and the card says which ran
    assert record["config"]["precision"] == "auto"
    used = resolve_precision("auto")
    assert record["precision"].startswith(
        {"bf16": "forward passes under bfloat16", "fp32": "float32"}[used]
    )
    assert record["precision"].endswith("(auto: this CPU's choice)")


def test_cli_adapt_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    args = ["adapt", "--defocus", "60", "--cs", "-10", "--out-dir", str(tmp_path)]
    assert main([*args, "--pixel-size", "0.01", "--out", "m"]) == 2
    assert "pixel size" in capsys.readouterr().err
    assert main([*args, "--pixel-size", "0.12", "--out", "bad name"]) == 2
    assert "bad name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_adapt_takes_the_sampling_from_a_calibrated_file(tmp_path, capsys):
    from napari_atomnet.io import write_tiff

    calibrated, plain = tmp_path / "calibrated.tif", tmp_path / "plain.tif"
    write_tiff(calibrated, np.zeros((64, 64), np.float32), pixel_size_nm=0.0125)
    write_tiff(plain, np.zeros((64, 64), np.float32))
    out = tmp_path / "models"
    args = ["adapt", "--defocus", "60", "--cs", "-10", "--quiet", "--out-dir", str(out)]
    assert main([*args, "--like", str(plain), "--out", "m"]) == 2
    assert "records no pixel size" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--like", str(tmp_path / "missing.dm4"), "--out", "m"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()
    opts = ["--images", "5", "--steps", "2", "--threads", "1", "--like", str(calibrated)]
    assert main([*args, *opts, "--out", "m"]) == 0
    info = json.loads((out / "m.json").read_text())
    assert info["fine_tuning"]["conditions"]["pixel_size_angstrom"] == pytest.approx(0.125)


def test_cli_adapt_writes_a_model_detect_can_use(tmp_path, capsys):
    args = ["adapt", "--defocus", "60", "--cs", "-10", "--pixel-size", "0.12", "--quiet"]
    opts = ["--images", "5", "--steps", "4", "--threads", "1", "--out-dir", str(tmp_path)]
    assert main([*args, *opts, "--out", "dark60"]) == 0
    assert "held-out F1" in capsys.readouterr().out
    info = json.loads((tmp_path / "dark60.json").read_text())
    assert info["fine_tuning"]["conditions"]["cs_um"] == -10.0
    assert info["fine_tuning"]["conditions"]["defocus_tolerance"] == 20.0  # the default


def test_an_adapted_model_knows_its_atoms_contrast(tmp_path):
    """Conditions that image every atom dark make "auto" mean dark for the adapted model."""
    from napari_atomnet import synth
    from napari_atomnet.models.detector import detect_atoms
    from napari_atomnet.pipeline import find_atoms

    adapt_detector(
        DARK, name="dark", out_dir=tmp_path, n_images=5, config=adapt_config(steps=2, batch=2)
    )
    card = load_model(tmp_path / "dark.onnx", task="detection")
    assert card.info["polarity"] == "dark"
    sim = synth.graphene_hrtem((128, 128), defocus=60.0, cs_um=-10.0, dose=1e4, seed=3)
    assert detect_atoms(sim.image, card).params["polarity"] == "dark"
    assert detect_atoms(sim.image, card, polarity="bright").params["polarity"] == "bright"
    found = find_atoms(sim.image, detector=card)
    assert found.provenance["params"]["polarity"] == "dark"
    # the built-in HRTEM model knows no contrast: its card has none, "auto" guesses
    assert "polarity" not in load_model("atomnet-hrtem").info


def test_adaptation_trains_from_scratch_or_from_the_base_weights(tmp_path):
    """By default the base model gives its settings, not its weights or widths (a fresh
    network of ADAPT_CHANNELS); continuing from its weights keeps them, and its widths."""
    from napari_atomnet.training.adapt import ADAPT_CHANNELS

    base = torch.load(load_model("atomnet-hrtem").weights, weights_only=True)
    first = "enc.0.0.0.weight"
    config = adapt_config(steps=1, batch=2, lr=1e-9)  # one vanishing step: weights ~ the start
    assert config.from_scratch and not config.freeze_norm
    adapt_detector(DARK, name="fresh", out_dir=tmp_path, n_images=4, config=config)
    fresh = torch.load(tmp_path / "fresh.pt", weights_only=True)

    def widths(state: dict) -> list[int]:
        return [state[f"enc.{i}.0.0.weight"].shape[0] for i in range(len(ADAPT_CHANNELS))]

    # every level's width, not just the first: the built-in's first level may match
    assert widths(fresh) == list(ADAPT_CHANNELS) != widths(base)
    assert "trained from scratch" in load_model(tmp_path / "fresh.onnx").info["description"]

    moved = adapt_config(steps=1, batch=2, lr=1e-9, from_scratch=False, freeze_norm=True)
    adapt_detector(DARK, name="moved", out_dir=tmp_path, n_images=4, config=moved)
    kept = torch.load(tmp_path / "moved.pt", weights_only=True)
    assert kept[first].shape == base[first].shape
    assert torch.allclose(kept[first], base[first], atol=1e-5)
    assert "adapted to" in load_model(tmp_path / "moved.onnx").info["description"]

    with pytest.raises(ValueError, match="freeze_norm"):
        adapt_config(freeze_norm=True).check()


def test_adapted_network_has_its_own_widths(tmp_path):
    """From scratch the adaptation builds ADAPT_CHANNELS, and its card says so."""
    from napari_atomnet.training.adapt import ADAPT_CHANNELS
    from napari_atomnet.training.nets import AtomDetector, count_parameters

    narrow = (8, 16, 24, 32)
    config = adapt_config(steps=1, batch=2, channels=narrow)
    adapt_detector(DARK, name="narrow", out_dir=tmp_path, n_images=4, config=config)
    weights = torch.load(tmp_path / "narrow.pt", weights_only=True)
    assert weights["enc.0.0.0.weight"].shape[0] == narrow[0]
    card = load_model(tmp_path / "narrow.onnx")
    arch = card.info["architecture"]
    assert arch["channels"] == list(narrow)
    expected = AtomDetector(classes=2, channels=narrow)
    assert arch["parameters"] == count_parameters(expected)
    assert card.info["fine_tuning"]["config"]["channels"] == list(narrow)
    assert adapt_config().channels == ADAPT_CHANNELS
    assert adapt_config(from_scratch=False, freeze_norm=True).channels is None
    with pytest.raises(ValueError, match="only when training from scratch"):
        adapt_config(from_scratch=False, freeze_norm=True, channels=narrow).check()
    with pytest.raises(ValueError, match="two or more widths"):
        adapt_config(channels=(16,)).check()


def test_training_from_scratch_needs_the_architecture_not_the_weights(tmp_path):
    """A base model without its .pt serves as architecture; one of a foreign make does not."""
    import shutil

    from conftest import make_log_detector
    from napari_atomnet.models.registry import builtin_dir

    for suffix in (".onnx", ".json"):
        shutil.copy(builtin_dir() / f"atomnet-hrtem{suffix}", tmp_path / f"nopt{suffix}")
    base = str(tmp_path / "nopt.onnx")
    out = tmp_path / "models"
    config = adapt_config(steps=1, batch=2)
    adapt_detector(DARK, name="fresh", base=base, out_dir=out, n_images=4, config=config)
    assert (out / "fresh.pt").is_file()
    assert load_model(out / "fresh.onnx").info["base"]["name"] == "nopt"
    continued = adapt_config(steps=1, batch=2, from_scratch=False)
    with pytest.raises(ValueError, match=r"no torch weights \(nopt.pt"):
        adapt_detector(DARK, name="moved", base=base, out_dir=out, n_images=4, config=continued)
    foreign = make_log_detector(tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="no napari-atomnet architecture"):
        adapt_detector(DARK, name="other", base=str(foreign), out_dir=out, config=config)
    assert sorted(p.name for p in out.iterdir()) == ["fresh.json", "fresh.onnx", "fresh.pt"]


def test_cli_defaults_are_the_library_defaults():
    from napari_atomnet.cli import _build_parser

    args = _build_parser().parse_args(
        ["adapt", "--defocus", "60", "--cs", "-10", "--pixel-size", "0.12", "--out", "m"]
    )
    assert args.images == adapt.ADAPT_IMAGES
    assert args.steps is None  # adapt_config's steps
    # the tolerances: ImagingConditions' defaults unless given
    assert args.defocus_tolerance is None and args.cs_tolerance is None
    # the help names the widths the adaptation trains (spelled out: the CLI imports no torch)
    import argparse

    sub = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    widths = "-".join(str(c) for c in adapt.ADAPT_CHANNELS)
    assert f"widths {widths}" in " ".join(sub.choices["adapt"].description.split())
    # the precision: the library's choices, the configuration's default unless given
    from napari_atomnet import cli_train

    assert cli_train.PRECISION_CHOICES == PRECISION_CHOICES
    assert args.precision is None and adapt_config().precision == "auto"
    args = _build_parser().parse_args(["train", "--data", "d", "--out", "m", "--precision", "bf16"])
    assert args.precision == "bf16" and FineTuneConfig().precision == "fp32"
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["train", "--data", "d", "--out", "m", "--precision", "fp16"])


def test_conditions_matched_to_an_image_draw_from_all_it_allows():
    """``ImagingConditions.from_fit``: every simulation sits within one grid step of a
    (defocus, Cs) pair the image is consistent with, and the card's text says so."""
    from napari_atomnet.core.optics import ConditionsFit

    defocus, cs = np.arange(40.0, 81.0, 5.0), np.arange(-12.0, -7.0, 1.0)
    score = np.full((len(defocus), len(cs)), 0.1)
    score[4, 2] = 0.5  # the best: 60 Å, -10 µm
    score[2, 1] = 0.497  # within delta: 50 Å, -11 µm
    fit = ConditionsFit(defocus, cs, score, delta=0.005, n_atoms=200)
    conditions = ImagingConditions.from_fit(fit, 0.12, dose=2e4)
    assert conditions.candidates == ((50.0, -11.0), (60.0, -10.0))
    # the better match is drawn more: weights exp((score - best) / (delta / 2))
    assert conditions.candidate_weights == (round(np.exp(-0.003 / 0.0025), 4), 1.0)
    assert (conditions.defocus, conditions.cs_um, conditions.dose) == (60.0, -10.0, 2e4)
    assert "2 (defocus, Cs) pairs ± 5 Å, ± 1 µm, matched to an image, the better" in (
        conditions.text()
    )
    rng = np.random.default_rng(0)
    draws = [conditions.draw(rng) for _ in range(400)]
    drawn = np.array([(d["defocus"], d["cs_um"]) for d in draws])
    offsets = np.abs(drawn[:, None, :] - np.array(conditions.candidates)[None])  # (400, 2, 2)
    assert (offsets <= (5.0, 1.0)).all(axis=2).any(axis=1).all()
    near_best = (np.abs(drawn - (60.0, -10.0)) <= (5.0, 1.0)).all(axis=1)
    near_other = (np.abs(drawn - (50.0, -11.0)) <= (5.0, 1.0)).all(axis=1)
    # both are drawn, in the ratio of their weights (1 : 0.30); the boxes touch at 55 Å
    share = near_other.sum() / (near_other.sum() + near_best.sum())
    assert 0.15 < share < 0.32
    with pytest.raises(ValueError, match="one weight per candidate"):
        ImagingConditions(
            60.0, -10.0, 0.12, candidates=((60.0, -10.0),), candidate_weights=(1.0, 1.0)
        ).check()
    with pytest.raises(ValueError, match="candidates must be finite"):
        ImagingConditions(60.0, -10.0, 0.12, candidates=((np.nan, 1.0),)).check()


def test_cli_adapt_matches_the_conditions_to_the_image(tmp_path, capsys):
    """Without --defocus and --cs, ``atomnet adapt --like`` matches them to the image (the
    bundled graphene sample, imaged at -60 Å and -10 µm) and simulates at what it allows."""
    from napari_atomnet._samples import sample_files

    image = str(sample_files("graphene_hrtem")["image"])
    out = tmp_path / "models"
    common = ["adapt", "--out-dir", str(out)]
    opts = ["--images", "5", "--steps", "2", "--threads", "1"]
    assert main([*common, "--like", image, *opts, "--out", "matched"]) == 0
    said = capsys.readouterr().out
    assert "conditions consistent with graphene_hrtem.tif: defocus" in said
    conditions = json.loads((out / "matched.json").read_text())["fine_tuning"]["conditions"]
    pairs = np.array(conditions["candidates"])
    assert len(pairs) > 10 and conditions["pixel_size_angstrom"] == pytest.approx(0.12)
    # the truth has a grid neighbour among them
    assert (np.abs(pairs - (-60.0, -10.0)) <= (5.0, 1.0)).all(axis=1).any()
    assert (pairs[:, 0] < 0).all()  # bright atoms: underfocus is not among them
    # half the optics, or none and no image: one line, nothing written
    for bad, message in (
        (["--defocus", "60", "--like", image], "both --defocus and --cs"),
        (["--pixel-size", "0.12"], "--like IMAGE"),
        (["--cs", "-10", "--pixel-size", "0.12"], "both --defocus and --cs"),
        (["--like", image, "--defocus-tolerance", "10"], "go with --defocus and --cs"),
    ):
        assert main([*common, *bad, *opts, "--out", "bad"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["matched.json", "matched.onnx", "matched.pt"]
