"""Fine-tune the atom detector on a user's corrected labels (issue 6).

:func:`fine_tune_detector` reads the labelled images of an export folder (written by
:func:`napari_atomnet.io.labels.export_labels`, or a labelImg / YOLO folder, through
:func:`~napari_atomnet.io.labels.import_labels`), continues training a detector from its torch
weights (``<model>.pt`` beside its ``.onnx``) on crops of those images mixed with freshly simulated
images (so that it does not forget what it knew), measures F1 on a held-out part of the user's
labels before and after, and writes the new model (``<name>.onnx`` + model card ``<name>.json`` +
``<name>.pt``, so it can be fine-tuned again) into the user model folder, where
:func:`~napari_atomnet.models.registry.list_models` finds it.

Training reuses the full training run's pieces: targets (:func:`~.data.label_atoms`), padding
with mirrored labels and orientation (:func:`~.data.labelled_example`: images whose atoms are dark
are negated, the network only sees bright atoms), crops (:func:`~.data.sample_batch`) and the
optimisation step (:func:`~.train_detector.train_step`).  Against forgetting, half of each batch
(``1 - user_fraction``) is cut from fresh simulations whose targets are the base model's own
outputs (distillation, squared error), and the batch-norm statistics stay the base's.  The
simulations follow the base model's own training mix when its card records one (an HRTEM model
rehearses graphene only), the general mix otherwise.

Held-out split: with three or more labelled images, whole images (``val_fraction`` of them, at
least one) are held out; with fewer, the last ``val_fraction`` of the rows of each image is, and
training crops are cut from the rows above only.  F1 is scored as the detection benchmark does:
:func:`~napari_atomnet.core.metrics.detection_scores` with a match radius of 0.25 x the median
nearest-neighbour spacing of the labels, leaving out a band of half a spacing along the edges,
with the detections of :func:`~napari_atomnet.models.detector.detect_atoms` (the real inference
path, ONNX) at the model's default threshold, pooled over the held-out images.

Needs the ``[train]`` extra (torch, onnx); importing this module does not.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from . import data
from .train_detector import BF16_TEXT, PRECISION_CHOICES, _check_precision, resolve_precision

if "torch" not in sys.modules:
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
    # made training steps 3-20x slower.  Only effective before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "TRAIN_EXTRA_HINT",
    "FineTuneConfig",
    "FineTuneResult",
    "LabelledImage",
    "check_model_name",
    "describe_precision",
    "fine_tune_detector",
    "fine_tune_on",
    "prepare_fine_tuning",
    "rehearsal_draws",
    "require_train_extra",
]

#: What to tell a user without torch.
TRAIN_EXTRA_HINT = 'fine-tuning needs torch and onnx: pip install "napari-atomnet[train]"'
#: Smallest image side (px) of any image part used for training or held out.
MIN_SIDE = 32
#: Training progress is reported every this many steps (with the mean loss since the last).
REPORT_EVERY = 5
#: Side of the simulated rehearsal images (as in the built-in model's training pool).
SIM_SHAPE = (256, 256)
#: Reflection padding of every training image (as in the built-in model's training).
PAD = 32
#: Heatmap loss of the simulated crops when distilling (see :func:`_train`).
DISTILL_LOSS = "mse"

ProgressCallback = Callable[[str, int, int, "float | None"], None]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SUFFIXES = (".pt", ".json", ".onnx")  # moved into place in this order: the .onnx comes last


@dataclass
class FineTuneConfig:
    """Hyper-parameters of a fine-tuning run (all recorded in the model card).

    Attributes
    ----------
    steps : int
        Optimisation steps (300: 1-1.5 minutes on a 2-core CPU).  On the dumbbell benchmark
        (09:16 base, no rotated copies) 300 steps gave F1 >= 0.997 on new images, and 600 no
        better, with slightly more drift on the images the base model barely handles.
    batch : int
        Crops per step.
    crop : int
        Crop side (px).
    lr : float
        Peak learning rate (short warm-up, then cosine decay).
    user_fraction : float
        Share of each batch cut from the user's labelled images; the rest from simulations.
    sim_images : int
        Simulated images mixed in so the model does not forget (0: user images only).
    val_fraction : float
        Held-out share of the user's labels (0: nothing held out, no F1 measured).
    seed : int
        Seed of the split, the simulations and the crops.
    threads : int
        torch threads while training.
    warmup : int
        Warm-up steps (Adam's moments start from zero also when the weights do not).
    weight_decay : float
        AdamW weight decay (as in the full training).
    freeze_norm : bool
        Keep the batch-norm statistics of the base model (small, mixed batches would shift them
        and with them what the model does on everything else).
    rehearsal : {"distill", "truth"}
        Targets of the simulated crops: ``"distill"`` (default) the base model's own outputs on
        them, matched by a squared error (learning without forgetting: the model is held to
        what the base did, whatever recipe trained the base); ``"truth"`` the simulator's ground
        truth with the full training's loss (which also pulls the model towards that recipe).
        Measured on the detection benchmark after fine-tuning on dumbbells (benchmarks/
        bench_finetune.py, a base model of 2026-11-21 09:16): with ground truth HRTEM F1 fell by
        up to 0.78 (600 steps), distilling with the focal loss by up to 0.05 (300 steps), with
        a squared error no case fell (300 steps).
    distill_weight : float
        Weight of the distillation loss against the user labels' loss.  On the benchmark
        (retrained base, 300 steps, with rotated copies): weight 1 let two detection cases drop
        by 0.010; 4 kept every case within 0.002 but reached only F1 0.977 on one new dumbbell
        image; 2 kept every case within 0.0045 and every new image at >= 0.995.
    rotations : int
        Extra copies of each training image rotated by ``90° k / (rotations + 1)`` (k = 1 ...):
        with the 90° turns and flips of every crop, the user's lattice is seen within ~8° of
        any orientation.  One corrected image at 12° taught without them dumbbells at 5° and
        20° (F1 >= 0.996) but not at -33° (0.41).  Rotated copies are interpolated (bilinear), and
        the corners they lack are left out of the loss.
    from_scratch : bool
        Start from freshly initialised weights of the base model's architecture instead of
        its trained weights (the base model then gives only the architecture, the threshold,
        the normalisation and the F1 "before").  For an adaptation to one microscope's
        conditions with plenty of simulated images: on the benchmark's dark-atom HRTEM
        image 3,000 steps on 500 images reached F1 0.9971 from scratch, 0.9995 from the
        weights of ``atomnet-hrtem`` (bench ``adapt``; with the two built-ins before it 0.9975
        and 0.9980, 0.9995 and 0.9980).  Needs ``freeze_norm`` False.
    channels : tuple of int, optional
        With ``from_scratch``: the widths of the new network's levels (None: the base model's).
        The card's ``architecture`` records them.
    precision : {"fp32", "bf16", "auto"}
        Training precision (see :func:`~.train_detector.train_step`): "bf16" runs the forward
        passes under bfloat16 autocast (weights, optimiser and export stay float32), "auto"
        picks it on CPUs with native bfloat16 (:func:`~.train_detector.resolve_precision`).
        The card records the precision used.
    """

    steps: int = 300
    batch: int = 8
    crop: int = 144
    lr: float = 1e-3
    user_fraction: float = 0.5
    sim_images: int = 200
    val_fraction: float = 0.2
    seed: int = 0
    threads: int = 2
    warmup: int = 30
    weight_decay: float = 1e-4
    freeze_norm: bool = True
    rehearsal: str = "distill"
    rotations: int = 5
    distill_weight: float = 2.0
    from_scratch: bool = False
    channels: tuple[int, ...] | None = None
    precision: str = "fp32"

    def check(self) -> None:
        """Raise ValueError for a value out of range."""
        if self.steps < 1 or self.batch < 1 or self.threads < 1:
            raise ValueError("steps, batch and threads must be at least 1")
        if self.crop < 32 or self.crop % 16:
            raise ValueError(f"crop must be a multiple of 16 of at least 32 px, got {self.crop}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 < self.user_fraction <= 1.0:
            raise ValueError(f"user_fraction must lie in (0, 1], got {self.user_fraction}")
        if self.sim_images < 0 or self.warmup < 0 or self.rotations < 0:
            raise ValueError("sim_images, warmup and rotations must be >= 0")
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.from_scratch and self.freeze_norm:
            raise ValueError("from_scratch needs freeze_norm False (new weights, new statistics)")
        if self.channels is not None:
            if not self.from_scratch:
                raise ValueError("channels can be chosen only when training from scratch")
            if len(self.channels) < 2 or min(self.channels) < 4:
                raise ValueError(f"channels must be two or more widths >= 4, got {self.channels}")
        _check_precision(self.precision, PRECISION_CHOICES)
        if self.rehearsal not in ("distill", "truth"):
            raise ValueError(f"rehearsal must be 'distill' or 'truth', got {self.rehearsal!r}")


@dataclass
class FineTuneResult:
    """What a fine-tuning run wrote and measured.

    Attributes
    ----------
    onnx_path : pathlib.Path
        The new model (its card ``.json`` and torch weights ``.pt`` lie beside it).
    card : dict
        The model card as written.
    f1_before, f1_after : float
        F1 of the base and of the fine-tuned model on the held-out labels (nan when nothing was
        held out).
    history : list of (int, float)
        (step, mean training loss over the steps since the previous entry).
    """

    onnx_path: Path
    card: dict
    f1_before: float
    f1_after: float
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class LabelledImage:
    """One labelled image part (a whole image or a strip of one), in image coordinates.

    Read from an export folder (:func:`fine_tune_detector`) or simulated
    (:func:`napari_atomnet.training.adapt.simulate_conditions`).
    """

    name: str
    image: NDArray[np.float32]
    rows: NDArray[np.float32]  # label_atoms layout: y, x, class, sigma_t, size
    polarity: str  # "bright" / "dark", resolved
    labels: str = ""  # where the labels came from
    #: known for simulations: scoring a model that learnt one sampling then resamples as a
    #: calibrated file would be (:func:`~napari_atomnet.models.detector.detect_atoms`)
    pixel_size_nm: float | None = None

    @property
    def truth(self) -> NDArray[np.float64]:
        """Labelled (y, x) of the atoms."""
        return self.rows[:, :2].astype(np.float64)


def require_train_extra() -> None:
    """Raise ImportError with :data:`TRAIN_EXTRA_HINT` when torch or onnx is missing."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise ImportError(TRAIN_EXTRA_HINT) from err


