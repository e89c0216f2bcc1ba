"""The ``atomnet`` command: headless analysis of image files.

Every subcommand reports bad input as one line on stderr and exits with a non-zero code, and never
overwrites an existing output unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import _argtypes as argtypes
from ._version import __version__

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """An error to report to the user as one line, with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports bad arguments as one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``<prog>: error: <message>`` (no usage block) and exit with code 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


#: Help of every ``--polarity`` option.
POLARITY_HELP = (
    "atom contrast: bright (HAADF), dark for ABF/bright-field; auto guesses it from the image "
    "(right for STEM images; for HRTEM, atomnet-hrtem guesses it itself by running both ways, "
    "the general model needs to be told) (default: %(default)s)"
)


def add_polarity_option(parser: argparse.ArgumentParser) -> None:
    """Add the ``--polarity {auto,bright,dark}`` option (shared by every detecting command)."""
    from .core.detect import POLARITIES

    parser.add_argument("--polarity", choices=POLARITIES, default="auto", help=POLARITY_HELP)


def add_pixel_size_option(parser: argparse.ArgumentParser, why: str = "") -> None:
    """Add ``--pixel-size NM`` (default: the file's calibration, when it records one)."""
    parser.add_argument(
        "--pixel-size",
        type=argtypes.positive,
        default=None,
        metavar="NM",
        help="pixel size in nm (default: from the file, if recorded)" + why,
    )


