"""Evaluation measures computed in Spark (accuracy, confusion) or numpy (PSNR, SSIM)."""

from __future__ import annotations

import numpy as np

from pipeline.schemas import METRICS_SCHEMA, ddl


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


METRICS_DDL = ddl(METRICS_SCHEMA)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB uint8 image, as float64 in [16, 235] (the SR papers' Y channel)."""
    x = img.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _y_cropped(img: np.ndarray, border: int) -> np.ndarray:
    y = rgb_to_y(img) if img.ndim == 3 and img.shape[2] >= 3 else img.astype(np.float64).squeeze()
    return y[border:-border, border:-border] if border else y


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = 4) -> float:
    """PSNR on the Y channel with `border` pixels cropped (= the scale factor), as SR papers report."""
    mse = np.mean((_y_cropped(a, border) - _y_cropped(b, border)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim_y(a: np.ndarray, b: np.ndarray, border: int = 4) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) on the cropped Y channel."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_y_cropped(a, border), _y_cropped(b, border), data_range=255.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
