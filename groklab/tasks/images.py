"""Local image data (`task.name: images`): a `.npz` file or MNIST's IDX files, read from disk, never downloaded.

What `task.path` may name (docs/data.md):
  * a `.npz` file with arrays `x` ([N, H, W], [N, C, H, W], or [N, D] with an optional `image_shape` array
    (C, H, W); without it D must be a square, read as one channel) and `y` ([N] integer labels ≥ 0);
  * an IDX images file (`train-images-idx3-ubyte`, `t10k-images-idx3-ubyte.gz`, ...): its labels file lies
    beside it, named as it is with `images` → `labels` and `idx3` → `idx1`, gzipped or not;
  * a folder: the `train-images-idx3-ubyte[.gz]` / `train-labels-idx1-ubyte[.gz]` pair in it (MNIST's 60,000
    training images, which the Omnigrok setup draws its train set from).
Pixels become floats in [0, 1]: integer pixels (0..255) are divided by 255; float pixels must already lie in
[0, 1]. The number of classes is the largest label + 1. Anything missing or malformed is an ImageFileError
(a ConfigError once the config validates it) naming `task.path` and what was expected (CLI exit 2).
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from groklab.tasks import Task


class ImageFileError(ValueError):
    """A missing or malformed `task.path`. A ValueError, so the config's validator reports it as a ConfigError
    naming the key (tasks come after the config in the one-way flow and do not import it)."""

EXPECTED = ("a .npz file with arrays x and y, an MNIST images file *-images-idx3-ubyte[.gz] with its labels file "
            "beside it, or a folder holding train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
IDX_IMAGES, IDX_LABELS = 2051, 2049  # the magic numbers of unsigned-byte IDX files with 3 and 1 dimensions


@dataclass(frozen=True)
class ImageFile:
    n: int
    image_shape: tuple[int, int, int]  # (channels, height, width)
    n_classes: int


def _error(path: str, what: str) -> ImageFileError:
    return ImageFileError(f"task.path: {path!r}: {what}; expected {EXPECTED}")


def _idx_pair(path: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files `path` names: a folder's training pair, or a file and its labels beside it."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = [next((p / f"{name}{gz}" for gz in ("", ".gz") if (p / f"{name}{gz}").is_file()), None)
                 for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")]
        if None in found:
            raise _error(path, "a folder without train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
        return found[0], found[1]
    if "images" not in p.name or "idx3" not in p.name:
        raise _error(path, "not a .npz file, and not an IDX images file (its name holds 'images' and 'idx3')")
    base = p.name.replace("images", "labels").replace("idx3", "idx1").removesuffix(".gz")
    for name in (base, base + ".gz"):
        if (p.parent / name).is_file():
            return p, p.parent / name
    raise _error(path, f"no labels file {base}[.gz] beside the images file")


def _read_idx(path: str, file: Path, magic: int) -> np.ndarray:
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise _error(path, f"cannot read {file.name} ({e})") from None
    dims = magic - 2048
    if len(data) < 4 + 4 * dims or struct.unpack(">i", data[:4])[0] != magic:
        raise _error(path, f"{file.name} is not an unsigned-byte IDX file with {dims} dimension(s) (magic {magic})")
    shape = struct.unpack(f">{dims}i", data[4 : 4 + 4 * dims])
    body = data[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise _error(path, f"{file.name} holds {len(body)} bytes of data, its header says {shape} = "
                     f"{math.prod(shape)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise _error(path, f"arrays {sorted(z.files)}, not x and y")
            shape = tuple(int(v) for v in z["image_shape"]) if "image_shape" in z.files else None
            return z["x"], z["y"], shape
    except ImageFileError:
        raise
    except Exception as e:  # a zip that is not a npz, a pickled array, a truncated file ...
        raise _error(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None


def _images(path: str, x: np.ndarray, shape: tuple[int, ...] | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """x as float32 [N, C·H·W] in [0, 1], and (C, H, W)."""
    if x.ndim == 4:
        image = tuple(x.shape[1:])
    elif x.ndim == 3:
        image = (1, *x.shape[1:])
    elif x.ndim == 2:
        d, side = x.shape[1], math.isqrt(x.shape[1])
        image = shape if shape is not None else (1, side, side) if side * side == d else None
        if image is None or len(image) != 3 or math.prod(image) != d:
            raise _error(path, f"x is [N, {d}]: give an image_shape array (C, H, W) with C·H·W = {d}, or a square D")
    else:
        raise _error(path, f"x has shape {list(x.shape)}; allowed: [N, H, W], [N, C, H, W], [N, D]")
    if min(image) < 1:
        raise _error(path, f"images of shape {image}")
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise _error(path, f"integer pixels in {x.min()}..{x.max()}; allowed: 0..255")
        flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise _error(path, "float pixels outside [0, 1] (scale them to [0, 1], or store 0..255 integers)")
        flat = x.reshape(len(x), -1).astype(np.float32)
    else:
        raise _error(path, f"x of dtype {x.dtype}; allowed: integers 0..255 or floats in [0, 1]")
    return flat, image


def _labels(path: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise _error(path, f"y has shape {list(y.shape)}, x has {n} images: y must be [N] = [{n}]")
    if not np.issubdtype(y.dtype, np.integer):
        raise _error(path, f"y of dtype {y.dtype}; labels must be integers")
    if n and y.min() < 0:
        raise _error(path, "negative labels; labels are class ids 0, 1, ...")
    return y.astype(np.int64)


@lru_cache(maxsize=1)
def _read(path: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(pixels float32 [N, C·H·W], labels int64 [N], (C, H, W)) of the file(s) `path` names; `stamp` (their
    mtimes and sizes) makes a changed file be read again."""
    if path.endswith(".npz"):
        x, y, shape = _read_npz(path)
    else:
        images, labels = _idx_pair(path)
        x, y, shape = _read_idx(path, images, IDX_IMAGES), _read_idx(path, labels, IDX_LABELS), None
    if len(x) < 2:
        raise _error(path, f"{len(x)} image(s); a train and a val set need at least 2")
    flat, image = _images(path, x, shape)
    return flat, _labels(path, y, len(x)), image


def _stamp(path: str) -> tuple:
    """The mtime and size of each file `path` names (ImageFileError if there is none)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise _error(path, "no such file or folder")
    files = [p] if path.endswith(".npz") else _idx_pair(path)
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)


@lru_cache(maxsize=64)
def _describe(path: str, stamp: tuple) -> ImageFile:
    x, y, image = _read(path, stamp)
    return ImageFile(n=len(x), image_shape=image, n_classes=int(y.max()) + 1)


def describe(path: str) -> ImageFile:
    """Examples, image shape and classes of the file `path` names (ImageFileError if missing or malformed)."""
    return _describe(path, _stamp(path))


def make(path: str) -> Task:
    x, y, image = _read(path, _stamp(path))
    # the arrays are the cached ones, shared rather than copied (MNIST is 188 MB as floats): nothing writes a task
    return Task(inputs=torch.from_numpy(x), labels=torch.from_numpy(y), vocab_size=0, n_classes=int(y.max()) + 1,
                image_shape=image)
