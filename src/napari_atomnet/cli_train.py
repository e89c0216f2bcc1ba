"""The ``atomnet train`` and ``atomnet adapt`` subcommands: fine-tune a detector.

``atomnet train`` fine-tunes on exported, corrected labels; ``atomnet adapt`` on simulations at the
user's HRTEM imaging conditions.  ``register(subparsers)`` and ``register_adapt(subparsers)`` add
them to the ``atomnet`` parser (see :mod:`napari_atomnet.cli`).  The work is
:func:`napari_atomnet.training.finetune.fine_tune_detector` and
:func:`napari_atomnet.training.adapt.adapt_detector`; torch is imported
only when the command runs, and without it the command says how to install the ``[train]`` extra
(one line on stderr, exit code 2).  Bad input raises :class:`ValueError` or :class:`OSError` with a
clear message; the main command prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import _argtypes as argtypes

#: training.train_detector.PRECISION_CHOICES, spelled out: importing it would load the training
#: data code (0.3 s) into every atomnet command.
PRECISION_CHOICES = ("auto", "fp32", "bf16")

__all__ = ["register", "register_adapt", "run_adapt", "run_train"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``atomnet`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers(dest="command")``.

    Returns
    -------
    argparse.ArgumentParser
        The ``train`` parser.
    """
    p = subparsers.add_parser(
        "train",
        help="fine-tune the atom detector on exported, corrected labels (needs the [train] extra)",
        description="Fine-tune a detection model on the labelled images of an export folder "
        "('atomnet export' / the Export widget, or labelImg / YOLO labels), mixed with simulated "
        "images so it does not forget, with part of the labels held out. Prints the held-out F1 "
        "before and after, and writes NAME.onnx + NAME.json (model card) + NAME.pt into the user "
        "model folder ($NAPARI_ATOMNET_MODELS overrides it), where 'atomnet detect --model NAME' "
        "and the Detect widget find it.",
    )
    p.add_argument("--data", required=True, help="export folder with the corrected labels")
    _add_model_options(
        p,
        base="atomnet-detect",
        role="model to start from: registry name or .onnx path with its .pt beside it",
    )
    p.add_argument(
        "--polarity",
        choices=("auto", "bright", "dark"),
        default="auto",
        help="atom contrast in the images (default: guessed per image; give it for HRTEM)",
    )
    p.add_argument("--steps", type=argtypes.positive_int, default=None, help="training steps (300)")
    p.add_argument("--batch", type=argtypes.positive_int, default=None, help="crops per step (8)")
    p.add_argument("--lr", type=argtypes.positive, default=None, help="peak learning rate (1e-3)")
    p.add_argument(
        "--sim-images",
        type=argtypes.count,
        default=None,
        help="simulated images mixed in against forgetting (200)",
    )
    p.add_argument(
        "--val-fraction",
        type=argtypes.fraction,
        default=None,
        help="held-out share of the labels (0.2)",
    )
    _add_run_options(p, precision="fp32")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run ``atomnet train`` (see :func:`register` for the arguments).

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError
        Bad input (the message is printed as one line), also when torch is not installed.
    """
    _require_torch()
    from .training.finetune import FineTuneConfig, fine_tune_detector

    keys = ("steps", "batch", "lr", "sim_images", "val_fraction", "seed", "threads", "precision")
    config = FineTuneConfig(**_overrides(args, *keys))
    result = fine_tune_detector(
        args.data,
        name=args.out,
        base=args.base,
        out_dir=args.out_dir,
        polarity=args.polarity,
        config=config,
        progress=_progress_printer(args.quiet),
        overwrite=args.overwrite,
    )
    _print_result(result)
    return 0


def _sampling(args: argparse.Namespace, like: Any = None) -> float:
    """Return the sampling (Å/px): ``--pixel-size``, or the calibration of the ``--like`` file.

    ``like`` is that file when it is already read (its ``pixel_size_nm``).
    """
    if args.pixel_size is not None:
        return float(args.pixel_size)
    if like is None:
        from .io import read_image

        like = read_image(args.like, lazy=True, materialize=False)
    nm = like.pixel_size_nm
    if not nm:
        raise ValueError(f"{args.like} records no pixel size; give --pixel-size in Å")
    return 10.0 * float(nm)


def _add_model_options(p: argparse.ArgumentParser, base: str, role: str) -> None:
    """Add the new model's name and folder and the base model (``--base``, help ``role``)."""
    p.add_argument("--out", required=True, metavar="NAME", help="name of the new model")
    p.add_argument(
        "--base",
        default=base,
        help=f"{role} (default: %(default)s)",
    )
    p.add_argument(
        "--out-dir", default=None, help="folder to write to (default: the user model folder)"
    )


