"""Speed (and precision) of the batched Gaussian refinement, ``core.refine.fit_gaussians``.

Speed: square lattices (spacing 12 px, sigma 1.7 px, 200 counts per peak on 10 counts of
background, Poisson noise) of 1k, 10k and 100k columns, starts up to 1 px off, 11 x 11 windows
(``window=5``), default settings otherwise (elliptical model, Poisson weights, two passes with
neighbour subtraction); and a 1024² image with 64 x 64 columns (spacing 16 px) at the default
window.  Times are the best of a few runs, wall clock and process CPU; peaks/s = peaks / wall
(on a machine shared with other jobs the CPU figure is the fairer one: the fit is single-threaded).
For reference (not measured here): Atomap fits one atom at a time at ~65 atoms/s, and seed 000
reports 10–27 s of Gaussian fitting per 512²–1024² image.

Precision: 289 isolated columns (sigma 2 px) at 20, 50 and 500 counts per peak; the RMSE of the
positions against the Cramér–Rao bound of the fit window (Poisson, point-sampled Gaussian,
nuisance amplitude, width and background), the mean error (bias), and the spread of the errors
in units of the standard errors each fit reports (``y_err``, ``x_err``; 1: honest errors).

Run ``python benchmarks/bench_refine_speed.py [--quick]`` or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import sys
import time
from functools import partial

import numpy as np

from _common import HELD_OUT_SEED, markdown_table
from napari_atomnet.core.refine import fit_gaussians
from napari_atomnet.synth import render_gaussians


def lattice(
    n_side: int,
    spacing: float,
    seed: int,
    *,
    dose: float = 200.0,
    sigma: float | None = None,
    bg: float = 10.0,
    offset: float = 1.0,
):
    """Make a noisy square lattice with its truth and perturbed starts."""
    rng = np.random.default_rng(seed)
    sigma = spacing / 7.0 if sigma is None else sigma
    yy, xx = np.mgrid[0:n_side, 0:n_side] * spacing + spacing / 2
    truth = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-0.5, 0.5, (n_side**2, 2))
    size = round(n_side * spacing)
    clean = render_gaussians((size, size), truth[:, 0], truth[:, 1], dose, sigma) + bg
    image = rng.poisson(clean).astype(np.float32)
    start = truth + rng.uniform(-offset, offset, truth.shape)
    return image, truth, start


def timed(fn, repeat: int):
    best_wall, best_cpu, out = np.inf, np.inf, None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def speed_rows(quick: bool) -> list[dict]:
    cases = [("1k", 32, 12.0, 5), ("10k", 100, 12.0, 5)]
    if not quick:
        cases.append(("100k", 316, 12.0, 5))
    cases.append(("1024² image", 64, 16.0, None))
    rows = []
    for label, n_side, spacing, window in cases:
        image, truth, start = lattice(n_side, spacing, HELD_OUT_SEED + n_side)
        fit_gaussians(image, start[:200], window=window)  # warm-up (imports, caches)
        for isotropic in (False, True):
            repeat = 1 if n_side > 200 else 3
            kwargs = {"window": window, "isotropic": isotropic}
            wall, cpu, df = timed(partial(fit_gaussians, image, start, **kwargs), repeat)
            err = np.hypot(df["y"].to_numpy() - truth[:, 0], df["x"].to_numpy() - truth[:, 1])
            k = 2 * (window if window is not None else round(spacing / 2)) + 1
            rows.append(
                {
                    "case": label,
                    "peaks": len(truth),
                    "window": f"{k}x{k}",
                    "model": "isotropic" if isotropic else "elliptical",
                    "wall s": wall,
                    "cpu s": cpu,
                    "peaks/s": len(truth) / wall,
                    "peaks / cpu s": len(truth) / cpu,
                    "fit ok": float(df["fit_ok"].mean()),
                    "rmse px": float(np.sqrt(np.mean(err**2))),
                    "mean iters": float(df["n_iter"].mean()),
                }
            )
    return rows


def precision_rows(quick: bool) -> list[dict]:
    from napari_atomnet.core.metrics import gaussian_crlb_many

    rows = []
    sigma, half = 2.0, 12
    for dose, bg in ((20.0, 0.0), (50.0, 2.0), (500.0, 5.0)):
        errors, bounds, reported = [], [], []
        for rep in range(1 if quick else 3):
            image, truth, start = lattice(
                17, 24.0, HELD_OUT_SEED + 1000 * rep + int(dose), dose=dose, sigma=sigma, bg=bg
            )
            df = fit_gaussians(image, start)
            ok = df["fit_ok"].to_numpy()
            fit = df[["y", "x"]].to_numpy()[ok]
            errors.append(fit - truth[ok])
            reported.append(df[["y_err", "x_err"]].to_numpy()[ok])
            b = gaussian_crlb_many(
                dose, sigma, None, bg, window=2 * half + 1, offset=truth[ok] - np.round(fit)
            )
            bounds.append(0.5 * (b["y"] ** 2 + b["x"] ** 2))
        e = np.concatenate(errors)
        z = e / np.concatenate(reported)
        rmse = float(np.sqrt(np.mean(e**2)))
        bound = float(np.sqrt(np.mean(np.concatenate(bounds))))
        rows.append(
            {
                "counts per peak": dose,
                "background": bg,
                "peaks": len(e),
                "rmse px (per axis)": rmse,
                "CRLB px": bound,
                "rmse / CRLB": rmse / bound,
                "max |bias| px": float(np.abs(e.mean(axis=0)).max()),
                "bias s.e. px": float(e.std() / np.sqrt(len(e))),
                "error / reported error (SD)": float(z.std()),
            }
        )
    return rows


def run(quick: bool = False) -> dict:
    speed = speed_rows(quick)
    precision = precision_rows(quick)
    figures = {}
    for r in speed:
        key = r["case"].replace("² image", "2_image")
        figures[f"peaks_per_s_{key}_{r['model']}"] = round(r["peaks/s"], 1)
        figures[f"peaks_per_cpu_s_{key}_{r['model']}"] = round(r["peaks / cpu s"], 1)
        figures[f"wall_s_{key}_{r['model']}"] = round(r["wall s"], 4)
    for r in precision:
        figures[f"rmse_over_crlb_dose{int(r['counts per peak'])}"] = round(r["rmse / CRLB"], 4)
        figures[f"max_abs_bias_px_dose{int(r['counts per peak'])}"] = round(r["max |bias| px"], 5)
    markdown = "\n\n".join(
        [
            "Batched Levenberg–Marquardt over all peaks (numpy), two passes with neighbour "
            "subtraction, Poisson weights.",
            markdown_table(speed),
            "Precision on isolated columns (sigma 2 px, 25 x 25 windows):",
            markdown_table(precision),
        ]
    )
    return {
        "title": "Gaussian refinement: speed and precision",
        "markdown": markdown,
        "figures": figures,
    }


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(result["markdown"])
