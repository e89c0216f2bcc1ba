"""Issue 7: nanoparticle segmentation with the built-in DS-U-Net vs Otsu + watershed.

Held-out simulated images (seeds >= HELD_OUT_SEED, never used in training or validation) of
both kinds: bright-field core-shell particles (the target is the metal core, seed 001) and
HAADF particles on a support, each at the simulator's default dose and at a low dose with more
touching particles.  Every method is scored on the same images in the same run:

- **DS-U-Net**: ``segment_particles`` with the built-in ``atomnet-particles`` (its card's
  splitting rule: a watershed of the learned boundary probability from the particle interiors);
- **DS-U-Net, distance split**: the same probability, split by a distance-transform watershed
  with h-maxima markers instead (ablation of the boundary class);
- **Otsu + watershed**: Gaussian smoothing (1 px), Otsu threshold with the true polarity, holes
  filled, the same distance-transform watershed; for core-shell images also with a three-class
  multi-Otsu threshold (darkest class = cores).

Metrics: Dice and mean IoU (foreground/background mean, as seed 001 reports), pixel accuracy,
instance recall and precision (IoU > 0.5), share of the true touching pairs whose two particles
are both recovered (hence split), and the median relative error of the equivalent diameter
``D = 2 sqrt(S / pi)`` of the recovered particles not cut by the border.
"""

from __future__ import annotations

import time

import numpy as np

from _common import HELD_OUT_SEED, best_time, markdown_table
from napari_atomnet import synth
from napari_atomnet.core.segment import label_particles, otsu_watershed, segmentation_scores

#: Seed 001 (Liu et al. 2021, real core-shell TEM, Dice loss): Table 1.
SEED_001 = {"pixel_accuracy": 0.9761, "mean_iou": 0.8650, "dice": 0.8692}

CASES = {
    "core-shell BF, dose 200": ("dark", lambda shape, s: synth.core_shell_particles(shape, seed=s)),
    "core-shell BF, dose 40, 50 % touching": (
        "dark",
        lambda shape, s: synth.core_shell_particles(
            shape, seed=s, dose=40.0, touching_fraction=0.5
        ),
    ),
    "HAADF, dose 100": ("bright", lambda shape, s: synth.haadf_particles(shape, seed=s)),
    "HAADF, dose 25, 50 % touching": (
        "bright",
        lambda shape, s: synth.haadf_particles(shape, seed=s, dose=25.0, touching_fraction=0.5),
    ),
}


def _pool(acc: dict, s: dict) -> None:
    for key in ("dice", "mean_iou", "pixel_accuracy"):
        acc.setdefault(key, []).append(s[key])
    for key in ("pairs", "pairs_split", "n_truth", "n_pred", "n_matched"):
        acc[key] = acc.get(key, 0) + s[key]
    acc.setdefault("d", []).append(s["d_rel_errors"])


def _row(case: str, method: str, acc: dict) -> dict:
    d = np.concatenate(acc["d"]) if acc["d"] else np.zeros(0)
    return {
        "case": case,
        "method": method,
        "Dice": float(np.mean(acc["dice"])),
        "mean IoU": float(np.mean(acc["mean_iou"])),
        "accuracy": float(np.mean(acc["pixel_accuracy"])),
        "recall": acc["n_matched"] / max(acc["n_truth"], 1),
        "precision": acc["n_matched"] / max(acc["n_pred"], 1),
        "pairs split": f"{acc['pairs_split']}/{acc['pairs']} "
        f"({100.0 * acc['pairs_split'] / max(acc['pairs'], 1):.1f} %)",
        "split_frac": acc["pairs_split"] / max(acc["pairs"], 1),
        "median abs(dD)/D": float(np.median(d)) if d.size else float("nan"),
    }