def check_model_name(name: str, folder: str | os.PathLike | None = None) -> str:
    """Check that ``name`` can name a new model: a safe file stem, not a built-in model's.

    Parameters
    ----------
    name : str
        Proposed name (letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at
        most 64 characters; no ``.onnx`` suffix).
    folder : path-like, optional
        Also check that no model of that name is in this folder.

    Returns
    -------
    str
        The name.

    Raises
    ------
    ValueError
        With a one-line reason.

    Examples
    --------
    >>> check_model_name("my-perovskite_v2")
    'my-perovskite_v2'
    """
    from ..models.registry import builtin_dir

    if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower().endswith(".onnx"):
        raise ValueError(
            f"model name {name!r} is not a safe file name: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 64 characters, no .onnx suffix)"
        )
    builtin = {p.stem.lower() for p in builtin_dir().glob("*.onnx")}
    if name.lower() in builtin:
        raise ValueError(f"{name!r} is a built-in model's name; choose another name")
    if folder is not None:
        _check_free(Path(folder), name, overwrite=False)
    return name


def rehearsal_draws(card: Any) -> dict[str, Any]:
    """Say how the rehearsal images of a fine-tuning run are simulated.

    They follow the base model's own training recipe (its card's ``training.config``): an HRTEM
    model rehearses graphene only.  A card that records no mix rehearses the general mix.

    Parameters
    ----------
    card : ModelCard
        The base model.

    Returns
    -------
    dict
        ``mix`` and ``graphene`` keyword arguments of :func:`~.data.make_pool` (None: default).
    """
    config = (card.info.get("training") or {}).get("config") or {}
    return {"mix": config.get("mix"), "graphene": config.get("graphene")}


