"""Export a trained particle segmenter to ONNX with its model card.

The ONNX file follows the contract of :mod:`napari_atomnet.models.segmenter`: input ``image``
float32 (N, 1, H, W), output ``probability`` float32 (N, C, H, W) with the sigmoid inside; N, H
and W are dynamic.  Written by the shared :func:`napari_atomnet.training.export.export_onnx`
(card embedded and beside the file, atomic, at most 5 MB).
"""

from __future__ import annotations

import os
from typing import Any

from .export import MAX_ONNX_BYTES, export_onnx

__all__ = ["MAX_ONNX_BYTES", "export_segmenter"]

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
    from .seg_nets import SegInference

    model.eval()
    classes = list(card_info.get("classes", ()))
    return export_onnx(
        SegInference(model),
        2 * model.pad_multiple,
        path,
        card_info,
        task="segmentation",
        required=_REQUIRED,
        outputs={
            "probability": f"float32 (N, {len(classes)}, H, W), sigmoid probabilities of "
            + ", ".join(classes)
        },
        input_text="float32 (N, 1, H, W), normalised by napari_atomnet.models.segmenter."
        f"normalize_image; H, W multiples of {card_info.get('pad_multiple')}",
        opset=opset,
    )
