"""Labels for retraining: export (YOLO, Pascal VOC as labelImg writes it, CSV, tiles) and import."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_atomnet._provenance import make_provenance
from napari_atomnet.io import ExportExistsError
from napari_atomnet.io import labels as labels_mod
from napari_atomnet.io.labels import (
    boxes_to_voc,
    boxes_to_yolo,
    export_labels,
    import_labels,
    list_label_images,
    read_atoms_csv,
    voc_to_boxes,
    yolo_to_boxes,
)
from napari_atomnet.synth import render_gaussians

H, W = 150, 230  # not square: catches swapped axes
BOX_H, BOX_W = 7.0, 9.0  # not square either
SHA = "ab" * 32


@pytest.fixture
def labelled():
    """A uint16 image, its atoms (2 classes, model + hand-added without boxes, edge atoms)."""
    rng = np.random.default_rng(7)
    n = 110
    y = rng.uniform(3, H - 4, n)
    x = rng.uniform(3, W - 4, n)
    # atoms right at the borders: their boxes must be clipped
    y = np.concatenate([y, [0.2, 149.4, 70.0, -0.3, 10.0]])
    x = np.concatenate([x, [100.3, 5.0, 229.3, -0.2, 1.0]])
    n = len(y)
    image = render_gaussians((H, W), y, x, 800.0, 2.0) + 100.0
    image = rng.poisson(image).astype(np.uint16)
    cls = rng.integers(0, 2, n)
    atoms = pd.DataFrame(
        {
            "y": y,
            "x": x,
            "score": rng.uniform(0.3, 1.0, n),
            "class": cls,
            "class_name": np.where(cls == 0, "A", "B"),
            "y0": y - BOX_H / 2,
            "x0": x - BOX_W / 2,
            "y1": y + BOX_H / 2,
            "x1": x + BOX_W / 2,
            "fit_ok": rng.random(n) > 0.1,
            "source": "model",
        }
    )
    manual = np.arange(5, 15)  # hand-added: no class, no box
    atoms.loc[manual, ["class", "class_name", "y0", "x0", "y1", "x1", "score"]] = np.nan
    atoms.loc[manual, "source"] = "manual"
    provenance = make_provenance(
        "find_atoms", {"threshold": 0.3}, model={"name": "det-v1", "sha256": SHA}, source="a.tif"
    )
    return image, atoms, provenance


def _expected_boxes(atoms):
    """The boxes the export writes: the table's, or a centred median-size box where missing."""
    boxes = atoms[["y0", "x0", "y1", "x1"]].to_numpy(float).copy()
    missing = ~np.isfinite(boxes).all(axis=1)
    y, x = atoms["y"].to_numpy(), atoms["x"].to_numpy()
    boxes[missing] = np.column_stack([y - BOX_H / 2, x - BOX_W / 2, y + BOX_H / 2, x + BOX_W / 2])[
        missing
    ]
    return boxes


def _inside(boxes, shape):
    """Boxes entirely inside the image, away from labelImg's xmin/ymin >= 1 rule."""
    h, w = shape
    return (
        (boxes[:, 0] + 0.5 >= 1)
        & (boxes[:, 1] + 0.5 >= 1)
        & (boxes[:, 2] + 0.5 <= h)
        & (boxes[:, 3] + 0.5 <= w)
    )


# ---------------------------------------------------------------------------------------------
# conversions


def test_box_conversions_follow_the_corner_convention():
    boxes = np.array([[1.5, 3.5, 5.5, 7.5]])  # corners y 2..6, x 4..8
    np.testing.assert_allclose(boxes_to_yolo(boxes, (10, 20)), [[6 / 20, 4 / 10, 4 / 20, 4 / 10]])
    np.testing.assert_allclose(yolo_to_boxes(boxes_to_yolo(boxes, (10, 20)), (10, 20)), boxes)
    assert boxes_to_voc(boxes, (10, 20)).tolist() == [[4, 2, 8, 6]]
    np.testing.assert_array_equal(voc_to_boxes([[4, 2, 8, 6]]), boxes)
    # clipped at the image and labelImg's xmin, ymin >= 1
    assert boxes_to_voc([[-3.0, -3.0, 2.0, 2.0]], (10, 20)).tolist() == [[1, 1, 2, 2]]
    np.testing.assert_allclose(
        boxes_to_yolo([[-3.0, 16.0, 2.0, 24.0]], (10, 20))[0, :2], [18.25 / 20, 1.25 / 10]
    )