def fine_tune_detector(
    data_dir: str | os.PathLike,
    *,
    name: str,
    base: str = "atomnet-detect",
    out_dir: str | os.PathLike | None = None,
    polarity: str = "auto",
    config: FineTuneConfig | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> FineTuneResult:
    """Fine-tune a detector on exported labels and register the result as a user model.

    Parameters
    ----------
    data_dir : path-like
        An export folder of :func:`~napari_atomnet.io.labels.export_labels`, a folder of such
        folders, or a labelImg / YOLO / CSV label folder (anything
        :func:`~napari_atomnet.io.labels.list_label_images` lists).
    name : str
        Name of the new model (file stem; see :func:`check_model_name`).
    base : str
        Registry name or ``.onnx`` path of the model to start from; its torch weights
        (``.pt``) must lie beside its ``.onnx``.
    out_dir : path-like, optional
        Where to write; default the user model folder
        (:func:`~napari_atomnet.models.registry.user_model_dir`).
    polarity : {"auto", "bright", "dark"}
        Contrast of the atoms in the user's images; "auto" is read per image from its labels
        (:func:`~napari_atomnet.core.detect.atom_polarity`: are the labelled atoms brighter or
        darker than their surroundings; right for STEM and for HRTEM, whose look misleads).
    config : FineTuneConfig, optional
        Hyper-parameters (defaults: :class:`FineTuneConfig`).
    progress : callable, optional
        ``progress(stage, done, total, loss)`` with stage ``"data"`` (images read and
        simulated), ``"train"`` (every :data:`REPORT_EVERY` steps, with the mean loss since the
        last report) and ``"evaluate"`` (held-out images scored, loss None).  Called on the
        calling thread.
    cancelled : callable, optional
        Polled at every step (and between images); when it returns True,
        :class:`InterruptedError` is raised and nothing is written.
    overwrite : bool
        Replace an existing user model of the same name.

    Returns
    -------
    FineTuneResult

    Raises
    ------
    ValueError
        Bad input, with a one-line message (no such folder, no labels, an image without its
        pixels or too small, a base model without torch weights, a bad or taken name, a bad
        configuration); nothing is written.
    ImportError
        torch or onnx is missing (:data:`TRAIN_EXTRA_HINT`).
    InterruptedError
        ``cancelled()`` returned True; nothing is written.
    """
    t_start = time.perf_counter()
    cfg = config or FineTuneConfig()
    cfg.check()
    if polarity not in ("auto", "bright", "dark"):
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    card, out = prepare_fine_tuning(name, base, out_dir, overwrite, from_scratch=cfg.from_scratch)
    report = progress or (lambda *_: None)
    stop = cancelled or (lambda: False)
    n_sim = cfg.sim_images if cfg.user_fraction < 1.0 else 0
    images = _read_labelled(Path(data_dir), polarity, _normalization(card), n_sim, report, stop)
    return fine_tune_on(
        images,
        card,
        name=name,
        out=out,
        config=cfg,
        polarity=polarity,
        source=str(Path(data_dir).resolve()),
        progress=report,
        cancelled=stop,
        overwrite=overwrite,
        started=t_start,
    )


def prepare_fine_tuning(
    name: str,
    base: str,
    out_dir: str | os.PathLike | None,
    overwrite: bool,
    *,
    from_scratch: bool = False,
) -> tuple[Any, Path]:
    """Check a new model's name and place and load the base model, before any work.

    Parameters
    ----------
    name : str
        Name of the new model (:func:`check_model_name`).
    base : str
        Registry name or ``.onnx`` path of the model to start from.
    out_dir : path-like, optional
        Where to write; default the user model folder.
    overwrite : bool
        An existing model of that name may be replaced.
    from_scratch : bool
        The new model takes only the base model's architecture (from its card), not its
        weights, so the base needs no ``.pt``.

    Returns
    -------
    card : ModelCard
        The base model.
    out : pathlib.Path
        The folder to write to.

    Raises
    ------
    ValueError
        A bad or taken name, or a base model without torch weights (without a card naming
        this project's architecture, when ``from_scratch``).
    ImportError
        torch or onnx is missing.
    """
    from ..models.registry import load_model, user_model_dir

    name = check_model_name(name)
    out = Path(out_dir).expanduser() if out_dir is not None else user_model_dir(create=False)
    _check_free(out, name, overwrite)
    require_train_extra()
    card = load_model(base, task="detection")
    if from_scratch:
        from .nets import ARCHITECTURE

        if (card.info.get("architecture") or {}).get("class") != ARCHITECTURE:
            raise ValueError(
                f"{card.name}'s card names no napari-atomnet architecture; a model can be "
                "trained from scratch only with the architecture of a model made here"
            )
    elif not card.weights.is_file():
        raise ValueError(
            f"{card.name} has no torch weights ({card.weights.name} beside its .onnx); only "
            "models with their .pt can be fine-tuned"
        )
    return card, out


def _normalization(card: Any) -> dict[str, float]:
    """Return the base model's normalisation rule (training images are normalised as it sees)."""
    return dict(card.info.get("normalization") or data.DEFAULT_NORMALIZATION)


def fine_tune_on(
    images: list[LabelledImage],
    card: Any,
    *,
    name: str,
    out: Path,
    config: FineTuneConfig,
    polarity: str,
    source: str,
    progress: ProgressCallback,
    cancelled: Callable[[], bool],
    overwrite: bool = False,
    started: float | None = None,
    record: dict[str, Any] | None = None,
    description: str | None = None,
    card_updates: dict[str, Any] | None = None,
) -> FineTuneResult:
    """Fine-tune ``card``'s torch weights on labelled images and write the new model.

    The work of :func:`fine_tune_detector` once the labels are read (also used by
    :func:`napari_atomnet.training.adapt.adapt_detector` with simulated images): held-out
    split, training with rehearsal, F1 before and after, the files moved into place together.

    Parameters
    ----------
    images : list of LabelledImage
        Labelled images (oriented labels, see :func:`_label_rows`).
    card : ModelCard
        The base model (its ``.pt`` beside its ``.onnx``).
    name, out, overwrite
        New model's name and folder; replace an existing one.
    config : FineTuneConfig
        Hyper-parameters.
    polarity : str
        What the caller said of the atoms' contrast (recorded).
    source : str
        Where the images came from (recorded in the card).
    progress, cancelled : callable
        As in :func:`fine_tune_detector`.
    started : float, optional
        ``time.perf_counter()`` when the whole job started (the card's wall time).
    record : dict, optional
        More entries for the card's ``fine_tuning`` record.
    description : str, optional
        The new card's description (default: fine-tuned on corrected labels).
    card_updates : dict, optional
        More top-level entries of the new card (e.g. ``polarity``).

    Returns
    -------
    FineTuneResult
    """
    cfg, report, stop = config, progress, cancelled
    t_start = time.perf_counter() if started is None else started
    weights = card.weights
    norm = _normalization(card)
    fill = str(card.info.get("border_fill", "reflect"))  # the base model's border padding
    holes = float(card.info.get("hole_weight", 1.0))  # and its loss weight at empty cell centres
    vacuum = float(card.info.get("vacuum_weight", 1.0))  # and in vacuum
    draws = rehearsal_draws(card)
    n_sim = cfg.sim_images if cfg.user_fraction < 1.0 else 0
    train_parts, val_parts, split = _split(images, cfg)
    total_data = len(images) + n_sim
    user_pool = [
        _user_example(p, angle, norm, fill, holes, vacuum)
        for p in train_parts
        for angle in 90.0 * np.arange(cfg.rotations + 1) / (cfg.rotations + 1)
    ]
    if not sum(len(p.rows) for p in train_parts):
        raise ValueError("no labelled atoms left to train on after holding out the validation part")

    def sim_progress(done: int, total: int) -> None:
        if stop():
            raise InterruptedError("fine-tuning cancelled")
        report("data", len(images) + done, total_data, None)

    ss = np.random.SeedSequence([int(cfg.seed), 0xF17E])
    sim_ss, batch_ss = ss.spawn(2)
    sim_pool = (
        data.make_pool(
            n_sim,
            sim_ss,
            shape=SIM_SHAPE,
            pad=PAD,
            normalization=norm,
            border_fill=fill,
            hole_weight=holes,
            vacuum_weight=vacuum,
            progress=sim_progress,
            **draws,
        )
        if n_sim
        else []
    )
    report("data", total_data, total_data, None)

    import torch

    from .nets import AtomDetector

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    tmp: Path | None = None
    try:
        if cfg.from_scratch:
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's
                torch.manual_seed(cfg.seed)
                model = _new_model(card, AtomDetector, cfg.channels)
        else:
            model = _load_weights(card, weights, AtomDetector, torch)
        t_train = time.perf_counter()
        history = _train(model, user_pool, sim_pool, cfg, batch_ss, report, stop, torch)
        train_s = time.perf_counter() - t_train
        model.eval()

        f1_before = _heldout_f1(card, val_parts, report, stop, offset=0, total=2 * len(val_parts))
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=out))
        from .export import export_detector

        info = _card_info(
            card,
            name,
            description
            or f"{card.name} fine-tuned on corrected labels (napari-atomnet fine-tuning).",
        )
        info.update(card_updates or {})
        from .nets import count_parameters

        # the network trained (the base's widths, or its own with cfg.channels)
        info["architecture"] = {
            **(info.get("architecture") or {}),
            "channels": list(model.channels),
            "parameters": count_parameters(model),
        }
        export_detector(model, tmp / f"{name}.onnx", info)
        f1_after = _heldout_f1(
            str(tmp / f"{name}.onnx"),
            val_parts,
            report,
            stop,
            offset=len(val_parts),
            total=2 * len(val_parts),
        )
        if stop():
            raise InterruptedError("fine-tuning cancelled")
        info["fine_tuning"] = _fine_tuning_record(
            card,
            source,
            images,
            train_parts,
            val_parts,
            split,
            polarity,
            cfg,
            f1_before,
            f1_after,
            history,
            train_s,
            time.perf_counter() - t_start,
            len(sim_pool),
        ) | (record or {})
        final_card = export_detector(model, tmp / f"{name}.onnx", info)
        torch.save(model.state_dict(), tmp / f"{name}.pt")
        _move_into_place(tmp, out, name, overwrite)
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return FineTuneResult(
        onnx_path=out / f"{name}.onnx",
        card=final_card,
        f1_before=f1_before,
        f1_after=f1_after,
        history=history,
    )


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _read_labelled(
    folder: Path,
    polarity: str,
    norm: dict[str, float],
    n_more: int,
    report: ProgressCallback,
    stop: Callable[[], bool],
) -> list[LabelledImage]:
    """Read every labelled image of ``folder`` and turn its atoms into training labels.

    ``n_more`` data items follow (simulations): the "data" progress counts them too.
    """
    from ..core.detect import atom_polarity, resolve_polarity
    from ..core.image import as_analysis_image
    from ..io.labels import import_labels, list_label_images

    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder}")
    items = list_label_images(folder)
    if not items:
        raise ValueError(
            f"{folder}: no labels found (expected an export folder of 'atomnet export' / the "
            "Export widget, or labelImg / YOLO / *_atoms.csv labels)"
        )
    out = []
    for k, item in enumerate(items):
        if stop():
            raise InterruptedError("fine-tuning cancelled")
        image, atoms, info = import_labels(item)
        if image is None:
            raise ValueError(f"{item.name}: the labels' image was not found beside them")
        img = as_analysis_image(image)
        if min(img.shape) < MIN_SIDE:
            raise ValueError(
                f"{item.name}: image of {img.shape[0]} x {img.shape[1]} px is too small to train "
                f"on (at least {MIN_SIDE} px a side)"
            )
        # Only columns centred inside the image are atoms, as in the full training and in
        # detect_atoms; an export also keeps columns centred just outside (half visible), whose
        # mirrored labels would put two atoms on one reflected peak in the padding.
        h, w = img.shape
        inside = atoms["y"].between(-0.5, h - 0.5, inclusive="left") & atoms["x"].between(
            -0.5, w - 0.5, inclusive="left"
        )
        atoms = atoms[inside]
        if polarity == "auto" and len(atoms):  # the labels say where the atoms are
            pol = atom_polarity(img, atoms[["y", "x"]].to_numpy(float))
        else:
            pol = resolve_polarity(img, polarity)
        sign = -1.0 if pol == "dark" else 1.0
        oriented = data.normalize_image(img, norm) * sign
        labels = f"{info.get('format')}: {info.get('label_path')}"
        out.append(LabelledImage(item.stem, img, _label_rows(atoms, oriented), pol, labels))
        report("data", k + 1, len(items) + n_more, None)
    if not sum(len(p.rows) for p in out):
        raise ValueError(f"{folder}: the labels hold no atoms")
    return out


