"""Small real microscope files for the reader tests.

Formats rosettasciio can write (HyperSpy ``.hspy``, Berkeley/NCEM ``.emd``) are written with its
own writers.  The formats it only reads (Gatan DM3/DM4, FEI TIA ``.ser``, Velox ``.emd``, MRC) are
built here from their published layouts, byte by byte, and every builder is checked by reading the
file back with rosettasciio in ``test_microscopy.py``:

- DM3/DM4: the tag-file layout documented by C. Boothroyd ("DM3/DM4 file format"): a big-endian
  header (version, root length, byte-order flag), then a tree of tag groups (id 20: sorted, open,
  count) and data tags (id 21: ``%%%%``, an info array of type codes, the value in the file's byte
  order); DM4 widens lengths and counts to 8 bytes and adds each tag's byte length after its name.
  Images are the groups of ``ImageList`` with ``ImageData`` (``Data``, ``DataType``,
  ``Dimensions``, ``Calibrations/Dimension`` with ``Origin``, ``Scale``, ``Units``) and ``Name``.
- TIA ``.ser``: the series header (byte order 0x4949, series id 0x0197, version 0x0210, data type
  0x4122 = 2D elements, tag type 0x4152 = time-only tags), the dimension array, the data/tag
  offset arrays, and 2D data elements (calibration offset/delta/element for x and y, data type,
  array size x, y, pixels with x fastest and rows from the bottom up) each followed by its tag.
- MRC: the MRC2014 1024-byte header (NX, NY, NZ, MODE, ..., MX, MY, MZ, cell lengths in Å, ...,
  ``MAP `` stamp, machine stamp), no extended header, then the pixels (x fastest).
- Velox ``.emd``: HDF5 with a ``Version`` JSON (format "Velox", version 11) and, per detector,
  ``Data/Image/<uuid>/Data`` (y, x, frame) and ``.../Metadata`` (UTF-8 JSON as a zero-padded
  uint8 column) with ``BinaryResult.PixelSize`` in metres and ``Detectors``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------------
# rosettasciio's own writers
# ------------------------------------------------------------------------------------------------


def signal_dict(data, *, title, scale, units, time_axis=True, original_metadata=None):
    """A rosettasciio signal dictionary for a 2D image or a T×Y×X stack."""
    names = ["t", "y", "x"][-data.ndim :]
    axes = []
    for i, name in enumerate(names):
        spatial = name != "t"
        axes.append(
            {
                "name": name,
                "scale": float(scale) if spatial else 1.0,
                "offset": 0.0,
                "units": units if spatial else "s",
                "size": int(data.shape[i]),
                "navigate": not spatial and time_axis,
            }
        )
    return {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": title}, "Signal": {"signal_type": ""}},
        "original_metadata": original_metadata or {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "learning_results": {},
        "models": {},
        "package_info": {"name": "napari-atomnet-tests", "version": "0"},
    }


def write_hspy(path, data, *, title="HAADF", scale=0.5, units="Å", chunks=None, **kw):
    from rsciio.hspy import file_writer

    sig = signal_dict(data, title=title, scale=scale, units=units, **kw)
    file_writer(str(path), sig, chunks=chunks, compression=None, show_progressbar=False)
    return Path(path)


def write_emd_ncem(path, data, *, title="HAADF", scale=0.02, units="nm"):
    from rsciio.emd import file_writer

    file_writer(str(path), signal_dict(data, title=title, scale=scale, units=units))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Gatan DM3 / DM4
# ------------------------------------------------------------------------------------------------

_DM_ARRAY_TYPES = {  # numpy dtype -> (DM image DataType, tag element type)
    np.dtype("float32"): (2, 6),
    np.dtype("uint16"): (10, 4),
    np.dtype("int16"): (1, 2),
    np.dtype("int32"): (7, 3),
    np.dtype("uint8"): (6, 10),
    np.dtype("float64"): (12, 7),
}


class _DM:
    def __init__(self, version):
        self.v = version
        self.n = ">q" if version == 4 else ">l"  # lengths / counts / type codes

    def num(self, value):
        return struct.pack(self.n, value)

    def group(self, entries):
        """``entries``: list of (name, value); value is a list (group) or a leaf."""
        out = b"\x00\x01" + self.num(len(entries))  # not sorted, open
        for name, value in entries:
            out += self.tag(name, value)
        return out

    def tag(self, name, value):
        bname = name.encode("latin-1")
        head = struct.pack(">bH", 20 if isinstance(value, list) else 21, len(bname)) + bname
        body = self.group(value) if isinstance(value, list) else self.data(value)
        if self.v == 4:
            head += struct.pack(">q", len(body))
        return head + body

    def data(self, value):
        if isinstance(value, str):
            arr = np.frombuffer(value.encode("utf-16-le"), "<u2")
            info, payload = [20, 4, arr.size], arr.tobytes()
        elif isinstance(value, np.ndarray):
            el = _DM_ARRAY_TYPES[value.dtype][1]
            info, payload = (
                [20, el, value.size],
                value.astype(value.dtype.newbyteorder("<")).tobytes(),
            )
        elif isinstance(value, float):
            info, payload = [6], struct.pack("<f", value)
        elif isinstance(value, (int, np.integer)):
            info, payload = [3], struct.pack("<l", int(value))
        else:
            raise TypeError(type(value))
        return b"%%%%" + self.num(len(info)) + b"".join(self.num(i) for i in info) + payload


def _dm_image(data, title, scale, units, origin=0.0):
    dtype_code = _DM_ARRAY_TYPES[data.dtype][0]
    dims = data.shape[::-1]  # DM lists x first
    cal = [
        ("", [("Origin", float(origin)), ("Scale", float(s)), ("Units", u)])
        for s, u in zip(scale[::-1], units[::-1], strict=True)
    ]
    return [
        (
            "ImageData",
            [
                (
                    "Calibrations",
                    [
                        ("Brightness", [("Origin", 0.0), ("Scale", 1.0), ("Units", "")]),
                        ("Dimension", cal),
                    ],
                ),
                ("Data", np.ascontiguousarray(data).ravel()),
                ("DataType", dtype_code),
                ("Dimensions", [("", int(n)) for n in dims]),
                ("PixelDepth", int(data.dtype.itemsize)),
            ],
        ),
        ("ImageTags", [("Microscope Info", [("Voltage", 300000.0), ("Operator", "tests")])]),
        ("Name", title),
        ("UniqueID", [("", 1), ("", 2), ("", 3), ("", 4)]),
    ]


def write_dm(path, images, *, version=3):
    """Write DM3/DM4 with ``images``: list of (data, title, scale per axis, units per axis)."""
    dm = _DM(version)
    root = dm.group(
        [
            ("ApplicationBounds", [("", 0), ("", 0), ("", 100), ("", 100)]),
            ("ImageList", [("", _dm_image(*im)) for im in images]),
        ]
    )
    if version == 4:
        header = struct.pack(">lql", 4, len(root), 1)
    else:
        header = struct.pack(">lll", 3, len(root), 1)
    Path(path).write_bytes(header + root + b"\x00" * 8)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# FEI TIA .ser
# ------------------------------------------------------------------------------------------------


def write_ser(path, frames, *, pixel_size_m):
    """A TIA series of 2D elements (``frames``: (N, H, W) float32), calibrated in metres."""
    frames = np.asarray(frames, dtype="<f4")
    n, h, w = frames.shape
    desc, unit = b"Number", b""
    header = struct.pack("<HHHLLLL", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, n, n)
    dim = struct.pack("<LddLL", n, 0.0, 1.0, 0, len(desc)) + desc + struct.pack("<L", len(unit))
    offsets_at = len(header) + 8 + len(dim)
    first_data = offsets_at + 8 * n
    element = 50 + h * w * 4 + 8  # data header + pixels + tag
    data_offsets = [first_data + i * element for i in range(n)]
    tag_offsets = [o + element - 8 for o in data_offsets]
    out = header + struct.pack("<LL", offsets_at, 1) + dim
    out += struct.pack(f"<{n}L", *data_offsets) + struct.pack(f"<{n}L", *tag_offsets)
    for i in range(n):
        out += struct.pack("<ddLddLHLL", 0.0, pixel_size_m, 0, 0.0, pixel_size_m, 0, 7, w, h)
        out += np.ascontiguousarray(frames[i, ::-1]).tobytes()  # TIA stores rows bottom-up
        out += struct.pack("<HHL", 0x4152, 0, 1_700_000_000 + i)
    Path(path).write_bytes(out)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# MRC (MRC2014)
# ------------------------------------------------------------------------------------------------


def write_mrc(path, data, *, pixel_size_angstrom):
    """MRC2014 file, mode 2 (float32) or 6 (uint16); 2D or a Z×Y×X stack."""
    data = np.asarray(data)
    mode = {np.dtype("float32"): 2, np.dtype("uint16"): 6, np.dtype("int16"): 1}[data.dtype]
    vol = data if data.ndim == 3 else data[None]
    nz, ny, nx = vol.shape
    head = bytearray(1024)
    struct.pack_into("<3l", head, 0, nx, ny, nz)
    struct.pack_into("<l", head, 12, mode)
    struct.pack_into("<3l", head, 28, nx, ny, nz)  # MX, MY, MZ (sampling = pixels)
    a = pixel_size_angstrom
    struct.pack_into("<3f", head, 40, nx * a, ny * a, nz * a)  # cell dimensions in Å
    struct.pack_into("<3f", head, 52, 90.0, 90.0, 90.0)
    struct.pack_into("<3l", head, 64, 1, 2, 3)
    struct.pack_into("<3f", head, 76, float(vol.min()), float(vol.max()), float(vol.mean()))
    struct.pack_into("<l", head, 108, 20140)  # NVERSION
    head[208:212] = b"MAP "
    head[212:216] = b"\x44\x44\x00\x00"  # little-endian machine stamp
    struct.pack_into("<l", head, 220, 1)
    head[224:244] = b"napari-atomnet tests"
    Path(path).write_bytes(bytes(head) + vol.astype(vol.dtype.newbyteorder("<")).tobytes())
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Velox EMD
# ------------------------------------------------------------------------------------------------


def _json_column(obj):
    raw = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    return np.concatenate([raw, np.zeros(64, np.uint8)])[:, None]


def write_velox(path, images, *, pixel_size_m):
    """Velox EMD (version 11) with one image (y, x, frames) per ``(detector name, data)``."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(
            "Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        )
        for i, (_detector, data) in enumerate(images):
            vol = data if data.ndim == 3 else data[None]
            uuid = f"{i + 1:032x}"
            group = f.create_group(f"Data/Image/{uuid}")
            group.create_dataset(
                "Data", data=np.moveaxis(vol, 0, -1), chunks=(vol.shape[1], vol.shape[2], 1)
            )
            meta = {
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
                "BinaryResult": {
                    "PixelSize": {"width": repr(pixel_size_m), "height": repr(pixel_size_m)},
                    "PixelUnitX": "m",
                    "PixelUnitY": "m",
                    "Offset": {"x": "0", "y": "0"},
                    "DetectorIndex": str(i),
                },
                "Detectors": {
                    f"Detector-{k}": {"DetectorName": name, "ExposureTime": "0.5"}
                    for k, (name, _) in enumerate(images)
                },
                "Optics": {"AccelerationVoltage": "300000"},
                "Scan": {"FrameTime": "2.0"},
            }
            group.create_dataset("Metadata", data=_json_column(meta))
    return Path(path)


