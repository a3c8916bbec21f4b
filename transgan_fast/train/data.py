"""Training data: image sources, a resumable sampler, and the batch loader.

Sources (all yield uint8 `(3, R, R)` images at the training resolution):
- `shapes`: built-in procedurally generated coloured shapes (default; needs no files,
  deterministic per seed).
- an image folder (recursive) or a `.zip` of images, any size: resized so the short side is R
  (bicubic), then centre-cropped.
- CIFAR-10 python batches (`data_batch_1..5`, `test_batch`) read with a restricted unpickler
  that only rebuilds numpy arrays, and STL-10 binaries (`*_X.bin`, 96×96, column-major).
Nothing is ever downloaded.

Folder and zip images are decoded once when the source is built: unreadable or corrupt files
are skipped, counted and listed in `source.skipped` (never a crash), and the decoded images are
cached in memory when they fit in `cache_mb`. The sampler walks per-epoch permutations seeded by
(seed, epoch); its state is two integers, saved in checkpoints, so a resumed run sees the same
images in the same order. Flips come from the caller's generator for the whole global batch, so
every data-parallel rank draws identically and takes its own slice.
"""
from __future__ import annotations

import glob
import io
import os
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ShapesSource", "ImageFileSource", "ArraySource", "load_cifar10", "load_stl10",
           "open_source", "InfiniteSampler", "BatchLoader"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _resize_crop_array(x: torch.Tensor, res: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, res, res): short side to res (bicubic), centre crop."""
    N, C, H, W = x.shape
    if (H, W) == (res, res):
        return x
    s = res / min(H, W)
    h, w = max(res, round(H * s)), max(res, round(W * s))
    y = F.interpolate(x.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    t, l = (h - res) // 2, (w - res) // 2
    return y[:, :, t:t + res, l:l + res].round().clamp(0, 255).to(torch.uint8)


class ArraySource:
    """Images held in memory as uint8 `(N, 3, R, R)`."""

    def __init__(self, images: torch.Tensor, name: str):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ArraySource: images must be uint8 (N, 3, H, W); got "
                             f"{images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"ArraySource: no images in {name}")
        self.images, self.name, self.skipped = images, name, []

    def __len__(self):
        return self.images.shape[0]

    def get_many(self, idx: List[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(idx, dtype=torch.long)]


class ShapesSource(ArraySource):
    """Coloured circles, squares and triangles on tinted backgrounds (1–2 shapes per image).

    Deterministic in `seed`; `n` images at `resolution`.
    """

    def __init__(self, n: int = 8192, resolution: int = 32, seed: int = 0):
        if n < 1 or resolution < 8:
            raise ValueError(f"ShapesSource: need n >= 1 and resolution >= 8; got n={n}, "
                             f"resolution={resolution}")
        rng = np.random.default_rng(seed)
        R = resolution
        yy, xx = np.mgrid[0:R, 0:R].astype(np.float32) + 0.5  # (R, R) pixel centres
        bg = rng.uniform(0.0, 0.35, (n, 3, 1, 1)).astype(np.float32)
        grad = rng.uniform(-0.15, 0.15, (n, 1, 1, 1)).astype(np.float32) * (yy / R)
        img = np.broadcast_to(bg + grad, (n, 3, R, R)).copy()
        for k in range(2):
            present = rng.random(n) < (1.0 if k == 0 else 0.5)
            kind = rng.integers(0, 3, n)
            r = rng.uniform(0.15, 0.3, n) * R
            cy, cx = (rng.uniform(0.3, 0.7, (2, n)) * R)
            col = rng.uniform(0.4, 1.0, (n, 3)).astype(np.float32)
            col[np.arange(n), rng.integers(0, 3, n)] *= 0.3  # saturated colours
            dy = yy[None] - cy[:, None, None]  # (n, R, R)
            dx = xx[None] - cx[:, None, None]
            rr = r[:, None, None]
            circle = dy ** 2 + dx ** 2 < rr ** 2
            square = (np.abs(dy) < rr * 0.85) & (np.abs(dx) < rr * 0.85)
            tri = (dy < rr * 0.8) & (np.abs(dx) < (dy + rr) * 0.6)
            mask = np.where(kind[:, None, None] == 0, circle,
                            np.where(kind[:, None, None] == 1, square, tri))
            mask &= present[:, None, None]
            img = np.where(mask[:, None], col[:, :, None, None], img)
        data = torch.from_numpy((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        super().__init__(data, f"shapes{R}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: numpy arrays and builtins only, never arbitrary code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "bytes")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}; only numpy "
                                     f"arrays are allowed")


def load_cifar10(root: str, resolution: int = 32, split: str = "train") -> ArraySource:
    """CIFAR-10 python batches in `root` (`data_batch_1..5` for train, `test_batch` for test)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    paths = [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))]
    if not paths:
        raise FileNotFoundError(f"load_cifar10: no {names[0]}... files in {root!r} (expected the "
                                f"'cifar-10-batches-py' folder; nothing is downloaded)")
    arrays = []
    for p in paths:
        with open(p, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
        if data is None:
            raise ValueError(f"load_cifar10: {p!r} has no 'data' entry")
        arrays.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32)
    x = torch.from_numpy(np.concatenate(arrays))
    return ArraySource(_resize_crop_array(x, resolution), f"cifar10-{split}")