def _overrides(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """Return the configuration fields given on the command line (the rest keep defaults)."""
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def _add_run_options(p: argparse.ArgumentParser, precision: str) -> None:
    """Add the options every training subcommand shares (``precision``: its default here)."""
    p.add_argument("--seed", type=int, default=None, help="seed (0)")
    p.add_argument("--threads", type=argtypes.positive_int, default=None, help="torch threads (2)")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=None,
        help="training precision: bf16 runs the forward passes under bfloat16 autocast (about "
        "1.7x faster steps on CPUs with AVX512-BF16 or AMX; the model stays float32), auto "
        f"picks it where the CPU has native bfloat16 ({precision})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a user model of that name")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def _require_torch() -> None:
    """Raise ValueError (one line for the CLI) when torch or onnx is missing."""
    # Before torch starts its thread pool: idle OpenMP threads sleep instead of spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .training.finetune import require_train_extra

    try:
        require_train_extra()
    except ImportError as err:
        raise ValueError(str(err)) from None


def _progress_printer(quiet: bool) -> Any:
    """Print each stage and every tenth of the training steps (with the loss) on stderr."""
    t0 = time.perf_counter()
    last = {"stage": None, "tenth": -1}

    def progress(stage: str, done: int, total: int, loss: float | None) -> None:
        if quiet:
            return
        if stage != last["stage"]:
            last["stage"], last["tenth"] = stage, -1
            print(f"[{time.perf_counter() - t0:5.0f} s] {stage}…", file=sys.stderr, flush=True)
        tenth = 10 * done // max(total, 1)
        if stage == "train" and loss is not None and tenth > last["tenth"]:
            last["tenth"] = tenth
            print(
                f"[{time.perf_counter() - t0:5.0f} s]   step {done}/{total}  loss {loss:.4f}",
                file=sys.stderr,
                flush=True,
            )

    return progress


def _print_result(result: Any) -> None:
    held = result.card["fine_tuning"]["heldout"]
    if math.isnan(result.f1_before):
        scores = "nothing held out (--val-fraction 0)"
    else:
        scores = (
            f"held-out F1 {result.f1_before:.4f} -> {result.f1_after:.4f} "
            f"({result.card['fine_tuning']['heldout_atoms']} atoms; {held['split']})"
        )
    print(f"wrote {result.onnx_path} (+ .json, .pt); {scores}")