def _label_rows(atoms: pd.DataFrame, oriented: NDArray[np.float32]) -> NDArray[np.float32]:
    """Training labels (``label_atoms`` layout) of an imported atoms table.

    Classes: the detector's own names ("strong", "weak") are kept; other class names (species,
    "atom") are mapped as the simulated labels are: a class whose median brightness is below
    :data:`~.data.WEAK_RATIO` of the brightest class's is "weak".  Box side: the label's box.
    """
    from scipy import ndimage

    if not len(atoms):
        return np.zeros((0, 5), np.float32)
    y = atoms["y"].to_numpy(np.float64)
    x = atoms["x"].to_numpy(np.float64)
    h, w = oriented.shape
    smooth = ndimage.gaussian_filter(oriented, 1.0)
    bright = smooth[
        np.clip(np.round(y).astype(int), 0, h - 1), np.clip(np.round(x).astype(int), 0, w - 1)
    ]
    names = (
        atoms["class_name"].astype(str).to_numpy()
        if "class_name" in atoms
        else np.full(len(atoms), "atom")
    )
    side = np.full(len(atoms), np.inf)
    if {"y0", "y1", "x0", "x1"} <= set(atoms.columns):
        box = 0.5 * (
            (atoms["y1"] - atoms["y0"]).to_numpy(np.float64)
            + (atoms["x1"] - atoms["x0"]).to_numpy(np.float64)
        )
        side = np.where(np.isfinite(box) & (box > 0), box, np.inf)  # inf: the spacing decides
    table = pd.DataFrame(
        {
            "y": y,
            "x": x,
            "class": pd.factorize(names)[0],
            "amplitude": np.maximum(bright, 0.0),
            "sigma": side / 5.0,  # label_atoms' box side is min(5 sigma, nn)
        }
    )
    rows = data.label_atoms(table)
    known = np.isin(names, data.CLASSES)
    if known.all():
        rows[:, 2] = [data.CLASSES.index(n) for n in names]
    return rows