def add_refine_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--refine`` / ``--no-refine`` (default: the detection model's card decides)."""
    parser.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine each peak by a 2D Gaussian fit (default: yes, except for models of HRTEM "
        "phase-contrast images such as atomnet-hrtem, whose card turns it off: there the fits "
        "are not Gaussian and the detected positions are kept anyway)",
    )


def add_fit_check_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-fit-check`` (shared by the commands that detect and refine)."""
    parser.add_argument(
        "--no-fit-check",
        action="store_true",
        help="keep every detection, also those that neither the model is sure of nor the "
        "Gaussian fit confirms (the model card's fit check)",
    )


def image_help(what: str = "image file") -> str:
    """Help text of an image argument: the file types the readers really read."""
    from .io.formats import describe_formats

    return f"{what} ({describe_formats()})"


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
    parser = _Parser(
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
    add_polarity_option(demo)
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=_cmd_demo)

    detect = sub.add_parser(
        "detect",
        help="detect (and refine) atom columns in an image; write a CSV",
        description="Detect atom columns with a detection model and refine each by a 2D "
        "Gaussian fit. Writes one CSV row per atom (y, x in pixels, row/col, pixel-centre "
        "convention; score, class, box y0 x0 y1 x1, fit values) and a provenance JSON beside it.",
    )
    detect.add_argument("image", help=image_help())
    detect.add_argument(
        "--model",
        default=None,
        help="registry name or .onnx path (default: the built-in detector); 'classical' for "
        "the Gaussian-filter + local-maximum baseline",
    )
    detect.add_argument(
        "--threshold",
        type=argtypes.probability,
        default=None,
        help="confidence threshold (default: the model card's)",
    )
    add_refine_option(detect)
    add_fit_check_option(detect)
    add_polarity_option(detect)
    add_pixel_size_option(
        detect,
        "; a model that learnt one sampling (its card's sampling_angstrom) gets the image "
        "resampled to it, and without a pixel size finds it from the atoms' spacing",
    )
    detect.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    detect.add_argument("--out", default=None, help="CSV path (default: <image>_atoms.csv)")
    detect.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    detect.set_defaults(func=_cmd_detect)

    refine = sub.add_parser(
        "refine",
        help="refine given atom positions by 2D Gaussian fits",
        description="Refine atom positions from a CSV (columns y, x in pixels; other columns are "
        "kept) by 2D Gaussian fits on the image; writes the same columns plus the fit values.",
    )
    refine.add_argument("image", help=image_help())
    refine.add_argument("--atoms", required=True, help="CSV with columns y, x (pixels)")
    add_polarity_option(refine)
    refine.add_argument("--out", default=None, help="CSV path (default: <atoms>_refined.csv)")
    refine.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    refine.set_defaults(func=_cmd_refine)

    cells = sub.add_parser(
        "cells",
        help="unit cells, B sites, polarization displacements and strain; write a CSV",
        description="Build unit cells from the strong (A) columns (p0, its neighbour along a, "
        "along b, and p3), locate each cell's B column, and measure its displacement from the "
        "cell centre and the cell's strain against the median cell (or the cells inside "
        "--reference-box). Atoms are detected and refined first unless --atoms is given. One CSV "
        "row per cell.",
    )
    cells.add_argument("image", help=image_help())
    cells.add_argument(
        "--atoms", default=None, help="atoms CSV (from atomnet detect); default: detect them now"
    )
    cells.add_argument("--model", default=None, help="detector when atoms are detected here")
    add_polarity_option(cells)
    cells.add_argument("--no-bsites", action="store_true", help="skip B sites / displacements")
    cells.add_argument(
        "--tolerance",
        type=float,
        default=0.3,
        help="corner search radius, fraction of the cell edge (default 0.3)",
    )
    add_pixel_size_option(cells)
    cells.add_argument(
        "--basis",
        type=float,
        nargs=4,
        metavar=("AY", "AX", "BY", "BX"),
        default=None,
        help="lattice vectors a and b of the strong columns, (y, x) in px (default: found "
        "from the atoms)",
    )
    cells.add_argument(
        "--reference-box",
        type=float,
        nargs=4,
        action="append",
        metavar=("Y0", "X0", "Y1", "X1"),
        default=None,
        help="strain reference: the median of the cells whose centres lie in this box (px; "
        "e.g. the substrate); repeat for several boxes (default: the median of all cells)",
    )
    cells.add_argument("--out", required=True, help="cells CSV path")
    cells.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    cells.set_defaults(func=_cmd_cells)

    # subcommands that live in their own modules (imported lazily when they run)
    from . import cli_batch, cli_export, cli_segment, cli_train

    for module in (cli_segment, cli_export, cli_batch, cli_train):
        module.register(sub)
    cli_train.register_adapt(sub)
    return parser


def _load_image(path: str):
    """Read an image file and check it is one 2D grey image.

    The file is opened lazily and its shape checked first, so a movie is refused at once
    (rather than after reading all of its frames).
    """
    from .core.image import as_analysis_image
    from .io import read_image

    data = read_image(path, lazy=True, materialize=False)
    shape = tuple(data.data.shape)
    if len(shape) == 3 and shape[-1] not in (3, 4):
        raise CLIError(
            f"{Path(path).name} is a stack of {shape[0]} frames of {shape[1]}×{shape[2]} px; "
            "this command analyses one image (use 'atomnet batch' for every frame)"
        )
    if len(shape) not in (2, 3):
        raise CLIError(f"{Path(path).name}: expected a 2D image, got an array of shape {shape}")
    return as_analysis_image(data.data), data


def _check_outputs(*paths: Path, overwrite: bool) -> None:
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise CLIError(f"{p} exists; use --overwrite or another --out")


def _cmd_detect(args: argparse.Namespace) -> int:
    from .core.refine import error_text, median_standard_error
    from .io import provenance_path, write_csv
    from .pipeline import find_atoms

    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_atoms.csv")
    _check_outputs(out, provenance_path(out), overwrite=args.overwrite)
    image, meta = _load_image(args.image)
    pixel_size = args.pixel_size or meta.pixel_size_nm
    result = find_atoms(
        image,
        detector=args.model,
        threshold=args.threshold,
        refine=args.refine,
        fit_check=not args.no_fit_check,
        polarity=args.polarity,
        source=str(args.image),
        device=args.device,
        pixel_size_nm=pixel_size,
    )
    result.provenance.update(COORDINATES_NOTE, pixel_size_nm=pixel_size)
    if "sampling" in result.provenance["params"]:  # a model with a scale, no pixel size
        print(
            f"atomnet detect: note: {result.provenance['params']['sampling']} (give --pixel-size)",
            file=sys.stderr,
        )
    write_csv(result.atoms, out, provenance=result.provenance, overwrite=args.overwrite)
    fitted = int(result.atoms["fit_ok"].sum()) if "fit_ok" in result.atoms else 0
    contrast = result.provenance["params"].get("polarity")
    dropped = result.provenance["params"].get("fit_check", {}).get("dropped", 0)
    notes = f", {dropped} unconfirmed dropped" if dropped else ""
    if "polarity_evidence" in result.provenance["params"]:
        notes += "; contrast told by the model"
    precision = error_text("positions", median_standard_error(result.atoms))
    notes += f"; {precision}" if precision else ""
    print(
        f"{len(result.atoms)} {contrast} atoms ({fitted} Gaussian fits ok{notes}) in "
        f"{result.provenance['seconds']:.2f} s on {result.provenance['device']} -> {out}"
    )
    return 0


def _cmd_refine(args: argparse.Namespace) -> int:
    from ._provenance import make_provenance
    from .io import provenance_path, read_csv, write_csv
    from .pipeline import refine_atoms

    atoms_path = Path(args.atoms)
    out = Path(args.out) if args.out else atoms_path.with_name(f"{atoms_path.stem}_refined.csv")
    _check_outputs(out, provenance_path(out), overwrite=args.overwrite)
    image, meta = _load_image(args.image)
    table = read_csv(atoms_path, required=("y", "x"))
    if len(table) == 0:
        raise CLIError(f"{atoms_path.name} has no atoms")
    if not table[["y", "x"]].notna().all().all():
        raise CLIError(f"{atoms_path.name}: y and x must be numbers in every row")
    t0 = time.perf_counter()
    refined = refine_atoms(image, table.reset_index(drop=True), polarity=args.polarity)
    seconds = time.perf_counter() - t0
    params = {
        "atoms": str(atoms_path),
        "polarity_requested": args.polarity,
        "polarity": refined.attrs.get("polarity"),
    }
    provenance = make_provenance("refine", params, source=str(args.image))
    provenance.update(COORDINATES_NOTE, pixel_size_nm=meta.pixel_size_nm, seconds=seconds)
    write_csv(refined, out, provenance=provenance, overwrite=args.overwrite)
    print(
        f"{len(refined)} atoms refined ({int(refined['fit_ok'].sum())} fits ok) in "
        f"{seconds:.2f} s -> {out}"
    )
    return 0


def _cmd_cells(args: argparse.Namespace) -> int:
    from .core.lattice import displacement_precision
    from .core.refine import error_text
    from .io import provenance_path, read_csv, write_csv
    from .pipeline import find_cells

    out = Path(args.out)
    _check_outputs(out, provenance_path(out), overwrite=args.overwrite)
    image, meta = _load_image(args.image)
    atoms = read_csv(args.atoms, required=("y", "x")) if args.atoms else None
    pixel_size = args.pixel_size or meta.pixel_size_nm
    basis = None if args.basis is None else (args.basis[:2], args.basis[2:])
    region = None if args.reference_box is None else [_box_polygon(b) for b in args.reference_box]
    lattice, provenance = find_cells(
        image,
        atoms,
        detector=args.model,
        polarity=args.polarity,
        bsites=not args.no_bsites,
        tolerance=args.tolerance,
        basis=basis,
        reference_region=region,
        pixel_size_nm=pixel_size,
        source=str(args.image),
    )
    provenance.update(COORDINATES_NOTE)
    table = lattice.cells.drop(columns=["i0", "i1", "i2", "i3"])
    write_csv(table, out, provenance=provenance, overwrite=args.overwrite)
    info = lattice.info
    precision = error_text("displacements", *displacement_precision(lattice.cells))
    precision = f"; {precision}" if precision else ""
    reference = f"; strain against {info['reference_cells']} cells in the box" if region else ""
    print(
        f"{info['n_cells']} cells ({info['n_cells_ok']} ok, {info['n_distorted']} distorted) "
        f"from {info['n_a_sites']} A sites{precision}{reference} in {provenance['seconds']:.2f} s "
        f"-> {out}"
    )
    return 0


def _box_polygon(box: Sequence[float]) -> list[list[float]]:
    """Return the corners of a ``Y0 X0 Y1 X1`` box, checked, as a polygon."""
    y0, x0, y1, x1 = box
    if not all(math.isfinite(v) for v in box) or y1 <= y0 or x1 <= x0:
        raise CLIError(f"--reference-box needs Y0 < Y1 and X0 < X1, got {' '.join(map(str, box))}")
    return [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]


#: Written into every provenance JSON beside an atoms CSV.
COORDINATES_NOTE = {
    "coordinates": "pixels; y = row, x = column; a pixel's centre has integer coordinates",
}


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
    _check_outputs(csv_path, provenance_path(csv_path), png_path, overwrite=args.overwrite)

    sample = _samples.load_sample(args.sample)
    image = sample["image"]
    t0 = time.perf_counter()
    from .models.registry import ModelError

    source = str(_samples.sample_files(args.sample)["image"])
    try:
        result = find_atoms(image, polarity=args.polarity, source=source)
    except ModelError as err:  # no built-in model installed: say so, use the baseline
        print(f"atomnet demo: {err}; using the classical detector", file=sys.stderr)
        result = find_atoms(image, detector="classical", polarity=args.polarity, source=source)
    elapsed = time.perf_counter() - t0
    atoms = result.atoms

    truth = sample["truth"]
    radius = 0.25 * _nearest_neighbour_spacing(truth[["y", "x"]].to_numpy())
    found, true = atoms[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy()
    scores = detection_scores(found, true, radius)
    loc = localization_error(found, true, radius)
    result.provenance["ground_truth_check"] = {"match_radius_px": radius, **scores, **loc}
    result.provenance.update(COORDINATES_NOTE, pixel_size_nm=sample["pixel_size_nm"])

    write_csv(atoms, csv_path, provenance=result.provenance, overwrite=args.overwrite)
    title = (
        f"{args.sample}: {len(atoms)} atoms, F1 {scores['f1']:.3f}, "
        f"RMSE {loc['rmse']:.3f} px (red: Gaussian fit, green: fallback)"
    )
    save_overlay_png(image, atoms, png_path, title=title, overwrite=args.overwrite)

    h, w = image.shape
    contrast = result.provenance["params"].get("polarity")
    print(
        f"atomnet demo: {args.sample} ({h}×{w} px): {len(atoms)} atoms ({contrast} contrast) "
        f"in {elapsed:.2f} s"
    )
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