def test_voc_rounding_keeps_the_centre_within_a_quarter_pixel():
    rng = np.random.default_rng(1)
    centre = rng.uniform(20, 80, (500, 2))
    size = rng.uniform(3, 12, (500, 2))
    boxes = np.column_stack([centre - size / 2, centre + size / 2])
    back = voc_to_boxes(boxes_to_voc(boxes, (100, 100)))
    got_centre = (back[:, :2] + back[:, 2:]) / 2
    assert np.abs(got_centre - centre).max() <= 0.25 + 1e-12
    assert np.abs((back[:, 2:] - back[:, :2]) - size).max() <= 1.0 + 1e-12


# ---------------------------------------------------------------------------------------------
# export layout and round trips


def test_export_writes_every_file_and_the_csv_round_trip_is_exact(tmp_path, labelled):
    image, atoms, provenance = labelled
    edits = {"added": 10, "deleted": 2, "moved": 3}
    folder = export_labels(
        image, atoms, tmp_path, name="img1", provenance=provenance, edits=edits, pixel_size_nm=0.02
    )
    assert folder == tmp_path / "img1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "classes.txt",
        "img1.png",
        "img1.tif",
        "img1.txt",
        "img1.xml",
        "img1_atoms.csv",
        "provenance.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["img1"]  # no temp folder left beside it
    assert (folder / "classes.txt").read_text() == "A\nB\n"
    np.testing.assert_array_equal(tifffile.imread(folder / "img1.tif"), image)

    record = json.loads((folder / "provenance.json").read_text())
    assert record["kind"] == "napari-atomnet labels" and record["version"]
    assert record["model"] == {"name": "det-v1", "sha256": SHA}
    assert record["parameters"] == {"threshold": 0.3} and record["source"] == "a.tif"
    assert record["edits"] == edits
    assert record["counts"]["atoms"] == len(atoms)
    assert record["counts"]["by_source"] == {"model": len(atoms) - 10, "manual": 10}
    assert record["counts"]["boxes_filled"] == 10
    assert record["image"]["shape"] == [H, W] and record["image"]["dtype"] == "uint16"
    assert record["formats"] == ["yolo", "voc", "csv"]
    assert "pixel's centre" in record["coordinates"]["atoms_csv"]

    got_image, got, info = import_labels(folder)
    assert info["format"] == "csv" and info["precision_px"] == 0.0
    assert info["classes"] == ["A", "B"] and info["provenance"]["name"] == "img1"
    np.testing.assert_array_equal(got_image, image)  # the TIFF: full dynamic range
    # positions, boxes and features come back bit for bit
    np.testing.assert_array_equal(got["y"].to_numpy(), atoms["y"].to_numpy())
    np.testing.assert_array_equal(got["x"].to_numpy(), atoms["x"].to_numpy())
    np.testing.assert_array_equal(got[["y0", "x0", "y1", "x1"]].to_numpy(), _expected_boxes(atoms))
    model_rows = atoms["source"] == "model"
    np.testing.assert_array_equal(got["score"][model_rows], atoms["score"][model_rows])
    np.testing.assert_array_equal(got["fit_ok"], atoms["fit_ok"])
    assert got["source"].tolist() == atoms["source"].tolist()
    expected_names = atoms["class_name"].fillna("A")  # hand-added atoms without a class → 0
    assert got["class_name"].tolist() == expected_names.tolist()
    assert got["class"].tolist() == expected_names.map({"A": 0, "B": 1}).tolist()
    assert list(got.columns[:9]) == [
        "y", "x", "class", "class_name", "y0", "x0", "y1", "x1", "source"
    ]  # fmt: skip


