"""The ``atomnet segment`` subcommand: particle segmentation and size statistics of one image.

``register(subparsers)`` adds the subcommand to the ``atomnet`` parser (see :mod:`napari_atomnet.
cli`).  Bad input raises :class:`ValueError` or :class:`OSError` with a clear message; the main
command prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .cli import add_pixel_size_option

__all__ = ["register", "run_segment"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``segment`` to the ``atomnet`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers(dest="command")``.

    Returns
    -------
    argparse.ArgumentParser
        The ``segment`` parser.
    """
    from .cli import image_help

    p = subparsers.add_parser(
        "segment",
        help="segment nanoparticles; write one CSV row per particle (+ labels image)",
        description="Segment nanoparticles (bright-field TEM cores or HAADF particles) with a "
        "segmentation model, split touching particles, and write one CSV row per particle: "
        "label, centroid y, x (pixels, row/col), area_px, equivalent_diameter_px (2 sqrt(S/pi)), "
        "perimeter_px (Crofton), circularity (4 pi S / P^2), touches_border, plus _nm columns "
        "when the pixel size is known. A provenance JSON is written beside the CSV; particles "
        "touching the image border are flagged and left out of the printed statistics.",
    )
    p.add_argument("image", help=image_help())
    p.add_argument(
        "--model",
        default=None,
        help="registry name or .onnx path (default: the built-in atomnet-particles)",
    )
    add_pixel_size_option(p)
    p.add_argument("--out", required=True, help="CSV path for the particle table")
    p.add_argument("--labels", default=None, help="also write the label image (TIFF)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run_segment)
    return p


def run_segment(args: argparse.Namespace) -> int:
    """Run ``atomnet segment`` (see :func:`register` for the arguments).

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError
        Bad image, model or option (``InvalidImageError``, ``ImageReadError``, ``ModelError``).
    OSError
        An output exists and ``--overwrite`` was not given, or a file cannot be written.
    """
    import numpy as np

    from ._provenance import make_provenance
    from .cli import _load_image
    from .io import ExportExistsError, provenance_path, write_csv, write_tiff
    from .models.segmenter import segment_particles

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out must be a .csv file, got {out.name}")
    labels_path = Path(args.labels) if args.labels else None
    if labels_path is not None and labels_path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--labels must be a .tif file, got {labels_path.name}")
    if not args.overwrite:
        for path in (out, provenance_path(out), labels_path):
            if path is not None and path.exists():
                raise ExportExistsError(path, "use --overwrite or another name")
    image, data = _load_image(args.image)
    pixel_size = args.pixel_size if args.pixel_size is not None else data.pixel_size_nm
    t0 = time.perf_counter()
    result = segment_particles(
        image, args.model, pixel_size_nm=pixel_size, device=args.device, keep_probability=False
    )
    seconds = time.perf_counter() - t0
    params = dict(result.params, pixel_size_source="option" if args.pixel_size else "file")
    provenance = make_provenance(
        "segment",
        params,
        model=result.card.provenance(),
        source=str(args.image),
        extra={
            "device": result.device,
            "seconds": round(seconds, 3),
            "coordinates": "pixels; y = row, x = column; a pixel's centre has integer coordinates",
            "pixel_size_nm": pixel_size,
            "n_particles": len(result.table),
            "n_border": int(result.table["touches_border"].sum()),
        },
    )
    write_csv(result.table, out, provenance=provenance, overwrite=args.overwrite)
    if labels_path is not None:
        lab = result.labels
        lab = lab.astype(np.uint16) if lab.max(initial=0) < 65536 else lab.astype(np.int32)
        write_tiff(
            labels_path, lab, pixel_size_nm=pixel_size, overwrite=args.overwrite, compress=True
        )
    stats = result.statistics()
    n = len(result.table)
    n_in = n - int(result.table["touches_border"].sum())
    unit, col = ("nm", "equivalent_diameter_nm") if pixel_size else ("px", "equivalent_diameter_px")
    line = f"{n} particles ({n - n_in} touching the border) in {seconds:.2f} s on {result.device}"
    if n_in:
        d = stats.loc[col]
        std = "" if not np.isfinite(d["std"]) else f" ± {d['std']:.3g}"
        line += f"; D = {d['mean']:.3g}{std} {unit} (n = {int(d['n'])})"
    print(f"{line} -> {out}" + (f", {labels_path}" if labels_path else ""))
    warning = result.size_warning()
    if warning:
        print(f"atomnet segment: warning: {warning}", file=sys.stderr)
    return 0
