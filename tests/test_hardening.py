"""Issue 11, the data and weights layer: links that lead outside the data root, special files, non-finite
weights, messages that say what to do, dataset uploads (generated names, owners, quota, clean-up after a
killed process) and the command line's unrestricted reads. Real files made here; nothing outside tmp_path."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tl_core.models import backbones
from tl_core import data
from tl_core.data import texts as text_data
from tl_core.data.sources import UNRESTRICTED
from tl_core.data.errors import DataError


# --------------------------------------------------------------------------- helpers


def make_folder(root: Path, per_class: dict[str, int], size=(24, 24)) -> Path:
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.full((size[1], size[0], 3), (60 * c + 5 * i) % 256, np.uint8)
            Image.fromarray(a).save(root / name / f"{name}_{i}.png")
    return root


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in entries.items():
            zf.writestr(name, body)
    return buf.getvalue()


def image_bytes(value: int, size=(20, 20), fmt="PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(b, format=fmt)
    return b.getvalue()


def dataset_zip(classes=("cats", "dogs"), n=5, size=(20, 20), fmt="PNG") -> bytes:
    return zip_bytes({f"set/{c}/{i}.{fmt.lower()}": image_bytes(40 * ci + i, size, fmt)
                      for ci, c in enumerate(classes) for i in range(n)})


def png_header(width: int, height: int) -> bytes:
    """A PNG of a header and no pixel data: PIL reads its size without decoding anything."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def finishes(fn, fifos=(), seconds=60):
    """fn()'s result, run in a thread. If it is still blocked after ``seconds`` (on a FIFO), the FIFOs'
    write ends are opened and closed to release it, and the test fails."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(seconds)
        pytest.fail(f"still blocked after {seconds} s: a FIFO was opened")
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "data_root"
    r.mkdir()
    return r


@pytest.fixture
def own_tmp(tmp_path, monkeypatch) -> Path:
    """The system temp folder (zip extraction) inside tmp_path for this test."""
    t = tmp_path / "systmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# --------------------------------------------------------------------------- 2. links that lead outside the root


def test_wrapper_folder_linking_outside_the_root_is_not_unwrapped(root, tmp_path):
    make_folder(tmp_path / "outside", {"a": 5, "b": 5})
    (root / "wrap").mkdir()
    (root / "wrap" / "inner").symlink_to(tmp_path / "outside")
    report = data.check_data("wrap", data_root=root)
    assert not report.ok and report.num_images == 0
    why = dict(report.skipped)
    assert why["inner/"].startswith("symbolic link to a folder outside the data root")
    with pytest.raises(DataError, match="no images found"):
        data.load_dataset("wrap", data_root=root)


def test_class_folder_linking_outside_is_skipped_with_its_reason(root, tmp_path):
    """Items 2 and 11: the link is not read, and the report says why instead of showing 0 images."""
    make_folder(tmp_path / "outside", {"dog": 5})
    make_folder(root / "pets", {"cat": 5, "bird": 5})
    (root / "pets" / "dog").symlink_to(tmp_path / "outside" / "dog")
    (root / "pets" / "cat" / "secret.png").symlink_to(tmp_path / "outside" / "dog" / "dog_0.png")
    report = data.check_data("pets", data_root=root)
    assert report.ok and report.classes == ["bird", "cat"] and report.counts == {"bird": 5, "cat": 5}
    why = dict(report.skipped)
    assert why["dog/"] == "symbolic link to a folder outside the data root; copy it into the data root instead"
    assert why["cat/secret.png"].startswith("symbolic link to a file outside the data root")


def test_links_inside_the_root_are_followed_and_loops_cut(root):
    make_folder(root / "shared", {"dog": 5})
    make_folder(root / "pets", {"cat": 5})
    (root / "pets" / "dog").symlink_to(root / "shared" / "dog")
    (root / "pets" / "cat" / "again").symlink_to(root / "pets")  # a loop
    report = finishes(lambda: data.check_data("pets", data_root=root))
    assert report.ok and report.counts == {"cat": 5, "dog": 5}
    assert dict(report.skipped)["cat/again/"] == "symbolic link to a folder that contains it (a loop)"
    assert len(data.load_dataset("pets", data_root=root)) == 10


# --------------------------------------------------------------------------- 8. special files


def test_fifo_in_a_dataset_is_skipped_without_being_opened(root):
    folder = make_folder(root / "pets", {"cat": 5, "dog": 5})
    fifo = folder / "cat" / "pipe.png"
    os.mkfifo(fifo)
    report = finishes(lambda: data.check_data("pets", data_root=root), [fifo])
    assert report.ok and report.counts == {"cat": 5, "dog": 5}
    assert dict(report.skipped)["cat/pipe.png"] == "not a regular file: a named pipe (FIFO); skipped without opening it"
    ds = finishes(lambda: data.load_dataset("pets", data_root=root), [fifo])
    assert len(ds) == 10


def test_fifo_given_as_the_data_or_image_is_refused(root):
    fifo = root / "pipe.zip"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"pipe.zip is a named pipe \(FIFO\), not a folder or a .zip file"):
        finishes(lambda: data.resolve_data_path("pipe.zip", root), [fifo])
    with pytest.raises(DataError, match="not a regular file") as err:
        finishes(lambda: data.read_image(fifo), [fifo])
    assert err.value.advice
    with pytest.raises(DataError, match="named pipe"):
        finishes(lambda: data.read_regular(fifo, 1000), [fifo])


# --------------------------------------------------------------------------- 7. non-finite weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, suffix):
    sd = {k: v.clone() for k, v in timm.create_model("mobilenetv2_100").state_dict().items()}
    sd["conv_stem.weight"][0, 0, :2, 0] = float("nan")
    sd["bn1.running_var"][3] = float("inf")
    path = tmp_path / f"bad{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(backbones.WeightsError) as err:
        backbones.read_state_dict(path)
    msg = str(err.value)
    assert "non-finite weights in 2 tensor(s)" in msg
    assert "conv_stem.weight: 2 NaN of 864 values" in msg and "bn1.running_var: 1 inf of 32 values" in msg
    assert "What to do" in msg
    with pytest.raises(backbones.WeightsError, match="non-finite"):
        backbones.create_model("mobilenetv2", num_classes=3, weights_file=path)
    assert set(backbones.read_state_dict(path, check_finite=False)) == set(sd)


# --------------------------------------------------------------------------- 11. messages


def test_weights_mismatch_names_the_picked_backbone_and_guesses_the_right_one(tmp_path):
    path = tmp_path / "lite0.safetensors"
    save_file(timm.create_model("tf_efficientnet_lite0", num_classes=10).state_dict(), str(path))
    with pytest.raises(backbones.WeightsError) as err:
        backbones.create_model("mobilenetv2", weights_file=path)
    msg = str(err.value)
    assert "do not fit MobileNetV2 (mobilenetv2_100)" in msg and "do not fit EfficientNet" not in msg
    assert "pick the backbone 'efficientnet_lite0'" in msg
    assert backbones.guess_backbone(backbones.read_state_dict(path)).key == "efficientnet_lite0"
    unknown = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(unknown))
    with pytest.raises(backbones.WeightsError, match=r"What to do: give the state_dict of a mobilenetv2_100 model"):
        backbones.create_model("mobilenetv2", weights_file=unknown)


def test_decompression_bomb_gets_the_projects_pixel_cap_message(root, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))  # 400 Mpx: PIL's own guard refuses it on open
    with pytest.raises(DataError) as err:
        data.open_image(bomb)
    assert str(err.value) == "400,000,000 pixels, over the max_pixels cap of 40,000,000"
    assert "resize" in err.value.advice
    folder = make_folder(root / "big", {"a": 5, "b": 5})
    (folder / "a" / "bomb.png").write_bytes(bomb.read_bytes())
    why = dict(data.check_data("big", data_root=root).skipped)
    assert why["a/bomb.png"] == "400,000,000 pixels, over the max_pixels cap of 40,000,000"


def test_refusals_say_what_to_do(root, tmp_path):
    (root / "notes.txt").write_text("hello")
    (root / "evil.zip").write_bytes(zip_bytes({"../x.png": b"x"}))
    (root / "broken.zip").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    cases = {
        "missing": "check the spelling",
        "notes.txt": "give a folder or a .zip file instead",
        "evil.zip": "What to do: zip the dataset folder again",
    }
    for path, todo in cases.items():
        try:
            report = data.check_data(path, data_root=root)
            message = report.errors[0]
        except DataError as exc:
            message = str(exc)
        assert todo in message, message
    with pytest.raises(DataError, match="What to do: use fewer or smaller images"):
        data.safe_extract_zip(io.BytesIO(zip_bytes({"a/z.png": b"\0" * 3000})), tmp_path / "x",
                              data.Caps(max_total_bytes=1000))
    with pytest.raises(backbones.WeightsError, match="What to do"):
        backbones.read_state_dict(tmp_path / "nothing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(backbones.WeightsError, match="not a readable safetensors file.*What to do"):
        backbones.read_state_dict(garbage)


# --------------------------------------------------------------------------- 4. uploads


def test_upload_is_stored_under_a_generated_name_with_the_users_name_beside_it(root, own_tmp):
    upload, report = data.save_upload(dataset_zip(), "photos/My pets\n[click](x).zip", data_root=root)
    assert report.ok and upload is not None
    assert re.fullmatch(r"[0-9a-f]{12}\.zip", upload.path.name) and upload.path.parent == root / "uploads"
    assert upload.name == "My pets[click](x).zip"  # folders and control characters dropped; escaping is the page's
    assert upload.owner is None and upload.num_images == 10 and upload.num_classes == 2
    assert upload.size == sum(len(image_bytes(40 * ci + i)) for ci in range(2) for i in range(5))
    assert data.list_uploads(data_root=root) == [upload]
    assert data.find_upload(upload.path) == upload and data.upload_name(str(upload.path)) == upload.name
    assert data.check_data(str(upload.path), data_root=root).source == upload.name
    ds = data.load_dataset(str(upload.path), data_root=root)
    assert ds.name == "My pets[click](x)" and len(ds) == 10
    sidecar = json.loads(upload.path.with_suffix(".json").read_text())
    assert sidecar["name"] == upload.name and sidecar["owner"] is None
    assert data.delete_upload(upload.id, data_root=root)
    assert not any((root / "uploads").glob("*.zip")) and data.list_uploads(data_root=root) == []


@pytest.mark.parametrize("content, reason", [
    (b"PK-not-really", "is not a zip file. What to do"),
    (zip_bytes({}), "no images found"),
    (zip_bytes({"set/a/zeros.png": b"\0" * 3_000_000}), "max_total_bytes cap of 1,000,000"),
    (zip_bytes({"../evil.png": b"x"}), "refusing to extract"),
    (dataset_zip(classes=("cats",)), "at least two"),
])
def test_rejected_uploads_leave_nothing_behind(root, own_tmp, content, reason):
    upload, report = data.save_upload(content, "mine.zip", "alice", data_root=root,
                                      caps=data.Caps(max_total_bytes=1_000_000))
    assert upload is None and not report.ok and reason in " ".join(report.errors)
    assert report.source == "mine.zip"
    left = [p.name for p in (root / "uploads").glob("*") if p.name != ".lock"] if (root / "uploads").exists() else []
    assert left == [] and list(own_tmp.iterdir()) == []
    assert data.list_uploads(data_root=root) == []


def test_upload_quota_counts_unpacked_bytes_per_owner(root, own_tmp, monkeypatch):
    big = dataset_zip(size=(200, 200), fmt="BMP")  # 10 x 120 KB of pixels, a few KB zipped
    assert len(big) < 50_000
    monkeypatch.setenv("TL_LIMIT_UPLOAD_QUOTA_MB", "2")
    first, report = data.save_upload(big, "a.zip", "alice", data_root=root)
    assert first and first.size > 1_200_000 and data.uploads_used("alice", data_root=root) == first.size
    second, report = data.save_upload(big, "b.zip", "alice", data_root=root)
    assert second is None and "over the upload quota of 2 MB" in report.errors[0]
    assert "TL_LIMIT_UPLOAD_QUOTA_MB" in report.errors[0] and report.classes == ["cats", "dogs"]
    bobs, _ = data.save_upload(big, "b.zip", "bob", data_root=root)
    assert bobs is not None
    assert [u.name for u in data.list_uploads("bob", data_root=root)] == ["b.zip"]
    assert {u.owner for u in data.list_uploads(data_root=root)} == {"alice", "bob"}
    with pytest.raises(DataError, match="someone else's upload"):
        data.delete_upload(first, owner="bob", data_root=root)
    assert data.delete_upload(first.path, owner="alice", data_root=root)
    again, _ = data.save_upload(big, "b.zip", "alice", data_root=root)
    assert again is not None and data.save_upload(big, "c.zip", "carol", data_root=root, quota_mb=1)[0] is None


def test_leftovers_of_a_killed_process_are_cleaned_on_the_next_call(root, own_tmp):
    zpath = root / "pets.zip"
    zpath.write_bytes(dataset_zip())
    code = ("import os, sys; from tl_core.data import sources\n"
            "with sources.extracted(sys.argv[1]) as folder:\n"
            "    print(folder, flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(zpath)], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(own_tmp)})
    assert proc.returncode == -9
    left = Path(proc.stdout.strip())
    assert left.is_dir() and left.parent == own_tmp and any(left.rglob("*.png"))

    uploads = root / "uploads"
    uploads.mkdir()
    dead, alive = dead_pid(), os.getppid()
    (uploads / f"{'a' * 12}.{dead}.partial").write_bytes(b"half a zip")
    (uploads / f"{'b' * 12}.{alive}.partial").write_bytes(b"another process, still writing")
    (uploads / f"{'c' * 12}.json").write_text("{}")  # its zip never arrived
    (own_tmp / f"tl_zip_{alive}_x").mkdir()
    assert data.list_uploads(data_root=root) == []
    assert not left.exists() and (own_tmp / f"tl_zip_{alive}_x").is_dir()
    assert sorted(p.name for p in uploads.iterdir() if p.name != ".lock") == [f"{'b' * 12}.{alive}.partial"]
    assert data.check_data("pets.zip", data_root=root).ok
    assert sorted(own_tmp.iterdir()) == [own_tmp / f"tl_zip_{alive}_x"]


# --------------------------------------------------------------------------- 10. unrestricted reads for the CLI


def test_unrestricted_reads_any_path_and_the_default_stays_in_the_root(root, tmp_path, monkeypatch):
    outside = make_folder(tmp_path / "elsewhere" / "pets", {"cat": 5, "dog": 5})
    (outside.parent / "pets.zip").write_bytes(dataset_zip())
    with pytest.raises(DataError, match="outside the data root"):
        data.check_data(str(outside), data_root=root)
    assert data.check_data(str(outside), data_root=UNRESTRICTED).ok
    monkeypatch.chdir(outside.parent)
    assert data.resolve_data_path("pets.zip", UNRESTRICTED) == outside.parent / "pets.zip"
    assert len(data.load_dataset("pets.zip", data_root=UNRESTRICTED)) == 10
    (root / "linked").mkdir()
    (root / "linked" / "cat").symlink_to(outside / "cat")
    make_folder(root / "linked", {"dog": 5})
    report = data.check_data(str(root / "linked"), data_root=UNRESTRICTED)  # the path typed is trusted, not its links
    assert report.counts == {"dog": 5} and dict(report.skipped)["cat/"].startswith("symbolic link to a folder outside "
                                                                                   "the folder you gave")
    monkeypatch.setenv("TL_DATA_ROOT", str(root))
    with pytest.raises(DataError, match="outside the data root"):
        data.load_dataset(str(outside))


def test_resolve_accepts_named_files_and_text_csv_uses_it(root, tmp_path):
    body = "review,score\n" + "".join(f"nice {i},great\nbad {i},other\n" for i in range(6))
    (root / "t.csv").write_text(body)
    (tmp_path / "secret.csv").write_text(body)
    (root / "sneaky.csv").symlink_to(tmp_path / "secret.csv")
    assert data.resolve_data_path("t.csv", root, files=(".csv",)) == root / "t.csv"
    with pytest.raises(DataError, match="neither a folder nor a .zip file"):
        data.resolve_data_path("t.csv", root)
    assert len(text_data.load_text_csv("t.csv", data_root=root)) == 12
    with pytest.raises(DataError, match="outside the data root"):
        text_data.load_text_csv("sneaky.csv", data_root=root)
    assert len(text_data.load_text_csv(str(tmp_path / "secret.csv"), data_root=UNRESTRICTED)) == 12
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(DataError, match="named pipe"):
        finishes(lambda: text_data.load_text_csv("pipe.csv", data_root=root), [root / "pipe.csv"])


# --------------------------------------------------------------------------- 1, 6, 9, 10, 5: validation and the CLI

from tl_core.training import estimate
from tl_core import limits  # noqa: E402
from tl_core.training.config import TrainConfig  # noqa: E402
from tl_core.labs.registry import LabConfig  # noqa: E402


def cli(*args, cwd, env=None):
    """``python -m tl_core ARGS`` in a real process, with the run store in ``cwd``."""
    full = {**os.environ, "TL_RUNS_DIR": str(Path(cwd) / "runs"), "PYTHONPATH": str(Path(__file__).parents[1]),
            **(env or {})}
    full.pop("TL_CLI_TRUSTED", None)
    return subprocess.run([sys.executable, "-m", "tl_core", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=300)


@pytest.mark.parametrize("changes,message", [
    (dict(epochs=101), "epochs must be a whole number from 1 to 100"),
    (dict(batch_size=513), "batch_size must be a whole number from 1 to 512"),
    (dict(per_class=5001), "per_class .* from 1 to 5000"),
    (dict(backbone="resnet101", weights="random"), "not in the catalogue.*TL_LIMIT_ALLOW_ANY_TIMM"),
])
def test_train_config_limits(changes, message, monkeypatch):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes).validate()
    monkeypatch.setenv("TL_LIMITS_FILE", "")
    monkeypatch.setenv("TL_LIMIT_MAX_EPOCHS", "200")
    monkeypatch.setenv("TL_LIMIT_MAX_BATCH_SIZE", "1024")
    monkeypatch.setenv("TL_LIMIT_MAX_PER_CLASS", "6000")
    monkeypatch.setenv("TL_LIMIT_ALLOW_ANY_TIMM", "true")
    TrainConfig(**changes).validate()  # a teacher raised the limit


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit", "resnet10t"])
def test_small_test_architectures_stay_accepted(backbone):
    TrainConfig(backbone=backbone, weights="random", image_size=32).validate()


def test_lab_links_above_the_widgets_are_refused_not_kept():
    for query, message in [("lab=race&epochs=1000", "epochs must be a whole number from 1 to 100, not 1000"),
                           ("lab=race&backbone=vit_giant_patch14_224", "not in the catalogue"),
                           ("lab=quadrant&sizes=5,99999", "sizes .* from 1 to 5000, not 99999"),
                           ("lab=race&seeds=3&seed=-1", "seed must be a whole number >= 0")]:
        with pytest.raises(ValueError, match=message):
            LabConfig.from_query(query).validate()


def test_estimate_refuses_what_does_not_fit_with_the_number(monkeypatch):
    with pytest.raises(ValueError, match=r"would need about [\d.]+ GB of memory, more than this machine's"):
        LabConfig.from_query("lab=freeze_depth&image_size=1024").validate()  # the 24 GB link
    heavy = dict(data="mnist", per_class=None, strategy="full", epochs=100, image_size=96)
    e = estimate.estimate(TrainConfig(**heavy))
    assert e.seconds > 60 and e.memory_bytes > estimate.BASE_BYTES
    monkeypatch.setenv("TL_LIMIT_MAX_RUN_MINUTES", "1")
    with pytest.raises(ValueError, match=r"would take about [\d,]+ minutes on cpu, over the 1-minute limit"):
        TrainConfig(**heavy).validate()
    assert estimate.estimate(TrainConfig().validate()).seconds < 60  # the default run stays small


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "backbone_lr_mult", "lr_decay", "val_fraction"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=fr"^{field} must be .*\(a finite number\).*, not {value!r}$"):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("field", ["lr", "val_fraction", "target_acc"])
def test_non_finite_lab_numbers_are_refused(field):
    with pytest.raises(ValueError, match=fr"^{field} must be .*\(a finite number\)"):
        LabConfig.from_query(f"lab=race&{field}=nan").validate()


def test_bad_numbers_from_the_cli_get_one_line(tmp_path):
    for args, message in [(["train", "--backbone-lr-mult", "inf"], "backbone_lr_mult must be > 0 (a finite number), not inf"),
                          (["train", "--lr-decay", "inf"], "lr_decay must be >= 1 (a finite number)"),
                          (["train", "--seed", "-5"], "seed must be a whole number >= 0"),
                          (["layers", "mobilenetv2", "--image-size", "0"], "--image-size must be a whole number"),
                          (["layers", "mobilenetv2", "--image-size", "-3"], "--image-size must be a whole number"),
                          (["layers", "mobilenetv2", "--image-size", "4096"], "from 16 to 1024, not 4096")]:
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, (args, proc.stderr)


def test_errors_are_found_before_a_run_exists(tmp_path):
    for changes, message in [(dict(data="no_such_set"), "no_such_set not found"), (dict(data="/etc"), "outside the data root"),
                             (dict(device="cuda:99"), "device cuda:99: this machine has"),
                             (dict(weights_file=str(tmp_path / "none.pth")), "weights_file .* cannot read it")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes).validate()
    with pytest.raises(ValueError, match="outside the data root"):
        LabConfig.from_query("lab=race&data=/etc").validate()
    for args in (["--data", "no_such_set"], ["--device", "cuda:99"]):
        proc = cli("train", *args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert json.loads(cli("runs", "--json", cwd=tmp_path).stdout) == []  # no failed run left behind


def test_any_path_is_for_the_command_line_only(tmp_path):
    outside = make_folder(tmp_path / "elsewhere" / "pets", {"cat": 5, "dog": 5})
    cfg = TrainConfig(data=str(outside), data_root=UNRESTRICTED)
    with pytest.raises(ValueError, match="reading any path is for the command line only"):
        cfg.validate()  # a page or a link
    assert cfg.validate(trusted=True) is cfg
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("check-data", str(outside), cwd=work)
    assert proc.returncode == 0 and "10 images, 2 classes" in proc.stdout
    proc = cli("train", "--data", str(outside), "--strategy", "feature-extraction",
               "--weights-file", str(tmp_path / "missing.safetensors"), cwd=work)
    assert proc.returncode == 2 and "weights_file" in proc.stderr and "missing.safetensors" in proc.stderr


def test_cli_output_escapes_control_characters(tmp_path):
    evil = "\x1b[2Jcat\nFAKE"
    make_folder(tmp_path / "pets", {evil: 5, "dog": 5})
    proc = cli("check-data", str(tmp_path / "pets"), cwd=tmp_path)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout and "\\x1b[2Jcat\\nFAKE" in proc.stdout
    from tl_core.runs.store import RunStore

    RunStore(tmp_path / "runs").create(TrainConfig(name="run\x1b[31m\nowned"))
    proc = cli("runs", cwd=tmp_path)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout and "run\\x1b[31m\\nowned" in proc.stdout