def test_png_is_the_8bit_percentile_stretch(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(image, atoms, tmp_path, name="img", formats="csv")
    png = iio.imread(folder / "img.png")
    assert png.dtype == np.uint8 and png.shape == (H, W)
    lo, hi = np.percentile(image.astype(np.float32), [0.5, 99.5])
    expected = np.clip(np.rint((image.astype(np.float32) - lo) * (255 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(png, expected.astype(np.uint8))
    assert (png == 0).mean() == pytest.approx(0.005, abs=0.004)
    assert (png == 255).mean() == pytest.approx(0.005, abs=0.004)


def test_yolo_lines_and_round_trip_within_six_decimals(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(image, atoms, tmp_path, name="img", formats=("yolo",))
    assert not (folder / "img_atoms.csv").exists() and not (folder / "img.xml").exists()
    lines = (folder / "img.txt").read_text().splitlines()
    assert len(lines) == len(atoms)
    values = np.array([[float(v) for v in ln.split()] for ln in lines])
    assert all(len(ln.split()) == 5 for ln in lines)
    assert set(values[:, 0]) == {0.0, 1.0}
    assert (values[:, 1:] >= 0).all() and (values[:, 1:] <= 1).all()
    assert all(len(v.split(".")[1]) == 6 for ln in lines for v in ln.split()[1:])
    # the first atom, by hand: cx = (x + 0.5) / W, w = box width / W
    a = atoms.iloc[0]
    np.testing.assert_allclose(
        values[0, 1:], [(a.x + 0.5) / W, (a.y + 0.5) / H, BOX_W / W, BOX_H / H], atol=5e-7
    )

    _, got, info = import_labels(folder)
    assert info["format"] == "yolo" and info["classes"] == ["A", "B"]
    tol = 0.5e-6 * max(H, W) + 1e-9
    assert info["precision_px"] == pytest.approx(0.5e-6 * max(H, W))
    boxes = _expected_boxes(atoms)
    inside = _inside(boxes, (H, W))
    assert inside.sum() > 100 and (~inside).sum() >= 4
    np.testing.assert_allclose(got["y"][inside], atoms["y"][inside], atol=tol, rtol=0)
    np.testing.assert_allclose(got["x"][inside], atoms["x"][inside], atol=tol, rtol=0)
    got_boxes = got[["y0", "x0", "y1", "x1"]].to_numpy()
    np.testing.assert_allclose(got_boxes[inside], boxes[inside], atol=2 * tol, rtol=0)
    # border atoms: the box is clipped to the image, so its centre moves inwards
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(-0.5, H - 0.5)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(-0.5, W - 0.5)
    np.testing.assert_allclose(got_boxes, clipped, atol=2 * tol, rtol=0)
    assert (got["source"] == "imported").all()
    assert got["class_name"].tolist() == atoms["class_name"].fillna("A").tolist()


def test_voc_round_trip_within_integer_precision(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(image, atoms, tmp_path, name="img", formats=["voc"])
    got_image, got, info = import_labels(folder)
    assert info["format"] == "voc" and info["precision_px"] == 0.5
    np.testing.assert_array_equal(got_image, image)
    boxes = _expected_boxes(atoms)
    inside = _inside(boxes, (H, W))
    for col in ("y", "x"):
        err = np.abs(got[col] - atoms[col])[inside]
        assert err.max() <= 0.25 + 1e-9
        assert err.mean() > 0.05  # it really is integer-rounded, not read from elsewhere
    sizes = got[["y1", "x1"]].to_numpy() - got[["y0", "x0"]].to_numpy()
    assert np.abs(sizes[inside] - [BOX_H, BOX_W]).max() <= 1.0
    assert got["class_name"].tolist() == atoms["class_name"].fillna("A").tolist()
    assert (got[["y0", "x0"]].to_numpy() >= 0.5).all()  # labelImg: xmin, ymin >= 1
    assert (got["y1"] <= H - 0.5).all() and (got["x1"] <= W - 0.5).all()


def test_voc_xml_is_laid_out_as_labelimg_writes_it(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(image, atoms, tmp_path, name="img", formats="voc")
    text = (folder / "img.xml").read_text(encoding="utf-8")
    assert text.startswith("<annotation>\n\t<folder>")  # no declaration, tab indents
    root = ET.fromstring(text)
    assert root.tag == "annotation"
    children = [c.tag for c in root]
    header = ["folder", "filename", "path", "source", "size", "segmented"]
    assert children == header + ["object"] * len(atoms)
    assert root.findtext("folder") == "img"
    assert root.findtext("filename") == "img.png"
    assert root.findtext("path") == str((folder / "img.png").resolve())
    assert (folder / "img.png").is_file()
    assert [c.tag for c in root.find("source")] == ["database"]
    assert root.findtext("source/database") == "Unknown"
    assert [c.tag for c in root.find("size")] == ["width", "height", "depth"]
    assert root.findtext("size/width") == str(W)
    assert root.findtext("size/height") == str(H)
    assert root.findtext("size/depth") == "1"
    assert root.findtext("segmented") == "0"
    n_truncated = 0
    for obj, name in zip(root.findall("object"), atoms["class_name"].fillna("A"), strict=True):
        assert [c.tag for c in obj] == ["name", "pose", "truncated", "difficult", "bndbox"]
        assert obj.findtext("name") == name
        assert obj.findtext("pose") == "Unspecified"
        assert obj.findtext("difficult") == "0"
        box = obj.find("bndbox")
        assert [c.tag for c in box] == ["xmin", "ymin", "xmax", "ymax"]
        xmin, ymin, xmax, ymax = (int(c.text) for c in box)  # integers, as labelImg writes
        assert 1 <= xmin < xmax <= W and 1 <= ymin < ymax <= H
        truncated = ymax == H or ymin == 1 or xmax == W or xmin == 1  # labelImg's rule
        assert obj.findtext("truncated") == ("1" if truncated else "0")
        n_truncated += truncated
    assert n_truncated >= 4  # the border atoms


# ---------------------------------------------------------------------------------------------
# tiles


def test_tiles_cover_the_image_and_every_atom_lands_in_exactly_one_tile(tmp_path, labelled):
    image, atoms, _ = labelled
    tile = 64
    folder = export_labels(image, atoms, tmp_path, name="img", tiles=tile)
    record = json.loads((folder / "provenance.json").read_text())
    tiles = record["tiles"]["tiles"]
    assert record["tiles"]["size"] == tile and record["tiles"]["edge"] == "padded"
    assert len(tiles) == 3 * 4  # ceil(150 / 64) × ceil(230 / 64)
    tiles_dir = folder / "tiles"
    assert (tiles_dir / "classes.txt").read_text() == "A\nB\n"
    assert len(list_label_images(tiles_dir)) == len(tiles)

    mosaic = np.zeros_like(image)
    covered = np.zeros(image.shape, int)
    found = []
    for t in tiles:
        stem = f"img_r{t['row']}_c{t['col']}"
        assert t["name"] == stem
        data = tifffile.imread(tiles_dir / f"{stem}.tif")
        png = iio.imread(tiles_dir / f"{stem}.png")
        assert data.shape == png.shape == (tile, tile) and data.dtype == image.dtype
        r0, c0, th, tw = t["y0"], t["x0"], t["height"], t["width"]
        mosaic[r0 : r0 + th, c0 : c0 + tw] = data[:th, :tw]
        covered[r0 : r0 + th, c0 : c0 + tw] += 1
        assert (data[th:, :] == np.median(image)).all() and (data[:, tw:] == np.median(image)).all()
        tile_image, local, info = import_labels(tiles_dir / f"{stem}_atoms.csv")
        assert info["format"] == "csv" and len(local) == t["n_atoms"]
        np.testing.assert_array_equal(tile_image, data)
        # the tile's own YOLO labels are normalised by the tile size and agree with the CSV
        _, yolo, _ = import_labels(tiles_dir / f"{stem}.txt")
        assert len(yolo) == len(local)
        values = np.loadtxt(tiles_dir / f"{stem}.txt", ndmin=2).reshape(-1, 5)
        assert ((values[:, 1:] >= 0) & (values[:, 1:] <= 1)).all()
        inner = _inside(local[["y0", "x0", "y1", "x1"]].to_numpy(), (th, tw))
        np.testing.assert_allclose(yolo["x"][inner], local["x"][inner], atol=1e-4)
        found.append(local.assign(y=local["y"] + r0, x=local["x"] + c0))
    assert (covered == 1).all()  # overlap 0: the tiles partition the image
    np.testing.assert_array_equal(mosaic, image)
    merged = pd.concat(found, ignore_index=True).sort_values(["y", "x"], ignore_index=True)
    expected = atoms.sort_values(["y", "x"], ignore_index=True)
    assert len(merged) == len(atoms)  # every atom exactly once
    np.testing.assert_allclose(merged[["y", "x"]], expected[["y", "x"]], atol=1e-9, rtol=0)


def test_overlapping_tiles_label_every_atom_they_show(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(
        image, atoms, tmp_path, name="img", formats="csv", tiles=64, tile_overlap=16
    )
    tiles = json.loads((folder / "provenance.json").read_text())["tiles"]["tiles"]
    assert [t["y0"] for t in tiles if t["col"] == 0] == [0, 48, 96]
    counts = np.zeros(len(atoms), int)
    y, x = atoms["y"].to_numpy(), atoms["x"].to_numpy()
    for t in tiles:
        shows = (y >= t["y0"] - 0.5) & (y < t["y0"] + t["height"] - 0.5)
        shows &= (x >= t["x0"] - 0.5) & (x < t["x0"] + t["width"] - 0.5)
        assert t["n_atoms"] == shows.sum()
        counts += shows
    assert counts.min() >= 1 and counts.max() > 1


def test_columns_cut_by_the_border_are_kept_with_clipped_boxes(tmp_path, labelled):
    image, _, _ = labelled
    atoms = pd.DataFrame(
        {
            "y": [-1.5, 50.0, 80.0, -30.0],  # half column above, inside, right of, far outside
            "x": [100.0, 60.0, W + 0.2, 10.0],
            "y0": [-5.5, 46.0, 76.0, -34.0],
            "x0": [96.0, 56.0, W - 3.8, 6.0],
            "y1": [2.5, 54.0, 84.0, -26.0],
            "x1": [104.0, 64.0, W + 4.2, 14.0],
        }
    )
    folder = export_labels(image, atoms, tmp_path, name="img", tiles=64)
    record = json.loads((folder / "provenance.json").read_text())
    assert record["counts"]["dropped_outside_image"] == 1
    assert record["counts"]["centre_outside_image"] == 2
    _, csv, _ = import_labels(folder)
    np.testing.assert_array_equal(csv[["y", "x"]], atoms[["y", "x"]].iloc[:3])  # exact
    lines = (folder / "img.txt").read_text().splitlines()
    q = np.array([[float(v) for v in ln.split()[1:]] for ln in lines])
    assert len(q) == 3 and ((q >= 0) & (q <= 1)).all()
    # the half column above: box rows -5.5..2.5 clipped to corners 0..3
    np.testing.assert_allclose(q[0], [100.5 / W, 1.5 / H, 8 / W, 3 / H], atol=5e-7)
    # each of the three lands in exactly one tile (the edge tiles)
    counts = [t["n_atoms"] for t in record["tiles"]["tiles"]]
    assert sum(counts) == 3
    top = next(t for t in record["tiles"]["tiles"] if t["row"] == 0 and t["col"] == 1)
    assert top["n_atoms"] == 1  # x = 100 is in the second column of 64-px tiles


# ---------------------------------------------------------------------------------------------
# overwriting and failures


def test_refuses_to_overwrite_and_replaces_only_when_asked(tmp_path, labelled):
    image, atoms, _ = labelled
    folder = export_labels(image, atoms, tmp_path, name="img")
    before = (folder / "img_atoms.csv").read_bytes()
    with pytest.raises(ExportExistsError, match="exists"):
        export_labels(image, atoms.iloc[:5], tmp_path, name="img")
    assert (folder / "img_atoms.csv").read_bytes() == before
    export_labels(image, atoms.iloc[:5], tmp_path, name="img", formats="csv", overwrite=True)
    assert len(pd.read_csv(folder / "img_atoms.csv")) == 5
    assert not (folder / "img.xml").exists()  # replaced as a whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["img"]
    # a folder that is not an export is never replaced, even with overwrite
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(ExportExistsError, match="not a napari-atomnet"):
        export_labels(image, atoms, tmp_path, name="mine", overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"


def test_a_writer_failing_midway_leaves_no_partial_folder(tmp_path, labelled, monkeypatch):
    image, atoms, _ = labelled

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(labels_mod, "_voc_xml", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_labels(image, atoms, tmp_path, name="img", tiles=64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="disk full"):  # a folder made for it goes too
        export_labels(image, atoms, tmp_path / "new" / "sub", name="img")
    assert list(tmp_path.iterdir()) == [tmp_path / "new"]
    # with overwrite, a failed export keeps the previous one intact
    monkeypatch.undo()
    folder = export_labels(image, atoms, tmp_path, name="img")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(labels_mod, "_voc_xml", crash)
    with pytest.raises(RuntimeError):
        export_labels(image, atoms.iloc[:3], tmp_path, name="img", overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "new"]


# ---------------------------------------------------------------------------------------------
# other tools' label folders

LABELIMG_XML = """<annotation verified="yes">
\t<folder>{folder}</folder>
\t<filename>{filename}</filename>
\t<path>/home/someone/{folder}/{filename}</path>
\t<source>
\t\t<database>Unknown</database>
\t</source>
\t<size>
\t\t<width>{w}</width>
\t\t<height>{h}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
LABELIMG_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{box[0]}</xmin>
\t\t\t<ymin>{box[1]}</ymin>
\t\t\t<xmax>{box[2]}</xmax>
\t\t\t<ymax>{box[3]}</ymax>
\t\t</bndbox>
\t</object>
"""


def _labelimg_folder(folder, specs):
    folder.mkdir()
    for stem, (h, w), objects in specs:
        rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        iio.imwrite(folder / f"{stem}.png", rgb)
        body = "".join(
            LABELIMG_OBJECT.format(name=n, box=b, difficult=int(d)) for n, b, d in objects
        )
        xml = LABELIMG_XML.format(
            folder=folder.name, filename=f"{stem}.png", w=w, h=h, objects=body
        )
        (folder / f"{stem}.xml").write_text(xml)


def test_import_a_hand_made_labelimg_folder(tmp_path):
    folder = tmp_path / "voc_set"
    objects_a = [("Sr", (10, 20, 16, 28), False), ("Ti", (40, 5, 47, 12), True)]
    objects_b = [("Ti", ("3.0", "4.0", "9.0", "10.0"), False)]  # some tools write floats
    _labelimg_folder(folder, [("a", (60, 80), objects_a), ("b", (30, 40), objects_b)])
    (folder / "notes.txt").write_text("not labels\n")
    items = list_label_images(folder)
    assert [p.name for p in items] == ["a.xml", "b.xml"]
    with pytest.raises(ValueError, match="2 images"):
        import_labels(folder)

    image, atoms, info = import_labels(items[0])
    assert info["format"] == "voc" and info["shape"] == [60, 80] and info["n_difficult"] == 1
    assert image.shape == (60, 80) and any("RGB" in w for w in info["warnings"])
    assert info["image_path"] == str(folder / "a.png")
    # labelImg's numbers are corner coordinates: x = (xmin + xmax) / 2 - 0.5
    np.testing.assert_array_equal(atoms["x"], [12.5, 43.0])
    np.testing.assert_array_equal(atoms["y"], [23.5, 8.0])
    np.testing.assert_array_equal(atoms[["y0", "x0", "y1", "x1"]].iloc[0], [19.5, 9.5, 27.5, 15.5])
    assert atoms["class_name"].tolist() == ["Sr", "Ti"] and atoms["class"].tolist() == [0, 1]
    assert (atoms["source"] == "imported").all()
    # by image file, too; and the XML's own size is used when the image is missing
    _, atoms_b, _ = import_labels(folder / "b.png")
    np.testing.assert_array_equal(atoms_b[["y", "x"]].iloc[0], [6.5, 5.5])
    (folder / "b.png").unlink()
    image_b, atoms_b2, info_b = import_labels(folder / "b.xml")
    assert image_b is None and info_b["shape"] == [30, 40] and len(atoms_b2) == 1


def test_import_a_hand_made_yolo_folder(tmp_path):
    folder = tmp_path / "yolo_set"
    folder.mkdir()
    h, w = 50, 100
    iio.imwrite(folder / "img.png", np.zeros((h, w), np.uint8))
    (folder / "classes.txt").write_text("Sr\nTi\n")
    (folder / "img.txt").write_text(
        "0 0.250000 0.500000 0.100000 0.200000\n\n1 0.5 0.1 0.04 0.08\n"
    )
    image, atoms, info = import_labels(folder)  # one image: the folder is enough
    assert info["format"] == "yolo" and info["classes"] == ["Sr", "Ti"]
    assert image.shape == (h, w)
    np.testing.assert_allclose(atoms["x"], [0.25 * w - 0.5, 0.5 * w - 0.5])
    np.testing.assert_allclose(atoms["y"], [0.5 * h - 0.5, 0.1 * h - 0.5])
    np.testing.assert_allclose(atoms["x1"] - atoms["x0"], [10.0, 4.0])
    np.testing.assert_allclose(atoms["y1"] - atoms["y0"], [10.0, 4.0])
    assert atoms["class_name"].tolist() == ["Sr", "Ti"]

    # Ultralytics layout: labels/ and images/ side by side, classes.txt one folder up
    root = tmp_path / "ultra"
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    iio.imwrite(root / "images" / "img.png", np.zeros((h, w), np.uint8))
    (root / "classes.txt").write_text("Sr\nTi\n")
    (root / "labels" / "img.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    assert list_label_images(root) == [root / "labels" / "img.txt"]
    _, atoms_u, info_u = import_labels(root)
    assert info_u["image_path"] == str(root / "images" / "img.png")
    np.testing.assert_allclose(atoms_u[["y", "x"]].iloc[0], [24.5, 49.5])

    # without the image the normalised boxes cannot be placed
    (folder / "img.png").unlink()
    with pytest.raises(ValueError, match="image is needed"):
        import_labels(folder / "img.txt")
    # and a malformed line names the file and line
    (folder / "bad.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        import_labels(folder / "bad.txt", image_path=tmp_path / "ultra/images/img.png")


def test_list_label_images_finds_exports(tmp_path, labelled):
    image, atoms, _ = labelled
    for name in ("one", "two"):
        export_labels(image, atoms.iloc[:20], tmp_path, name=name, formats="yolo")
    assert list_label_images(tmp_path) == [tmp_path / "one", tmp_path / "two"]
    assert list_label_images(tmp_path / "one") == [tmp_path / "one"]
    _, got, info = import_labels(list_label_images(tmp_path)[1])
    assert info["format"] == "yolo" and len(got) == 20


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../up"}, "invalid export name"),
        ({"name": ".hidden"}, "invalid export name"),
        ({"formats": "yolo,coco"}, "unknown label format"),
        ({"tiles": 8}, "at least 16"),
        ({"tiles": 64, "tile_overlap": 40}, "tile_overlap"),
        ({"classes": ["A"]}, "not in classes"),
        ({"edits": {"added": -1}}, "non-negative"),
    ],
)
def test_bad_export_arguments_are_refused(tmp_path, labelled, change, message):
    image, atoms, _ = labelled
    kwargs = {"name": "img", **change}
    with pytest.raises(ValueError, match=message):
        export_labels(image, atoms, tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_export_data_is_refused(tmp_path, labelled):
    image, atoms, _ = labelled
    with pytest.raises(ValueError, match="RGB"):
        export_labels(np.stack([image] * 3, axis=-1), atoms, tmp_path, name="a")
    bad = atoms.copy()
    bad.loc[3, "x"] = np.nan
    with pytest.raises(ValueError, match="finite"):
        export_labels(image, bad, tmp_path, name="a")
    with pytest.raises(ValueError, match="lacks column"):
        export_labels(image, atoms.drop(columns="y"), tmp_path, name="a")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# command line


def _cli(argv):
    """Run the real ``atomnet`` entry point."""
    from napari_atomnet.cli import main

    return main(argv)


def test_cli_export_then_import(tmp_path, labelled, capsys):
    image, atoms, provenance = labelled
    tifffile.imwrite(tmp_path / "img.tif", image)
    atoms.to_csv(tmp_path / "img_atoms.csv", index=False)
    (tmp_path / "img_atoms.json").write_text(json.dumps(provenance))
    out = tmp_path / "exports"
    argv = ["export", str(tmp_path / "img.tif"), "--atoms", str(tmp_path / "img_atoms.csv")]
    assert _cli([*argv, "--out", str(out), "--tiles", "100"]) == 0
    assert f"{len(atoms)} atoms" in capsys.readouterr().out
    record = json.loads((out / "img" / "provenance.json").read_text())
    assert record["model"]["sha256"] == SHA and len(record["tiles"]["tiles"]) == 6
    # a second export is refused with one clear line
    assert _cli([*argv, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    csv = tmp_path / "back.csv"
    assert _cli(["import", str(out / "img"), "--out", str(csv)]) == 0
    back = read_atoms_csv(csv)
    np.testing.assert_array_equal(back[["y", "x"]], atoms[["y", "x"]])
    assert json.loads(csv.with_suffix(".json").read_text())["format"] == "csv"
    assert _cli(["import", str(out / "img"), "--out", str(csv)]) == 2
    assert _cli(["import", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
