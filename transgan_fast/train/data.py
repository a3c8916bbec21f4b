"""Training data: image sources, a resumable sampler, and the batch loader.

Sources (all yield uint8 `(3, R, R)` images at the training resolution):
- `shapes`: built-in procedurally generated coloured shapes (default; needs no files,
  deterministic per seed).
- an image folder (recursive) or a `.zip` of images, any size: resized so the short side is R
  (bicubic), then centre-cropped.
- CIFAR-10 python batches (`data_batch_1..5`, `test_batch`) read with a restricted unpickler
  that only rebuilds numpy arrays, and STL-10 binaries (`*_X.bin`, 96×96, column-major).
Nothing is ever downloaded.

Class labels (for class-conditional training): every source has `labels` (int64 `(N,)`, or None
when it has none) and `class_names`. Shapes: the shape kind (every shape of an image has the same
kind); CIFAR-10: the batches' `labels`; STL-10: `train_y.bin` beside `train_X.bin` (read with
`labeled=True`, which leaves out the unlabelled split); a folder or zip: one subfolder per class,
classes in sorted name order (labels None when some image is not in a subfolder).

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

SHAPE_CLASSES = ("circle", "square", "triangle")
# The shapes' attributes (`ShapesSource.attributes`), all of the first (always present) shape:
# a tuple of class names for a categorical attribute, None for a value in [0, 1].
SHAPE_ATTRIBUTES = {
    "kind": SHAPE_CLASSES,
    "colour": ("cyan", "magenta", "yellow"),  # the dimmed channel: red, green, blue
    "size": None,          # radius over the layout's range (`SHAPE_LAYOUTS`) -> 0 .. 1
    "position": None,      # vertical centre over the layout's range -> 0 .. 1 (0.5 when fixed;
                           # flips leave it unchanged)
    "background": None,    # mean background level, 0 .. 0.4 -> 0 .. 1
}
# Where the shape lies and how large it is, as fractions of the side: (radius min, radius max,
# centre min, centre max) per layout. "varied" is the `shapes` data; "centred" (`shapes-centred`)
# fixes the centre and narrows the radius, so a generator has only kind and colours to learn.
SHAPE_LAYOUTS = {"varied": (0.22, 0.38, 0.36, 0.64), "centred": (0.30, 0.36, 0.5, 0.5)}
# The built-in data specs and the layout each one draws.
SHAPES_SPECS = {"shapes": "varied", "shapes-centred": "centred"}
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

    def __init__(self, images: torch.Tensor, name: str, labels: Optional[torch.Tensor] = None,
                 class_names: Optional[List[str]] = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ArraySource: images must be uint8 (N, 3, H, W); got "
                             f"{images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"ArraySource: no images in {name}")
        self.images, self.name, self.skipped = images, name, []
        self.labels, self.class_names = _check_labels(name, labels, class_names, images.shape[0])

    def __len__(self):
        return self.images.shape[0]

    def get_many(self, idx: List[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(idx, dtype=torch.long)]


def _check_labels(name: str, labels: Optional[torch.Tensor], class_names: Optional[List[str]],
                  n: int):
    """`(labels, class_names)` validated: int64 `(n,)` in `[0, len(class_names))`."""
    if labels is None:
        return None, []
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"{name}: labels must be integers of shape ({n},); got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    labels = labels.long()
    if class_names is None:
        class_names = [str(k) for k in range(int(labels.max()) + 1)]
    if int(labels.min()) < 0 or int(labels.max()) >= len(class_names):
        raise ValueError(f"{name}: labels must be in [0, {len(class_names)}); got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels, list(class_names)


class ShapesSource(ArraySource):
    """One coloured circle, square or triangle per image, on a flat background of varied colour.

    Deterministic in `seed`; `n` images at `resolution`. The shape's kind is the image's label
    (`SHAPE_CLASSES`). `layout` (`SHAPE_LAYOUTS`) sets where it lies and how large it is:
    "varied" (default) draws the radius in 0.22–0.38 of the side and the centre in the middle
    0.36–0.64 of each axis, so the whole shape is recognisable even at 16²; "centred" puts every
    shape in the middle with a radius of 0.30–0.36 of the side. `attributes` maps each name of
    `SHAPE_ATTRIBUTES` to its values: int64 class indices or float32 values in [0, 1], `(n,)`.
    """

    def __init__(self, n: int = 8192, resolution: int = 32, seed: int = 0, layout: str = "varied"):
        if n < 1 or resolution < 8:
            raise ValueError(f"ShapesSource: need n >= 1 and resolution >= 8; got n={n}, "
                             f"resolution={resolution}")
        if layout not in SHAPE_LAYOUTS:
            raise ValueError(f"ShapesSource: layout must be one of {sorted(SHAPE_LAYOUTS)}; "
                             f"got {layout!r}")
        self.layout = layout
        self.R_MIN, self.R_MAX, self.C_MIN, self.C_MAX = SHAPE_LAYOUTS[layout]
        rng = np.random.default_rng(seed)
        R = resolution
        yy, xx = np.mgrid[0:R, 0:R].astype(np.float32) + 0.5  # (R, R) pixel centres
        bg = rng.uniform(0.0, 0.4, (n, 3, 1, 1)).astype(np.float32)
        labels = rng.integers(0, 3, n)
        r = rng.uniform(self.R_MIN, self.R_MAX, n) * R
        cy, cx = rng.uniform(self.C_MIN, self.C_MAX, (2, n)) * R
        col = rng.uniform(0.45, 1.0, (n, 3)).astype(np.float32)
        dimmed = rng.integers(0, 3, n)
        col[np.arange(n), dimmed] *= 0.3  # saturated colours
        attrs = {"kind": labels, "colour": dimmed,
                 "size": _unit(r / R, self.R_MIN, self.R_MAX),
                 "position": _unit(cy / R, self.C_MIN, self.C_MAX),
                 "background": bg.mean((1, 2, 3)) / 0.4}
        dy = yy[None] - cy[:, None, None]  # (n, R, R)
        dx = xx[None] - cx[:, None, None]
        rr = r[:, None, None]
        circle = dy ** 2 + dx ** 2 < rr ** 2
        square = (np.abs(dy) < rr * 0.85) & (np.abs(dx) < rr * 0.85)
        tri = (dy < rr * 0.8) & (np.abs(dx) < (dy + rr) * 0.6)
        mask = np.where(labels[:, None, None] == 0, circle,
                        np.where(labels[:, None, None] == 1, square, tri))
        img = np.where(mask[:, None], col[:, :, None, None], np.broadcast_to(bg, (n, 3, R, R)))
        data = torch.from_numpy((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        name = "shapes" if layout == "varied" else f"shapes-{layout}"
        super().__init__(data, f"{name}{R}", torch.from_numpy(labels.astype(np.int64)),
                         list(SHAPE_CLASSES))
        self.attributes = {k: torch.from_numpy(v.astype(np.int64 if SHAPE_ATTRIBUTES[k] else
                                                        np.float32)) for k, v in attrs.items()}
        self.attribute_kinds = dict(SHAPE_ATTRIBUTES)


def _unit(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`v` mapped from [lo, hi] to [0, 1]; 0.5 everywhere when the range is one point."""
    return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)


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
    arrays, labels = [], []
    for p in paths:
        with open(p, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
        if data is None:
            raise ValueError(f"load_cifar10: {p!r} has no 'data' entry")
        arrays.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32)
        lab = d.get(b"labels", d.get("labels"))
        labels.append(None if lab is None else np.asarray(lab, dtype=np.int64))
    x = torch.from_numpy(np.concatenate(arrays))
    y = None if any(v is None for v in labels) else torch.from_numpy(np.concatenate(labels))
    return ArraySource(_resize_crop_array(x, resolution), f"cifar10-{split}", y,
                       _cifar_names(root) if y is not None else None)


