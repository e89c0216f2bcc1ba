"""Export a trained particle segmenter to ONNX with its model card.

The detector's exporter (:mod:`napari_atomnet.training.export`) is specific to detection (it wraps
the detector's two outputs and requires detector card keys), so the segmenter has its own: the
ONNX file follows the contract of :mod:`napari_atomnet.models.segmenter`: input ``image`` float32
(N, 1, H, W), output ``probability`` float32 (N, C, H, W) with the sigmoid inside; N, H and W are
dynamic; legacy TorchScript exporter (``dynamo=False``), opset 17.  The card is written as JSON
beside the ONNX file (with the file's sha256) and embedded in the ONNX metadata under
``napari_atomnet_card`` (without the sha256, which cannot contain itself).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..io._atomic import atomic_path, write_text_atomic
from ..models.registry import CARD_KEY, file_sha256

__all__ = ["MAX_ONNX_BYTES", "export_segmenter"]

#: Largest ONNX file accepted (built-in models ship inside the package).
MAX_ONNX_BYTES = 5 * 1024 * 1024

_REQUIRED = ("name", "classes", "pad_multiple", "margin", "tile", "threshold")


def export_segmenter(
    model: Any, path: str | os.PathLike, card_info: dict[str, Any], *, opset: int = 17
) -> dict[str, Any]:
    """Export a :class:`~napari_atomnet.training.seg_nets.DSUNet` and write its model card.

    Parameters
    ----------
    model : DSUNet
        The trained network (put in eval mode; left in eval mode).
    path : path-like
        The ``.onnx`` file to write; the card goes beside it with the suffix ``.json``.
    card_info : dict
        Card entries; must contain ``name, classes, pad_multiple, margin, tile, threshold``.
        ``task`` ("segmentation"), ``inputs``, ``outputs``, ``opset``, ``torch_version``,
        ``onnx_version``, ``created`` and ``sha256`` are filled in.
    opset : int
        ONNX opset.

    Returns
    -------
    dict
        The card as written (with ``sha256``).

    Raises
    ------
    ValueError
        A required card entry is missing, or the file would exceed :data:`MAX_ONNX_BYTES`.
    """
    import onnx
    import torch

    from .seg_nets import SegInference

    missing = [k for k in _REQUIRED if k not in card_info]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the model file must end in .onnx")
    model.eval()
    wrapper = SegInference(model).eval()
    m = model.pad_multiple
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 1, 2 * m, 2 * m),),
            buf,
            input_names=["image"],
            output_names=["probability"],
            dynamic_axes={
                "image": {0: "N", 2: "H", 3: "W"},
                "probability": {0: "N", 2: "H", 3: "W"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    classes = list(card_info["classes"])
    card = {
        "task": "segmentation",
        **card_info,
        "inputs": {
            "image": "float32 (N, 1, H, W), normalised by napari_atomnet.models.segmenter."
            f"normalize_image; H, W multiples of {card_info['pad_multiple']}"
        },
        "outputs": {
            "probability": f"float32 (N, {len(classes)}, H, W), sigmoid probabilities of "
            + ", ".join(classes)
        },
        "opset": opset,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    card.pop("sha256", None)
    onnx.helper.set_model_props(proto, {CARD_KEY: json.dumps(card, sort_keys=True)})
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if len(data) > MAX_ONNX_BYTES:
        raise ValueError(f"exported model is {len(data) / 1e6:.1f} MB, over the 5 MB limit")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        Path(tmp).write_bytes(data)
    card["sha256"] = file_sha256(path)
    card_path = path.with_suffix(".json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n", overwrite=True)
    for p in (path, card_path):  # package data: readable by everyone (mkstemp makes 0600)
        p.chmod(0o644)
    return card
