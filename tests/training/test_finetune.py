"""Fine-tuning the detector on exported labels: the loop, the files, the registry, bad input.

The simulators' ground truth stands in for a user's corrected labels, written through the real
export (:func:`~napari_atomnet.io.labels.export_labels`).  The kind of image: <110> dumbbells at
the resolution limit (two columns 7 px apart with σ = 0.5 × that, one elongated blob each), which
the built-in model, never trained on close pairs, mostly merges.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective if torch is not loaded yet
torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from napari_atomnet import synth  # noqa: E402
from napari_atomnet.core.metrics import detection_scores  # noqa: E402
from napari_atomnet.io.labels import export_labels  # noqa: E402
from napari_atomnet.models.detector import detect_atoms  # noqa: E402
from napari_atomnet.models.registry import (  # noqa: E402
    builtin_dir,
    file_sha256,
    list_models,
    load_model,
)
from napari_atomnet.training.finetune import (  # noqa: E402
    FineTuneConfig,
    check_model_name,
    fine_tune_detector,
)
from napari_atomnet.training.train_detector import _spacing  # noqa: E402

# A few dozen steps, one torch thread: on a shared 2-core CPU two threads that spin while they
# wait for each other were several times slower.
QUICK = {"steps": 40, "sim_images": 3, "threads": 1}


def dumbbells(shape=(192, 192), seed=0, rotation_deg=10.0):
    return synth.dumbbell_image(shape, rotation_deg=rotation_deg, seed=seed)


def export(sim, folder, name="img"):
    return export_labels(sim.image, sim.atoms[["y", "x", "class_name"]], folder, name=name)


def f1(model, sim):
    truth = sim.atoms[["y", "x"]].to_numpy()
    s = _spacing(truth)
    found = detect_atoms(sim.image, model).table[["y", "x"]].to_numpy()
    return detection_scores(found, truth, 0.25 * s, shape=sim.image.shape, border=0.5 * s)["f1"]


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One fine-tuning run on one corrected 192² image, into a user model folder."""
    root = tmp_path_factory.mktemp("finetune")
    data_dir = export(dumbbells(seed=11), root / "export")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_ATOMNET_MODELS", str(root / "models"))
        result = fine_tune_detector(
            data_dir,
            name="gaas-dumbbells",
            config=FineTuneConfig(**QUICK),
            progress=lambda *a: calls.append(a),
        )
        yield result, calls, root


def test_model_files_card_and_registry(tuned):
    result, _, root = tuned
    folder = root / "models"
    assert result.onnx_path == folder / "gaas-dumbbells.onnx"
    assert files(folder) == ["gaas-dumbbells.json", "gaas-dumbbells.onnx", "gaas-dumbbells.pt"]
    card = json.loads((folder / "gaas-dumbbells.json").read_text())
    assert card == result.card
    assert card["sha256"] == file_sha256(result.onnx_path)
    base = load_model("atomnet-detect")
    assert card["base"]["name"] == "atomnet-detect" and card["base"]["sha256"] == base.sha256
    for key in ("classes", "normalization", "margin", "architecture", "default_threshold", "atoms"):
        assert card[key] == base.info[key]
    assert card.get("class_thresholds") == base.info.get("class_thresholds")
    assert base.info.get("fit_check") and "fit_check" not in card  # chosen on the base's scores
    ft = card["fine_tuning"]
    assert ft["images"][0]["atoms"] == ft["train_atoms"] + ft["heldout_atoms"]
    assert ft["heldout_atoms"] > 20 and ft["images"][0]["polarity"] == "bright"
    assert ft["config"]["steps"] == QUICK["steps"] and ft["simulated_images"] == 3
    assert "strip" not in ft["heldout"]["split"] or "rows" in ft["heldout"]["split"]
    assert ft["heldout"]["f1_before"] == pytest.approx(result.f1_before, abs=1e-5)
    assert ft["heldout"]["f1_after"] == pytest.approx(result.f1_after, abs=1e-5)
    assert "kept from the base" in ft["threshold"] and ft["train_seconds"] > 0
    assert [s for s, _ in result.history] == list(range(5, QUICK["steps"] + 1, 5))
    # a user model, listed for the detection picker, verified at load, runnable, tunable again
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_ATOMNET_MODELS", str(folder))
    try:
        names = [c.name for c in list_models("detection")]
        assert names[0] == "atomnet-detect" and "gaas-dumbbells" in names
        card2 = load_model("gaas-dumbbells", task="detection")
        assert not card2.builtin and card2.sha256 == card["sha256"]
    finally:
        mp.undo()
    state = torch.load(folder / "gaas-dumbbells.pt", weights_only=True)
    assert set(state) == set(torch.load(builtin_dir() / "atomnet-detect.pt", weights_only=True))