def _user_example(
    part: LabelledImage,
    angle: float,
    norm: dict[str, float],
    fill: str = "reflect",
    hole_weight: float = 1.0,
    vacuum_weight: float = 1.0,
) -> data.Example:
    """Training example of a labelled image part, rotated by ``angle`` degrees (0: as is)."""
    from scipy import ndimage

    image, rows, valid = part.image, part.rows, None
    if angle:
        h, w = image.shape
        image = ndimage.rotate(image, angle, reshape=False, order=1, mode="reflect")
        # pixels that come from inside the original image (not the reflected corners)
        inside = ndimage.rotate(np.ones((h, w)), angle, reshape=False, order=0, cval=0.0)
        valid = ndimage.binary_erosion(inside > 0.5, iterations=2)
        c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        t = np.deg2rad(angle)
        d = rows[:, :2].astype(np.float64) - c
        pos = (
            np.column_stack(
                [
                    np.cos(t) * d[:, 0] - np.sin(t) * d[:, 1],
                    np.sin(t) * d[:, 0] + np.cos(t) * d[:, 1],
                ]
            )
            + c
        )
        iy = np.clip(np.round(pos[:, 0]).astype(int), 0, h - 1)
        ix = np.clip(np.round(pos[:, 1]).astype(int), 0, w - 1)
        keep = valid[iy, ix] & (pos[:, 0] >= -0.5) & (pos[:, 0] < h - 0.5)
        keep &= (pos[:, 1] >= -0.5) & (pos[:, 1] < w - 0.5)
        rows = rows[keep].copy()
        rows[:, :2] = pos[keep]
    ex = data.labelled_example(
        image,
        rows,
        rows[:, :2],
        polarity=-1 if part.polarity == "dark" else 1,
        pad=PAD,
        normalization=norm,
        source="user",
        meta={"name": part.name, "rotation_deg": float(angle)},
        border_fill=fill,
    ).prerender(len(data.CLASSES), hole_weight=hole_weight, vacuum_weight=vacuum_weight)
    if valid is not None and ex.targets is not None:
        ex.targets["weight"][~np.pad(valid, PAD)] = 0  # no loss where the rotation has no data
    return ex


