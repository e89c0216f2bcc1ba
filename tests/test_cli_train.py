"""``atomnet train``: a real (short) fine-tuning run, bad input, and no torch installed."""

from __future__ import annotations

import sys

import pytest

from napari_atomnet import synth
from napari_atomnet.cli import main
from napari_atomnet.io.labels import export_labels


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    sim = synth.lattice_image((128, 128), lattice="hexagonal", spacing=12, dose=200, seed=5)
    folder = tmp_path_factory.mktemp("cli_train") / "export"
    return export_labels(sim.image, sim.atoms[["y", "x"]], folder, name="hex")


def test_train_writes_a_user_model(export_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_ATOMNET_MODELS", str(models))
    argv = ["train", "--data", str(export_dir), "--out", "mine", "--steps", "5", "--threads", "1"]
    assert main([*argv, "--sim-images", "1", "--val-fraction", "0.25"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {models / 'mine.onnx'}" in out and "held-out F1" in out
    assert "step 5/5" in err
    assert sorted(p.name for p in models.iterdir()) == ["mine.json", "mine.onnx", "mine.pt"]
    from napari_atomnet.models.registry import list_models

    assert "mine" in [c.name for c in list_models("detection")]
    # the name is taken now: one line on stderr, exit 2, the model untouched
    before = (models / "mine.onnx").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet train: error:") and "exists" in err and "\n" not in err
    assert (models / "mine.onnx").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{missing}", "--out", "m"], "no such folder"),
        (["--data", "{export}", "--out", "atomnet-detect"], "built-in"),
        (["--data", "{export}", "--out", "../m"], "safe file name"),
        (["--data", "{export}", "--out", "m", "--base", "no-such-model"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(export_dir, tmp_path, monkeypatch, capsys, argv, message):
    pytest.importorskip("torch")
    monkeypatch.setenv("NAPARI_ATOMNET_MODELS", str(tmp_path / "models"))
    paths = {"missing": str(tmp_path / "missing"), "export": str(export_dir)}
    assert main(["train", *(a.format(**paths) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet train: error:") and message in err and "\n" not in err
    assert not (tmp_path / "models").exists()


def test_without_torch_says_how_to_install(export_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    monkeypatch.setenv("NAPARI_ATOMNET_MODELS", str(tmp_path / "models"))
    assert main(["train", "--data", str(export_dir), "--out", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "napari-atomnet[train]"' in err and "\n" not in err
    assert not (tmp_path / "models").exists()
