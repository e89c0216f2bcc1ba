"""Regenerate the bundled sample files in sample_data/ from the simulators (fixed seeds).

Usage: python scripts/make_sample_data.py [--check]

With --check nothing is written; the script exits 1 if any bundled file differs from what the
simulators produce now (the test suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from napari_atomnet._samples import SAMPLES, image_for_file
from napari_atomnet.io import write_tiff

ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def write_sample(name: str, folder: Path) -> list[Path]:
    spec = SAMPLES[name]
    sim = spec.make()
    written = [folder / f"{name}.tif"]
    write_tiff(
        written[0],
        image_for_file(sim.image),
        pixel_size_nm=sim.pixel_size_nm,
        overwrite=True,
        compress=True,
    )
    if spec.kind == "atoms":
        path = folder / f"{name}_atoms.csv"
        sim.atoms.to_csv(path, index=False, float_format="%.4f")
        written.append(path)
    else:
        path = folder / f"{name}_particles.csv"
        sim.particles.to_csv(path, index=False, float_format="%.4f")
        labels = folder / f"{name}_labels.tif"
        write_tiff(
            labels,
            sim.labels.astype(np.uint16),
            pixel_size_nm=sim.pixel_size_nm,
            overwrite=True,
            compress=True,
        )
        written += [path, labels]
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            bad = [
                p.name
                for name in SAMPLES
                for p in write_sample(name, Path(tmp))
                if not _same(p, ROOT / p.name)
            ]
        print("sample data up to date" if not bad else f"differs: {', '.join(bad)}")
        return 1 if bad else 0
    ROOT.mkdir(exist_ok=True)
    for name in SAMPLES:
        for p in write_sample(name, ROOT):
            print(f"wrote {p.relative_to(ROOT.parent)} ({p.stat().st_size / 1024:.0f} KiB)")
    return 0


def _same(new: Path, old: Path) -> bool:
    if not old.exists():
        return False
    if new.suffix == ".csv":
        a, b = pd.read_csv(new), pd.read_csv(old)
        return a.columns.equals(b.columns) and a.equals(b)
    from napari_atomnet.io import read_image

    return np.array_equal(read_image(new).data, read_image(old).data)


if __name__ == "__main__":
    sys.exit(main())
