"""Issue 6: fine-tuning on one corrected image of a kind the built-in detector handles poorly.

The kind: <110> dumbbells of a diamond / zinc-blende crystal (Si, GaAs) imaged at the resolution
limit.  Each dumbbell's two columns (GaAs-like: 0.9 and 1.0 brightness) are 7 px apart and have
σ = 0.5 × that separation, so the pair shows as one elongated blob with no dip between the columns
(the Sparrow limit); the microscopist knows there are two.  Nothing like it is in the built-in
model's training data (its lattices have no close pairs), and it finds one column, or one and a
stray, for many dumbbells.

The loop, as a user runs it: one 384² image is "corrected" (its ground truth stands in for the
user's clicks), exported with :func:`~napari_atomnet.io.labels.export_labels` (the real export
folder), and the detector is fine-tuned on it with the defaults of
:func:`~napari_atomnet.training.finetune.fine_tune_detector` (the same call as ``atomnet train``:
300 steps; the image and 5 rotated copies of it give half of each batch, simulated images whose
targets are the built-in model's own outputs the other half, so that it keeps what it did
there).  F1 is then measured on three *different* 512² images of the kind (other seeds; lattice
rotations 20°, 5° and −33°, the corrected image's is 12°), and the fine-tuned model is re-scored
on every case of the detection benchmark (``bench_detect.cases``, same images and scoring but
for the contrast) against the built-in model: match radius 0.25 ×
the median nearest-neighbour spacing, a border band of half a spacing left out, the models' default
thresholds, the atom contrast told (the simulation's; issue 3's table guesses it, which fails on
some HRTEM images).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from _common import HELD_OUT_SEED, markdown_table, nn_spacing
from bench_detect import cases, polarity_of
from napari_atomnet import synth
from napari_atomnet.core.metrics import detection_scores

#: Lattice rotations of the new images (the corrected image's is 12°).
NEW_ROTATIONS = (20.0, 5.0, -33.0)


#: GaAs-like <110> dumbbells on a centred rectangular cell (b/a = 1/sqrt 2, pair along a).
def dumbbells(shape: tuple[int, int], seed: int, rotation_deg: float):
    """Simulate <110> dumbbells: separation 7 px, σ = 0.5 × separation, 300 counts."""
    return synth.dumbbell_image(
        shape,
        rotation_deg=rotation_deg,
        position_jitter=0.02,
        amplitude_spread=0.05,
        seed=seed,
    )


def score(model, sim) -> dict:
    from napari_atomnet.models.detector import detect_atoms

    truth = sim.atoms[["y", "x"]].to_numpy()
    spacing = nn_spacing(truth)
    # told the atom contrast, as a microscopist who knows the imaging mode would (the guess
    # fails on some HRTEM images, which would then score 0 with either model and show nothing)
    found = detect_atoms(sim.image, model, polarity=polarity_of(sim)).table[["y", "x"]].to_numpy()
    return detection_scores(
        found, truth, 0.25 * spacing, shape=sim.image.shape, border=0.5 * spacing
    )


def run(quick: bool = False, base: str = "atomnet-detect", **config: object) -> dict:
    """Fine-tune ``base`` (registry name or .onnx path) with FineTuneConfig(**config) defaults."""
    from napari_atomnet.io.labels import export_labels
    from napari_atomnet.models.registry import load_model
    from napari_atomnet.training.finetune import FineTuneConfig, fine_tune_detector

    base = load_model(base, task="detection")
    config = FineTuneConfig(**({"steps": 60, "sim_images": 20} if quick else {}), **config)
    train_sim = dumbbells((384, 384), HELD_OUT_SEED + 600, rotation_deg=12.0)
    # new images: other seeds and lattice rotations (the base model's F1 depends on the rotation)
    tests = [
        (rot, dumbbells((512, 512), HELD_OUT_SEED + 601 + k, rotation_deg=rot))
        for k, rot in enumerate(NEW_ROTATIONS[:1] if quick else NEW_ROTATIONS)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        labels = train_sim.atoms[["y", "x", "class_name"]]
        export = export_labels(train_sim.image, labels, Path(tmp) / "export", name="gaas_110")
        t0 = time.perf_counter()
        result = fine_tune_detector(
            export,
            name="gaas-dumbbells",
            base=str(base.path),
            out_dir=Path(tmp) / "models",
            polarity="bright",  # HAADF
            config=config,
        )
        wall = time.perf_counter() - t0
        tuned = load_model(result.onnx_path, task="detection")
        kind_rows = []
        for rot, sim in tests:
            b, a = score(base, sim), score(tuned, sim)
            kind_rows.append(
                {
                    "new image (512²)": f"rotation {rot:+.0f}°",
                    "atoms": a["n_truth"],
                    "built-in F1": b["f1"],
                    "built-in recall": b["recall"],
                    "built-in precision": b["precision"],
                    "fine-tuned F1": a["f1"],
                    "fine-tuned recall": a["recall"],
                    "fine-tuned precision": a["precision"],
                }
            )
            print(f"  new image, rotation {rot}: F1 {b['f1']:.4f} -> {a['f1']:.4f}", flush=True)
        rows = []
        for i, (name, _, make) in enumerate(cases(quick)):
            sim = make(HELD_OUT_SEED + i)  # the detection benchmark's images
            b, a = score(base, sim), score(tuned, sim)
            rows.append(
                {
                    "case": name,
                    "built-in F1": b["f1"],
                    "fine-tuned F1": a["f1"],
                    "change": a["f1"] - b["f1"],
                }
            )
            print(f"  {name}: {b['f1']:.4f} -> {a['f1']:.4f}", flush=True)
        card = result.card
    ft = card["fine_tuning"]
    worst = min(rows, key=lambda r: r["change"])
    mean_change = sum(r["change"] for r in rows) / len(rows)
    worst_new = min(r["fine-tuned F1"] for r in kind_rows)
    met_new = worst_new >= 0.98
    met_old = worst["change"] >= -0.005
    md = [
        __doc__.strip().split("\n\n", 1)[1],
        "",
        f"Base: `{base.name}` (sha256 `{base.sha256[:12]}…`). Fine-tuning: {ft['train_atoms']} "
        f"labelled columns of one image (+ {ft['heldout_atoms']} held out in its last rows), "
        f"{config.steps} steps of {config.batch} crops ({config.user_fraction:.0%} from the image, "
        f"the rest from {ft['simulated_images']} fresh simulations), lr {config.lr:g}, "
        f"{ft['train_seconds']:.0f} s of training, {wall:.0f} s in all on the CPU "
        f"({config.threads} torch threads).",
        "",
        markdown_table(kind_rows),
        "",
        f"Held-out strip of the corrected image itself (as `atomnet train` reports it): F1 "
        f"{result.f1_before:.4f} → {result.f1_after:.4f}.",
        "",
        "Detection benchmark cases (issue 3's images), built-in vs fine-tuned:",
        "",
        markdown_table(rows),
        "",
        f"**Target** (F1 ≥ 0.98 on a new image of the kind): "
        f"{'met' if met_new else 'missed'} on every new image (lowest fine-tuned F1 "
        f"{worst_new:.4f}; built-in "
        + ", ".join(f"{r['built-in F1']:.4f} → {r['fine-tuned F1']:.4f}" for r in kind_rows)
        + "). "
        f"**Target** (benchmark cases drop ≤ 0.005): {'met' if met_old else 'missed'}; "
        f"largest drop {-min(0.0, worst['change']):.4f} ({worst['case']}), mean change "
        f"{mean_change:+.4f}.",
    ]
    return {
        "title": "Fine-tuning on one corrected image (issue 6)",
        "markdown": "\n".join(md),
        "figures": {
            "new_images": kind_rows,
            "heldout_strip_f1_before": result.f1_before,
            "heldout_strip_f1_after": result.f1_after,
            "benchmark_cases": rows,
            "largest_drop": -min(0.0, worst["change"]),
            "mean_change": mean_change,
            "train_seconds": ft["train_seconds"],
            "wall_seconds": wall,
            "config": ft["config"],
            "targets_met": {"new_image_f1>=0.98": met_new, "benchmark_drop<=0.005": met_old},
            "history": ft["history"],
            "nan_free": not math.isnan(result.f1_after),
        },
    }