def test_progress_reports_each_stage_with_live_loss(tuned):
    _, calls, _ = tuned
    stages = [c[0] for c in calls]
    assert stages[0] == "data" and stages[-1] == "evaluate"
    assert (
        stages.index("train") > stages.index("data")
        and "data" not in stages[stages.index("train") :]
    )
    data = [c for c in calls if c[0] == "data"]
    assert data[-1][1] == data[-1][2] == 1 + QUICK["sim_images"]  # one image, three simulations
    losses = [c for c in calls if c[0] == "train" and c[3] is not None]
    assert [c[1] for c in losses] == list(range(5, QUICK["steps"] + 1, 5))
    assert all(np.isfinite(c[3]) and c[3] > 0 for c in losses)
    assert [c[1:3] for c in calls if c[0] == "evaluate"] == [(1, 2), (2, 2)]


def test_the_loop_works_on_a_different_image(tuned):
    """Fine-tuned on one corrected image, the detector finds the dumbbells of another one."""
    result, _, _ = tuned
    new = dumbbells(seed=12, rotation_deg=20.0)  # another image, another lattice orientation
    before, after = f1("atomnet-detect", new), f1(str(result.onnx_path), new)
    # the built-in model merges many pairs; a few dozen steps on one image fix it
    assert after > 0.97
    assert after - before > 0.1
    # its own held-out strip too: at least half of the base model's errors there are gone
    assert result.f1_after > 0.95
    assert 1.0 - result.f1_after <= 0.5 * (1.0 - result.f1_before)


def test_refuses_existing_builtin_and_unsafe_names(tuned, tmp_path):
    _, _, root = tuned
    data_dir = root / "export"
    with pytest.raises(ValueError, match="exists"):
        fine_tune_detector(data_dir, name="gaas-dumbbells", out_dir=root / "models")
    for bad in ("atomnet-detect", "../evil", "", "a b", "x.onnx", ".hidden"):
        with pytest.raises(ValueError, match="name"):
            fine_tune_detector(data_dir, name=bad, out_dir=tmp_path)
    assert check_model_name("mine_v2.1") == "mine_v2.1"
    assert files(tmp_path) == []


def test_overwrite_and_whole_images_held_out(tuned, tmp_path):
    """Three images: one is held out whole; overwrite replaces the model."""
    data_dir = tmp_path / "exports"
    for seed in (21, 22, 23):
        export(dumbbells((96, 96), seed=seed), data_dir, name=f"img{seed}")
    out = tmp_path / "models"
    tiny = FineTuneConfig(steps=2, sim_images=0, crop=64, threads=1)
    first = fine_tune_detector(data_dir, name="again", out_dir=out, config=tiny)
    ft = first.card["fine_tuning"]
    assert ft["heldout"]["split"].startswith("whole images") and len(ft["heldout"]["parts"]) == 1
    assert len(ft["images"]) == 3 and ft["simulated_images"] == 0
    with pytest.raises(ValueError, match="exists"):
        fine_tune_detector(data_dir, name="again", out_dir=out, config=tiny)
    second = fine_tune_detector(
        data_dir,
        name="again",
        out_dir=out,
        config=FineTuneConfig(**{**vars(tiny), "seed": 1}),
        overwrite=True,
    )
    assert second.card["sha256"] != first.card["sha256"]
    assert files(out) == ["again.json", "again.onnx", "again.pt"]  # no temporary left over


