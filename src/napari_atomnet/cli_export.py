"""``atomnet export`` and ``atomnet import``: labels for retraining, written and read back.

:func:`register` adds both subcommands to the ``atomnet`` parser.  Bad input raises
:class:`ValueError` or :class:`OSError` with a clear message; the main CLI prints it as one line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``export`` and ``import`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned; each subcommand sets ``func``.
    """
    from .cli import image_help
    from .io.labels import DEFAULT_TILE, FORMATS

    export = subparsers.add_parser(
        "export",
        help="export an image and its atoms as labels for retraining (YOLO, VOC, CSV, tiles)",
        description="Write OUT/NAME/ with the image (8-bit PNG for labelImg / YOLO, TIFF with "
        "the original data), YOLO labels + classes.txt, Pascal VOC XML as labelImg writes it, "
        "the atoms CSV with exact positions, optional tiles with their own labels, and "
        "provenance.json. The folder is written atomically and never silently replaced.",
    )
    export.add_argument("image", help=image_help())
    export.add_argument(
        "--atoms", required=True, help="atoms CSV (columns y, x in pixels; e.g. atomnet detect)"
    )
    export.add_argument("--out", required=True, help="folder in which OUT/NAME/ is created")
    export.add_argument("--name", default=None, help="export name (default: the image's stem)")
    export.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="comma-separated label formats (default: %(default)s)",
    )
    export.add_argument(
        "--tiles",
        type=int,
        nargs="?",
        const=DEFAULT_TILE,
        default=None,
        metavar="SIZE",
        help=f"also write SIZE×SIZE tiles with their own labels (--tiles alone: {DEFAULT_TILE})",
    )
    export.add_argument(
        "--tile-overlap", type=int, default=0, help="tile overlap in pixels (default 0)"
    )
    export.add_argument(
        "--classes", default=None, help="comma-separated class names in class-id order"
    )
    export.add_argument(
        "--box-size",
        type=float,
        default=None,
        help="box side (px) for atoms without a box (default: the median of the others)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.set_defaults(func=_cmd_export)

    imp = subparsers.add_parser(
        "import",
        help="read labels (an export, a labelImg VOC or a YOLO label set) into an atoms CSV",
        description="Read the labels of one image: an export folder from atomnet export, a "
        "Pascal VOC .xml (labelImg), a YOLO .txt (with classes.txt), a *_atoms.csv, or a folder "
        "holding labels for one image. Writes an atoms CSV (y, x in pixels, row/col, pixel-centre "
        "convention; class, class_name, box y0 x0 y1 x1, source) and a provenance JSON.",
    )
    imp.add_argument("path", help="export folder, label file, image file or folder")
    imp.add_argument("--image", default=None, help="the labelled image (default: found by name)")
    imp.add_argument("--out", required=True, help="atoms CSV path")
    imp.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    imp.set_defaults(func=_cmd_import)


def _cmd_export(args: argparse.Namespace) -> int:
    from .cli import _load_image
    from .io.labels import export_labels
    from .io.tables import provenance_path

    atoms_path = Path(args.atoms)
    _, image = _load_image(args.image)  # one 2D grey image, finite, with contrast
    atoms = _read_atoms(atoms_path)
    provenance = None
    prov_path = provenance_path(atoms_path)
    if prov_path.is_file():
        try:
            provenance = json.loads(prov_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{prov_path.name}: not valid JSON ({err})") from err
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    pixel_size = image.pixel_size_nm or (provenance or {}).get("pixel_size_nm")
    folder = export_labels(
        image.data,
        atoms,
        args.out,
        name=args.name or image.name,
        classes=classes,
        formats=args.formats,
        tiles=args.tiles,
        tile_overlap=args.tile_overlap,
        provenance=provenance,
        overwrite=args.overwrite,
        pixel_size_nm=pixel_size,
        box_size=args.box_size,
        source=str(args.image),
    )
    record = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    n_tiles = len(record["tiles"]["tiles"]) if record.get("tiles") else 0
    tiles = f", {n_tiles} tiles" if n_tiles else ""
    print(f"{record['counts']['atoms']} atoms ({', '.join(record['formats'])}{tiles}) -> {folder}")
    return 0


def _read_atoms(path: Path):
    from .io.labels import read_atoms_csv

    table = read_atoms_csv(path)
    if len(table) == 0:
        raise ValueError(f"{path.name} has no atoms")
    return table


def _cmd_import(args: argparse.Namespace) -> int:
    from ._provenance import make_provenance
    from .io.labels import import_labels, write_atoms_csv

    out = Path(args.out)
    if not args.overwrite:
        for p in (out, out.with_suffix(".json")):
            if p.exists():
                raise FileExistsError(f"{p} exists; use --overwrite or another --out")
    _, atoms, info = import_labels(args.path, image_path=args.image)
    provenance = make_provenance(
        "import_labels",
        {"path": str(args.path), "image": args.image},
        model=(info["provenance"] or {}).get("model"),
        source=info["image_path"],
    )
    provenance.update(
        coordinates="pixels; y = row, x = column; a pixel's centre has integer coordinates",
        format=info["format"],
        label_path=info["label_path"],
        classes=info["classes"],
        precision_px=info["precision_px"],
        warnings=info["warnings"],
        export=info["provenance"],
    )
    write_atoms_csv(atoms, out, provenance=provenance, overwrite=args.overwrite)
    warn = f" ({'; '.join(info['warnings'])})" if info["warnings"] else ""
    print(f"{len(atoms)} atoms from {info['format'].upper()} {info['label_path']} -> {out}{warn}")
    return 0
