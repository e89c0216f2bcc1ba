"""``atomnet batch``: detect → refine (→ cells) over many files and every frame, on dask."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from . import _argtypes as argtypes


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to the ``atomnet`` parser's subparsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``batch`` parser.
    """
    from .cli import add_fit_check_option, add_polarity_option, add_refine_option
    from .io.formats import describe_formats

    batch = subparsers.add_parser(
        "batch",
        help="detect + refine (+ cells) in many files and every frame of movies, on dask",
        description="Detect atom columns and refine them (with --task cells, also build unit "
        "cells; with --task particles, segment nanoparticles instead) in every image of every "
        "input and every frame of every stack. Inputs are "
        f"files ({describe_formats()}) or folders of them. "
        "Writes one atoms CSV per file or frame (y, x in pixels, row/col, pixel-centre "
        "convention), a provenance JSON per image and summary.csv (one row per file or frame: "
        "counts, median position error, seconds, status). Finished outputs are skipped, so an "
        "interrupted run resumes; every CSV is written atomically. Frames are read one at a "
        "time, so memory stays flat for long movies.",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of them")
    batch.add_argument("--out", required=True, help="output folder")
    batch.add_argument(
        "--workers",
        type=argtypes.count,
        default=None,
        help="local worker processes, one core each (default: the number of CPU cores; 0 runs "
        "in this process)",
    )
    batch.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on a dask.distributed cluster (e.g. tcp://10.0.0.5:8786) instead of local "
        "processes; its workers must see the same input and output paths",
    )
    batch.add_argument(
        "--task",
        choices=("atoms", "cells", "particles"),
        default="atoms",
        help="atoms: detect + refine; cells: also unit cells, B sites, strain; particles: "
        "segment nanoparticles (default: %(default)s)",
    )
    batch.add_argument(
        "--model",
        default=None,
        help="registry name or .onnx path of the detection model (default: the built-in one; "
        "'classical' for the Gaussian-filter baseline), or of the segmentation model for "
        "--task particles (default: atomnet-particles)",
    )
    batch.add_argument("--threshold", type=argtypes.probability, default=None)
    add_refine_option(batch)
    add_fit_check_option(batch)
    add_polarity_option(batch)
    batch.add_argument("--no-bsites", action="store_true", help="--task cells: skip B sites")
    batch.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    batch.add_argument(
        "--frames-per-task", type=int, default=None, help="frames per dask task (default: auto)"
    )
    batch.add_argument(
        "--overwrite", action="store_true", help="recompute and replace existing outputs"
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=run_command)
    return batch


class ProgressBar:
    """A plain-text progress bar on a stream: count, rate and time left."""

    def __init__(self, stream: Any = None, width: int = 30, every: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.every = every
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Draw the bar (at most every ``every`` seconds, and always at the end)."""
        now = time.perf_counter()
        if done < total and now - self.last < self.every and done > 0:
            return
        self.last = now
        frac = done / total if total else 1.0
        filled = round(self.width * frac)
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = f"{left:.0f} s left" if left == left else "…"
        line = (
            f"\ratomnet batch [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{done}/{total} frames, {rate:.1f}/s, {eta}   "
        )
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def run_command(args: argparse.Namespace) -> int:
    """Run ``atomnet batch`` (called by :func:`napari_atomnet.cli.main`)."""
    import os

    import pandas as pd

    from .batch import run_batch

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if args.frames_per_task is not None and args.frames_per_task < 1:
        raise ValueError("--frames-per-task must be at least 1")
    result = run_batch(
        args.inputs,
        args.out,
        task=args.task,
        detector=args.model,
        threshold=args.threshold,
        refine=args.refine,
        fit_check=not args.no_fit_check,
        polarity=args.polarity,
        bsites=not args.no_bsites,
        device=args.device,
        n_workers=workers,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        frames_per_job=args.frames_per_task,
        progress=None if args.quiet else ProgressBar(),
    )
    where = args.scheduler or (
        f"{workers} local worker{'s' if workers != 1 else ''}" if workers else "this process"
    )
    print(
        f"{result.n_computed} frames analysed ({result.frames_per_second:.1f}/s on {where}), "
        f"{result.n_skipped} already done, {result.n_failed} failed -> {result.summary_path}"
    )
    if result.n_failed:
        failed = result.summary[result.summary["status"] == "error"]
        for _, row in failed.head(5).iterrows():
            frame = "" if pd.isna(row["frame"]) else f"frame {row['frame']}"
            print(f"  {row['input']} {frame}: {row['error']}", file=sys.stderr)
        return 1
    return 0
