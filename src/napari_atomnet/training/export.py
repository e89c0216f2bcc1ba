"""Export a trained detector to ONNX with its model card.

The ONNX file follows the contract of :mod:`napari_atomnet.models.detector`: input ``image``
float32 (N, 1, H, W), outputs ``heatmap`` (N, C, H, W, sigmoid applied) and, with a size head,
``size`` (N, 1, H, W, box side in input px); N, H and W are dynamic.  The card is written as JSON
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

__all__ = ["MAX_ONNX_BYTES", "export_detector"]

#: Largest ONNX file the exporter accepts (built-in models ship inside the package).
MAX_ONNX_BYTES = 5 * 1024 * 1024

_REQUIRED = (
    "name",
    "classes",
    "stride",
    "pad_multiple",
    "margin",
    "tile",
    "default_threshold",
    "normalization",
)


def export_detector(
    model: Any, path: str | os.PathLike, card_info: dict[str, Any], *, opset: int = 17
) -> dict[str, Any]:
    """Export a detector to ``<name>.onnx`` and write its model card ``<name>.json``.

    Parameters
    ----------
    model : AtomDetector
        The trained network (put in eval mode; left in eval mode).
    path : path-like
        The ``.onnx`` file to write; the card goes beside it with the suffix ``.json``.
    card_info : dict
        Card entries; must contain ``name, classes, stride, pad_multiple, margin, tile,
        default_threshold, normalization``.  ``task`` ("detection"), ``inputs``, ``outputs``,
        ``torch_version``, ``onnx_version``, ``opset``, ``created`` and ``sha256`` are filled in.

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

    from .nets import InferenceWrapper

    missing = [k for k in _REQUIRED if k not in card_info]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the model file must end in .onnx")
    model.eval()
    wrapper = InferenceWrapper(model).eval()
    outputs = ["heatmap", "size"] if model.size_head else ["heatmap"]
    dynamic = {"image": {0: "N", 2: "H", 3: "W"}}
    dynamic.update({name: {0: "N", 2: "H", 3: "W"} for name in outputs})
    m = model.pad_multiple
    dummy = torch.zeros(1, 1, 4 * m, 4 * m)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            wrapper,
            (dummy,),
            buf,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    card = {
        "task": "detection",
        **card_info,
        "inputs": {
            "image": "float32 (N, 1, H, W), locally normalised; H, W multiples of "
            f"{card_info['pad_multiple']}"
        },
        "outputs": {
            "heatmap": f"float32 (N, {len(card_info['classes'])}, H, W), sigmoid centre "
            "probabilities, Gaussian blobs at column centres",
            **({"size": "float32 (N, 1, H, W), box side in input px"} if model.size_head else {}),
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
