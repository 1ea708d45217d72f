"""The project installs as a package: ``make install`` puts a ``tl-lab`` command beside the venv's python that
works from any folder, and ``python -m tl_core`` is the same command line."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tl_core.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent


def write_digits(folder: Path, per_class: int = 5) -> None:
    """Real digits from the bundled set, saved as PNGs in one folder per class (two classes)."""
    ds = load_dataset("digits8")
    for label in (0, 1):
        out = folder / ds.class_names[label]
        out.mkdir(parents=True)
        idx = (ds.labels == label).nonzero().flatten()[:per_class]
        for i, j in enumerate(idx.tolist()):
            Image.fromarray(ds.images[j, 0].numpy()).save(out / f"{i}.png")


def test_tl_lab_reads_a_folder_given_from_another_folder(tmp_path):
    write_digits(tmp_path / "own")
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    tl_lab = Path(sys.executable).parent / "tl-lab"
    assert tl_lab.exists(), "tl-lab is missing: `make install` installs the project (pip install -e .)"
    spellings = {"tl-lab": [str(tl_lab)], "python -m tl_core": [sys.executable, "-m", "tl_core"]}
    outputs = {}
    for name, cmd in spellings.items():
        done = subprocess.run(cmd + ["check-data", "../own"], cwd=elsewhere, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[name] = done.stdout
    assert outputs["tl-lab"] == outputs["python -m tl_core"]
    ds = load_dataset("digits8")
    assert "10 images, 2 classes" in outputs["tl-lab"]
    assert ds.class_names[0] in outputs["tl-lab"] and ds.class_names[1] in outputs["tl-lab"]


def test_the_package_holds_tl_core_only_and_the_install_is_this_checkout(tmp_path):
    """The wheel carries tl_core and its sub-packages, not pages/, labs/ or runs/; the editable install imports
    this repository's tl_core."""
    import zipfile

    import tl_core

    assert Path(tl_core.__file__).resolve().parent == ROOT / "tl_core"
    src = tmp_path / "src"  # a copy of the project's files, so that the build writes nothing into the checkout
    top = {"runs", "artifacts", "build", "docs", "tests", "benchmarks"}
    shutil.copytree(ROOT, src, ignore=lambda folder, names: [
        n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")
        or (Path(folder) == ROOT and n in top)])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tl_core"}
    for package in ("data", "models", "training", "export", "runs", "labs", "viz"):
        assert f"tl_core/{package}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tl-lab = tl_core.cli:main" in zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(entry).decode()