def test_cancel_writes_nothing(tuned, tmp_path):
    _, _, root = tuned
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) > 8  # during training

    out = tmp_path / "models"
    with pytest.raises(InterruptedError):
        fine_tune_detector(
            root / "export",
            name="cancelled",
            out_dir=out,
            config=FineTuneConfig(steps=50, sim_images=0, threads=1),
            cancelled=cancelled,
        )
    assert files(out) == []


def test_bad_input_says_why_and_writes_nothing(tuned, tmp_path):
    _, _, root = tuned
    out = tmp_path / "models"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no such folder"):
        fine_tune_detector(tmp_path / "missing", name="m", out_dir=out)
    with pytest.raises(ValueError, match="no labels found"):
        fine_tune_detector(empty, name="m", out_dir=out)
    # a base model without its torch weights
    for suffix in (".onnx", ".json"):
        shutil.copy(builtin_dir() / f"atomnet-detect{suffix}", tmp_path / f"nopt{suffix}")
    with pytest.raises(ValueError, match=r"no torch weights \(nopt.pt"):
        fine_tune_detector(root / "export", name="m", base=str(tmp_path / "nopt.onnx"), out_dir=out)
    # images too small to train on, or to hold out a strip of
    small = tmp_path / "small"
    export(dumbbells((24, 24)), small)
    with pytest.raises(ValueError, match="too small"):
        fine_tune_detector(small, name="m", out_dir=out)
    strip = tmp_path / "strip"
    export(dumbbells((100, 100)), strip)
    with pytest.raises(ValueError, match="too small to hold out"):
        fine_tune_detector(strip, name="m", out_dir=out)
    # labels without a single atom
    nothing = tmp_path / "nothing"
    sim = dumbbells((64, 64))
    export_labels(sim.image, sim.atoms.iloc[:0][["y", "x"]], nothing, name="none")
    with pytest.raises(ValueError, match="no atoms"):
        fine_tune_detector(nothing, name="m", out_dir=out)
    with pytest.raises(ValueError, match="polarity"):
        fine_tune_detector(root / "export", name="m", out_dir=out, polarity="grey")
    with pytest.raises(ValueError, match="user_fraction"):
        fine_tune_detector(root / "export", name="m", config=FineTuneConfig(user_fraction=0))
    assert files(out) == []


def test_dark_atoms_are_oriented_like_the_network_sees_them(tmp_path):
    """An ABF-like export (dark dumbbells) trains on negated images: polarity in the card."""
    sim = synth.lattice_image(
        (128, 128), lattice="square", spacing=14, polarity="dark", dose=200, seed=3
    )
    data_dir = export(sim, tmp_path / "abf")
    result = fine_tune_detector(
        data_dir,
        name="abf",
        out_dir=tmp_path / "models",
        config=FineTuneConfig(steps=2, sim_images=0, crop=64, val_fraction=0.3, threads=1),
    )
    assert result.card["fine_tuning"]["images"][0]["polarity"] == "dark"
    assert result.f1_before > 0.9  # scored on the dark strip with the resolved polarity


def test_labels_keep_columns_inside_the_image_and_map_classes(tmp_path):
    """Columns centred outside the image are dropped; class names map to strong / weak."""
    import pandas as pd

    from napari_atomnet.training import data
    from napari_atomnet.training.finetune import _read_labelled

    sim = synth.perovskite_haadf((96, 96), 16.0, dose=300, seed=4)  # bright A, weak B columns
    atoms = sim.atoms[["y", "x", "class_name"]]
    outside = pd.DataFrame({"y": [-0.8], "x": [40.0], "class_name": [atoms["class_name"][0]]})
    export_labels(sim.image, pd.concat([atoms, outside]), tmp_path / "species", name="p")
    named = atoms.assign(class_name=np.where(atoms["class_name"] == "A", "weak", "strong"))
    export_labels(sim.image, named, tmp_path / "named", name="p")

    def read(folder):
        norm = data.DEFAULT_NORMALIZATION
        (item,) = _read_labelled(folder, "auto", norm, 0, lambda *_: None, lambda: False)
        return item.rows

    rows = read(tmp_path / "species")
    assert len(rows) == len(atoms)  # the column centred at y = -0.8 is not an atom here
    is_a = (atoms["class_name"] == "A").to_numpy()
    assert set(rows[is_a, 2]) == {0.0} and set(rows[~is_a, 2]) == {1.0}  # B is the weak class
    flipped = read(tmp_path / "named")  # the detector's own names are kept as they are
    assert set(flipped[is_a, 2]) == {1.0} and set(flipped[~is_a, 2]) == {0.0}


