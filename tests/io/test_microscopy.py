"""Microscope files (dm3, dm4, emd Velox + Berkeley, ser, mrc, hspy) through one loader."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from microscope_files import (
    write_dm,
    write_emd_ncem,
    write_emi,
    write_hspy,
    write_mrc,
    write_ser,
    write_velox,
)

from napari_atomnet.io import ImageReadError, read_image, write_tiff
from napari_atomnet.io.images import read_images
from napari_atomnet.io.microscopy import calibration_from_axes, unit_to_nm

RNG = np.random.default_rng(7)
IMG = RNG.random((24, 36)).astype(np.float32)  # not square, not symmetric: catches transposes
STACK = RNG.random((5, 24, 36)).astype(np.float32)


def _check(image, data, pixel_size_nm, *, lazy_stack=True):
    assert image.data.shape == data.shape
    if data.ndim == 3 and lazy_stack:
        assert isinstance(image.data, da.Array)
        assert image.data.chunks[0] == (1,) * data.shape[0]  # one frame per chunk
        np.testing.assert_array_equal(np.asarray(image.data[3]), data[3])
    else:
        assert isinstance(image.data, np.ndarray)
    np.testing.assert_array_equal(np.asarray(image.data), data)
    if pixel_size_nm is None:
        assert image.pixel_size_nm is None
    else:
        assert image.pixel_size_nm == pytest.approx(pixel_size_nm, rel=1e-6)
    json.dumps(image.metadata)  # everything kept is JSON-serialisable


@pytest.mark.parametrize("version", [3, 4])
def test_dm_multi_image_units(tmp_path, version):
    path = write_dm(
        tmp_path / f"a.dm{version}",
        [
            (IMG, "HAADF", (0.05, 0.05), ("nm", "nm")),
            ((IMG * 1000).astype(np.uint16), "BF", (1.5, 1.5), ("Å", "Å")),
            (STACK, "Movie", (0.5, 0.2, 0.2), ("s", "µm", "µm")),
        ],
        version=version,
    )
    images = read_images(path)
    assert [im.name for im in images] == ["a HAADF", "a BF", "a Movie"]
    _check(images[0], IMG, 0.05)
    _check(images[1], (IMG * 1000).astype(np.uint16), 0.15)
    _check(images[2], STACK, 200.0)
    meta = images[0].metadata
    assert meta["source"]["format"] == "Gatan DigitalMicrograph"
    assert meta["source"]["n_images"] == 3
    assert meta["calibration"]["status"] == "ok"
    tags = meta["original_metadata"]["ImageList"]["TagGroup0"]["ImageTags"]["Microscope Info"]
    assert tags["Voltage"] == 300000.0
    first = read_image(path)  # the first image, and a note that there are more
    _check(first, IMG, 0.05)
    assert "3 images" in first.metadata["note"]


def test_velox_emd_two_detectors(tmp_path):
    path = write_velox(tmp_path / "v.emd", [("HAADF", IMG), ("DF4", STACK)], pixel_size_m=3e-11)
    images = read_images(path)
    assert [im.metadata["source"]["title"] for im in images] == ["HAADF", "DF4"]
    _check(images[0], IMG, 0.03)
    _check(images[1], STACK, 0.03)
    assert images[0].metadata["original_metadata"]["Optics"]["AccelerationVoltage"] == "300000"


def test_berkeley_emd_written_by_rosettasciio(tmp_path):
    path = write_emd_ncem(tmp_path / "b.emd", STACK, scale=0.02, units="nm")
    (image,) = read_images(path)
    assert image.name == "b"
    _check(image, STACK, 0.02, lazy_stack=False)  # written as one chunk: read once, in memory


def test_hspy_written_by_rosettasciio(tmp_path):
    path = write_hspy(tmp_path / "h.hspy", STACK, scale=2.5, units="Å", chunks=(1, 24, 36))
    (image,) = read_images(path)
    _check(image, STACK, 0.25)
    assert image.metadata["axes"][1]["units"] == "Å"
    path2 = write_hspy(tmp_path / "i.hdf5", IMG, scale=0.1, units="µm")
    _check(read_image(path2), IMG, 100.0)


def test_ser_series(tmp_path):
    (image,) = read_images(write_ser(tmp_path / "s_1.ser", STACK, pixel_size_m=2e-11))
    _check(image, STACK, 0.02, lazy_stack=False)  # rosettasciio reads a .ser whole
    single = read_image(write_ser(tmp_path / "t_1.ser", STACK[:1], pixel_size_m=1e-9))
    _check(single, STACK[0], 1.0)


def test_emi_image_and_diffraction(tmp_path):
    image = read_image(write_emi(tmp_path / "e.emi", STACK[:1], pixel_size_m=5e-11))
    _check(image, STACK[0], 0.05)
    assert image.name == "e"
    assert image.metadata["original_metadata"]["ObjectInfo"]["AcquireDate"].startswith("Mon")
    # a diffraction pattern: reciprocal units, so no real-space pixel size
    diff = write_emi(
        tmp_path / "d.emi", STACK[:1], pixel_size_m=1e8, mode="STEM Diffraction", camera=True
    )
    pattern = read_image(diff)
    _check(pattern, STACK[0], None)
    calibration = pattern.metadata["calibration"]
    assert calibration["status"] == "reciprocal"
    assert calibration["reciprocal_pixel_size_per_nm"] == pytest.approx([0.1, 0.1])


def test_mrc_stack_and_image(tmp_path):
    _check(read_image(write_mrc(tmp_path / "m.mrc", STACK, pixel_size_angstrom=0.8)), STACK, 0.08)
    _check(read_image(write_mrc(tmp_path / "n.mrc", IMG, pixel_size_angstrom=1.6)), IMG, 0.16)


def test_unit_conversion_table():
    assert unit_to_nm("nm") == ("length", 1.0)
    assert unit_to_nm("Å") == ("length", 0.1)
    assert unit_to_nm("\u212b") == ("length", 0.1)  # the Angstrom sign
    assert unit_to_nm("pm") == ("length", 1e-3)
    assert unit_to_nm("µm") == ("length", 1e3)
    assert unit_to_nm("um") == ("length", 1e3)
    assert unit_to_nm("meters") == ("length", 1e9)
    kind, f = unit_to_nm("1 / nm")
    assert kind == "reciprocal" and f == 1.0
    assert unit_to_nm("nm^-1")[0] == "reciprocal"
    assert unit_to_nm("1/Å") == ("reciprocal", 10.0)
    assert unit_to_nm("<undefined>") == ("undefined", None)
    assert unit_to_nm("eV") == ("unknown", None)
    assert unit_to_nm("furlong")[0] == "length"  # anything pint knows as a length


def test_calibration_states():
    def axes(s, u, s2=None):
        return [{"scale": s, "units": u}, {"scale": s2 or s, "units": u}]

    assert calibration_from_axes(axes(0.3, "1 / nm"))["status"] == "reciprocal"
    assert calibration_from_axes(axes(0.3, "1 / nm"))["pixel_size_nm"] is None
    assert calibration_from_axes(axes(1.0, "<undefined>"))["status"] == "uncalibrated"
    odd = calibration_from_axes(axes(0.1, "nm", 0.2))
    assert odd["status"] == "non-square" and odd["pixel_size_nm"] is None
    assert odd["pixel_size_yx_nm"] == [0.1, 0.2]
    assert calibration_from_axes(axes(3.0, "mrad"))["status"] == "unknown"


def test_reciprocal_image_is_read_without_pixel_size(tmp_path):
    path = write_hspy(tmp_path / "fft.hspy", IMG, scale=0.05, units="1 / nm")
    image = read_image(path)
    _check(image, IMG, None)
    assert image.metadata["calibration"]["status"] == "reciprocal"


def test_spectra_are_skipped_and_named(tmp_path):
    from microscope_files import signal_dict
    from rsciio.hspy import file_writer

    spectrum = RNG.random((8, 10, 64)).astype(np.float32)  # a spectrum image y, x, energy
    sig = signal_dict(spectrum, title="EDS", scale=1.0, units="nm")
    sig["axes"][0].update(name="y", navigate=True, units="nm")
    sig["axes"][1].update(navigate=True)
    sig["axes"][2].update(name="Energy", units="keV", navigate=False)
    file_writer(str(tmp_path / "si.hspy"), sig, show_progressbar=False)
    with pytest.raises(ImageReadError, match=r"no 2D image.*EDS: spectrum image 8×10×64"):
        read_images(tmp_path / "si.hspy")


@pytest.mark.parametrize("suffix", [".dm3", ".dm4", ".emd", ".ser", ".mrc", ".hspy"])
def test_corrupt_files_raise_clear_errors(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00\x01not a microscope file" * 10)
    with pytest.raises(ImageReadError, match=r"bad\S*: cannot read as"):
        read_images(path)


def test_truncated_dm_file(tmp_path):
    path = write_dm(tmp_path / "t.dm4", [(IMG, "HAADF", (0.05, 0.05), ("nm", "nm"))], version=4)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"t\.dm4: cannot read as Gatan"):
        read_image(path)


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "x.xyz").write_text("x")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "x.xyz")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nothing.dm4")


def test_large_tiff_stack_is_lazy(tmp_path, monkeypatch):
    import napari_atomnet.io.images as images

    monkeypatch.setattr(images, "LAZY_TIFF_BYTES", 1)
    path = write_tiff(tmp_path / "movie.tif", STACK, pixel_size_nm=0.04)
    image = read_image(path)
    _check(image, STACK, 0.04)
    assert isinstance(read_image(path, lazy=False).data, np.ndarray)
