"""The image file types napari-atomnet reads: one table for the readers, the CLI and the manifest.

Plain files are read here (tifffile, imageio, numpy); microscope files through rosettasciio
(:mod:`napari_atomnet.io.microscopy`).  Help texts are made from these tables by
:func:`describe_formats`, so what the ``atomnet`` help lists is what the readers read.
"""

from __future__ import annotations

#: Plain image file ending -> format name shown to users.
PLAIN_FORMATS: dict[str, str] = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".npy": "NumPy",
}

#: Microscope file ending -> (rosettasciio module, format name shown to users).
MICROSCOPY_FORMATS: dict[str, tuple[str, str]] = {
    ".dm3": ("digitalmicrograph", "Gatan DigitalMicrograph"),
    ".dm4": ("digitalmicrograph", "Gatan DigitalMicrograph"),
    ".emd": ("emd", "EMD (Velox or Berkeley)"),
    ".ser": ("tia", "FEI TIA"),
    ".emi": ("tia", "FEI TIA"),
    ".mrc": ("mrc", "MRC"),
    ".hspy": ("hspy", "HyperSpy HDF5"),
    ".hdf5": ("hspy", "HyperSpy HDF5"),
}

#: Plain image file endings.
PLAIN_SUFFIXES = tuple(PLAIN_FORMATS)

#: Microscope file endings (read through rosettasciio).
MICROSCOPY_SUFFIXES = tuple(MICROSCOPY_FORMATS)

#: Every file ending :func:`napari_atomnet.io.read_images` reads.
IMAGE_SUFFIXES = PLAIN_SUFFIXES + MICROSCOPY_SUFFIXES


def describe_formats() -> str:
    """Return the readable file types as one line for help texts.

    Returns
    -------
    str
        Endings grouped by format, e.g. ``"tif/tiff, png, npy, dm3/dm4 (Gatan
        DigitalMicrograph), …"``.

    Examples
    --------
    >>> describe_formats().startswith("tif/tiff, png, npy, dm3/dm4 (Gatan DigitalMicrograph)")
    True
    """
    names = {**PLAIN_FORMATS, **{s: name for s, (_, name) in MICROSCOPY_FORMATS.items()}}
    groups: dict[str, list[str]] = {}
    for suffix in IMAGE_SUFFIXES:
        groups.setdefault(names[suffix], []).append(suffix.lstrip("."))
    parts = []
    for name, suffixes in groups.items():
        endings = "/".join(suffixes)
        if name in PLAIN_FORMATS.values() or name.lower() == endings.lower():
            parts.append(endings)
            continue
        # "EMD (Velox or Berkeley)" for .emd: say "emd (Velox or Berkeley)"
        head, _, rest = name.partition(" (")
        detail = rest.rstrip(")") if head.lower() == endings.lower() and rest else name
        parts.append(f"{endings} ({detail})")
    return ", ".join(parts)
