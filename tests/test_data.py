"""tl_core.data: built-in datasets, user folders/zips (with real bad files made here), splits,
preprocessing. Everything is offline; nothing is written outside pytest's tmp dirs."""
from __future__ import annotations

import glob
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_core.models import backbones
from tl_core import cli
from tl_core import data
from tl_core.data import builtin
from tl_core.data.transforms import Augment
from tl_core.data.sources import Caps
from tl_core.data.errors import DataError
from tl_core.data.sets import ImageSet

torch.set_num_threads(2)


@pytest.fixture(scope="module", autouse=True)
def cache_in_tmp(tmp_path_factory):
    """Built-in caches go to a tmp dir; the in-process cache starts empty so the disk cache is exercised."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_CACHE_DIR", str(tmp_path_factory.mktemp("tl_cache")))
        mp.delenv("TL_DATA_ROOT", raising=False)
        builtin.builtin_arrays.cache_clear()
        yield
        builtin.builtin_arrays.cache_clear()


# --------------------------------------------------------------------------- helpers


def save_image(path: Path, colour=(200, 30, 30), size=(24, 24), seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(a.astype(np.uint8)).save(path, format=fmt)
    return path


def make_folder(root: Path, per_class: dict[str, int], size=(24, 24)) -> Path:
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    for c, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            save_image(root / name / f"{name}_{i}.png", colours[c % 4], size, seed=i)
    return root


def make_zip(zip_path: Path, folder: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + str(f.relative_to(folder)))
    return zip_path


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "data_root"
    r.mkdir()
    return r


# --------------------------------------------------------------------------- built-in datasets


def test_catalogue_describes_every_dataset():
    assert list(data.BUILTIN) == ["animal_shapes", "mnist", "faces", "digits8"]
    for row in data.list_datasets():
        assert row["similarity"] in ("near", "medium", "far")
        assert row["description"] and row["similarity_note"] and row["source"]
        assert len(row["class_names"]) == row["num_classes"]
    assert data.BUILTIN["faces"].similarity == "near" and data.BUILTIN["mnist"].similarity == "far"


@pytest.mark.parametrize("key,per_class", [("animal_shapes", None), ("mnist", 500), ("faces", 100), ("digits8", None)])
def test_builtin_dataset(key, per_class):
    info = data.BUILTIN[key]
    ds = data.load_dataset(key)
    s = info.native_size
    assert ds.images.shape == (info.size, 1, s, s) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (info.size,) and ds.labels.dtype == torch.int64
    assert ds.class_names == info.class_names and ds.num_classes == info.num_classes
    assert set(ds.labels.tolist()) == set(range(info.num_classes))
    assert ds.images.max() == 255 and ds.images.min() == 0  # full uint8 range
    if per_class:
        assert set(data.class_counts(ds).values()) == {per_class}


def test_animal_shapes_facts():
    ds = data.load_dataset("animal_shapes")
    assert data.BUILTIN["animal_shapes"].class_names[:3] == ["bear", "bird", "cat"]
    assert len(ds) == 10_000 - 284  # duplicates dropped
    rows = [bytes(r) for r in ds.images.reshape(len(ds), -1).numpy()]
    assert len(set(rows)) == len(rows)
    train, val = data.split(ds, seed=3)
    assert not {rows[i] for i in train.tolist()} & {rows[i] for i in val.tolist()}
    # white silhouettes on black: the border is background
    assert ds.images[:, 0, 0, :].float().mean() < 30


def test_faces_are_first_half():
    ds = data.load_dataset("faces")
    assert ds.labels[:100].eq(0).all() and ds.labels[100:].eq(1).all()
    assert ds.class_names == ["face", "non-face"]


def test_builtin_disk_cache_is_pickle_free_and_used(monkeypatch):
    """Decoded once into a plain .npz; a new load reads that file, not the package; a load in the same
    process comes from memory. (Its timings: benchmarks/bench_data_cache.py.)"""
    decoded = []
    real = builtin._LOADERS["animal_shapes"]
    monkeypatch.setitem(builtin._LOADERS, "animal_shapes", lambda: decoded.append(1) or real())
    cached = Path(os.environ["TL_CACHE_DIR"]) / "datasets" / f"animal_shapes-v{builtin._CACHE_VERSION}.npz"
    cached.unlink(missing_ok=True)
    builtin.builtin_arrays.cache_clear()
    first = data.load_dataset("animal_shapes")
    assert decoded == [1] and cached.is_file()
    with np.load(cached, allow_pickle=False) as z:  # plain arrays, no pickle needed
        assert z["images"].shape == (len(first), 28, 28)
    builtin.builtin_arrays.cache_clear()  # as a new process: only the disk cache is left
    again = data.load_dataset("animal_shapes")
    assert decoded == [1]  # read from the .npz, not decoded again
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    hits = builtin.builtin_arrays.cache_info().hits
    data.load_dataset("animal_shapes")
    assert builtin.builtin_arrays.cache_info().hits == hits + 1 and decoded == [1]  # in-process cache


def test_unpickler_allows_numpy_arrays_only(tmp_path):
    import gzip

    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
    assert builtin._read_pickled_array(good).tolist() == [[0, 1, 2], [3, 4, 5]]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        builtin._read_pickled_array(bad)


# --------------------------------------------------------------------------- splits


def toy_set(counts: list[int], hint: list[bool] | None = None) -> ImageSet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]).long()
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return ImageSet(images, labels, [f"c{c}" for c in range(len(counts))], "toy",
                    split_hint=torch.tensor(hint) if hint is not None else None)


def test_split_is_seeded_and_stratified():
    ds = data.load_dataset("digits8")
    train, val = data.split(ds, val_fraction=0.2, seed=7)
    train2, val2 = data.split(ds, val_fraction=0.2, seed=7)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert not torch.equal(val, data.split(ds, val_fraction=0.2, seed=8)[1])
    assert sorted(train.tolist() + val.tolist()) == list(range(len(ds)))  # disjoint and complete
    for name, n in data.class_counts(ds).items():
        assert data.class_counts(ds, val)[name] == round(n * 0.2)


def test_per_class_caps_train_and_keeps_validation():
    ds = data.load_dataset("mnist")
    full_train, val = data.split(ds, seed=1)
    small_train, val_small = data.split(ds, seed=1, per_class=10)
    tiny_train, _ = data.split(ds, seed=1, per_class=3)
    assert torch.equal(val, val_small)  # comparable runs
    assert set(data.class_counts(ds, small_train).values()) == {10}
    assert set(tiny_train.tolist()) <= set(small_train.tolist()) <= set(full_train.tolist())
    assert data.class_counts(ds, data.split(ds, per_class=10_000)[0]) == data.class_counts(ds, full_train)


def test_subset_classes_relabels_in_the_given_order():
    ds = data.load_dataset("animal_shapes")
    sub = data.subset_classes(ds, ["zebra", "bear"])
    assert sub.class_names == ["zebra", "bear"]
    counts = data.class_counts(ds)
    assert data.class_counts(sub) == {"zebra": counts["zebra"], "bear": counts["bear"]}
    zebra = ds.images[ds.labels == ds.class_names.index("zebra")]
    assert torch.equal(sub.images[sub.labels == 0], zebra)
    with pytest.raises(DataError, match="no class 'unicorn'"):
        data.subset_classes(ds, ["bear", "unicorn"])


def test_split_honours_split_hint():
    hint = [False] * 4 + [True] * 2 + [False] * 3 + [True] * 1
    train, val = data.split(toy_set([6, 4], hint), seed=0, per_class=2)
    assert val.tolist() == [4, 5, 9]
    assert len(train) == 4 and set(train.tolist()) <= {0, 1, 2, 3, 6, 7, 8}


def test_split_refuses_unusable_sets():
    with pytest.raises(DataError, match="at least two"):
        data.split(toy_set([10]))
    with pytest.raises(DataError, match="'c1' has 1 image"):
        data.split(toy_set([10, 1]))
    with pytest.raises(DataError, match="val/"):  # a class with nothing in val/
        data.split(toy_set([3, 3], [False, False, True, False, False, False]))
    with pytest.raises(DataError):
        data.split(toy_set([5, 5]), val_fraction=1.5)


# --------------------------------------------------------------------------- user folders and zips


def test_folder_with_bad_files_is_reported_and_loaded(root):
    folder = make_folder(root / "pets", {"cat": 6, "dog": 6})
    good = (folder / "cat" / "cat_0.png").read_bytes()
    (folder / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "dog" / "notes.txt").write_text("not an image")
    (folder / "dog" / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (folder / "README.md").write_text("stray file at the top")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden junk is ignored silently

    report = data.check_data("pets", data_root=root)
    assert report.ok and report.classes == ["cat", "dog"] and report.counts == {"cat": 6, "dog": 6}
    why = dict(report.skipped)
    assert set(why) == {"cat/truncated.png", "dog/notes.txt", "dog/fake.jpg", "README.md"}
    assert "truncated" in why["cat/truncated.png"]
    assert why["dog/notes.txt"] == why["dog/fake.jpg"] == "not an image file"
    assert why["README.md"] == "not inside a class folder"
    assert json.loads(json.dumps(report.to_dict()))["num_images"] == 12

    ds = data.load_dataset(str(folder), data_root=root, store_size=16)
    assert ds.images.shape == (12, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 and ds.split_hint is None
    assert ds.report.skipped == report.skipped
    assert ds.images[0, 0].float().mean() > 150 and ds.images[6, 2].float().mean() > 150  # red cat, blue dog
    # small images are not enlarged to store_size
    assert data.load_dataset("pets", data_root=root).images.shape[-1] == 24


def test_train_val_layout_sets_split_hint(root):
    make_folder(root / "split" / "train", {"a": 5, "b": 5})
    make_folder(root / "split" / "val", {"a": 2, "b": 2})
    ds = data.load_dataset("split", data_root=root)
    assert ds.report.has_split and ds.report.val_counts == {"a": 2, "b": 2} and ds.report.counts == {"a": 7, "b": 7}
    assert ds.split_hint.sum() == 4
    train, val = data.split(ds)
    assert ds.split_hint[val].all() and not ds.split_hint[train].any()


def test_zip_loads_with_wrapper_folder(root, tmp_path):
    folder = make_folder(tmp_path / "src", {"cat": 5, "dog": 5})
    zpath = make_zip(root / "pets.zip", folder, prefix="pets/")
    before = files_under(tmp_path)
    ds = data.load_dataset("pets.zip", data_root=root)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 10 and ds.name == "pets"
    assert files_under(tmp_path) == before  # extracted to a temporary dir, then removed
    assert data.check_data(zpath, data_root=root).ok


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "/tmp/evil_abs.txt", "C:/evil.txt"])
def test_zip_with_escaping_entry_is_refused(root, tmp_path, evil):
    zpath = root / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("cat/ok.txt", "fine")
        zf.writestr(zipfile.ZipInfo(evil), "gotcha")
    dest = tmp_path / "out" / "extract"
    with pytest.raises(DataError, match="absolute path or '..'"):
        data.safe_extract_zip(zpath, dest)
    assert not files_under(tmp_path / "out") and not (tmp_path / "out" / "evil.txt").exists()
    assert not Path("/tmp/evil_abs.txt").exists()
    report = data.check_data("evil.zip", data_root=root)
    assert not report.ok and "refusing" in report.errors[0]
    with pytest.raises(DataError, match="refusing"):
        data.load_dataset("evil.zip", data_root=root)


def test_zip_bomb_and_file_count_caps(root, tmp_path):
    bomb = root / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * 3_000_000)  # 3 MB that compresses to a few KB
    assert bomb.stat().st_size < 20_000
    with pytest.raises(DataError, match="max_total_bytes cap of 1,000,000"):
        data.safe_extract_zip(bomb, tmp_path / "x", Caps(max_total_bytes=1_000_000))
    assert not (tmp_path / "x").exists() or not files_under(tmp_path / "x")

    make_zip(root / "many.zip", make_folder(tmp_path / "src", {"a": 3, "b": 3}))
    with pytest.raises(DataError, match="max_files cap of 4"):
        data.load_dataset("many.zip", data_root=root, caps=Caps(max_files=4))
    report = data.check_data("src", data_root=tmp_path, caps=Caps(max_files=4))
    assert "max_files cap of 4" in report.errors[0]
    assert "max_total_bytes" in data.check_data("src", data_root=tmp_path, caps=Caps(max_total_bytes=100)).errors[0]


def test_not_a_zip(root):
    (root / "junk.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="neither a folder nor a .zip|not a valid zip"):
        data.check_data("junk.zip", data_root=root)


def test_image_over_pixel_cap_is_skipped(root):
    folder = make_folder(root / "big", {"a": 5, "b": 5})
    Image.new("1", (7000, 6000)).save(folder / "a" / "bomb.png")  # 42 Mpx, a 5 KB file
    report = data.check_data("big", data_root=root)
    assert report.ok and report.counts == {"a": 5, "b": 5}
    assert dict(report.skipped)["a/bomb.png"] == "7000x6000 = 42,000,000 pixels, over the max_pixels cap of 40,000,000"
    with pytest.raises(DataError, match="max_pixels cap of 100"):
        data.read_image(folder / "a" / "a_0.png", Caps(max_pixels=100))


def test_one_class_folder_is_an_error(root, capsys):
    make_folder(root / "one", {"cat": 8})
    report = data.check_data("one", data_root=root)
    assert not report.ok and "at least two" in report.errors[0]
    with pytest.raises(DataError, match="at least two"):
        data.load_dataset("one", data_root=root)
    assert cli.main(["check-data", "one", "--data-root", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "at least two" in err


def test_class_with_too_few_images_is_an_error(root):
    make_folder(root / "few", {"cat": 8, "dog": 2})
    report = data.check_data("few", data_root=root)
    assert report.errors == ["class 'dog' has 2 image(s); each class needs at least 5 (the min_per_class cap) "
                             "so that training and validation both get some"]
    assert data.check_data("few", data_root=root, caps=Caps(min_per_class=2)).ok
    (root / "nothing" / "cat").mkdir(parents=True)
    (root / "nothing" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        data.load_dataset("nothing", data_root=root)


def test_data_root_is_enforced(root, tmp_path, monkeypatch):
    make_folder(tmp_path / "outside", {"a": 5, "b": 5})
    (root / "link").symlink_to(tmp_path / "outside")
    for bad in ["/etc", "/etc/passwd", "..", "../outside", str(root / ".." / "outside"), "link"]:
        with pytest.raises(DataError, match="outside the data root"):
            data.resolve_data_path(bad, root)
    with pytest.raises(DataError, match="outside the data root"):
        data.load_dataset("/etc", data_root=root)
    with pytest.raises(DataError, match="not a built-in dataset"):
        data.load_dataset("no_such_set", data_root=root)
    monkeypatch.setenv("TL_DATA_ROOT", str(root))
    make_folder(root / "inside", {"a": 5, "b": 5})
    assert data.resolve_data_path("inside") == (root / "inside").resolve()
    assert cli.main(["check-data", "/etc"]) == 1


def test_symlinked_file_outside_is_skipped(root, tmp_path):
    folder = make_folder(root / "links", {"a": 5, "b": 5})
    secret = save_image(tmp_path / "secret.png")
    (folder / "a" / "sneaky.png").symlink_to(secret)
    report = data.check_data("links", data_root=root)
    assert dict(report.skipped)["a/sneaky.png"].startswith("symbolic link") and report.counts["a"] == 5


# --------------------------------------------------------------------------- colour modes


def test_colour_modes_are_converted(tmp_path):
    def read(im: Image.Image, name: str, **save) -> np.ndarray:
        im.save(tmp_path / name, **save)
        out = data.read_image(tmp_path / name)
        assert out.mode == "RGB"
        return np.asarray(out).astype(int)

    gray = read(Image.new("L", (4, 4), 77), "gray.png")
    assert (gray == 77).all()

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 2, 4))  # left half fully transparent
    rgba = read(rgba, "rgba.png")
    assert rgba[0, 0].tolist() == [255, 255, 255] and rgba[0, 3].tolist() == [255, 0, 0]

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal = read(pal, "palette.png")
    assert pal[0, 0].tolist() == [255, 0, 0] and pal[1, 1].tolist() == [0, 255, 0]

    pal_t = Image.new("P", (4, 4), 1)
    pal_t.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal_t.putpixel((0, 0), 0)
    pal_t = read(pal_t, "palette_t.png", transparency=0)
    assert pal_t[0, 0].tolist() == [255, 255, 255] and pal_t[1, 1].tolist() == [0, 255, 0]

    deep = Image.fromarray(np.array([[65535, 32896], [0, 257]], dtype=np.uint16))
    assert deep.mode == "I;16"
    deep = read(deep, "deep.png")
    assert deep[..., 0].tolist() == [[255, 128], [0, 1]]  # scaled, not clipped

    cmyk = read(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg", quality=95)
    assert np.abs(cmyk[4, 4] - [255, 0, 0]).max() < 12

    one_bit = read(Image.new("1", (4, 4), 1), "one.png")
    assert (one_bit == 255).all()


def test_exif_rotation_is_applied(tmp_path, root):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    up = np.asarray(data.read_image(tmp_path / "rot.jpg")).astype(int)
    assert up.shape == (40, 20, 3)  # portrait once upright
    assert np.abs(up[2, 10] - [255, 0, 0]).max() < 30 and np.abs(up[37, 10] - [0, 0, 255]).max() < 30

    # every mode together in one folder stacks into one RGB tensor
    folder = make_folder(root / "modes", {"a": 5, "b": 5})
    Image.new("L", (30, 30), 9).save(folder / "a" / "gray.png")
    Image.new("RGBA", (30, 30), (1, 2, 3, 128)).save(folder / "a" / "rgba.png")
    Image.new("CMYK", (30, 30), (0, 0, 0, 255)).save(folder / "b" / "cmyk.jpg")
    Image.fromarray(np.full((30, 30), 60000, np.uint16)).save(folder / "b" / "deep.png")
    (folder / "b" / "rot.jpg").write_bytes((tmp_path / "rot.jpg").read_bytes())
    ds = data.load_dataset("modes", data_root=root)
    assert ds.images.shape == (15, 3, 30, 30) and not ds.report.skipped  # largest shorter side


# --------------------------------------------------------------------------- preprocessing


LITE0 = backbones.data_config("efficientnet_lite0")  # mean = std = 0.5, bicubic
MOBILENET = backbones.data_config("mobilenetv2")  # ImageNet stats, bilinear


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 40, 30), (4, 1, 28, 28), (4, 3, 32, 32)])
def test_make_transforms_shapes_and_dtype(shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    train_tf, eval_tf = data.make_transforms(LITE0, 64, Augment(True, True, True))
    batch = (shape[0],) if len(shape) == 4 else ()
    for tf in (train_tf, eval_tf):
        y = tf(x)
        assert y.shape == (*batch, 3, 64, 64) and y.dtype == torch.float32


def test_normalisation_values():
    x = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    cases = {"backbone": 1.0, "imagenet": (1 - 0.485) / 0.229, "none": 1.0, "wrong": (1 - 0.485) / 0.229}
    for norm, expected in cases.items():
        y = data.make_transforms(LITE0, 16, normalization=norm)[1](x)
        assert y[0].mean().item() == pytest.approx(expected, abs=1e-4), norm
    assert data.normalization_stats(MOBILENET, "wrong") == ((0.5,) * 3, (0.5,) * 3)
    assert data.normalization_stats(LITE0, "wrong") == (data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert data.normalization_stats(MOBILENET, "backbone") == (MOBILENET["mean"], MOBILENET["std"])
    with pytest.raises(ValueError, match="backbone, imagenet, none, wrong"):
        data.normalization_stats(LITE0, "bogus")


def test_eval_transform_follows_backbone_config():
    from torchvision.transforms import v2

    _, eval_tf = data.make_transforms(LITE0, 224)
    resize = next(t for t in eval_tf.transforms if isinstance(t, v2.Resize))
    assert resize.interpolation == v2.InterpolationMode.BICUBIC and resize.size == [256]  # 224 / crop_pct 0.875
    _, eval_tf = data.make_transforms(MOBILENET, 224)
    resize = next(t for t in eval_tf.transforms if isinstance(t, v2.Resize))
    assert resize.interpolation == v2.InterpolationMode.BILINEAR
    assert not Augment().any and Augment(flip=True).any
    train_tf, _ = data.make_transforms(LITE0, 32, Augment(flip=True))
    x = torch.arange(32, dtype=torch.uint8).repeat(1, 32, 1)
    torch.manual_seed(0)
    outs = {tuple(train_tf(x)[0, 0, :2].tolist()) for _ in range(20)}
    assert len(outs) == 2  # flipped and not flipped


def test_tensor_dataset_and_network_view():
    ds = data.load_dataset("faces")
    train_tf, eval_tf = data.make_transforms(MOBILENET, 48)
    tds = data.TensorDataset(ds.images, ds.labels, eval_tf)
    x, y = tds[150]
    assert x.shape == (3, 48, 48) and y == 1 and len(tds) == 200
    loader = torch.utils.data.DataLoader(tds, batch_size=16)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 3, 48, 48) and yb.dtype == torch.int64

    seen, picture = data.network_view(ds, 150, MOBILENET, 48)
    assert torch.equal(seen, x)
    assert picture.shape == (48, 48, 3) and picture.dtype == np.uint8
    plain = eval_tf.transforms[0](ds.images[150])  # resized and cropped, before normalising
    plain = eval_tf.transforms[1](plain)[0].numpy().astype(int)
    assert np.abs(picture[..., 0].astype(int) - plain).max() <= 1
    _, wrong = data.network_view(ds, 150, MOBILENET, 48, normalization="wrong")
    assert np.abs(wrong.astype(int) - picture.astype(int)).mean() > 10  # visibly shifted


def test_sample_grid_and_counts():
    ds = data.load_dataset("digits8")
    grid = data.sample_grid(ds, per_class=3, seed=1)
    assert list(grid) == ds.class_names
    assert all(len(v) == 3 and v[0].shape == (8, 8, 3) and v[0].dtype == np.uint8 for v in grid.values())
    again = data.sample_grid(ds, per_class=3, seed=1)
    assert all(np.array_equal(a, b) for k in grid for a, b in zip(grid[k], again[k]))
    assert len(data.sample_grid(data.load_dataset("faces"), per_class=500)["face"]) == 100
    assert sum(data.class_counts(ds).values()) == 1797
    assert data.class_counts(ds, torch.tensor([0, 1, 2]))["0"] == 1


def test_wrong_normalisation_hurts_lite0_on_imagenet_photos():
    files = sorted(glob.glob(str(builtin._package_dir("foolbox") / "data" / "imagenet_*.jpg")))
    assert len(files) == 20
    images = [data.image_tensor(data.read_image(f)) for f in files]
    labels = torch.tensor([int(re.search(r"_(\d+)\.jpg$", f).group(1)) for f in files])
    model, status = backbones.create_model("efficientnet_lite0")
    assert status.pretrained
    model.eval()
    correct = {}
    for norm in ("backbone", "imagenet"):
        _, eval_tf = data.make_transforms(LITE0, 224, normalization=norm)
        with torch.no_grad():
            pred = model(torch.stack([eval_tf(im) for im in images])).argmax(1)
        correct[norm] = int((pred == labels).sum())
    print(f"EfficientNet-Lite0 top-1 on foolbox's 20 ImageNet photos: own stats {correct['backbone']}/20, "
          f"ImageNet stats {correct['imagenet']}/20")
    assert correct["backbone"] > correct["imagenet"]
    assert correct["backbone"] >= 17


# --------------------------------------------------------------------------- command line


def test_cli_datasets(capsys):
    assert cli.main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    from tl_core.data import texts as text_data
    assert [r["key"] for r in rows] == list(data.BUILTIN) + list(text_data.TEXT_BUILTIN)
    assert {r["key"]: r["similarity"] for r in rows}["bbc_news"] == "text"
    assert cli.main(["datasets"]) == 0
    assert "animal_shapes" in capsys.readouterr().out


def test_cli_check_data(root, capsys):
    folder = make_folder(root / "pets", {"cat": 5, "dog": 5})
    (folder / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert cli.main(["check-data", "pets", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "10 images, 2 classes" in out and "cat/bad.png" in out
    assert cli.main(["check-data", "pets", "--data-root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["counts"] == {"cat": 5, "dog": 5} and report["skipped"][0][0] == "cat/bad.png"
    assert cli.main(["check-data", "missing", "--data-root", str(root)]) == 1
    assert "not found" in capsys.readouterr().err