def load_stl10(path: str, resolution: int = 48) -> ArraySource:
    """STL-10 images from a `*_X.bin` file (or a folder: `unlabeled_X.bin` + `train_X.bin`)."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(path, n) for n in ("unlabeled_X.bin", "train_X.bin")
        if os.path.isfile(os.path.join(path, n))]
    if not files:
        raise FileNotFoundError(f"load_stl10: no *_X.bin files at {path!r} (nothing is downloaded)")
    arrays = []
    for p in files:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise ValueError(f"load_stl10: {p!r} has {raw.size} bytes, not a multiple of 3*96*96")
        # stored column-major per channel: (N, 3, W, H) -> (N, 3, H, W)
        arrays.append(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
    return ArraySource(_resize_crop_array(x, resolution), "stl10")


class ImageFileSource:
    """Images from a folder (recursive) or a zip archive, decoded with PIL.

    Every file is decoded once here (threads): failures are skipped and listed in `skipped`
    as `(name, reason)`. Decoded images are cached when they fit in `cache_mb`.
    """

    def __init__(self, path: str, resolution: int, cache_mb: float = 2048, workers: int = 4):
        self.path, self.res = path, resolution
        self.is_zip = path.lower().endswith(".zip")
        if self.is_zip:
            try:
                with zipfile.ZipFile(path) as z:
                    names = [n for n in z.namelist() if n.lower().endswith(IMAGE_EXTS)]
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"ImageFileSource: {path!r} is not a readable zip archive "
                                 f"({type(exc).__name__}: {exc})") from exc
        elif os.path.isdir(path):
            names = [os.path.relpath(p, path) for p in glob.glob(os.path.join(path, "**", "*"),
                                                                  recursive=True)
                     if p.lower().endswith(IMAGE_EXTS)]
        else:
            raise FileNotFoundError(f"ImageFileSource: path {path!r} is neither a folder nor a .zip")
        names.sort()
        self.name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        self._zip = None
        with ThreadPoolExecutor(max(1, workers)) as pool:
            decoded = list(pool.map(self._decode_checked, names)) if not self.is_zip else \
                [self._decode_checked(n) for n in names]  # one zip handle: sequential
        self.skipped: List[Tuple[str, str]] = [(n, r) for n, (img, r) in zip(names, decoded)
                                               if img is None]
        self.names = [n for n, (img, _) in zip(names, decoded) if img is not None]
        if not self.names:
            raise ValueError(f"ImageFileSource: no readable images in {path!r} "
                             f"({len(self.skipped)} skipped)")
        fits = len(self.names) * 3 * resolution ** 2 <= cache_mb * 2 ** 20
        self.cache = torch.stack([img for img, _ in decoded if img is not None]) if fits else None

    def _read(self, name: str) -> bytes:
        if self.is_zip:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def _decode(self, name: str) -> torch.Tensor:
        from PIL import Image
        with Image.open(io.BytesIO(self._read(name))) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = self.res / min(w, h)
            im = im.resize((max(self.res, round(w * s)), max(self.res, round(h * s))),
                           Image.BICUBIC)
            l, t = (im.size[0] - self.res) // 2, (im.size[1] - self.res) // 2
            im = im.crop((l, t, l + self.res, t + self.res))
            arr = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return torch.from_numpy(arr.copy())

    def _decode_checked(self, name: str):
        try:
            return self._decode(name), ""
        except Exception as exc:  # corrupt, truncated, not an image: skip and report
            return None, f"{type(exc).__name__}: {exc}"

    def __len__(self):
        return len(self.names)

    def get_many(self, idx: List[int]) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[torch.as_tensor(idx, dtype=torch.long)]
        out = []
        for i in idx:
            img, why = self._decode_checked(self.names[i])
            if img is None:  # became unreadable after the scan: reuse a good one, report it
                self.skipped.append((self.names[i], why))
                img = out[-1] if out else torch.zeros(3, self.res, self.res, dtype=torch.uint8)
            out.append(img)
        return torch.stack(out)


def open_source(spec: str, resolution: int, seed: int = 0, shapes_n: int = 8192):
    """Build a source from a spec: "shapes", "cifar10:<dir>", "stl10:<file|dir>", a folder or a .zip.

    A folder holding `data_batch_1` is read as CIFAR-10; a `.bin` file as STL-10.
    """
    if spec == "shapes":
        return ShapesSource(shapes_n, resolution, seed)
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("cifar10", "stl10") \
        else ("", "", spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data: {spec!r} is not 'shapes' and {path!r} does not exist")
    if kind == "cifar10" or os.path.isfile(os.path.join(path, "data_batch_1")):
        return load_cifar10(path, resolution)
    if kind == "stl10" or path.endswith(".bin"):
        return load_stl10(path, resolution)
    return ImageFileSource(path, resolution)


class InfiniteSampler:
    """Endless per-epoch permutations of `range(n)`; state = (epoch, position in the epoch)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._make_perm()

    def _make_perm(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def take(self, k: int) -> List[int]:
        out = []
        while len(out) < k:
            m = min(k - len(out), self.n - self.pos)
            out += self._perm[self.pos:self.pos + m].tolist()
            self.pos += m
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make_perm()
        return out

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state_dict(self, s: Dict[str, int]) -> None:
        if s["n"] != self.n:
            raise ValueError(f"InfiniteSampler: checkpoint was made with a dataset of {s['n']} "
                             f"images; this one has {self.n}")
        self.seed, self.epoch, self.pos = s["seed"], s["epoch"], s["pos"]
        self._perm = self._make_perm()


class BatchLoader:
    """Global batches from a source: indices from the sampler, flips, this rank's slice, [-1, 1]."""

    def __init__(self, source, seed: int = 0, flip: bool = True, rank: int = 0, world_size: int = 1):
        self.source, self.flip, self.rank, self.world = source, flip, rank, world_size
        self.sampler = InfiniteSampler(len(source), seed)

    def next(self, global_batch: int, gen: Optional[torch.Generator], device) -> torch.Tensor:
        """This rank's float `(global_batch / world, 3, R, R)` slice in [-1, 1] on `device`."""
        idx = self.sampler.take(global_batch)
        flips = torch.rand(global_batch, generator=gen, device=gen.device if gen else "cpu") < 0.5
        per = global_batch // self.world
        mine = slice(self.rank * per, (self.rank + 1) * per)
        x = self.source.get_many(idx[mine]).to(device)
        x = x.float() / 127.5 - 1.0
        if self.flip:
            f = flips[mine].to(device).view(-1, 1, 1, 1)
            x = torch.where(f, x.flip(3), x)
        return x

    @property
    def epoch_float(self) -> float:
        return self.sampler.epoch + self.sampler.pos / self.sampler.n