def write_emi(path, frames, *, pixel_size_m, mode="STEM nP SA Zoom Image", camera=False):
    """A TIA ``.emi`` (the XML ``<ObjectInfo>`` of one acquisition) with its ``<stem>_1.ser``.

    rosettasciio takes the units from the acquisition mode: diffraction modes (or a camera in
    STEM) are in 1/m, images in m.
    """
    path = Path(path)
    write_ser(path.with_name(f"{path.stem}_1.ser"), frames, pixel_size_m=pixel_size_m)
    acquire = (
        "<CameraNamePath>BM-Ceta</CameraNamePath>" if camera else "<DwellTime>1e-6</DwellTime>"
    )
    xml = (
        "<ObjectInfo><AcquireDate>Mon Nov 20 10:00:00 2023</AcquireDate>"
        "<ExperimentalDescription><Root>"
        f"<Data><Label>Mode</Label><Value>{mode}</Value><Unit></Unit></Data>"
        "<Data><Label>High tension</Label><Value>300</Value><Unit>kV</Unit></Data>"
        "</Root></ExperimentalDescription>"
        f"<AcquireInfo>{acquire}</AcquireInfo></ObjectInfo>"
    )
    path.write_bytes(b"\x00\x01TIA binary header" + xml.encode("utf-8") + b"\x00" * 16)
    return path
