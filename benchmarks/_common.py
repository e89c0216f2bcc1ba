"""Helpers shared by the benchmark modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

#: Seeds used by benchmarks: never used for training data.
HELD_OUT_SEED = 900_000


def best_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Return the best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def nn_spacing(points: np.ndarray) -> float:
    """Median nearest-neighbour distance."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(points).query(points, k=2)
    return float(np.median(d[:, 1]))


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Render rows as a GitHub markdown table."""
    frame = pd.DataFrame(rows)
    columns = columns or list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            if isinstance(v, float):
                cells.append(f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}")
            else:
                cells.append(str(v).replace("|", "\\|"))  # a "|" would end the cell
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
