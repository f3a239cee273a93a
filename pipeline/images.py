"""Image rows in Spark's image-schema layout: decode, convert, and back to arrays.

A row holds `height`, `width`, `nChannels`, `mode` (OpenCV type code) and `data`: row-major bytes,
BGR(A) channel order for colour, exactly as `spark.read.format("image")` produces.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.schemas import IMAGE_SCHEMA, REJECTED_SCHEMA, ddl

# OpenCV type codes used by Spark's ImageSchema for 8-bit images, by channel count.
OCV_MODES = {1: 0, 3: 16, 4: 24}

IMAGE_COLUMNS = IMAGE_SCHEMA.names
IMAGE_DDL = ddl(IMAGE_SCHEMA)
REJECTED_DDL = ddl(REJECTED_SCHEMA)


class DecodeError(ValueError):
    """An input that is not a usable image; its message becomes the `rejected.reason`."""


def array_to_row(arr: np.ndarray) -> tuple[int, int, int, int, bytes]:
    """HxW (gray) or HxWx3/4 RGB(A) uint8 → (height, width, nChannels, mode, BGR bytes)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DecodeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if c == 3:
        arr = arr[:, :, ::-1]
    elif c == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    elif c != 1:
        raise DecodeError(f"unsupported channel count {c}")
    return h, w, c, OCV_MODES[c], arr.tobytes()  # C order whatever the view's strides: one copy


def row_to_array(height: int, width: int, n_channels: int, data: bytes, *, rgb: bool = True) -> np.ndarray:
    """Image-schema fields → HxWxC uint8 array, RGB(A) order unless rgb=False."""
    expected = height * width * n_channels
    if data is None or len(data) != expected:
        raise DecodeError(f"data has {0 if data is None else len(data)} bytes, expected {expected} "
                          f"for {height}x{width}x{n_channels}")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(height, width, n_channels)
    if rgb and n_channels == 3:
        arr = arr[:, :, ::-1]
    elif rgb and n_channels == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    return arr


# ITU-R BT.601 luma weights, as PIL's convert("L") and OpenCV's cvtColor use them.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_gray(arr: np.ndarray) -> np.ndarray:
    """HxWxC RGB(A) or gray uint8 → HxW gray uint8 (BT.601 luma, alpha dropped)."""
    if arr.shape[2] == 1:
        return arr[:, :, 0]
    return (arr[:, :, :3] @ GRAY_WEIGHTS).round().clip(0, 255).astype(np.uint8)


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """HxWxC RGB(A) or gray uint8 → contiguous HxWx3 RGB (gray repeated, alpha dropped)."""
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else np.ascontiguousarray(arr[:, :, :3])


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8))
    if img.mode in ("LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img.convert("RGB")


# What ingest decodes (README, Safety): the formats Spark's image source reads, and WebP. Other formats
# PIL knows (TIFF, PSD, ICO, ...) are rejected rows: each decoder is code an input file can reach.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
# Pixels per image at most (--max-pixels): a decoded image of this size is ~160 MB as RGBA, so a worker
# decoding one stays well under a GB (README, Safety, measured by bench/limits.py).
MAX_PIXELS = 40_000_000


def max_file_bytes(max_pixels: int) -> int:
    """No encoded image of at most `max_pixels` pixels needs more bytes than its raw RGBA pixels plus
    headroom: a bigger file is refused before it is read into memory."""
    return 4 * max_pixels + (16 << 20)


def decode_image(content: bytes, resize: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) → uint8 array; DecodeError with a readable reason otherwise.

    The format and the pixel count are checked from the header, before any pixel is decoded."""
    if not content:
        raise DecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(content)) as img:
            if img.format not in FORMATS:
                raise DecodeError(f"format {img.format} is not one ingest reads (expected {', '.join(FORMATS)})")
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(f"image too large: {w}x{h} is {w * h:,} pixels, over --max-pixels {max_pixels:,}")
            img.load()  # decode everything now: a truncated file must fail here, not later
            img = _to_8bit(img)
            if resize is not None and img.size != (resize[1], resize[0]):
                img = img.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image PIL can decode (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            raise DecodeError(f"truncated image: {reason}") from None
        raise DecodeError(f"corrupt image: {reason}") from None


def resize_array(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or arr.shape[:2] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def image_struct(df, column: str = "image"):
    """Spark's `image` struct column (origin, height, width, nChannels, mode, data) for a table of ours.

    Code written against `spark.read.format("image")` (e.g. `df.image.height`) then works as is.
    """
    from pyspark.sql import functions as F

    return df.withColumn(column, F.struct("origin", "height", "width", "nChannels", "mode", "data"))