def _split(
    images: list[LabelledImage], cfg: FineTuneConfig
) -> tuple[list[LabelledImage], list[LabelledImage], str]:
    """Training and held-out parts: whole images (>= 3 images) or a bottom strip of each."""
    if cfg.val_fraction <= 0:
        return list(images), [], "none"
    if len(images) >= 3:
        n_val = min(max(1, round(cfg.val_fraction * len(images))), len(images) - 1)
        order = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x5E1])).permutation(
            len(images)
        )
        held = set(order[:n_val].tolist())
        return (
            [p for k, p in enumerate(images) if k not in held],
            [p for k, p in enumerate(images) if k in held],
            "images",
        )
    train, val = [], []
    for p in images:
        h = p.image.shape[0]
        cut = h - round(cfg.val_fraction * h)
        if min(cut, h - cut) < MIN_SIDE:
            raise ValueError(
                f"{p.name}: image of {h} rows is too small to hold out {cfg.val_fraction:.0%} of "
                f"its rows (each part needs {MIN_SIDE} rows); label more images or set "
                "val_fraction to 0"
            )
        upper = p.rows[:, 0] < cut - 0.5
        lower = p.rows[~upper].copy()
        lower[:, 0] -= cut
        train.append(replace(p, image=p.image[:cut], rows=p.rows[upper]))
        val.append(
            replace(p, name=f"{p.name} (rows {cut}-{h - 1})", image=p.image[cut:], rows=lower)
        )
    return train, val, "strip"


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _new_model(card: Any, net_class: type, channels: Sequence[int] | None = None) -> Any:
    """Return a network of ``card``'s architecture (or of these widths), freshly initialised."""
    arch = card.info.get("architecture") or {}
    return net_class(
        classes=len(card.info.get("classes", data.CLASSES)),
        channels=tuple(channels or arch.get("channels", (16, 32, 48, 64))),
    )


