"""Eval-set readers and preprocessing (toolchain.data): shapes, values, fingerprints, every error path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from toolchain.data import (
    EvalSet,
    ImageFolderEvalSet,
    NpzEvalSet,
    center_crop,
    open_eval_set,
    preprocess,
    resize_shorter_side,
)
from toolchain.core.errors import ConfigError, DataError
from toolchain.core.meta import ModelMeta

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def meta(c=3, h=8, w=8, num_classes=6, resize=None, mean=None, std=None):
    return ModelMeta((c, h, w), mean or (0.0,) * c, std or (1.0,) * c, num_classes, resize=resize)


def images(n=5, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def write_npz(path, imgs, labels, **extra):
    np.savez(path, images=imgs, labels=np.asarray(labels), **extra)
    return path


def write_folder(root, n=4, size=(8, 8), sub="images", labels=None, mode="RGB"):
    """A folder eval set: PNGs under root/sub, labels.csv; returns (root, pixel arrays)."""
    (root / sub).mkdir(parents=True, exist_ok=True) if sub else root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = []
    rows = ["file,label"]
    for i in range(n):
        shape = (size[0], size[1], 3) if mode == "RGB" else size
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr).save(root / (sub or ".") / f"img{i}.png")
        arrays.append(arr)
        rows.append(f"img{i}.png,{labels[i] if labels else i % 3}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, arrays


def assert_one_line(err: DataError | ConfigError):
    assert err.message and "\n" not in err.message
    assert err.hint is None or "\n" not in err.hint


# ----------------------------------------------------------------------------- preprocess

def test_preprocess_normalizes_per_channel():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 255, 51
    m = ModelMeta((3, 2, 2), (0.5, 0.5, 0.1), (0.5, 0.25, 0.1), 4)
    x = preprocess(img, m)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], -1.0)
    np.testing.assert_allclose(x[0, 1], 2.0)
    np.testing.assert_allclose(x[0, 2], 1.0, rtol=1e-6)


def test_preprocess_grayscale_nhw():
    imgs = images(3, c=1)[..., 0]  # (N, H, W)
    x = preprocess(imgs, meta(c=1))
    assert x.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(x[:, 0], imgs / 255.0, rtol=1e-6)


def test_preprocess_refuses_larger_images_without_a_resize_step():
    """A 10x13 image into an 8x8 model with no resize in the card is an error naming both sizes,
    not a silent centre crop (with a resize step the crop is the protocol: see the next test)."""
    with pytest.raises(DataError) as e:
        preprocess(images(1, h=10, w=13), meta())
    assert "is 10x13 pixels but the model takes 8x8" in e.value.message and "no resize" in e.value.message
    assert_one_line(e.value)
    assert center_crop(images(1, h=10, w=13)[0], 8, 8).shape == (8, 8, 3)


def test_resize_matches_pillow_rgb_and_torchvision_sizes():
    img = images(1, h=20, w=30)[0]
    out = resize_shorter_side(img, 16)
    assert out.shape == (16, 24, 3)  # long side int(16 * 30 / 20)
    ref = np.asarray(Image.fromarray(img).resize((24, 16), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)
    assert resize_shorter_side(images(1, h=227, w=300)[0], 256).shape == (256, int(256 * 300 / 227), 3)
    x = preprocess(img[None], meta(resize=16))
    np.testing.assert_allclose(x[0], center_crop(ref, 8, 8).transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_preprocess_list_of_differently_sized_images():
    x = preprocess([images(1, 9, 12)[0], images(1, 20, 16)[0]], meta(resize=8))
    assert x.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("bad, m, words", [
    (images(1, h=6, w=8), meta(), "smaller than the model's input"),
    (images(1, c=1), meta(c=3), "1 channel(s) but the model expects 3"),
    (images(1), meta(c=1), "3 channel(s) but the model expects 1"),
    (images(1).astype(np.float32), meta(), "dtype float32"),
    (np.zeros((8, 8), np.uint8), meta(), "expected NHWC"),
    ([np.zeros((2, 8, 8, 3), np.uint8)], meta(), "expected (H, W, C)"),
])
def test_preprocess_errors(bad, m, words):
    with pytest.raises(DataError) as e:
        preprocess(bad, m)
    assert words in e.value.message
    assert_one_line(e.value)


# ------------------------------------------------------------------------------------ npz

def test_npz_reads_and_batches(tmp_path):
    imgs = images(7)
    p = write_npz(tmp_path / "d.npz", imgs, [0, 1, 2, 3, 4, 5, 0])
    ds = NpzEvalSet(p)
    assert isinstance(ds, EvalSet) and len(ds) == 7
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 0]
    batches = list(ds.batches(meta(), 3))
    assert [b[0].shape for b in batches] == [(3, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]
    assert all(x.dtype == np.float32 and y.dtype == np.int64 for x, y in batches)
    x = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(x, imgs.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)


def test_npz_grayscale_and_limit(tmp_path):
    p = write_npz(tmp_path / "g.npz", images(6, c=1)[..., 0], np.arange(6) % 2)
    ds = NpzEvalSet(p, limit=4)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 0, 1]
    (x, y), = list(ds.batches(meta(c=1, num_classes=2), 64))
    assert x.shape == (4, 1, 8, 8) and y.tolist() == [0, 1, 0, 1]


def test_npz_fingerprint(tmp_path):
    imgs = images(4)
    a = NpzEvalSet(write_npz(tmp_path / "a.npz", imgs, [0, 1, 2, 3])).fingerprint()
    assert len(a) == 64 and int(a, 16) >= 0
    assert a == NpzEvalSet(write_npz(tmp_path / "b.npz", imgs, [0, 1, 2, 3])).fingerprint()
    imgs2 = imgs.copy()
    imgs2[0, 0, 0, 0] ^= 1
    assert a != NpzEvalSet(write_npz(tmp_path / "c.npz", imgs2, [0, 1, 2, 3])).fingerprint()
    assert a != NpzEvalSet(write_npz(tmp_path / "d.npz", imgs, [0, 1, 2, 4])).fingerprint()
    assert a != NpzEvalSet(tmp_path / "a.npz", limit=3).fingerprint()


def _npz_cases(tmp_path):
    ok = images(3)
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive")
    np.save(tmp_path / "array.npy", ok)
    np.savez(tmp_path / "pickled.npz", images=np.array([object()], dtype=object), labels=[0])
    return {
        "missing file": (tmp_path / "nope.npz", "not found"),
        "no images": (_drop(write_npz(tmp_path / "a.npz", ok, [0, 1, 2]), "images"), "no 'images'"),
        "no labels": (_drop(write_npz(tmp_path / "b.npz", ok, [0, 1, 2]), "labels"), "no 'labels'"),
        "float images": (write_npz(tmp_path / "c.npz", ok.astype(np.float32), [0, 1, 2]), "dtype float32"),
        "1-D images": (write_npz(tmp_path / "d.npz", np.zeros(3, np.uint8), [0, 1, 2]), "expected (N, H, W, C)"),
        "5-D images": (write_npz(tmp_path / "e.npz", ok[..., None], [0, 1, 2]), "expected (N, H, W, C)"),
        "NCHW": (write_npz(tmp_path / "f.npz", ok.transpose(0, 3, 1, 2), [0, 1, 2]), "looks like NCHW"),
        "count mismatch": (write_npz(tmp_path / "g.npz", ok, [0, 1]), "3 images but 2 labels"),
        "float labels": (write_npz(tmp_path / "h.npz", ok, [0.5, 1, 2]), "labels must be integers"),
        "2-D labels": (write_npz(tmp_path / "i.npz", ok, [[0], [1], [2]]), "labels must be 1-D"),
        "empty": (write_npz(tmp_path / "j.npz", ok[:0], np.zeros(0, np.int64)), "holds no images"),
        "not a zip": (tmp_path / "garbage.npz", "cannot read"),
        "npy array": (tmp_path / "array.npy", "single array"),
        "pickled": (tmp_path / "pickled.npz", "cannot read"),
    }


def _drop(path, key):
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if k != key}
    np.savez(path, **kept)
    return path


def test_npz_errors(tmp_path):
    for case, (path, words) in _npz_cases(tmp_path).items():
        with pytest.raises(DataError) as e:
            NpzEvalSet(path)
        assert words in e.value.message, case
        assert_one_line(e.value)


def test_labels_outside_classes(tmp_path):
    ds = NpzEvalSet(write_npz(tmp_path / "d.npz", images(3), [0, 6, 1]))
    with pytest.raises(DataError, match=r"label 6 of image 1 is outside \[0, 6\)"):
        next(ds.batches(meta(num_classes=6), 2))
    ds = NpzEvalSet(write_npz(tmp_path / "n.npz", images(3), [0, -1, 1]))
    with pytest.raises(DataError, match="outside"):
        next(ds.batches(meta(), 2))


def test_bad_options(tmp_path):
    p = write_npz(tmp_path / "d.npz", images(3), [0, 1, 2])
    for limit in (0, -1, 2.5, True):
        with pytest.raises(ConfigError):
            NpzEvalSet(p, limit=limit)
    with pytest.raises(ConfigError):
        next(NpzEvalSet(p).batches(meta(), 0))


# --------------------------------------------------------------------------- image folder

def test_folder_reads_rgb(tmp_path):
    root, arrays = write_folder(tmp_path / "f", n=5, labels=[2, 0, 1, 1, 5])
    ds = ImageFolderEvalSet(root)
    assert isinstance(ds, EvalSet) and len(ds) == 5 and ds.labels.tolist() == [2, 0, 1, 1, 5]
    got = list(ds.batches(meta(), 2))
    assert [x.shape for x, _ in got] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    x = np.concatenate([b[0] for b in got])
    np.testing.assert_allclose(x, np.stack(arrays).transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert np.concatenate([b[1] for b in got]).tolist() == [2, 0, 1, 1, 5]


def test_folder_images_beside_csv_grayscale_and_resize(tmp_path):
    root, arrays = write_folder(tmp_path / "f", n=3, size=(12, 16), sub=None)
    ds = ImageFolderEvalSet(root / "labels.csv", limit=2)  # the csv path works too
    assert len(ds) == 2
    (x, _), = list(ds.batches(meta(c=1, resize=8), 8))  # RGB files → L for a 1-channel model
    assert x.shape == (2, 1, 8, 8)
    gray = np.asarray(Image.fromarray(arrays[0]).convert("L").resize((10, 8), Image.BILINEAR))
    np.testing.assert_allclose(x[0, 0], gray[:, 1:9] / 255.0, rtol=1e-6)


def test_folder_fingerprint(tmp_path):
    root, _ = write_folder(tmp_path / "f", n=3)
    a = ImageFolderEvalSet(root).fingerprint()
    assert a == ImageFolderEvalSet(root).fingerprint()
    assert a != ImageFolderEvalSet(root, limit=2).fingerprint()
    img = root / "images" / "img1.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert a != ImageFolderEvalSet(root).fingerprint()


def test_folder_errors(tmp_path):
    def folder(name, csv_text, files=("a.png",)):
        d = tmp_path / name
        (d / "images").mkdir(parents=True)
        for f in files:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "images" / f)
        if csv_text is not None:
            (d / "labels.csv").write_text(csv_text)
        return d

    cases = {
        "missing folder": (tmp_path / "nope", "not found"),
        "no labels.csv": (folder("a", None), "has no labels.csv"),
        "empty csv": (folder("b", ""), "is empty"),
        "bad header": (folder("c", "a.png,0\n"), "expected the header 'file,label'"),
        "header only": (folder("d", "file,label\n"), "lists no images"),
        "short row": (folder("e", "file,label\na.png\n"), "line 2: expected 2 columns"),
        "non-int label": (folder("f", "file,label\na.png,cat\n"), "label 'cat' is not an integer"),
        "missing image": (folder("g", "file,label\na.png,0\nb.png,1\n"), "names 1 file(s) that are neither"),
        "absolute name": (folder("h", "file,label\n/etc/passwd,0\n"), "must be relative"),
        "parent name": (folder("i", "file,label\n../x.png,0\n"), "must be relative"),
    }
    for case, (path, words) in cases.items():
        with pytest.raises(DataError) as e:
            ImageFolderEvalSet(path)
        assert words in e.value.message, case
        assert_one_line(e.value)


def test_folder_errors_at_decode_time(tmp_path):
    root, _ = write_folder(tmp_path / "f", n=2, labels=[0, 7])
    with pytest.raises(DataError, match="label 7 of image 1 is outside"):
        next(ImageFolderEvalSet(root).batches(meta(), 2))
    root2, _ = write_folder(tmp_path / "g", n=2)
    (root2 / "images" / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image") as e:
        list(ImageFolderEvalSet(root2).batches(meta(), 1))
    assert_one_line(e.value)
    with pytest.raises(DataError, match="RGB or grayscale"):
        next(ImageFolderEvalSet(root2).batches(meta(c=2), 1))
    with pytest.raises(DataError, match="smaller than the model's input"):
        next(ImageFolderEvalSet(root2).batches(meta(h=16, w=16), 1))


# ------------------------------------------------------------------------------ dispatch

def test_open_eval_set_dispatch(tmp_path):
    p = write_npz(tmp_path / "d.npz", images(3), [0, 1, 2])
    assert isinstance(open_eval_set(p), NpzEvalSet)
    assert len(open_eval_set(str(p), limit=2)) == 2
    zipped = tmp_path / "data.bin"
    zipped.write_bytes(p.read_bytes())
    assert isinstance(open_eval_set(zipped), NpzEvalSet)
    root, _ = write_folder(tmp_path / "f", n=2)
    assert isinstance(open_eval_set(root), ImageFolderEvalSet)
    assert isinstance(open_eval_set(root / "labels.csv"), ImageFolderEvalSet)
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("hello")
    for bad, words in ((tmp_path / "nope", "not found"), (tmp_path / "empty", "has no labels.csv"),
                       (tmp_path / "x.txt", "not a known eval-data format")):
        with pytest.raises(DataError, match=words) as e:
            open_eval_set(bad)
        assert_one_line(e.value)


# ----------------------------------------------------------------------------- real data

def test_real_cifar10_npz(shared_cifar10):
    ds = open_eval_set(shared_cifar10)
    assert len(ds) == 1017 and ds.labels.min() == 0 and ds.labels.max() == 9
    m = ModelMeta((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, 10)
    shapes, n = set(), 0
    for x, y in ds.batches(m, 256):
        shapes.add(x.shape[1:])
        n += len(y)
    assert shapes == {(3, 32, 32)} and n == 1017
    lo = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    hi = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.all(x.min(axis=(0, 2, 3)) >= lo - 1e-5) and np.all(x.max(axis=(0, 2, 3)) <= hi + 1e-5)


def test_real_imagenet_folder_mobilenet_preprocessing(shared_imagenet):
    ds = open_eval_set(shared_imagenet, limit=6)
    assert isinstance(ds, ImageFolderEvalSet) and len(ds) == 6
    m = ModelMeta((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 1000, resize=256)
    (x, y), = list(ds.batches(m, 8))
    assert x.shape == (6, 3, 224, 224) and x.dtype == np.float32 and y.dtype == np.int64
    lo = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    hi = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.all(x.min(axis=(0, 2, 3)) >= lo - 1e-5) and np.all(x.max(axis=(0, 2, 3)) <= hi + 1e-5)
    assert -1.5 < float(x.mean()) < 1.5 and 0.3 < float(x.std()) < 2.0  # natural photos, normalized
    assert len(open_eval_set(shared_imagenet).labels) == 1300
