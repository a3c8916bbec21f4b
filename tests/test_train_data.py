"""Data sources: built-in shapes, image folder / zip with corrupt files, CIFAR-10 and STL-10 formats."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from transgan_fast.train.data import (BatchLoader, ImageFileSource, InfiniteSampler, ShapesSource,
                                      load_cifar10, load_stl10, open_source)


def test_shapes_deterministic_and_varied():
    a, b, c = ShapesSource(64, 32, seed=0), ShapesSource(64, 32, seed=0), ShapesSource(64, 32, seed=1)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.float().std() > 30  # shapes on backgrounds, not a flat image
    assert open_source("shapes", 16).images.shape[-1] == 16


def _shape_centres(src):
    """Each image's foreground centre of mass (fraction of the side), from its labels' colours."""
    x = src.images.float()
    fg = (x - x[:, :, :1, :1]).abs().sum(1) > 1  # pixels unlike the corner (background)
    yy, xx = torch.meshgrid(torch.arange(x.shape[-1]) + 0.5, torch.arange(x.shape[-1]) + 0.5,
                            indexing="ij")
    n = fg.sum((1, 2)).float()
    return (fg * yy).sum((1, 2)) / n / x.shape[-1], (fg * xx).sum((1, 2)) / n / x.shape[-1], n


def test_shapes_centred_layout():
    varied = ShapesSource(256, 32, seed=4)
    centred = open_source("shapes-centred", 32, seed=4, shapes_n=256)
    assert centred.layout == "centred" and centred.name == "shapes-centred32"
    # Same kinds and colours from the same seed; only place and size differ.
    assert torch.equal(varied.labels, centred.labels)
    assert torch.equal(varied.attributes["colour"], centred.attributes["colour"])
    _, cx_c, n_c = _shape_centres(centred)
    _, cx_v, n_v = _shape_centres(varied)
    # Horizontal centre of mass: 0.5 for every centred shape (a triangle's vertical one is not).
    assert (cx_c - 0.5).abs().max() < 0.03 and (cx_v - 0.5).abs().max() > 0.08
    assert n_c.std() < n_v.std()  # the narrower radius range
    assert torch.all(centred.attributes["position"] == 0.5)
    s = centred.attributes["size"]
    assert s.min() >= 0 and s.max() <= 1 and s.std() > 0.2
    with pytest.raises(ValueError, match="layout must be one of"):
        ShapesSource(8, 16, layout="corner")
    with pytest.raises(FileNotFoundError, match="shapes-centred"):
        open_source("shapes-centered", 16)


def _write_images(folder, sizes):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"img{i}.png"))


def test_image_folder_any_size_and_corrupt_skipped(tmp_path):
    d = tmp_path / "imgs"
    _write_images(str(d / "sub"), [(40, 30), (17, 50), (32, 32)])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = d / "sub" / "img0.png"
    (d / "truncated.png").write_bytes(good.read_bytes()[:60])
    src = open_source(str(d), 16)
    assert isinstance(src, ImageFileSource) and len(src) == 3
    assert sorted(n for n, _ in src.skipped) == ["broken.png", "truncated.png"]
    x = src.get_many([0, 1, 2])
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    # no cache: decoding on the fly also works
    src2 = ImageFileSource(str(d), 16, cache_mb=0)
    assert src2.cache is None and torch.equal(src2.get_many([2, 0]), x[[2, 0]])


def test_zip_source_with_corrupt_member(tmp_path):
    d = tmp_path / "imgs"
    _write_images(str(d), [(20, 20), (64, 48)])
    zp = tmp_path / "data.zip"
    with zipfile.ZipFile(zp, "w") as z:
        for n in os.listdir(d):
            z.write(d / n, n)
        z.writestr("bad.jpg", b"not a jpeg")
        z.writestr("notes.txt", b"ignored")
    src = open_source(str(zp), 8)
    assert len(src) == 2 and [n for n, _ in src.skipped] == ["bad.jpg"]
    assert src.get_many([1]).shape == (1, 3, 8, 8)


def test_all_corrupt_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFileSource(str(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(str(tmp_path / "missing"), 8)


def test_cifar10_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (5, 3072), dtype=np.uint8)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 4]}, f)
    src = open_source(str(tmp_path), 32)
    assert len(src) == 5
    assert torch.equal(src.images[2], torch.from_numpy(data[2].reshape(3, 32, 32)))
    assert load_cifar10(str(tmp_path), 16).images.shape == (5, 3, 16, 16)


def test_cifar10_rejects_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        load_cifar10(str(tmp_path))


def test_stl10_binary(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (3, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
    imgs.transpose(0, 1, 3, 2).tofile(tmp_path / "unlabeled_X.bin")  # column-major on disk
    src = open_source(f"stl10:{tmp_path}", 96)
    assert torch.equal(src.images, torch.from_numpy(imgs))
    assert load_stl10(str(tmp_path / "unlabeled_X.bin"), 48).images.shape == (3, 3, 48, 48)
    (tmp_path / "bad_X.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="multiple"):
        load_stl10(str(tmp_path / "bad_X.bin"))


def test_sampler_epochs_and_state():
    s = InfiniteSampler(5, seed=3)
    first = s.take(5)
    assert sorted(first) == list(range(5)) and s.state_dict()["epoch"] == 1
    s.take(2)
    t = InfiniteSampler(5, seed=3)
    t.load_state_dict(s.state_dict())
    assert t.take(7) == s.take(7)


def test_batch_loader_range_flip_and_rank_slices():
    src = ShapesSource(16, 8)
    full = BatchLoader(src, seed=0, flip=True).next(8, torch.Generator().manual_seed(1), "cpu")
    assert full.shape == (8, 3, 8, 8) and full.min() >= -1 and full.max() <= 1
    parts = [BatchLoader(src, seed=0, rank=r, world_size=2).next(8, torch.Generator().manual_seed(1), "cpu")
             for r in range(2)]
    assert torch.equal(torch.cat(parts), full)
    noflip = BatchLoader(src, seed=0, flip=False).next(8, torch.Generator().manual_seed(1), "cpu")
    flipped = ~torch.isclose(full, noflip).flatten(1).all(1)
    assert flipped.any() and torch.equal(full[flipped], noflip[flipped].flip(3))
