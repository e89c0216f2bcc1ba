"""Train the built-in nanoparticle segmenter on simulated images and export it to ONNX.

Run::

    python -m napari_atomnet.training.train_segmenter \
        --out src/napari_atomnet/models/builtin --seed 0

Everything is seeded (numpy, torch, the simulated pool), runs on ``--threads`` CPU threads (1 by
default: deterministic, and immune to oversubscription on a shared machine) for a fixed number of
steps (not a time budget), so a run is reproducible.  The script

1. simulates a fixed pool of training images of both contrasts
   (:func:`napari_atomnet.training.seg_data.make_pool`),
2. trains :class:`~napari_atomnet.training.seg_nets.DSUNet` on random augmented crops with a
   Dice + binary cross-entropy loss on the foreground and (weighted) on the boundary channel,
3. exports ONNX + model card (:func:`napari_atomnet.training.seg_export.export_segmenter`),
4. validates the exported model through :func:`napari_atomnet.models.segmenter.segment_particles`
   on held-out simulated images (seeds :data:`~napari_atomnet.training.seg_data.VAL_SEED` + i,
   never used for training): Dice, mean IoU, touching pairs split, diameter error; the
   foreground threshold is chosen there, and the metrics go into the card with the wall times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import seg_data

__all__ = ["SegTrainConfig", "evaluate", "main", "seg_loss", "train"]

NAME = "atomnet-particles"
VERSION = "1.0"
THRESHOLDS = (0.4, 0.5, 0.6)

DESIGN = (
    "Depthwise-separable U-Net of seed 001: 4 downsamplings (max-pool) and 4 upsamplings "
    "(nearest), two ordinary 3x3 convolutions on the input and depthwise-separable 3x3 "
    "convolutions (depthwise + pointwise) everywhere else, BN + ReLU after every convolution, "
    "skip concatenation followed by an ordinary 1x1 fusion convolution and one depthwise-"
    "separable convolution per decoder scale. A PixelUnshuffle(2) stem and PixelShuffle(2) head "
    "run the U-Net at half resolution (3x faster on CPU than a full-resolution stem) while "
    "predicting every pixel. Two sigmoid outputs: foreground and the inner rim of each particle "
    "('boundary'); touching particles are split by a watershed of the boundary probability from "
    "the particles' interiors (foreground and not boundary)."
)


class SegTrainConfig:
    """Hyper-parameters of a training run (all recorded in the model card)."""

    def __init__(self, **kw: Any) -> None:
        self.seed: int = 0
        self.steps: int = 8000
        self.batch: int = 8
        self.crop: int = 192
        self.pool: int = 800
        self.sim_shape: int = 320
        self.pad: int = 32
        self.lr: float = 3e-3
        self.weight_decay: float = 1e-4
        self.warmup: int = 200
        self.boundary_weight: float = 1.0
        self.channels: tuple[int, ...] = (16, 32, 48, 64, 96)
        self.stem: int = 2
        self.val_every: int = 2000
        self.val_images: int = 2
        # one thread: deterministic, and on a shared 2-core machine two OpenMP threads ran at
        # 2.85 s/step against 0.22 s/step for one (oversubscription)
        self.threads: int = 1
        self.margin: int = 0  # 0: half the measured receptive field, rounded up to 32 px
        self.tile: int = 2048
        self.val_shape: int = 512
        for key, value in kw.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown option {key}")
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


def seg_loss(
    logits: Any, target: Any, boundary_weight: float = 1.0, pixel_weight: Any = None
) -> tuple[Any, dict]:
    """Soft Dice + binary cross-entropy per channel (seed 001's Dice loss, plus BCE).

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C, H, W)
        Raw network outputs.
    target : torch.Tensor, shape (B, C, H, W)
        0/1 targets (foreground, boundary).
    boundary_weight : float
        Weight of the boundary channel's terms.
    pixel_weight : torch.Tensor, shape (B, 1, H, W), optional
        Per-pixel weights of the boundary cross-entropy (contact pixels weigh more).

    Returns
    -------
    loss : torch.Tensor
    parts : dict
        Float values of the terms (``dice_fg``, ``bce_fg``, ``dice_b``, ``bce_b``).
    """
    import torch
    import torch.nn.functional as F

    prob = torch.sigmoid(logits)
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    dice_loss = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)  # per channel
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    loss = dice_loss[0] + bce[0]
    if logits.shape[1] > 1 and pixel_weight is not None:
        w = pixel_weight[:, 0]
        bce_px = F.binary_cross_entropy_with_logits(logits[:, 1], target[:, 1], reduction="none")
        bce = torch.stack([bce[0], (w * bce_px).sum() / w.sum()])
    d, b = dice_loss.detach(), bce.detach()
    parts = {"dice_fg": float(d[0]), "bce_fg": float(b[0])}
    if logits.shape[1] > 1:
        loss = loss + boundary_weight * (dice_loss[1] + bce[1])
        parts.update(dice_b=float(d[1]), bce_b=float(b[1]))
    return loss, parts


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(cfg: SegTrainConfig, pool: list | None = None) -> tuple[Any, dict]:
    """Train a segmenter; returns the model and a history dict.

    Parameters
    ----------
    cfg : SegTrainConfig
        Hyper-parameters.
    pool : list of SegExample, optional
        Training images (default: :func:`~napari_atomnet.training.seg_data.make_pool`).

    Returns
    -------
    model : DSUNet
    history : dict
        ``loss`` (per logged step), ``val`` (metrics per validation), ``pool_s``, ``train_s``.
    """
    import torch

    from .seg_nets import DSUNet, count_parameters

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    history: dict[str, Any] = {"loss": [], "val": []}
    t0 = time.perf_counter()
    if pool is None:
        _log(f"simulating {cfg.pool} training images of {cfg.sim_shape}²")
        step = max(1, cfg.pool // 5)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                _log(f"  pool {done}/{total}")

        pool = seg_data.make_pool(
            cfg.pool,
            cfg.seed,
            shape=(cfg.sim_shape, cfg.sim_shape),
            pad=cfg.pad,
            progress=progress,
        )
    history["pool_s"] = time.perf_counter() - t0
    _log(f"pool ready in {history['pool_s']:.0f} s")

    model = DSUNet(channels=tuple(cfg.channels), stem=cfg.stem)
    _log(f"DSUNet {cfg.channels} stem {cfg.stem}: {count_parameters(model)} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = np.random.default_rng([cfg.seed, 1])
    t1 = time.perf_counter()
    run: dict[str, float] = {}
    n_run = 0
    model.train()
    for step in range(cfg.steps):
        batch = seg_data.sample_batch(pool, rng, cfg.batch, cfg.crop)
        x = torch.from_numpy(batch["image"])
        y = torch.from_numpy(batch["target"])
        w = torch.from_numpy(batch["weight"])
        loss, parts = seg_loss(model(x), y, cfg.boundary_weight, w)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        for k, v in parts.items():
            run[k] = run.get(k, 0.0) + v
        n_run += 1
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t1
            means = {k: round(v / n_run, 4) for k, v in run.items()}
            _log(
                f"step {step + 1}/{cfg.steps} {means} lr {lr_at(step):.2e} "
                f"({el / (step + 1):.3f} s/step)"
            )
            history["loss"].append((step + 1, means))
            run, n_run = {}, 0
        if cfg.val_every and (step + 1) % cfg.val_every == 0 and step + 1 < cfg.steps:
            res = evaluate(
                lambda img: torch_probability(model, img, cfg.pad),
                cfg.val_images,
                shape=(cfg.val_shape, cfg.val_shape),
            )
            _log("validation " + json.dumps(_summary(res)))
            history["val"].append((step + 1, _summary(res)))
            model.train()
    history["train_s"] = time.perf_counter() - t1
    model.eval()
    return model, history


def torch_probability(model: Any, image: np.ndarray, pad: int = 32) -> np.ndarray:
    """Whole-image probability (C, H, W) from the torch model (reflection-padded, as tiles are)."""
    import torch

    from ..models.segmenter import normalize_image

    model.eval()
    norm = normalize_image(image)
    h, w = norm.shape
    m = model.pad_multiple
    ph, pw = (-(h + 2 * pad)) % m, (-(w + 2 * pad)) % m
    x = np.pad(norm, ((pad, pad + ph), (pad, pad + pw)), mode="symmetric")
    with torch.no_grad():
        out = model.probability(torch.from_numpy(np.ascontiguousarray(x))[None, None])[0]
    return out[:, pad : pad + h, pad : pad + w].numpy()


def evaluate(
    predict: Any,
    n_images: int,
    *,
    seed: int = seg_data.VAL_SEED,
    shape: tuple[int, int] = (512, 512),
    cases: list[str] | None = None,
    thresholds: tuple[float, ...] = (0.5,),
    splits: tuple[str, ...] = ("boundary",),
) -> dict[str, dict[str, dict[str, float]]]:
    """Score a probability predictor on held-out simulated images.

    Parameters
    ----------
    predict : callable
        ``predict(image) -> probability (C, H, W)`` (foreground, boundary).
    n_images : int
        Images per case.
    seed : int
        First seed (image i of a case has seed ``seed + i``; cases differ by simulator).
    shape : tuple of int
        Image size.
    cases : list of str, optional
        Keys of :data:`~napari_atomnet.training.seg_data.VALIDATION_CASES` (default: all).
    thresholds : tuple of float
        Foreground thresholds to score.
    splits : tuple of str
        Splitting methods to score (``"boundary"``, ``"distance"``).

    Returns
    -------
    dict
        ``{case: {"<split>@<threshold>": metrics}}`` with ``dice``, ``mean_iou``,
        ``pairs_split_frac``, ``median_d_rel_error``, ``precision``, ``recall`` (pooled over
        the images: sums of pairs, all diameter errors together).
    """
    from ..core.segment import label_particles, segmentation_scores

    cases = list(cases or seg_data.VALIDATION_CASES)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case in cases:
        acc: dict[str, dict[str, Any]] = {}
        for i in range(n_images):
            sim = seg_data.validation_image(case, seed + i, shape)
            prob = predict(sim.image)
            for split in splits:
                for thr in thresholds:
                    labels = label_particles(
                        prob[0],
                        prob[1] if prob.shape[0] > 1 else None,
                        threshold=thr,
                        split=split,
                    )
                    s = segmentation_scores(labels, sim.labels, sim.extras["touching_pairs"])
                    a = acc.setdefault(f"{split}@{thr}", {"d": [], "n": 0})
                    for key in ("dice", "mean_iou"):
                        a[key] = a.get(key, 0.0) + s[key]
                    for key in ("pairs", "pairs_split", "n_truth", "n_pred", "n_matched"):
                        a[key] = a.get(key, 0) + s[key]
                    a["d"].append(s["d_rel_errors"])
                    a["n"] += 1
        out[case] = {}
        for key, a in acc.items():
            d = np.concatenate(a["d"]) if a["d"] else np.zeros(0)
            out[case][key] = {
                "dice": a["dice"] / a["n"],
                "mean_iou": a["mean_iou"] / a["n"],
                "pairs_split_frac": a["pairs_split"] / a["pairs"] if a["pairs"] else float("nan"),
                "pairs": a["pairs"],
                "median_d_rel_error": float(np.median(d)) if d.size else float("nan"),
                "precision": a["n_matched"] / a["n_pred"] if a["n_pred"] else 0.0,
                "recall": a["n_matched"] / a["n_truth"] if a["n_truth"] else 1.0,
            }
    return out


def _summary(res: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        case: {
            k: round(v, 4)
            for k, v in next(iter(r.values())).items()
            if k in ("dice", "pairs_split_frac", "median_d_rel_error")
        }
        for case, r in res.items()
    }


def _recipe(cfg: SegTrainConfig) -> dict[str, Any]:
    return {
        "simulators": {
            "core_shell": "synth.core_shell_particles (target: metal cores, seed 001): radius "
            "5-16 px up to x1.3-3 (<= 40), shell 0.1-0.6 of the radius (20 % without shell), "
            "ellipticity 0-0.3, roughness 0-0.06, coverage 0.08-0.4, touching 0.1-0.6, mu_core "
            "0.025-0.08, shell/core attenuation 0.15-0.5, support density 0.02-0.15 texture "
            "0.1-0.45, illumination gradient 0-0.12, blur 0.5-1.8 px, MTF (30 %), dose 25-2000 "
            "(log-uniform)",
            "haadf": "synth.haadf_particles: radius 3.5-10 px up to x1.3-3.5 (<= 30), "
            "ellipticity 0-0.3, roughness 0-0.06, coverage 0.05-0.35, touching 0.1-0.6, signal "
            "0.015-0.05 per px of thickness, support 0.05-0.25 texture 0.1-0.4, gradient 0-0.2, "
            "blur 0.5-1.8 px, MTF (30 %), dose 15-1000 (log-uniform)",
        },
        "mix": "alternating, 50 % each",
        "pool_images": cfg.pool,
        "image_size": cfg.sim_shape,
        "seeds": f"training images {seg_data.TRAIN_SEED_BASE} + 100000 x seed + i; validation "
        f"{seg_data.VAL_SEED} + i; benchmarks >= 900000",
        "normalization": "napari_atomnet.models.segmenter.normalize_image (global robust "
        "standardisation), then reflection padding of "
        f"{cfg.pad} px with mirrored labels",
        "augmentation": f"random {cfg.crop} px crops (shift), zoom 0.8-1.25 (30 %, bilinear "
        "image / nearest labels), flips, 90 degree rotations; gamma 0.75-1.33 (30 %), extra "
        "illumination ramp up to 15 % (30 %); plus the random simulator parameters above",
        "targets": "foreground = particle (core for core-shell); boundary = pixels of a particle "
        f"within {seg_data.BOUNDARY_WIDTH} px of a pixel not in the same particle",
        "loss": f"soft Dice + BCE on foreground + {cfg.boundary_weight} x (soft Dice + BCE) on "
        f"boundary, the boundary BCE weighted x{seg_data.CONTACT_WEIGHT} on contact pixels (rim "
        "pixels within the rim width of another particle)",
        "optimizer": f"AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 2 %), weight decay "
        f"{cfg.weight_decay}, batch {cfg.batch}, grad-norm clip 5",
    }


def onnx_seconds(onnx_path: Path, size: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` onnxruntime CPU time of one (1, 1, size, size) input (s)."""
    from ..models.runtime import create_session

    session = create_session(onnx_path, device="cpu")
    x = np.random.default_rng(0).normal(size=(1, 1, size, size)).astype(np.float32)
    session.run(None, {"image": x})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"image": x})
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx + .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--pool", type=int, default=None)
    parser.add_argument("--channels", default=None, help="e.g. 16,32,48,64,96")
    parser.add_argument("--stem", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--val-every", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--boundary-weight", type=float, default=None)
    parser.add_argument("--no-speed", action="store_true", help="skip the timing measurements")
    parser.add_argument(
        "--save-torch", type=Path, default=None, help="also save the torch state_dict here"
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    cfg = SegTrainConfig(seed=args.seed)
    if args.quick:
        cfg = SegTrainConfig(
            seed=args.seed,
            steps=3,
            pool=4,
            batch=2,
            crop=64,
            sim_shape=96,
            pad=16,
            val_every=0,
            val_images=1,
            val_shape=128,
            channels=(4, 8, 8, 8, 8),
        )
    for key in (
        "steps",
        "pool",
        "lr",
        "batch",
        "crop",
        "threads",
        "val_every",
        "val_images",
        "boundary_weight",
        "stem",
    ):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    if args.channels:
        cfg.channels = tuple(int(c) for c in args.channels.split(","))

    from .seg_export import export_segmenter
    from .seg_nets import CLASSES, count_parameters, receptive_field

    _log(f"config {json.dumps(cfg.as_dict())}")
    model, history = train(cfg)
    if args.save_torch is not None:
        import torch

        args.save_torch.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "config": cfg.as_dict()}, args.save_torch)
    rf = receptive_field(model, 256 if args.quick else 512)
    if not cfg.margin:
        # tiles that read half the receptive field around their core reproduce the whole-image
        # output exactly (the cores are aligned to the pooling grid, models.segmenter)
        cfg.margin = int(math.ceil(rf / 2 / 32) * 32)
    _log(f"receptive field {rf} px; margin {cfg.margin} px")

    out = Path(args.out)
    onnx_path = out / f"{args.name}.onnx"
    card: dict[str, Any] = {
        "name": args.name,
        "version": VERSION,
        "description": "Nanoparticle segmenter for bright-field TEM (dark particles or the metal "
        "cores of core-shell particles) and HAADF-STEM (bright particles) images, trained on "
        "napari-atomnet's own simulations only.",
        "classes": list(CLASSES),
        "pad_multiple": model.pad_multiple,
        "margin": cfg.margin,
        "tile": cfg.tile,
        "threshold": 0.5,
        "boundary_threshold": 0.5,
        "split": "boundary",
        "min_area": 8,
        "h": 1.0,
        "normalization": {
            "method": "global robust standardisation",
            "function": "napari_atomnet.models.segmenter.normalize_image",
        },
        "design": DESIGN,
        "architecture": {
            "class": "napari_atomnet.training.seg_nets.DSUNet",
            "channels": list(cfg.channels),
            "stem": cfg.stem,
            "parameters": count_parameters(model),
            "receptive_field_px": rf,
        },
    }
    export_segmenter(model, onnx_path, card)

    from ..models.segmenter import predict_probability

    def predict(img: np.ndarray) -> np.ndarray:
        return predict_probability(img, str(onnx_path), device="cpu")[0]

    n_val = cfg.val_images if args.quick else max(cfg.val_images, 4)
    shape = (cfg.val_shape, cfg.val_shape)
    cases = ["core_shell", "haadf"] if args.quick else None
    _log("validating the exported model")
    val = evaluate(
        predict,
        n_val,
        shape=shape,
        cases=cases,
        thresholds=THRESHOLDS,
        splits=("boundary", "distance"),
    )

    def score(key: str) -> float:
        # mean over the cases of Dice + split share + instance F1 - 10 x median diameter error
        vals = []
        for r in val.values():
            m = r[key]
            f1 = 2 * m["precision"] * m["recall"] / max(m["precision"] + m["recall"], 1e-9)
            vals.append(
                m["dice"]
                + np.nan_to_num(m["pairs_split_frac"], nan=1.0)
                + f1
                - 10 * np.nan_to_num(m["median_d_rel_error"], nan=1.0)
            )
        return float(np.mean(vals))

    best = max(val[next(iter(val))], key=score)
    split, thr = best.split("@")
    _log(f"chosen: split {split}, threshold {thr}")
    metrics = {
        case: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r[best].items()}
        for case, r in val.items()
    }
    for case, m in metrics.items():
        _log(f"  {case}: {m}")
    speed: dict[str, Any] = {}
    if not args.no_speed and not args.quick:
        speed["onnxruntime_s_2048"] = round(onnx_seconds(onnx_path), 3)
        _log(f"speed {speed}")
    wall = time.perf_counter() - t_start
    card.update(
        threshold=float(thr),
        split=split,
        validation={
            "images_per_case": n_val,
            "shape": list(shape),
            "seeds": f"{seg_data.VAL_SEED} + i",
            "cases": {c: seg_data.VALIDATION_CASES[c][1] for c in val},
            "metrics": metrics,
            "all": {
                c: {k: {kk: round(vv, 5) for kk, vv in v.items()} for k, v in r.items()}
                for c, r in val.items()
            },
        },
        training={
            "recipe": _recipe(cfg),
            "config": cfg.as_dict(),
            "seed": cfg.seed,
            "steps": cfg.steps,
            "pool_seconds": round(history["pool_s"], 1),
            "train_seconds": round(history["train_s"], 1),
            "wall_seconds": round(wall, 1),
            "threads": cfg.threads,
            "history": {"loss": history["loss"][-5:], "val": history["val"]},
        },
        speed=speed,
    )
    card.pop("sha256", None)
    export_segmenter(model, onnx_path, card)
    _log(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB) in {wall:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
