"""Evaluation measures computed in Spark (accuracy, confusion) or numpy (PSNR, SSIM)."""

from __future__ import annotations

import numpy as np


def confusion(predictions, label_col: str = "label_index", pred_col: str = "prediction",
              classes: int | None = None) -> np.ndarray:
    """Confusion matrix (rows: true, columns: predicted) from a predictions DataFrame, counted in Spark."""
    counts = predictions.groupBy(label_col, pred_col).count().collect()
    n = classes or 1 + max(max(int(r[label_col]), int(r[pred_col])) for r in counts)
    matrix = np.zeros((n, n), dtype=np.int64)
    for r in counts:
        matrix[int(r[label_col]), int(r[pred_col])] += r["count"]
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    return float(np.trace(matrix) / max(1, matrix.sum()))


def metric_rows(run_id: str, rows: list[tuple[int, str, float]]):
    """(step, name, value) triples → rows of the metrics contract."""
    return [(run_id, int(step), name, float(value)) for step, name, value in rows]


METRICS_DDL = "run_id string, step long, name string, value double"
