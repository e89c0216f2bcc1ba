"""Model registry: built-in models shipped in the package and user models from fine-tuning.

Every model is an ONNX file with a *model card*: a JSON file of the same stem beside it
(``atomnet-detect.onnx`` + ``atomnet-detect.json``) that says how it was trained (data recipe,
seed, time), what it outputs, its metrics and the sha256 of the ONNX file, which is checked at
load.  A lone ``.onnx`` picked by the user works too when its card is embedded in the ONNX metadata
(key ``napari_atomnet_card``, as the project's exporter writes it).

User models live in ``$NAPARI_ATOMNET_MODELS`` if set, else in the platform's user data folder
(``platformdirs.user_data_dir("napari-atomnet")/models``).  Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS_ENV = "NAPARI_ATOMNET_MODELS"
CARD_KEY = "napari_atomnet_card"


class ModelError(ValueError):
    """A model is missing, corrupt, or does not match its card; the message says which."""


@dataclass
class ModelCard:
    """What a model is and how to run it.

    Attributes
    ----------
    name : str
        Registry name (the file stem).
    task : str
        ``"detection"`` or ``"segmentation"``.
    path : pathlib.Path
        The ONNX file.
    sha256 : str
        Hash of the ONNX file ("" when the card is embedded and no external hash exists).
    builtin : bool
        Shipped inside the package.
    info : dict
        The whole card (inputs, outputs, classes, recipe, seed, metrics …).
    """

    name: str
    task: str
    path: Path
    sha256: str = ""
    builtin: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name shown in pickers."""
        return f"{self.name} (built-in)" if self.builtin else self.name

    @property
    def refine_default(self) -> bool:
        """Refine this model's detections by Gaussian fits unless told otherwise.

        False when the card says the fits do not describe its images (``"refine_default":
        false``, measured on the validation images: HRTEM phase contrast, where the fits are
        judged not Gaussian and the detected positions kept).
        """
        return bool(self.info.get("refine_default", True))

    @property
    def polarity(self) -> str | None:
        """The atoms' contrast this model is made for ("bright" / "dark"), None when any.

        Set for a model adapted to HRTEM conditions that image every atom one way; "auto"
        contrast then means that way (:func:`~napari_atomnet.models.detector.model_polarity`).
        """
        known = self.info.get("polarity")
        return known if known in ("bright", "dark") else None

    @property
    def guesses_contrast(self) -> bool:
        """For "auto" contrast, run the model both ways and keep the likelier contrast.

        Set (card ``"contrast_guess": "model"``) for models of phase-contrast images, whose
        look does not say whether the atoms are bright or dark
        (:func:`~napari_atomnet.models.detector.detect_atoms`).
        """
        return self.info.get("contrast_guess") == "model"

    @property
    def sampling_angstrom(self) -> tuple[float, float] | None:
        """The sampling range (Å/px) the model learnt, None when it learnt no physical scale.

        Set (card ``"sampling_angstrom": [low, high]``) for a model trained on one material
        at a known sampling (graphene HRTEM): an image whose pixel size is known and lies
        outside the range is resampled into it before detection.
        """
        known = self.info.get("sampling_angstrom")
        if not known or len(known) != 2:
            return None
        low, high = (float(v) for v in known)
        return (low, high) if 0 < low <= high else None

    @property
    def spacing_angstrom(self) -> float | None:
        """Nearest-neighbour distance (Å) of the material a one-scale model learnt, or None.

        Set (card ``"spacing_angstrom"``, graphene: 1.42) with :attr:`sampling_angstrom`: the
        spacing of the atoms the model finds then tells an uncalibrated image's sampling
        (:func:`napari_atomnet.models.detector.estimate_sampling`).
        """
        known = self.info.get("spacing_angstrom")
        return float(known) if known and float(known) > 0 else None

    @property
    def sampling_centre(self) -> float | None:
        """The middle of :attr:`sampling_angstrom` (Å/px), where images are resampled to."""
        sampling = self.sampling_angstrom
        return None if sampling is None else 0.5 * (sampling[0] + sampling[1])

    @property
    def finds_sampling(self) -> bool:
        """Whether the model can find an uncalibrated image's sampling (both entries set)."""
        return self.sampling_angstrom is not None and self.spacing_angstrom is not None

    @property
    def weights(self) -> Path:
        """Torch weights (``<model>.pt``) beside the ONNX file; fine-tuning starts from them."""
        return Path(self.path).with_suffix(".pt")

    def provenance(self) -> dict[str, Any]:
        """Return the ``model`` entry of a provenance record."""
        return {
            "name": self.name,
            "sha256": self.sha256 or file_sha256(self.path),
            "builtin": self.builtin,
            "version": self.info.get("version"),
        }


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def builtin_dir() -> Path:
    """Folder of the built-in models inside the installed package."""
    return Path(__file__).resolve().parent / "builtin"


