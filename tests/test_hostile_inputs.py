"""Issue 23, what a careless or curious user found: the feature cache outside ``--runs-dir``, ``check-data``
refusing texts, a class that lost every file, links out of the user's folder (``/proc/self``, ``/dev/zero``,
a FIFO), a refused pickle, a size mismatch, a 9,000-character link value and a failed ``train`` whose reason
was not its last line. Real files and real processes; nothing outside tmp_path."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tl_core import cli, data
from tl_core.data import texts as text_data
from tl_core.labs.registry import LabConfig
from tl_core.models import backbones

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--backbone", "mobilenetv2", "--data", "digits8", "--per-class", "6", "--image-size", "32", "--epochs", "1",
        "--strategy", "feature_extraction", "--device", "cpu")


def tl(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m tl_core ARGS`` in a real process started in ``cwd``, stdout and stderr in one stream (the
    order a terminal shows), with no ``$TL_RUNS_DIR``: a default folder would be ``cwd/runs``. ``timeout`` only
    guards against a hang (a FIFO opened); no test asserts a duration."""
    env = {**os.environ, "TL_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for name in ("TL_RUNS_DIR", "TL_CLI_TRUSTED"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "tl_core", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.strip().splitlines()[-1]


def images(folder: Path, per_class: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(per_class.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((20, 20, 3), (70 * c + 9 * i) % 256, np.uint8)).save(folder / name / f"{i}.png")
    return folder


def texts(folder: Path, per_class: dict[str, int]) -> Path:
    for name, n in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / name / f"{i}.txt").write_text(f"a {name} note, number {i}")
    return folder


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty working folder for the command line."""
    w = tmp_path / "work"
    w.mkdir()
    return w


# --------------------------------------------------------------------------- 1. the feature cache lives in --runs-dir


@pytest.mark.slow
def test_train_with_runs_dir_writes_nothing_outside_it(tmp_path, work):
    store = tmp_path / "store"
    proc = tl("train", *TINY, "--runs-dir", str(store), cwd=work)
    assert proc.returncode == 0, proc.stdout
    assert sorted(work.iterdir()) == []  # no ./runs/feature_cache, no ./runs/runs.sqlite
    assert list((store / "feature_cache").glob("*.safetensors"))  # the frozen prefix's features, shared there
    assert (store / "runs.sqlite").is_file()


# --------------------------------------------------------------------------- 2. check-data reads texts too


def test_check_data_checks_a_csv_and_lists_the_rows_it_skipped(tmp_path, capsys):
    body = "review,score\n" + "".join(f"tasty tea {i},great\nstale tea {i},other\n" for i in range(6)) + " ,great\n"
    (tmp_path / "reviews.csv").write_text(body)
    assert cli.main(["check-data", str(tmp_path / "reviews.csv")]) == 0
    out = capsys.readouterr().out
    assert "reviews.csv: 12 texts, 2 classes (one row per text)" in out
    assert "skipped 1 row(s):\n  row 13: empty text in column 'review'" in out
    assert "neither a folder nor" not in out


def test_check_data_checks_a_folder_of_text_files(tmp_path, capsys):
    notes = texts(tmp_path / "notes", {"neg": 5, "pos": 5})
    (notes / "pos" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert cli.main(["check-data", str(notes), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "text" and report["counts"] == {"neg": 5, "pos": 5}
    assert [name for name, _ in report["skipped"]] == ["pos/latin.txt"]  # the image check's word on each .txt: gone
    assert cli.main(["check-data", str(notes)]) == 0
    assert capsys.readouterr().out.startswith("notes: 10 texts, 2 classes (one folder per class)")


@pytest.mark.slow
def test_a_class_that_lost_every_file_is_named_with_why_and_is_the_last_line(tmp_path, work):
    notes = texts(tmp_path / "notes", {"pos": 5})
    (notes / "neg").mkdir()
    for i in range(5):
        (notes / "neg" / f"{i}.txt").write_bytes(f"caf\xe9 {i}".encode("latin-1"))
    why = "class 'neg' has no usable texts: all its 5 file(s) were skipped, e.g. neg/0.txt: not UTF-8 text"
    with pytest.raises(data.DataError, match=re.escape(f"found a single class (pos); {why}")):
        text_data.load_text_folder(str(notes), data_root=tmp_path)
    proc = tl("check-data", str(notes), cwd=work)
    assert proc.returncode == 1 and last_line(proc).startswith("error: notes is not usable: found a single class")
    assert why in last_line(proc)
    proc = tl("train", "--backbone", "glove_50d", "--data", str(notes), "--epochs", "1", "--runs-dir",
              str(tmp_path / "runs"), cwd=work)
    assert proc.returncode == 1 and "status: failed" in proc.stdout
    assert last_line(proc).startswith("error: run ") and why in last_line(proc)  # not "device: cpu"


# --------------------------------------------------------------------------- 3. links out of the user's folder


def test_links_leading_out_of_the_given_folder_and_special_files_are_skipped_unopened(tmp_path, work):
    pets = images(tmp_path / "pets", {"cat": 5, "dog": 5})
    images(tmp_path / "elsewhere", {"bird": 5})
    (pets / "proc").symlink_to("/proc/self")  # walked /, up to the 20,000-file cap
    (pets / "bird").symlink_to(tmp_path / "elsewhere" / "bird")
    (pets / "cat" / "zero.png").symlink_to("/dev/zero")
    (pets / "cat" / "mem.png").symlink_to("/proc/self/mem")
    os.mkfifo(pets / "dog" / "pipe.png")  # an open() would block
    (pets / "dog" / "same.png").symlink_to(pets / "dog" / "0.png")  # inside the folder: followed
    proc = tl("check-data", str(pets), "--json", cwd=work, timeout=120)
    assert proc.returncode == 0, proc.stdout
    report = json.loads(proc.stdout)
    assert report["counts"] == {"cat": 5, "dog": 6} and report["classes"] == ["cat", "dog"]
    why = dict(report["skipped"])
    assert set(why) == {"proc/", "bird/", "cat/zero.png", "cat/mem.png", "dog/pipe.png"}
    assert why["proc/"] == "symbolic link into the /proc pseudo-filesystem; skipped without opening it"
    assert why["cat/mem.png"] == why["proc/"]
    assert why["cat/zero.png"] == "symbolic link into the /dev pseudo-filesystem; skipped without opening it"
    assert why["bird/"] == ("symbolic link to a folder outside the folder you gave; "
                            "copy it into the folder you gave instead")
    assert why["dog/pipe.png"] == "not a regular file: a named pipe (FIFO); skipped without opening it"
    assert len(data.load_dataset(str(pets), data_root=data.UNRESTRICTED)) == 11  # what training reads: the same


def test_a_pseudo_filesystem_path_is_refused_even_when_typed(capsys):
    for path in ("/proc/self", "/dev/zero", "/sys"):
        assert cli.main(["check-data", path]) == 1  # refused before anything under it is listed or opened
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path} is in the /{path.split('/')[1]} pseudo-filesystem, which holds no data")
    with pytest.raises(data.DataError, match="pseudo-filesystem"):
        data.read_regular("/proc/self/status", 1000)


# --------------------------------------------------------------------------- 4. the smaller ones


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo PAYLOAD RAN",))


@pytest.mark.slow
def test_a_refused_pickle_is_the_last_line_without_torchs_protocol_warning(tmp_path, work):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"conv_stem.weight": _Payload()}, protocol=4))
    proc = tl("train", *TINY, "--weights-file", str(evil), "--runs-dir", str(tmp_path / "runs"), cwd=work)
    assert proc.returncode == 1 and "PAYLOAD RAN" not in proc.stdout
    assert "Detected pickle protocol" not in proc.stdout
    assert last_line(proc).endswith("evil.pth is not a safe weights file (UnpicklingError: not a plain state_dict "
                                    "of tensors; pickled objects are never run). What to do: save the model's "
                                    "state_dict with torch.save or safetensors and try again.")


def test_a_size_mismatch_ends_in_one_full_stop(tmp_path):
    sd = timm.create_model("mobilenetv2_100").state_dict()
    sd["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)  # 32 filters in MobileNetV2
    save_file(sd, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(backbones.WeightsError) as err:
        backbones.create_model("mobilenetv2", num_classes=3, weights_file=tmp_path / "narrow.safetensors")
    msg = str(err.value)
    assert "size mismatch for conv_stem.weight" in msg and ".." not in msg


@pytest.mark.parametrize("make", [
    lambda v: LabConfig.from_query(f"lab=race&seeds={v}").validate(),
    lambda v: LabConfig.from_dict({"lab": "race", "seeds": v}).validate(),
])
@pytest.mark.parametrize("value", ["x" * 9000, "1," * 4000, "9" * 4000])
def test_a_huge_value_is_quoted_short(make, value):
    with pytest.raises(ValueError) as err:
        make(value)
    msg = str(err.value)
    assert len(msg) < 200 and "seeds" in msg and "…" in msg, msg[:300]
    assert re.search(r"… \([\d,]{5,} characters\)", msg)
