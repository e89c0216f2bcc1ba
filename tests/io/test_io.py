import json
import os

import numpy as np
import pandas as pd
import pytest

from napari_atomnet.io import (
    ExportExistsError,
    ImageReadError,
    atomic_path,
    read_csv,
    read_image,
    write_csv,
    write_tiff,
)


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_atomic_path_refuses_to_overwrite_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(ExportExistsError), atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "old"
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_file_appearing_during_write_is_not_clobbered(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(ExportExistsError), atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("someone else's")  # created while we were writing
    assert target.read_text() == "someone else's"


def test_write_csv_with_provenance_roundtrip(tmp_path):
    table = pd.DataFrame({"y": [1.25, 2.5], "x": [3.0, 4.125], "class": [0, 1]})
    path = write_csv(table, tmp_path / "atoms.csv", provenance={"step": "detect", "n": 2})
    back = read_csv(path, required=("y", "x"))
    pd.testing.assert_frame_equal(back, table)
    assert json.loads((tmp_path / "atoms.json").read_text()) == {"step": "detect", "n": 2}
    with pytest.raises(ExportExistsError):
        write_csv(table, path, provenance={})
    with pytest.raises(ValueError, match="missing column"):
        read_csv(path, required=("score",))


def test_existing_provenance_blocks_the_whole_export(tmp_path):
    (tmp_path / "atoms.json").write_text("{}")
    with pytest.raises(ExportExistsError):
        write_csv(pd.DataFrame({"y": [1.0]}), tmp_path / "atoms.csv", provenance={"a": 1})
    assert not (tmp_path / "atoms.csv").exists()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_tiff_roundtrip_keeps_data_and_pixel_size(tmp_path, dtype):
    data = (np.arange(48 * 64).reshape(48, 64) % 1000).astype(dtype)
    path = write_tiff(tmp_path / "img.tif", data, pixel_size_nm=0.0165)
    img = read_image(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size_nm == pytest.approx(0.0165, rel=1e-5)
    assert img.name == "img"


def test_png_and_npy(tmp_path):
    import imageio.v3 as iio

    data = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", data)
    np.save(tmp_path / "b.npy", data.astype(np.float64))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").data, data)
    np.testing.assert_array_equal(read_image(tmp_path / "b.npy").data, data)
    assert read_image(tmp_path / "a.png").pixel_size_nm is None


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.jpg2").write_bytes(b"\0")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "x.jpg2")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "corrupt.tif")
    (tmp_path / "corrupt.npy").write_bytes(os.urandom(64))
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "corrupt.npy")


def test_write_csv_writes_what_pandas_writes(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    table = pd.DataFrame(
        {
            "frame": np.full(n, 3),
            "y": rng.uniform(-1, 500, n),
            "x": rng.uniform(-1, 500, n).astype(np.float32),
            "fit_ok": rng.random(n) > 0.3,
            "class_name": pd.array(["strong", "weak"] * (n // 2), dtype="str"),
            "note": ["a,b", 'say "x"', None, "", np.nan] * (n // 5),
            "n": rng.integers(0, 9, n).astype(np.uint8),
        }
    )
    table.loc[1, "y"] = np.nan
    table.loc[2, "y"] = np.inf
    table.loc[3, "y"] = -0.00004
    nullable = table.assign(k=pd.array([1, None] * (n // 2), dtype="Int64"))  # pandas writes it
    for t in (table, table.iloc[:0], nullable):
        path = write_csv(t, tmp_path / "t.csv", overwrite=True)
        expected = tmp_path / "ref.csv"
        t.to_csv(expected, index=False, float_format="%.4f")
        assert path.read_text() == expected.read_text()
