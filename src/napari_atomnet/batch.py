"""Batch analysis of many files and of every frame of long movies, on dask.

Work is cut into tasks of a few frames of one image (a 2D image is one task).  Each task runs in a
worker process, which opens the file itself (lazily, once per process) and reads only its frames,
so memory stays flat however long the movie; the results are CSV files written atomically by the
worker, and only small summary rows travel back.  Finished outputs are skipped, so a killed run
resumes where it stopped.  Nothing here imports napari or Qt.

Outputs in ``out_dir``:

- ``<image>_atoms.csv`` for a 2D image, ``<image>/frame_00000_atoms.csv`` ... for each frame of a
  stack (``<image>`` is the file stem, plus the signal's title for multi-image files); with
  ``task="cells"`` also ``..._cells.csv`` (unit cells, B sites, displacements, strain); with
  ``task="particles"`` only ``..._particles.csv`` (one row per segmented nanoparticle, sizes in
  nm when calibrated);
- ``<image>_provenance.json`` / ``<image>/provenance.json``: what made them (plugin version,
  model, parameters, source file, pixel size);
- ``summary.csv`` (+ ``summary.json``): one row per frame or file: input, image, frame, status
  (``ok``, ``skipped`` = done before, ``error``), atom / cell / particle counts, seconds,
  outputs, error.

Columns of the atoms CSVs: ``frame``, then those of :func:`napari_atomnet.pipeline.find_atoms`
(``y, x`` in pixels, row/column, pixel-centre convention).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._provenance import make_provenance
from .core.refine import median_standard_error
from .io import ImageReadError, write_csv, write_text_atomic
from .io.images import IMAGE_SUFFIXES, read_images

if TYPE_CHECKING:
    from .sequences import MovieConstants

TASKS = ("atoms", "cells", "particles")

SUMMARY_COLUMNS = [
    "input",
    "image",
    "frame",
    "status",
    "n_atoms",
    "position_error_px",
    "n_cells",
    "n_particles",
    "seconds",
    "pixel_size_nm",
    "polarity",
    "outputs",
    "error",
]

#: Environment for worker processes: one BLAS / OpenMP thread each, so N workers use N cores.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NAPARI_ATOMNET_THREADS": "1",
}

#: glibc settings of the worker processes.  distributed sets MALLOC_TRIM_THRESHOLD_=65536 to
#: hand freed memory back to the OS at once; a fixed trim threshold also stops glibc from raising
#: its mmap threshold, so every numpy temporary over 128 KiB was mapped and unmapped again, and
#: the Gaussian fits of a 512² frame took 0.20 s instead of 0.13 s.  Temporaries up to 16 MiB
#: now come from the heap, and at most 64 MiB of free heap is kept.
WORKER_MALLOC_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(16 * 2**20),
}

ProgressCallback = Callable[[int, int], None]


@dataclass
class Job:
    """A unit of work: some frames of one image of one file."""

    path: str
    image_index: int
    image_name: str
    frames: list[int | None]
    outputs: list[dict[str, str]]  # per frame: {"atoms": path, ["cells": path]}
    pixel_size_nm: float | None = None
    #: a movie's atom contrast and lattice spacing, resolved once from its first frame (None:
    #: a 2D image, resolved by the worker from the image itself)
    polarity: str | None = None
    spacing: float | None = None
    #: an uncalibrated movie's pixel size as found from its first frame by a model that learnt
    #: one sampling; detection uses it, the outputs stay in pixels
    pixel_size_found_nm: float | None = None
    #: a movie's Gaussian model (isotropic / elliptical), decided once on its first frame
    gaussian: str | None = None
    #: a 2D image's provenance JSON, completed by the worker with what it resolved
    provenance_path: str | None = None


@dataclass
class BatchPlan:
    """Everything a batch run will do, and what it skips."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    provenance_files: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Frames to compute (not counting skipped ones)."""
        return sum(len(j.frames) for j in self.jobs)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files to analyse: files as given, and the image files inside given folders (sorted).

    Parameters
    ----------
    inputs : sequence of path-like
        Files and folders.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    ValueError
        If an input does not exist.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(
                sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"no such file or folder: {p}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name.strip())
    return keep.strip("._") or "image"


def plan_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    task: str = "atoms",
    overwrite: bool = False,
    frames_per_job: int | None = None,
    n_workers: int = 1,
    params: dict[str, Any] | None = None,
) -> BatchPlan:
    """Find the work: every image of every input, every frame of every stack.

    Parameters
    ----------
    inputs : sequence of path-like
        Files and folders (see :func:`expand_inputs`).
    out_dir : path-like
        Output folder.
    task : {"atoms", "cells", "particles"}
        What to compute per frame.
    overwrite : bool
        Recompute outputs that exist (otherwise they are skipped).
    frames_per_job : int, optional
        Frames per task; by default about a quarter of the frames per worker, between 1 and 16.
    n_workers : int
        Worker count (for the default ``frames_per_job``).
    params : dict, optional
        Analysis parameters, recorded in the provenance files.

    Returns
    -------
    BatchPlan
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    out = Path(out_dir)
    plan = BatchPlan()
    files = expand_inputs(inputs)
    stems: dict[str, int] = {}
    kinds = {"atoms": ("atoms",), "cells": ("atoms", "cells"), "particles": ("particles",)}[task]
    for path in files:
        try:
            images = _peek(path)
        except ImageReadError as err:
            plan.failed.append(_row(path, "", None, "error", error=str(err)))
            continue
        for index, image in enumerate(images):
            base = _safe(image.name)
            stems[base] = stems.get(base, 0) + 1
            if stems[base] > 1:
                base = f"{base}_{stems[base]}"
            data = image.data
            is_stack = data.ndim == 3 and data.shape[-1] not in (3, 4)
            frames: list[int | None] = list(range(data.shape[0])) if is_stack else [None]
            if is_stack:
                folder = out / base
                outputs = [
                    {k: str(folder / f"frame_{f:05d}_{k}.csv") for k in kinds} for f in frames
                ]
                prov_path = folder / "provenance.json"
            else:
                outputs = [{k: str(out / f"{base}_{k}.csv") for k in kinds}]
                prov_path = out / f"{base}_provenance.json"
            prov = make_provenance(
                f"batch_{task}",
                dict(params or {}),
                source=str(path),
                extra={
                    "image": image.name,
                    "image_index": index,
                    "shape": list(data.shape),
                    "pixel_size_nm": image.pixel_size_nm,
                    "calibration": image.metadata.get("calibration"),
                    "coordinates": "pixels; y = row, x = column; a pixel's centre has integer "
                    "coordinates",
                },
            )
            todo_frames, todo_outputs = [], []
            for f, outs in zip(frames, outputs, strict=True):
                if not overwrite and all(Path(p).exists() for p in outs.values()):
                    counts = {f"n_{k}": _count_rows(p) for k, p in outs.items()}
                    plan.skipped.append(
                        _row(
                            path,
                            image.name,
                            f,
                            "skipped",
                            pixel_size_nm=image.pixel_size_nm,
                            outputs=outs,
                            **counts,
                        )
                    )
                else:
                    todo_frames.append(f)
                    todo_outputs.append(outs)
            _remove_stale_parts(todo_outputs)
            polarity, spacing, gaussian, pixel_size_found = None, None, None, None
            if is_stack and todo_frames and task != "particles":
                # one contrast, spacing, pixel size and Gaussian model for the whole movie, from
                # its first frame (the same on every resumed run), recorded in its provenance
                try:
                    constants, gaussian = _movie_constants(data, params or {}, image.pixel_size_nm)
                except Exception:  # a bad first frame or model: each frame reports its own error
                    constants, gaussian = None, None
                if constants is not None:
                    polarity, spacing = constants.polarity, constants.spacing
                    if constants.pixel_size_estimated:
                        pixel_size_found = constants.pixel_size_nm
                        prov["params"]["pixel_size_estimated_nm"] = round(pixel_size_found, 6)
                prov["params"].update(
                    polarity_requested=(params or {}).get("polarity") or "auto",
                    polarity=polarity,
                    lattice_spacing=spacing if spacing and math.isfinite(spacing) else None,
                    gaussian_model=gaussian,
                )
            if todo_frames or not prov_path.exists():  # a finished image keeps its record
                plan.provenance_files.append((prov_path, prov))
            size = frames_per_job or max(
                1, min(16, math.ceil(len(todo_frames) / (4 * max(1, n_workers))))
            )
            for start in range(0, len(todo_frames), size):
                plan.jobs.append(
                    Job(
                        path=str(path),
                        image_index=index,
                        image_name=image.name,
                        frames=todo_frames[start : start + size],
                        outputs=todo_outputs[start : start + size],
                        pixel_size_nm=image.pixel_size_nm,
                        pixel_size_found_nm=pixel_size_found,
                        polarity=polarity,
                        spacing=spacing,
                        gaussian=gaussian,
                        provenance_path=None if is_stack else str(prov_path),
                    )
                )
    return plan


def _remove_stale_parts(outputs: list[dict[str, str]]) -> None:
    """Delete temporary files a killed run left for outputs that are about to be computed."""
    todo: dict[Path, set[str]] = {}
    for outs in outputs:
        for p in outs.values():
            todo.setdefault(Path(p).parent, set()).add(Path(p).name)
    for folder, names in todo.items():
        if not folder.is_dir():
            continue
        for part in folder.glob(".*.part"):  # atomic_path's temp names: .<name>.<random>.part
            if part.name[1:].rsplit(".", 2)[0] in names:
                part.unlink(missing_ok=True)


def _peek(path: Path) -> list[Any]:
    """Open a file for planning: shapes and calibration, without reading any frame."""
    return read_images(path, lazy=True, materialize=False)


def _movie_constants(
    data: Any, params: dict[str, Any], pixel_size_nm: float | None
) -> tuple[MovieConstants, str | None]:
    """Resolve a movie's contrast, spacing, pixel size and Gaussian model on its first frame.

    The frame is detected (not refined: a worker analyses it in full) and the Gaussian model
    chosen from the detections as :func:`napari_atomnet.pipeline.refine_atoms` would.
    """
    from .core.image import as_analysis_image
    from .pipeline import find_atoms, gaussian_model
    from .sequences import movie_constants

    frame = as_analysis_image(_read_frame(data, 0))
    detector = _detector(params.get("detector"))
    constants = movie_constants(
        frame,
        polarity=params.get("polarity") or "auto",
        detector=detector,
        pixel_size_nm=pixel_size_nm,
    )
    if not params.get("refine", True):
        return constants, None
    first = find_atoms(
        frame,
        detector=detector,
        threshold=params.get("threshold"),
        refine=False,
        polarity=constants.polarity,
        spacing=constants.spacing,
        device=params.get("device"),
        pixel_size_nm=constants.pixel_size_nm,
    )
    if not len(first.atoms):
        return constants, None
    signal = frame if constants.polarity == "bright" else -frame
    return constants, gaussian_model(signal, first.atoms[["y", "x"]].to_numpy(float))


def _read_frame(data: Any, frame: int | None) -> Any:
    """Read one frame of a (lazy) stack, or a 2D image, into memory, in this process."""
    import dask

    with dask.config.set(scheduler="synchronous"):  # read it here, not through a client
        image = data if frame is None else data[frame]
        return image.compute() if hasattr(image, "compute") else image


def _complete_provenance(path: str, params: dict[str, Any]) -> None:
    """Add what the analysis resolved (atom contrast, spacing) to a 2D image's provenance."""
    import json

    record = json.loads(Path(path).read_text())
    record.setdefault("params", {}).update(
        {
            k: params[k]
            for k in (
                "polarity_requested",
                "polarity",
                "lattice_spacing",
                "normalization_sigma",
                "gaussian_model",
            )
            if k in params
        }
    )
    write_text_atomic(path, json.dumps(record, indent=2, default=str), overwrite=True)


