"""Packaging rules: import boundaries, the npe2 manifest, the wheel."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"


def test_science_imports_without_napari_qt_torch_or_onnxruntime():
    # Block the heavy packages, then import everything that must not need them.
    code = textwrap.dedent(
        """
        import sys, importlib.abc
        BLOCKED = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "torch",
                   "onnxruntime", "magicgui", "vispy")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {name}")
        sys.meta_path.insert(0, Block())
        import pkgutil, napari_atomnet
        for sub in ("core", "synth", "io", "models"):
            pkg = importlib.import_module(f"napari_atomnet.{sub}")
            for mod in pkgutil.walk_packages(pkg.__path__, f"napari_atomnet.{sub}."):
                importlib.import_module(mod.name)
        for name in ("pipeline", "cli", "_samples", "sequences", "batch", "cli_batch",
                     "cli_segment", "cli_export", "_reader"):
            importlib.import_module(f"napari_atomnet.{name}")
        from napari_atomnet.cli import _build_parser
        _build_parser()  # registering every subcommand imports nothing heavy either
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_every_manifest_python_name_imports():
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["name"] == "napari-atomnet"
    for command in manifest["contributions"]["commands"]:
        module, _, attr = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command["id"]


def test_npe2_validate_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    out = subprocess.run(
        [str(npe2), "validate", "napari-atomnet", "--imports"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout, out.stdout


def test_installed_manifest_is_the_top_level_one():
    import importlib.resources

    installed = importlib.resources.files("napari_atomnet") / "napari.yaml"
    assert installed.read_text() == MANIFEST.read_text()


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_napari_discovers_the_plugin(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_QUIET": "1"},
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("napari_atomnet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_atomnet/napari.yaml" in names
        assert zf.read("napari_atomnet/napari.yaml").decode() == MANIFEST.read_text()
        assert any(
            n.startswith("napari_atomnet/sample_data/") and n.endswith(".tif") for n in names
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-3000:]
    check = textwrap.dedent(
        """
        from npe2 import PluginManager
        pm = PluginManager.instance()
        pm.discover()
        mf = pm.get_manifest("napari-atomnet")
        assert mf.package_metadata.version, mf
        keys = [s.key for s in mf.contributions.sample_data]
        assert "perovskite_haadf" in keys, keys
        import napari_atomnet, pathlib
        assert "site-packages" in napari_atomnet.__file__, napari_atomnet.__file__
        from napari_atomnet._sample_data import perovskite_haadf_sample
        layers = perovskite_haadf_sample()
        assert layers[0][0].shape == (512, 512)
        print("discovered", mf.name, mf.package_metadata.version)
        """
    )
    out = subprocess.run([str(py), "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "discovered napari-atomnet" in out.stdout
    # the console script is installed and works
    version = subprocess.run(
        [str(venv / "bin" / "atomnet"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip().startswith("atomnet ")


def test_every_dock_widget_is_in_the_manifest():
    """A dock widget class that the manifest does not name is invisible to napari users."""
    import inspect
    import pkgutil

    from magicgui.widgets import Container

    import napari_atomnet._widgets as widgets

    manifest = yaml.safe_load(MANIFEST.read_text())
    by_name = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    contributed = {
        by_name[w["command"]].rpartition(":")[2] for w in manifest["contributions"]["widgets"]
    }
    docks = set()
    for info in pkgutil.iter_modules(widgets.__path__):
        module = importlib.import_module(f"{widgets.__name__}.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and name.endswith("Widget"):
                if (
                    issubclass(cls, Container)
                    and not inspect.isabstract(cls)
                    and name != "JobWidget"
                ):
                    docks.add(name)
    assert docks, "no dock widgets found"
    assert docks <= contributed, f"not in napari.yaml: {sorted(docks - contributed)}"


def test_manifest_reader_patterns_are_the_readable_file_types():
    from napari_atomnet._reader import FILENAME_PATTERNS
    from napari_atomnet.io.formats import IMAGE_SUFFIXES

    manifest = yaml.safe_load(MANIFEST.read_text())
    (reader,) = manifest["contributions"]["readers"]
    assert reader["filename_patterns"] == FILENAME_PATTERNS == [f"*{s}" for s in IMAGE_SUFFIXES]