def register_adapt(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``adapt`` to the ``atomnet`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers(dest="command")``.

    Returns
    -------
    argparse.ArgumentParser
        The ``adapt`` parser.
    """
    p = subparsers.add_parser(
        "adapt",
        help="adapt the HRTEM detector to your microscope's imaging conditions (needs the "
        "[train] extra)",
        description="Simulate graphene HRTEM images at your microscope's conditions (defocus "
        "and Cs within a tolerance, or every (defocus, Cs) an image of yours is consistent "
        "with; astigmatism, dose, sampling, voltage) and train a compact detector "
        "(widths 16-32-48-64, with the HRTEM model's classes and settings) on them, from "
        "scratch (about 8 min on 2 CPU cores with native bfloat16, 11 without). Prints the "
        "F1 before and after on held-out simulations at those conditions, and writes "
        "NAME.onnx + NAME.json + NAME.pt into the user model folder, where 'atomnet detect "
        "--model NAME' and the Detect widget find it. Use the adapted model for images taken "
        "at those conditions.",
    )
    p.add_argument(
        "--defocus",
        type=float,
        default=None,
        help="defocus, Å (positive: underfocus); leave out with --cs to match both to the "
        "--like image",
    )
    p.add_argument("--cs", type=float, default=None, help="spherical aberration Cs, µm")
    p.add_argument("--pixel-size", type=float, help="sampling, Å per pixel (default: --like's)")
    p.add_argument(
        "--like",
        metavar="IMAGE",
        help="an image taken at these conditions (dm3/dm4, emd, ser, tif, ...): its calibration "
        "gives the sampling, and without --defocus and --cs the conditions are matched to it "
        "(every (defocus, Cs) whose image of the atoms found in it correlates within 0.005 of "
        "the best; about 15 s)",
    )
    p.add_argument(
        "--astigmatism", type=float, default=10.0, help="residual astigmatism up to, Å (10)"
    )
    p.add_argument("--dose", type=float, default=1e4, help="dose, e/Å² (1e4; drawn within x2)")
    p.add_argument("--voltage", type=float, default=80.0, help="acceleration voltage, kV (80)")
    p.add_argument(
        "--defocus-tolerance", type=float, default=None, help="± Å around --defocus (20)"
    )
    p.add_argument("--cs-tolerance", type=float, default=None, help="± µm around --cs (5)")
    _add_model_options(
        p,
        base="atomnet-hrtem",
        role="model whose classes, normalisation and thresholds the new one takes (and whose "
        "F1 is the 'before'): registry name or .onnx path (its card is enough)",
    )
    p.add_argument(
        "--images", type=argtypes.positive_int, default=500, help="simulated images (500)"
    )
    p.add_argument("--steps", type=argtypes.positive_int, default=None, help="steps (3000)")
    _add_run_options(p, precision="auto")
    p.set_defaults(func=run_adapt)
    return p


def run_adapt(args: argparse.Namespace) -> int:
    """Run ``atomnet adapt`` (see :func:`register_adapt` for the arguments).

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError
        Bad input (the message is printed as one line), also when torch is not installed.
    """
    _require_torch()
    from .training.adapt import ImagingConditions, adapt_config, adapt_detector

    given = (args.defocus is not None, args.cs is not None)
    if given[0] != given[1]:
        raise ValueError("give both --defocus and --cs, or neither to match them to --like")
    if args.pixel_size is None and args.like is None:
        raise ValueError("give the sampling: --pixel-size, or --like with a calibrated image")
    if not given[0] and args.like is None:
        raise ValueError("give --defocus and --cs, or --like IMAGE to match them to")
    tolerances = {
        key: value
        for key, value in (
            ("defocus_tolerance", args.defocus_tolerance),
            ("cs_tolerance_um", args.cs_tolerance),
        )
        if value is not None
    }
    if tolerances and not given[0]:
        raise ValueError(
            "--defocus-tolerance and --cs-tolerance go with --defocus and --cs; conditions "
            "matched to an image are drawn one grid step around each match"
        )
    common = {"astig_max_angstrom": args.astigmatism, "dose": args.dose, "voltage_kv": args.voltage}
    if given[0]:
        conditions = ImagingConditions(
            defocus=args.defocus,
            cs_um=args.cs,
            pixel_size_angstrom=_sampling(args),
            **tolerances,
            **common,
        )
    else:
        from .cli import _load_image
        from .pipeline import match_imaging_conditions

        image, like = _load_image(args.like)
        pixel_size = _sampling(args, like)
        fit = match_imaging_conditions(image, pixel_size, voltage_kv=args.voltage)
        if not args.quiet:
            print(f"conditions consistent with {Path(args.like).name}: {fit.summary()}")
        conditions = ImagingConditions.from_fit(fit, pixel_size, **common)
    result = adapt_detector(
        conditions,
        name=args.out,
        base=args.base,
        n_images=args.images,
        out_dir=args.out_dir,
        config=adapt_config(**_overrides(args, "steps", "seed", "threads", "precision")),
        progress=_progress_printer(args.quiet),
        overwrite=args.overwrite,
    )
    _print_result(result)
    return 0