def _count_rows(csv_path: str) -> int | None:
    try:
        with open(csv_path, "rb") as fh:
            return max(
                0, sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1
            )
    except OSError:
        return None


def _row(path: Any, image: str, frame: int | None, status: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(input=str(path), image=image, frame=frame, status=status)
    outputs = values.pop("outputs", None)
    if outputs:
        row["outputs"] = ";".join(outputs.values())
    row.update(values)
    return row


# ------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _open_images(path: str, mtime: float) -> list[Any]:
    """Open a file lazily, once per worker process (keyed by modification time)."""
    return read_images(path, lazy=True)


@functools.lru_cache(maxsize=4)
def _segmenter(name: str | None) -> Any:
    """Resolve a segmentation model once per worker process."""
    from .models.registry import load_model
    from .models.segmenter import DEFAULT_SEGMENTER

    if name == "classical":
        raise ValueError("--task particles needs a segmentation model, not 'classical'")
    return load_model(name or DEFAULT_SEGMENTER, task="segmentation")


@functools.lru_cache(maxsize=4)
def _detector(name: str | None) -> Any:
    """Resolve a detector once per worker process (model cards check their sha256 on load)."""
    from .pipeline import resolve_detector

    return resolve_detector(name)


def _limit_threads() -> None:
    """One thread per worker for BLAS and onnxruntime (set before the session is made).

    Only in a dask worker process: run in the caller's process (``n_workers=0``) the analysis
    may use every core, and the caller's environment is left alone.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):  # not in a worker
        return
    for key, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)


def run_job(job: Job, task: str, params: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Analyse the frames of one job and write their CSVs; return one summary row per frame.

    Runs in a worker process (or in-process for ``n_workers=0``).  Errors of one frame are
    reported in its row and do not stop the others.

    Parameters
    ----------
    job : Job
        The work.
    task : {"atoms", "cells", "particles"}
        What to compute.
    params : dict
        ``detector``, ``threshold``, ``refine``, ``fit_check``, ``polarity``, ``device``,
        ``bsites``.
    overwrite : bool
        Replace existing outputs.

    Returns
    -------
    list of dict
    """
    from .pipeline import find_atoms, find_cells

    _limit_threads()
    rows = []
    try:
        images = _open_images(job.path, os.path.getmtime(job.path))
        data = images[job.image_index].data
        if task == "particles":
            model = _segmenter(params.get("detector"))
        else:
            model = _detector(params.get("detector"))
    except Exception as err:
        return [
            _row(job.path, job.image_name, f, "error", error=f"{type(err).__name__}: {err}")
            for f in job.frames
        ]
    for frame, outs in zip(job.frames, job.outputs, strict=True):
        t0 = time.perf_counter()
        try:
            image = _read_frame(data, frame)
            source = job.path + ("" if frame is None else f" frame {frame}")
            if task == "particles":
                rows.append(_particles(image, model, job, frame, outs, params, overwrite, t0))
                continue
            result = find_atoms(
                image,
                detector=model,
                threshold=params.get("threshold"),
                refine=params.get("refine", True),
                fit_check=params.get("fit_check", True),
                polarity=job.polarity or params.get("polarity") or "auto",
                spacing=job.spacing,
                gaussian=job.gaussian or "auto",
                device=params.get("device"),
                source=source,
                pixel_size_nm=job.pixel_size_nm or job.pixel_size_found_nm,
            )
            resolved = result.provenance["params"]
            atoms = result.atoms
            atoms.insert(0, "frame", -1 if frame is None else frame)
            n_cells = None
            if task == "cells":
                lattice, _ = find_cells(
                    image,
                    result.atoms.drop(columns="frame"),
                    bsites=params.get("bsites", True),
                    polarity=resolved.get("polarity") or "auto",
                    pixel_size_nm=job.pixel_size_nm,
                    source=source,
                )
                cells = lattice.cells.drop(columns=["i0", "i1", "i2", "i3"], errors="ignore")
                cells.insert(0, "frame", -1 if frame is None else frame)
                write_csv(cells, outs["cells"], overwrite=overwrite)
                n_cells = len(cells)
            if job.provenance_path:
                _complete_provenance(job.provenance_path, resolved)
            # atoms last: a frame counts as done when all its outputs exist
            write_csv(atoms, outs["atoms"], overwrite=overwrite)
            rows.append(
                _row(
                    job.path,
                    job.image_name,
                    frame,
                    "ok",
                    n_atoms=len(atoms),
                    position_error_px=_rounded(median_standard_error(atoms)),
                    n_cells=n_cells,
                    seconds=round(time.perf_counter() - t0, 4),
                    pixel_size_nm=job.pixel_size_nm,
                    polarity=resolved.get("polarity"),
                    outputs=outs,
                )
            )
        except Exception as err:  # one bad frame does not stop the batch
            rows.append(
                _row(
                    job.path,
                    job.image_name,
                    frame,
                    "error",
                    seconds=round(time.perf_counter() - t0, 4),
                    error=f"{type(err).__name__}: {err}",
                )
            )
    return rows


def _rounded(value: float) -> float | None:
    """Round a summary figure to 4 digits; None for NaN (an empty cell in the summary)."""
    return round(value, 4) if math.isfinite(value) else None


def _particles(
    image: Any,
    model: Any,
    job: Job,
    frame: int | None,
    outs: dict[str, str],
    params: dict[str, Any],
    overwrite: bool,
    t0: float,
) -> dict[str, Any]:
    """Segment the particles of one frame and write their table."""
    from .models.segmenter import segment_particles

    seg = segment_particles(
        image,
        model,
        pixel_size_nm=job.pixel_size_nm,
        threshold=params.get("threshold"),
        keep_probability=False,
        device=params.get("device"),
    )
    table = seg.table.copy()
    table.insert(0, "frame", -1 if frame is None else frame)
    write_csv(table, outs["particles"], overwrite=overwrite)
    return _row(
        job.path,
        job.image_name,
        frame,
        "ok",
        n_particles=len(table),
        seconds=round(time.perf_counter() - t0, 4),
        pixel_size_nm=job.pixel_size_nm,
        outputs=outs,
    )


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What a batch run did."""

    summary: pd.DataFrame
    summary_path: Path
    seconds: float
    n_computed: int
    n_skipped: int
    n_failed: int

    @property
    def frames_per_second(self) -> float:
        """Frames computed per second of wall time."""
        return self.n_computed / self.seconds if self.seconds > 0 else float("nan")


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    task: str = "atoms",
    detector: str | None = None,
    threshold: float | None = None,
    refine: bool | None = None,
    fit_check: bool = True,
    polarity: str = "auto",
    bsites: bool = True,
    device: str | None = "cpu",
    n_workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    frames_per_job: int | None = None,
    progress: ProgressCallback | None = None,
) -> BatchResult:
    """Detect → refine (→ cells) over many files and every frame of stacks, on dask.

    Parameters
    ----------
    inputs : sequence of path-like
        Files and folders.
    out_dir : path-like
        Output folder (created).
    task : {"atoms", "cells", "particles"}
        Atoms; atoms and unit cells; or nanoparticles (segmentation, one table per frame).
    detector : str, optional
        Registry name or ``.onnx`` path of the detection model (default: the built-in model;
        ``"classical"`` for the Gaussian-filter baseline), or of the segmentation model for
        ``task="particles"`` (default: the built-in ``atomnet-particles``).
    threshold, refine, fit_check : optional
        As in :func:`napari_atomnet.pipeline.find_atoms` (``refine``: the detection model's
        card decides by default; resolved once for the whole run).
    polarity : {"auto", "bright", "dark"}
        Atom contrast: bright (HAADF), dark (ABF, bright-field) or guessed ("auto"; choose
        explicitly for HRTEM).  Resolved once per movie (from its first frame) and once per 2D
        image; the resolved contrast is in the provenance and the ``polarity`` column of
        ``summary.csv``.
    bsites : bool
        ``task="cells"``: locate B sites and displacements.
    device : {"cpu", "cuda", "auto"}
        Where the model runs (CPU by default: N CPU workers; a GPU is better used by one).
    n_workers : int
        Local worker processes (``dask.distributed.LocalCluster``, one thread each); 0 runs
        everything in this process.
    scheduler : str, optional
        Address of a running dask.distributed scheduler (``tcp://host:8786``) to run on instead;
        its workers must see the same input and output paths (and, for runs of hours, should
        be started with ``distributed.worker.profile.enabled: false``, as the local cluster is,
        so that their memory stays flat).
    overwrite : bool
        Recompute and replace existing outputs (otherwise they are skipped: resuming).
    frames_per_job : int, optional
        Frames per task (see :func:`plan_batch`).
    progress : callable, optional
        ``progress(done, total)`` in frames, as tasks finish.

    Returns
    -------
    BatchResult
        ``summary.csv`` in ``out_dir`` has one row per frame or file (also skipped and failed
        ones).
    """
    from .core.detect import POLARITIES

    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if task != "particles":  # what the detection model's card says, once for the run
        from .pipeline import card_defaults

        _, refine, polarity = card_defaults(_detector(detector), refine, polarity)
    elif refine is None:
        refine = True
    t0 = time.perf_counter()
    params = {
        "detector": detector,
        "threshold": threshold,
        "refine": refine,
        "fit_check": fit_check,
        "polarity": polarity,
        "bsites": bsites,
        "device": device,
        "task": task,
    }
    plan = plan_batch(
        inputs,
        out_dir,
        task=task,
        overwrite=overwrite,
        frames_per_job=frames_per_job,
        n_workers=n_workers,
        params=params,
    )
    for prov_path, prov in plan.provenance_files:
        import json

        write_text_atomic(prov_path, json.dumps(prov, indent=2, default=str), overwrite=True)
    total = plan.n_frames
    rows: list[dict[str, Any]] = []
    done = 0
    if progress is not None:
        progress(0, total)
    try:
        for job_rows in _execute(plan.jobs, task, params, overwrite, n_workers, scheduler):
            rows.extend(job_rows)
            done += len(job_rows)
            if progress is not None:
                progress(done, total)
    finally:  # also when interrupted: what was finished is in the summary
        seconds = time.perf_counter() - t0
        summary = pd.DataFrame(plan.failed + plan.skipped + rows, columns=SUMMARY_COLUMNS)
        if len(summary):
            summary["frame"] = summary["frame"].astype("Int64")
            summary["n_atoms"] = summary["n_atoms"].astype("Int64")
            summary["n_cells"] = summary["n_cells"].astype("Int64")
            summary["n_particles"] = summary["n_particles"].astype("Int64")
        summary = summary.sort_values(
            ["input", "image", "frame"], kind="stable", na_position="first"
        )
        summary_path = Path(out_dir) / "summary.csv"
        run_info = make_provenance(
            f"batch_{task}",
            params,
            source=";".join(str(p) for p in inputs),
            extra={
                "n_workers": n_workers,
                "scheduler": scheduler,
                "seconds": round(seconds, 3),
                "computed": len(rows),
                "skipped": len(plan.skipped),
                "failed": int((summary["status"] == "error").sum()) if len(summary) else 0,
            },
        )
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_csv(summary, summary_path, provenance=run_info, overwrite=True)
    n_failed = int((summary["status"] == "error").sum())
    return BatchResult(
        summary=summary.reset_index(drop=True),
        summary_path=summary_path,
        seconds=seconds,
        n_computed=sum(1 for r in rows if r["status"] == "ok"),
        n_skipped=len(plan.skipped),
        n_failed=n_failed,
    )


def _execute(
    jobs: list[Job],
    task: str,
    params: dict[str, Any],
    overwrite: bool,
    n_workers: int,
    scheduler: str | None,
) -> Iterator[list[dict[str, Any]]]:
    """Run the jobs and yield each one's rows as it finishes (bounded number in flight)."""
    if not jobs:
        return
    if scheduler is None and n_workers <= 0:
        for job in jobs:
            yield run_job(job, task, params, overwrite)
        return
    from distributed import Client, as_completed

    cluster = None
    if scheduler is None:
        cluster = local_cluster(n_workers)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        slots = max(2, 2 * len(client.scheduler_info().get("workers", {})) or 2 * n_workers)
        pending = iter(jobs)
        # pure=False: a re-run must recompute (the outputs may have been deleted meanwhile)
        running = as_completed(
            [
                client.submit(run_job, job, task, params, overwrite, pure=False)
                for job in _take(pending, slots)
            ]
        )
        for future in running:
            yield future.result()
            future.release()
            for job in _take(pending, 1):
                running.add(client.submit(run_job, job, task, params, overwrite, pure=False))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def local_cluster(n_workers: int) -> Any:
    """Start the local dask cluster of a batch run: worker processes of one thread each.

    The workers get :data:`SINGLE_THREAD_ENV` (N workers use N cores) and
    :data:`WORKER_MALLOC_ENV`, and no statistical profiler.

    Parameters
    ----------
    n_workers : int
        Worker processes.

    Returns
    -------
    distributed.LocalCluster
        Close it (or use it as a context manager) when done.
    """
    import dask
    from distributed import LocalCluster

    environ = {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        **SINGLE_THREAD_ENV,
        **WORKER_MALLOC_ENV,
    }
    config = {
        "distributed.nanny.pre-spawn-environ": environ,
        # the workers' statistical profiler keeps an hour of stack samples: memory that
        # grows with the length of the run
        "distributed.worker.profile.enabled": False,
    }
    with dask.config.set(config):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )


def _take(it: Iterator[Job], n: int) -> list[Job]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out