def run(quick: bool = False) -> dict:
    from napari_atomnet.models.segmenter import segment_particles

    shape = (256, 256) if quick else (512, 512)
    n_images = 2 if quick else 8
    rows: list[dict] = []
    for ci, (case, (polarity, make)) in enumerate(CASES.items()):
        accs: dict[str, dict] = {}
        for i in range(n_images):
            sim = make(shape, HELD_OUT_SEED + 1000 * ci + i)
            pairs = sim.extras["touching_pairs"]
            seg = segment_particles(sim.image, device="cpu")
            classes = seg.card.info["classes"]
            fg = seg.probability[classes.index("foreground")]
            methods = {
                "DS-U-Net": seg.labels,
                "DS-U-Net, distance split": label_particles(
                    fg, threshold=seg.params["threshold"], split="distance"
                ),
                "Otsu + watershed": otsu_watershed(sim.image, polarity),
            }
            if polarity == "dark":
                methods["multi-Otsu (3) + watershed"] = otsu_watershed(
                    sim.image, polarity, classes=3
                )
            for name, labels in methods.items():
                _pool(accs.setdefault(name, {}), segmentation_scores(labels, sim.labels, pairs))
        rows += [_row(case, name, acc) for name, acc in accs.items()]

    # is the network ahead of every classical method on every case?
    ahead = {}
    for case in CASES:
        net = next(r for r in rows if r["case"] == case and r["method"] == "DS-U-Net")
        classical = [r for r in rows if r["case"] == case and "Otsu" in r["method"]]
        ahead[case] = all(
            net["Dice"] > c["Dice"]
            and net["split_frac"] >= c["split_frac"]
            and net["median abs(dD)/D"] < c["median abs(dD)/D"]
            for c in classical
        )

    # speed: a 2048 x 2048 core-shell image on this CPU (onnxruntime, all cores)
    big = synth.core_shell_particles((2048, 2048), seed=HELD_OUT_SEED + 99)
    seg = segment_particles(big.image, device="cpu", keep_probability=False)  # warm-up
    total, seg = best_time(
        lambda: segment_particles(big.image, device="cpu", keep_probability=False),
        repeat=2 if quick else 3,
    )
    t_net = seg.params["seconds"]["network"]
    t_inst = seg.params["seconds"]["instances"]
    t0 = time.perf_counter()
    otsu_watershed(big.image, "dark")
    t_otsu = time.perf_counter() - t0
    big_scores = segmentation_scores(seg.labels, big.labels, big.extras["touching_pairs"])

    cols = [
        "case",
        "method",
        "Dice",
        "mean IoU",
        "accuracy",
        "recall",
        "precision",
        "pairs split",
        "median abs(dD)/D",
    ]
    card = seg.card.info
    md = [
        f"Held-out images: {n_images} per case, {shape[0]}×{shape[1]} px, seeds "
        f"{HELD_OUT_SEED} + 1000·case + i (training used seeds < 500 000, validation "
        "500 000 +). Model: `atomnet-particles` "
        f"(sha256 {seg.card.sha256[:12]}…, {card['architecture']['parameters']} parameters, "
        f"trained {card['training']['steps']} steps in "
        f"{card['training']['train_seconds'] / 60:.0f} min on this CPU). Dice and mean IoU "
        "are per image then averaged; pairs and diameter errors are pooled over the images.",
        "",
        markdown_table(rows, cols),
        "",
        "DS-U-Net ahead of every Otsu baseline (Dice, pairs split, diameter error) on: "
        + ", ".join(f"{c}: {'yes' if ok else 'NO'}" for c, ok in ahead.items())
        + ".",
        "",
        f"Seed 001 (real core-shell TEM, DS-U-Net with Dice loss), for reference: accuracy "
        f"{SEED_001['pixel_accuracy']}, mean IoU {SEED_001['mean_iou']}, Dice "
        f"{SEED_001['dice']} (their data, not comparable image for image).",
        "",
        f"**Speed**, 2048×2048 core-shell image ({big_scores['n_truth']} particles), "
        f"`segment_particles` on this CPU (best of {2 if quick else 3}): **{total:.2f} s** "
        f"(network {t_net:.2f} s in {len(range(0, 2048, card['tile'])) ** 2} tiles of "
        f"{card['tile']}² + {card['margin']} px margin, instances + table {t_inst:.2f} s); "
        f"Otsu + watershed {t_otsu:.2f} s. Dice on that image {big_scores['dice']:.4f}, "
        f"pairs split {big_scores['pairs_split']}/{big_scores['pairs']}.",
    ]
    figures = {
        "rows": [{k: v for k, v in r.items() if k != "pairs split"} for r in rows],
        "ahead_of_otsu": ahead,
        "seconds_2048": total,
        "seconds_2048_network": t_net,
        "seconds_2048_instances": t_inst,
        "seconds_2048_otsu": t_otsu,
        "seed_001": SEED_001,
    }
    return {
        "title": "Particle segmentation (issue 7)",
        "markdown": "\n".join(md),
        "figures": figures,
    }