def test_rotated_copies_keep_labels_on_the_columns():
    """The extra rotated training copies move the labels with the image; corners carry no loss."""
    from napari_atomnet.training import data
    from napari_atomnet.training.finetune import PAD, LabelledImage, _user_example

    sim = synth.lattice_image((96, 96), spacing=16, sigma_frac=0.12, dose=2000, seed=2)
    rows = data.label_atoms(sim.atoms)
    part = LabelledImage("square", sim.image, rows, "bright")
    for angle in (0.0, 30.0, 75.0):
        ex = _user_example(part, angle, data.DEFAULT_NORMALIZATION)
        inside = (ex.atoms[:, :2] >= PAD).all(axis=1) & (ex.atoms[:, :2] < PAD + 96).all(axis=1)
        yx = np.round(ex.atoms[inside, :2]).astype(int)
        on = ex.image[yx[:, 0], yx[:, 1]]
        off = ex.image[yx[:, 0] + 8, yx[:, 1]]  # half a spacing away
        assert len(yx) > 20 and on.min() > np.percentile(ex.image, 90) > off.max(), angle
        zero = (ex.targets["weight"] == 0).mean()
        assert (zero > 0.3) if angle else (zero < 0.01)  # padding + corners vs nothing


def test_rehearsal_follows_the_base_models_recipe():
    """Fine-tuning the HRTEM model rehearses graphene only; the general model the general mix."""
    from napari_atomnet.training import data
    from napari_atomnet.training.finetune import rehearsal_draws

    hrtem = rehearsal_draws(load_model("atomnet-hrtem", task="detection"))
    assert hrtem["mix"] == {"graphene": 1.0}
    pool = data.make_pool(3, 7, shape=(64, 64), pad=8, prerender=False, **hrtem)
    assert {ex.source for ex in pool} == {"graphene"}
    general = rehearsal_draws(load_model("atomnet-detect", task="detection"))
    pool = data.make_pool(5, 7, shape=(64, 64), pad=8, prerender=False, **general)
    assert {ex.source for ex in pool} == set(data.DEFAULT_MIX)


def test_auto_contrast_of_labels_is_read_at_the_labelled_atoms(tmp_path):
    """Corrected HRTEM labels with "auto" contrast: the labelled atoms say they are dark (the
    image's look says bright here), so the image is negated as the network sees dark atoms."""
    from napari_atomnet.core.detect import resolve_polarity
    from napari_atomnet.training import data
    from napari_atomnet.training.finetune import _read_labelled

    sim = synth.graphene_hrtem(
        (160, 160), defocus=60.0, cs_um=-10.0, dose=1e4, astig_angstrom=5.0, seed=3_300_000
    )
    assert sim.extras["polarity"] < 0 and resolve_polarity(sim.image, "auto") == "bright"
    export_labels(sim.image, sim.atoms[["y", "x"]], tmp_path / "hrtem", name="g")
    norm = data.DEFAULT_NORMALIZATION
    (item,) = _read_labelled(tmp_path / "hrtem", "auto", norm, 0, lambda *_: None, lambda: False)
    assert item.polarity == "dark"
    (told,) = _read_labelled(tmp_path / "hrtem", "bright", norm, 0, lambda *_: None, lambda: False)
    assert told.polarity == "bright"  # what the user says wins


def test_a_fine_tuned_card_does_not_take_the_bases_sampling():
    """The new model learnt the user's images at their own sampling: no resampling to the base's."""
    from dataclasses import replace

    from napari_atomnet.training.finetune import _card_info

    base = load_model("atomnet-hrtem", task="detection")
    base = replace(base, info={**base.info, "sampling_angstrom": [0.114, 0.126]})
    info = _card_info(base, "mine", "fine-tuned")
    assert "sampling_angstrom" not in info and info["classes"] == base.info["classes"]