def _cifar_names(root: str) -> Optional[List[str]]:
    """CIFAR-10's class names from `batches.meta` (None without the file: names are "0".."9")."""
    p = os.path.join(root, "batches.meta")
    if not os.path.isfile(p):
        return [str(k) for k in range(10)]
    with open(p, "rb") as f:
        d = _RestrictedUnpickler(f, encoding="bytes").load()
    names = d.get(b"label_names", d.get("label_names")) if isinstance(d, dict) else None
    if not names:
        return [str(k) for k in range(10)]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_stl10(path: str, resolution: int = 48, labeled: bool = False) -> ArraySource:
    """STL-10 images from a `*_X.bin` file (or a folder: `unlabeled_X.bin` + `train_X.bin`).

    `labeled=True`: only labelled images, with labels from the `*_y.bin` beside each `*_X.bin`
    (values 1..10 -> classes 0..9; a folder gives `train_X.bin` / `train_y.bin`).
    """
    names = ("train_X.bin",) if labeled else ("unlabeled_X.bin", "train_X.bin")
    files = [path] if os.path.isfile(path) else [
        os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
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
    y = names_ = None
    if labeled:
        y = torch.from_numpy(np.concatenate([_stl10_labels(p, a.shape[0]) for p, a in
                                             zip(files, arrays)]))
        root = os.path.dirname(files[0])
        cn = os.path.join(root, "class_names.txt")
        names_ = [ln.strip() for ln in open(cn) if ln.strip()] if os.path.isfile(cn) else \
            [str(k) for k in range(10)]
    return ArraySource(_resize_crop_array(x, resolution), "stl10", y, names_)


def _stl10_labels(x_path: str, n: int) -> np.ndarray:
    """Labels 0..9 of the `n` images in `x_path` from its `*_y.bin` (stored as bytes 1..10)."""
    if not x_path.endswith("_X.bin"):
        raise ValueError(f"load_stl10: labeled=True needs a '*_X.bin' file; got {x_path!r}")
    y_path = x_path[:-len("_X.bin")] + "_y.bin"
    if not os.path.isfile(y_path):
        raise FileNotFoundError(f"load_stl10: no labels for {x_path!r}: expected {y_path!r} "
                                f"(the unlabeled split has none)")
    y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if y.shape != (n,) or y.min() < 0 or y.max() > 9:
        raise ValueError(f"load_stl10: {y_path!r} must hold {n} labels in 1..10; got {y.size} "
                         f"values in [{y.min() + 1}, {y.max() + 1}]")
    return y


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
        # One subfolder per class: the first path component, classes in sorted name order.
        tops = [n.replace(os.sep, "/").split("/", 1) for n in self.names]
        self.labels, self.class_names = None, []
        if all(len(t) == 2 for t in tops):
            self.class_names = sorted({t[0] for t in tops})
            index = {c: k for k, c in enumerate(self.class_names)}
            self.labels = torch.tensor([index[t[0]] for t in tops], dtype=torch.long)

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


def open_source(spec: str, resolution: int, seed: int = 0, shapes_n: int = 8192,
                labeled: bool = False):
    """Build a source from a spec: "shapes", "shapes-centred", "cifar10:<dir>", "stl10:<file|dir>",
    a folder or a .zip.

    A folder holding `data_batch_1` is read as CIFAR-10; a `.bin` file as STL-10.
    `labeled=True`: the source must have class labels (ValueError naming the spec otherwise).
    """
    src = _open(spec, resolution, seed, shapes_n, labeled)
    if labeled and getattr(src, "labels", None) is None:
        raise ValueError(f"data {spec!r} has no class labels: use 'shapes', CIFAR-10 batches, "
                         f"STL-10 with train_y.bin, or a folder/zip with one subfolder per class "
                         f"holding every image")
    if labeled and len(src.class_names) < 2:
        raise ValueError(f"data {spec!r} has {len(src.class_names)} class; class-conditional "
                         f"training needs at least 2")
    return src


def _open(spec: str, resolution: int, seed: int, shapes_n: int, labeled: bool):
    if spec in SHAPES_SPECS:
        return ShapesSource(shapes_n, resolution, seed, layout=SHAPES_SPECS[spec])
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("cifar10", "stl10") \
        else ("", "", spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data: {spec!r} is not one of {sorted(SHAPES_SPECS)} and "
                                f"{path!r} does not exist")
    if kind == "cifar10" or os.path.isfile(os.path.join(path, "data_batch_1")):
        return load_cifar10(path, resolution)
    if kind == "stl10" or path.endswith(".bin"):
        return load_stl10(path, resolution, labeled)
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

    def next(self, global_batch: int, gen: Optional[torch.Generator], device,
             labels: bool = False):
        """This rank's float `(global_batch / world, 3, R, R)` slice in [-1, 1] on `device`;
        with `labels=True`, the pair `(images, int64 labels (B,))` (the source's labels)."""
        idx = self.sampler.take(global_batch)
        flips = torch.rand(global_batch, generator=gen, device=gen.device if gen else "cpu") < 0.5
        per = global_batch // self.world
        mine = slice(self.rank * per, (self.rank + 1) * per)
        x = self.source.get_many(idx[mine]).to(device)
        x = x.float() / 127.5 - 1.0
        if self.flip:
            f = flips[mine].to(device).view(-1, 1, 1, 1)
            x = torch.where(f, x.flip(3), x)
        if labels:
            y = getattr(self.source, "labels", None)
            if y is None:
                raise ValueError(f"BatchLoader: the data source {getattr(self.source, 'name', '')!r} "
                                 f"has no class labels")
            return x, y[torch.as_tensor(idx[mine], dtype=torch.long)].to(device)
        return x

    @property
    def epoch_float(self) -> float:
        return self.sampler.epoch + self.sampler.pos / self.sampler.n