def user_model_dir(create: bool = False) -> Path:
    """Folder of the user's models (fine-tuned); ``$NAPARI_ATOMNET_MODELS`` overrides it."""
    env = os.environ.get(MODELS_ENV)
    if env:
        folder = Path(env).expanduser()
    else:
        import platformdirs

        folder = Path(platformdirs.user_data_dir("napari-atomnet", appauthor=False)) / "models"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def list_models(task: str | None = None) -> list[ModelCard]:
    """Built-in models first, then user models; cards that fail to parse are skipped.

    Parameters
    ----------
    task : str, optional
        Only models for this task.

    Returns
    -------
    list of ModelCard
    """
    cards: list[ModelCard] = []
    for folder, builtin in ((builtin_dir(), True), (user_model_dir(), False)):
        if not folder.is_dir():
            continue
        for onnx_path in sorted(folder.glob("*.onnx")):
            try:
                card = _read_card(onnx_path, builtin=builtin, verify=False)
            except ModelError:
                continue
            if task is None or card.task == task:
                cards.append(card)
    return cards


def load_model(name_or_path: str | os.PathLike, *, task: str | None = None) -> ModelCard:
    """Find a model by registry name or file path and verify it against its card.

    Parameters
    ----------
    name_or_path : str or path-like
        A registry name (see :func:`list_models`) or the path of an ``.onnx`` file.
    task : str, optional
        Required task; a model for another task is refused.

    Returns
    -------
    ModelCard

    Raises
    ------
    ModelError
        Unknown name, missing file, no card, sha256 mismatch, or wrong task.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".onnx" or path.exists():
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        card = _read_card(path, builtin=False, verify=True)
    else:
        matches = [c for c in list_models() if c.name == text]
        if not matches:
            names = ", ".join(c.name for c in list_models(task)) or "none"
            raise ModelError(f"unknown model {text!r} (available: {names})")
        card = _read_card(matches[0].path, builtin=matches[0].builtin, verify=True)
    if task is not None and card.task != task:
        raise ModelError(f"{card.name} is a {card.task} model, not a {task} model")
    return card


def _read_card(onnx_path: Path, *, builtin: bool, verify: bool) -> ModelCard:
    json_path = onnx_path.with_suffix(".json")
    if json_path.is_file():
        try:
            info = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ModelError(f"{json_path.name}: unreadable model card ({err})") from err
        expected = info.get("sha256", "")
        if verify:
            actual = file_sha256(onnx_path)
            if expected and actual != expected:
                raise ModelError(
                    f"{onnx_path.name}: sha256 {actual[:12]}… does not match its model card "
                    f"({expected[:12]}…); the file is corrupt or was replaced"
                )
    else:
        info = _embedded_card(onnx_path)
        expected = ""
    task = info.get("task")
    if task not in ("detection", "segmentation"):
        raise ModelError(f"{onnx_path.name}: model card has no valid 'task'")
    return ModelCard(
        name=onnx_path.stem, task=task, path=onnx_path, sha256=expected, builtin=builtin, info=info
    )


def _embedded_card(onnx_path: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:  # onnx is optional at run time; onnxruntime can read metadata too
        onnx = None
    try:
        if onnx is not None:
            model = onnx.load(str(onnx_path), load_external_data=False)
            props = {p.key: p.value for p in model.metadata_props}
        else:
            from .runtime import create_session

            props = create_session(onnx_path, device="cpu").get_modelmeta().custom_metadata_map
    except Exception as err:
        raise ModelError(f"{onnx_path.name}: not a readable ONNX model ({err})") from err
    if CARD_KEY not in props:
        raise ModelError(
            f"{onnx_path.name}: no model card (expected {onnx_path.with_suffix('.json').name} "
            "beside it, or a card embedded by napari-atomnet's exporter)"
        )
    return json.loads(props[CARD_KEY])
