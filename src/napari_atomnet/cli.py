"""The ``atomnet`` command: headless analysis of image files.

Every subcommand reports bad input as one line on stderr and exits with a non-zero code, and never
overwrites an existing output unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """An error to report to the user as one line, with exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``atomnet`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (without the program name); ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit code: 0 on success, 2 for bad input or a refused overwrite.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError) as err:
        # ValueError covers InvalidImageError / ImageReadError, OSError the refused overwrite
        print(f"atomnet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"atomnet {args.command}: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomnet",
        description="Find and measure atom columns and nanoparticles in microscope images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="analyse the bundled sample image and write atoms.csv + overlay.png",
        description="Find and refine the atoms of a bundled simulated sample, compare them with "
        "its ground truth, and write atoms.csv (+ provenance JSON) and overlay.png.",
    )
    demo.add_argument("--out", default="atomnet_demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--sample",
        default="perovskite_haadf",
        help="bundled sample to analyse (default: %(default)s; see --list)",
    )
    demo.add_argument("--list", action="store_true", help="list the bundled samples and exit")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import _samples
    from .core.metrics import detection_scores, localization_error
    from .io import provenance_path, write_csv
    from .io.overlay import save_overlay_png
    from .pipeline import find_atoms

    if args.list:
        for spec in _samples.SAMPLES.values():
            print(f"{spec.name:22s} {spec.kind:9s} {spec.description}")
        return 0
    spec = _samples.SAMPLES.get(args.sample)
    if spec is None:
        raise CLIError(f"unknown sample {args.sample!r} (try --list)")
    if spec.kind != "atoms":
        raise CLIError(f"{args.sample} is a particle sample; the demo analyses atom samples")
    out = Path(args.out)
    csv_path, png_path = out / "atoms.csv", out / "overlay.png"
    if not args.overwrite:
        for p in (csv_path, provenance_path(csv_path), png_path):
            if p.exists():
                raise CLIError(f"{p} exists; use --overwrite or another --out folder")

    sample = _samples.load_sample(args.sample)
    image = sample["image"]
    t0 = time.perf_counter()
    from .models.registry import ModelError

    source = str(_samples.sample_files(args.sample)["image"])
    try:
        result = find_atoms(image, source=source)
    except ModelError as err:  # no built-in model installed: say so, use the baseline
        print(f"atomnet demo: {err}; using the classical detector", file=sys.stderr)
        result = find_atoms(image, detector="classical", source=source)
    elapsed = time.perf_counter() - t0
    atoms = result.atoms

    truth = sample["truth"]
    radius = 0.25 * _nearest_neighbour_spacing(truth[["y", "x"]].to_numpy())
    found, true = atoms[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy()
    scores = detection_scores(found, true, radius)
    loc = localization_error(found, true, radius)
    result.provenance["ground_truth_check"] = {"match_radius_px": radius, **scores, **loc}

    write_csv(atoms, csv_path, provenance=result.provenance, overwrite=args.overwrite)
    title = (
        f"{args.sample}: {len(atoms)} atoms, F1 {scores['f1']:.3f}, "
        f"RMSE {loc['rmse']:.3f} px (red: Gaussian fit, green: fallback)"
    )
    save_overlay_png(image, atoms, png_path, title=title, overwrite=args.overwrite)

    h, w = image.shape
    print(f"atomnet demo: {args.sample} ({h}×{w} px): {len(atoms)} atoms in {elapsed:.2f} s")
    print(
        f"  against the ground truth ({len(truth)} atoms): F1 {scores['f1']:.4f} "
        f"(recall {scores['recall']:.4f}, precision {scores['precision']:.4f}), "
        f"position RMSE {loc['rmse']:.3f} px"
    )
    print(f"  results written to {out.resolve()}/")
    for p in (csv_path, provenance_path(csv_path), png_path):
        print(f"    {p.name}")
    return 0


def _nearest_neighbour_spacing(points) -> float:
    import numpy as np
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return 1.0
    dist, _ = cKDTree(points).query(points, k=2)
    return float(np.median(dist[:, 1]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