def _load_weights(card: Any, weights: Path, net_class: type, torch: Any) -> Any:
    model = _new_model(card, net_class)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # a foreign or corrupt file: say which, in one line
        raise ValueError(f"{weights.name}: cannot load the torch weights ({err})") from err
    return model


def _train(
    model: Any,
    user_pool: list[data.Example],
    sim_pool: list[data.Example],
    cfg: FineTuneConfig,
    batch_ss: np.random.SeedSequence,
    report: ProgressCallback,
    stop: Callable[[], bool],
    torch: Any,
) -> list[tuple[int, float]]:
    """Run the steps; return the loss history."""
    from .train_detector import lr_schedule, train_step, use_precision

    n_user = (
        cfg.batch if not sim_pool else min(cfg.batch, max(1, round(cfg.user_fraction * cfg.batch)))
    )
    teacher = None
    if sim_pool and cfg.rehearsal == "distill":
        import copy

        teacher = copy.deepcopy(model).eval()
    # Distillation targets are soft everywhere: the focal loss hardly weighs small deviations
    # from them (|y - p|^2 x BCE), a squared error holds the outputs to the base's.
    loss: Any = "focal"
    if teacher is not None:
        loss = [
            ("focal", slice(0, n_user), 1.0),
            (DISTILL_LOSS, slice(n_user, None), cfg.distill_weight),
        ]
    precision = resolve_precision(cfg.precision)
    use_precision(model, precision)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(batch_ss)
    model.train()
    if cfg.freeze_norm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    n_classes = len(data.CLASSES)
    history: list[tuple[int, float]] = []
    running, count = 0.0, 0
    report("train", 0, cfg.steps, None)
    for step in range(cfg.steps):
        if stop():
            raise InterruptedError("fine-tuning cancelled")
        batch = data.sample_batch(user_pool, rng, n_user, cfg.crop, n_classes)
        if n_user < cfg.batch:
            sim = data.sample_batch(sim_pool, rng, cfg.batch - n_user, cfg.crop, n_classes)
            if teacher is not None:
                sim = _teacher_targets(teacher, sim, torch)
            batch = {k: np.concatenate([batch[k], sim[k]]) for k in batch}
        l_hm, l_sz = train_step(
            model,
            opt,
            batch,
            lr=lr_schedule(step, cfg.steps, cfg.lr, cfg.warmup),
            loss=loss,
            size_weight=0.2,
            precision=precision,
        )
        running += l_hm + 0.2 * l_sz
        count += 1
        if (step + 1) % REPORT_EVERY == 0 or step + 1 == cfg.steps:
            history.append((step + 1, running / count))
            report("train", step + 1, cfg.steps, running / count)
            running, count = 0.0, 0
    use_precision(model, "fp32")  # the default layout again for evaluation and export
    return history


