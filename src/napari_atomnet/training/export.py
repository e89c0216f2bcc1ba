"""Export trained networks to ONNX with their model cards.

:func:`export_onnx` is the one writer: legacy TorchScript exporter (``dynamo=False``), input
``image`` float32 (N, 1, H, W) with N, H and W dynamic, the card embedded in the ONNX metadata
under ``napari_atomnet_card`` (without the sha256, which cannot contain itself) and written as JSON
beside the file (with the sha256), both written atomically, at most :data:`MAX_ONNX_BYTES`.

:func:`export_detector` follows the contract of :mod:`napari_atomnet.models.detector`: outputs
``heatmap`` (N, C, H, W, sigmoid applied) and, with a size head, ``size`` (N, 1, H, W, box side in
input px).  The segmenter's exporter (:func:`napari_atomnet.training.seg_export.export_segmenter`)
uses the same writer.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io._atomic import atomic_path, write_text_atomic
from ..models.registry import CARD_KEY, file_sha256

__all__ = ["MAX_ONNX_BYTES", "embedded_card", "export_detector", "export_onnx", "rewrite_card"]

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


def export_onnx(
    wrapper: Any,
    size: int,
    path: str | os.PathLike,
    card_info: dict[str, Any],
    *,
    task: str,
    required: Sequence[str],
    outputs: dict[str, str],
    input_text: str,
    opset: int = 17,
) -> dict[str, Any]:
    """Export ``wrapper`` (a module taking one (N, 1, H, W) image) and write its model card.

    Parameters
    ----------
    wrapper : torch.nn.Module
        The inference module (put in eval mode).
    size : int
        Side of the square example input used for tracing (a multiple of the pad multiple).
    path : path-like
        The ``.onnx`` file to write; the card goes beside it with the suffix ``.json``.
    card_info : dict
        Card entries; must contain ``required``.
    task : str
        The card's ``task``.
    required : sequence of str
        Card entries that must be present.
    outputs : dict
        Output names (in the wrapper's order) and their descriptions for the card.
    input_text : str
        Description of the input for the card.
    opset : int
        ONNX opset.

    Returns
    -------
    dict
        The card as written (with ``sha256``).

    Raises
    ------
    ValueError
        A required card entry is missing, the path does not end in ``.onnx``, or the file would
        exceed :data:`MAX_ONNX_BYTES`.
    """
    import onnx
    import torch

    missing = [k for k in required if k not in card_info]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the model file must end in .onnx")
    wrapper.eval()
    names = list(outputs)
    dynamic = {name: {0: "N", 2: "H", 3: "W"} for name in ["image", *names]}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 1, size, size),),
            buf,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    card = {
        "task": task,
        **card_info,
        "inputs": {"image": input_text},
        "outputs": dict(outputs),
        "opset": opset,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return _write_model(proto, path, card)


def rewrite_card(
    source: str | os.PathLike, path: str | os.PathLike, card_info: dict[str, Any]
) -> dict[str, Any]:
    """Write ``source``'s network to ``path`` with its card updated by ``card_info``.

    The graph and weights are copied unchanged; the entries the exporter filled in (``task``,
    ``inputs``, ``outputs``, ``opset``, the torch and onnx versions, ``created``) stay those of
    the export that made the graph.  Used when a trained network's evaluation is redone
    (``train_detector --evaluate-onnx``).

    Parameters
    ----------
    source : path-like
        An ONNX file written by :func:`export_onnx` (its card is embedded).
    path : path-like
        The ``.onnx`` file to write (may be ``source``); the card goes beside it as ``.json``.
    card_info : dict
        Card entries to set.

    Returns
    -------
    dict
        The card as written (with the new file's ``sha256``).

    Raises
    ------
    ValueError
        ``source`` holds no model card, or ``path`` does not end in ``.onnx``.
    """
    import onnx

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the model file must end in .onnx")
    proto = onnx.load(str(source))
    old = embedded_card(source)
    made = ("task", "inputs", "outputs", "opset", "torch_version", "onnx_version", "created")
    # the order export_onnx writes: task, the card's entries, then what the export filled in
    card = {"task": old["task"]}
    card.update((k, v) for k, v in card_info.items() if k not in made)
    card.update((k, v) for k, v in old.items() if k not in card and k not in made)
    card.update((k, old[k]) for k in made if k in old)
    return _write_model(proto, path, card)


def embedded_card(path: str | os.PathLike) -> dict[str, Any]:
    """Return the model card :func:`export_onnx` embedded in an ONNX file.

    Raises
    ------
    ValueError
        The file holds no embedded card.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in props:
        raise ValueError(f"{path}: no model card embedded (not written by export_onnx)")
    return json.loads(props[CARD_KEY])


def _write_model(proto: Any, path: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Embed ``card`` in ``proto`` and write both atomically (the card with the sha256)."""
    import onnx

    card = dict(card)
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
    from .nets import InferenceWrapper

    model.eval()
    n_classes = len(card_info.get("classes", ()))
    outputs = {
        "heatmap": f"float32 (N, {n_classes}, H, W), sigmoid centre probabilities, Gaussian "
        "blobs at column centres"
    }
    if model.size_head:
        outputs["size"] = "float32 (N, 1, H, W), box side in input px"
    return export_onnx(
        InferenceWrapper(model),
        4 * model.pad_multiple,
        path,
        card_info,
        task="detection",
        required=_REQUIRED,
        outputs=outputs,
        input_text="float32 (N, 1, H, W), locally normalised; H, W multiples of "
        f"{card_info.get('pad_multiple')}",
        opset=opset,
    )
