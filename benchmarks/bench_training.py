"""The built-in detector's training recipe: what it costs on this CPU.

The model card records the wall time of the run that made the shipped model; when that run shares
the cores with other jobs its figure says little about the recipe.  This benchmark times the
recipe's own pieces on an otherwise idle machine: simulating training images (in the recipe's
``workers`` processes) and training steps at the recipe's batch and crop size, and adds them up
for the full run (pool images × seconds per image / workers + steps × seconds per step).
"""

from __future__ import annotations

import time

from _common import markdown_table


def run(quick: bool = False) -> dict:
    from napari_atomnet.models.registry import load_model
    from napari_atomnet.training import data
    from napari_atomnet.training.train_detector import TrainConfig, train

    recipe = TrainConfig()
    n_images = 8 if quick else 40
    t0 = time.perf_counter()
    pool = data.make_pool(
        n_images, 0, shape=(recipe.sim_shape,) * 2, pad=recipe.pad, workers=recipe.workers
    )
    per_image = (time.perf_counter() - t0) / n_images  # already divided among the workers
    steps = 20 if quick else 200
    _, history = train(TrainConfig(steps=steps, val_every=0), pool=pool)
    per_step = history["train_s"] / steps
    projected = recipe.pool * per_image + recipe.steps * per_step
    shipped = load_model("atomnet-detect", task="detection").info["training"]
    rows = [
        {
            "pool images": recipe.pool,
            "s per image (wall, recipe's workers)": per_image,
            "steps": recipe.steps,
            "s per step (batch 16, 144 px crops)": per_step,
            "projected wall time (min)": projected / 60,
            "shipped run's recorded wall time (min)": shipped["wall_time_seconds"] / 60,
        }
    ]
    md = [__doc__.strip().split("\n\n", 1)[1], "", markdown_table(rows, list(rows[0]))]
    if shipped.get("note"):
        md += ["", f"Shipped run: {shipped['note']}."]
    return {
        "title": "Training the detector: cost of the recipe on this CPU",
        "markdown": "\n".join(md),
        "figures": {"rows": rows, "projected_minutes": projected / 60},
    }