def _teacher_targets(teacher: Any, batch: dict[str, NDArray], torch: Any) -> dict[str, NDArray]:
    """Replace a batch's targets by the (frozen) base model's outputs on its crops."""
    with torch.no_grad():
        logits, log_size = teacher(torch.from_numpy(batch["image"]))
    heat = torch.sigmoid(logits).numpy()
    return {
        **batch,
        "heat": heat,
        "log_size": log_size.clamp(-3.0, 6.0).numpy(),  # as the deployed size output
        "size_mask": (heat.max(axis=1, keepdims=True) > 0.5).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------
# evaluation and output
# --------------------------------------------------------------------------------------------
def _heldout_f1(
    model: Any,
    parts: list[LabelledImage],
    report: ProgressCallback,
    stop: Callable[[], bool],
    *,
    offset: int,
    total: int,
) -> float:
    """Pooled F1 of ``model`` (card or .onnx path) on the held-out parts (nan if none)."""
    from ..core.metrics import detection_scores
    from ..models.detector import detect_atoms
    from .train_detector import _spacing

    if not parts:
        return float("nan")
    tp = fp = fn = 0
    for k, p in enumerate(parts):
        if stop():
            raise InterruptedError("fine-tuning cancelled")
        found = detect_atoms(p.image, model, polarity=p.polarity, pixel_size_nm=p.pixel_size_nm)
        found = found.table[["y", "x"]].to_numpy()
        spacing = _spacing(p.truth)
        s = detection_scores(
            found, p.truth, 0.25 * spacing, shape=p.image.shape, border=0.5 * spacing
        )
        tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
        report("evaluate", offset + k + 1, total, None)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


#: Card entries of the base model that describe its own training run, or that the exporter
#: fills in: not copied to the fine-tuned card (everything else, e.g. thresholds, is).  The fit
#: check goes too: it was chosen on the base model's scores, and after fine-tuning it would
#: drop faint columns the user taught the model and it is not yet sure of.  So does the sampling
#: the base model learnt (``sampling_angstrom``): the new model learnt the user's images (or
#: simulations) at their own sampling, and resampling them to the base's would undo that.
_NOT_INHERITED = frozenset(
    {
        "fit_check",
        "sampling_angstrom",
        "task",
        "name",
        "description",
        "training",
        "validation",
        "speed",
        "inputs",
        "outputs",
        "opset",
        "torch_version",
        "onnx_version",
        "created",
        "sha256",
        "base",
        "fine_tuning",
    }
)


def _card_info(card: Any, name: str, description: str) -> dict[str, Any]:
    info = {k: v for k, v in card.info.items() if k not in _NOT_INHERITED}
    info.update(
        name=name,
        description=description,
        base={
            "name": card.name,
            "sha256": card.sha256,
            "version": card.info.get("version"),
            "builtin": card.builtin,
        },
    )
    return info


def _fine_tuning_record(
    card: Any,
    source: str,
    images: list[LabelledImage],
    train_parts: list[LabelledImage],
    val_parts: list[LabelledImage],
    split: str,
    polarity: str,
    cfg: FineTuneConfig,
    f1_before: float,
    f1_after: float,
    history: list[tuple[int, float]],
    train_s: float,
    wall_s: float,
    n_sim: int,
) -> dict[str, Any]:
    def f1(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 5)

    split_text = {
        "images": "whole images held out (never trained on)",
        "strip": f"the last {cfg.val_fraction:.0%} of the rows of each image held out (training "
        "crops cut from the rows above only)",
        "none": "nothing held out (val_fraction 0)",
    }[split]
    return {
        "data": source,
        "images": [
            {
                "name": p.name,
                "shape": list(p.image.shape),
                "atoms": len(p.rows),
                "polarity": p.polarity,
                "labels": p.labels,
            }
            for p in images
        ],
        "train_atoms": int(sum(len(p.rows) for p in train_parts)),
        "heldout_atoms": int(sum(len(p.rows) for p in val_parts)),
        "polarity": polarity,
        "simulated_images": n_sim,
        "config": asdict(cfg),
        "heldout": {
            "split": split_text,
            "parts": [p.name for p in val_parts],
            "scoring": "detect_atoms (ONNX) at the default threshold; detection_scores, match "
            "radius 0.25 x median nearest-neighbour spacing of the labels, border band 0.5 "
            "spacing; pooled over the held-out parts",
            "f1_before": f1(f1_before),
            "f1_after": f1(f1_after),
        },
        "threshold": f"default_threshold {card.info.get('default_threshold')} (and any "
        "class_thresholds) kept from the base model, not tuned on the held-out labels (so their "
        "F1 stays an unbiased estimate)",
        "history": [[s, round(v, 5)] for s, v in history],
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(wall_s, 1),
        "machine": f"torch CPU, {cfg.threads} threads",
        "precision": describe_precision(cfg.precision),
    }


def _check_free(out: Path, name: str, overwrite: bool) -> None:
    if overwrite:
        return
    taken = [out / f"{name}{s}" for s in _SUFFIXES if (out / f"{name}{s}").exists()]
    if taken:
        raise ValueError(
            f"a model named {name!r} exists already in {out} ({taken[0].name}); choose another name"
        )


def _move_into_place(tmp: Path, out: Path, name: str, overwrite: bool) -> None:
    _check_free(out, name, overwrite)  # again: another run may have taken the name meanwhile
    for suffix in _SUFFIXES:
        os.replace(tmp / f"{name}{suffix}", out / f"{name}{suffix}")


def describe_precision(precision: str) -> str:
    """Say which precision a configuration's ``precision`` trains in on this machine.

    Parameters
    ----------
    precision : {"fp32", "bf16", "auto"}
        As :attr:`FineTuneConfig.precision`.

    Returns
    -------
    str
        Words for a model card or a report ("auto" says that the CPU chose).
    """
    text = BF16_TEXT if resolve_precision(precision) == "bf16" else "float32"
    return text + (" (auto: this CPU's choice)" if precision == "auto" else "")
