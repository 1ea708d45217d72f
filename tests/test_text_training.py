"""Text runs go through the same engine as image runs: TrainConfig -> fit -> events -> run store.

The real MiniLM encoder and real GloVe vectors on 80 real fine-food reviews (written as a user CSV, so
the CSV path is exercised too), 32 tokens or fewer, one or two epochs."""
import csv

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from tl_core.training import prefix as features
from tl_core.models import strategies
from tl_core.data import texts as text_data
from tl_core.models import text as text_models
from tl_core.training.config import TrainConfig, default_text_config
from tl_core.training.trainer import EVENTS, METRICS, Trainer, prepare
from tl_core.training.checkpoint import load_model, save_model

ENCODER = ["stem", *[f"layers.{i}" for i in range(6)]]


@pytest.fixture(scope="module", autouse=True)
def _module_env(tmp_path_factory):
    """Two BLAS threads, and the runs folder (the shared feature store) of the module-scoped runs in a
    fresh temporary folder: conftest's per-test folders are not set up yet when a module fixture runs."""
    with threadpool_limits(limits=2), pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_RUNS_DIR", str(tmp_path_factory.mktemp("module_runs")))
        yield


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> str:
    """A data root holding reviews.csv: the first 40 great and 40 other fine-food training reviews."""
    food = text_data.load_text_builtin("fine_food")
    rows = [(t, food.class_names[y]) for t, y, val in zip(food.texts, food.labels.tolist(), food.split_hint.tolist())
            if not val]
    root = tmp_path_factory.mktemp("textdata")
    with open(root / "reviews.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["review", "score"])
        for c in ("great", "other"):
            out.writerows([r for r in rows if r[1] == c][:40])
    return str(root)


def text_cfg(root: str, **kw) -> TrainConfig:
    base = dict(backbone="minilm_l6", data="reviews.csv", data_root=root, per_class=None, val_fraction=0.25,
                max_tokens=32, epochs=2, batch_size=16, seed=0)
    return TrainConfig(**{**base, **kw})


class Recorder:
    def __init__(self):
        self.events, self.start, self.embedded = [], None, {}

    def on(self, event, trainer, **data):
        self.events.append((event, data))
        if event == "before_fit":
            self.start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            trainer.model.embeddings.register_forward_hook(lambda m, i, o: self._count(len(o)))
        if event == "before_epoch":
            self.epoch = data["epoch"]
            self.embedded[self.epoch] = 0
        if event == "after_epoch":
            self.epoch = None

    def _count(self, n):
        if getattr(self, "epoch", None) is not None:
            self.embedded[self.epoch] += n

    def of(self, name):
        return [d for e, d in self.events if e == name]


def run(cfg):
    rec = Recorder()
    trainer = Trainer(cfg, [rec])
    return trainer, rec, trainer.fit()


@pytest.fixture(scope="module")
def frozen_run(reviews):
    return run(text_cfg(reviews, strategy="feature_extraction"))


def test_feature_extraction_speaks_the_image_vocabulary(frozen_run):
    trainer, rec, summary = frozen_run
    assert summary["status"] == "completed" and summary["weights"] == "bundled"
    names = [e for e, _ in rec.events]
    assert set(names) == set(EVENTS) and names[:4] == ["before_fit", "snapshot", "before_phase", "before_epoch"]
    info = rec.of("before_fit")[0]["info"]
    assert info["modality"] == "text" and info["unit"] == "texts" and info["max_tokens"] == 32
    assert (info["num_train"], info["num_val"]) == (60, 20) and info["lr"] == strategies.default_lr(
        "feature_extraction", modality="text")
    assert rec.of("after_batch")[0].keys() >= {"step", "epoch", "batch", "loss", "lr", "images"}
    for m in (d["metrics"] for d in rec.of("after_epoch")):
        assert list(m) == list(METRICS) and m["cached"]
        assert all(m["drift"][b] == 0.0 and m["grad_norm"][b] == 0.0 for b in ENCODER)  # the freeze is real
        assert m["drift"]["head"] > 0 and m["grad_norm"]["head"] > 0
    end = trainer.model.state_dict()
    assert all(torch.equal(end[k], v) for k, v in rec.start.items() if not k.startswith("head."))
    # the frozen encoder ran once per text (epoch 1 fills the cache), not once per epoch
    assert rec.embedded == {1: 80, 2: 0}
    assert "80 texts x (384,)" in summary["cache"][0]
    # snapshots: attention maps of one short validation text, early / middle / late layer, before and after
    snaps = rec.of("snapshot")
    assert [s["epoch"] for s in snaps] == [0, 1, 2]
    tokens = info["snapshot_probe"]["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) <= 32
    for s in snaps:
        assert list(s["maps"]) == info["snapshot_layers"] == ["layers.0", "layers.3", "layers.5"]
        for a in s["maps"].values():
            assert a.dtype == np.uint8 and a.shape == (8, len(tokens), len(tokens))
    assert not np.array_equal(snaps[0]["maps"]["layers.0"], snaps[0]["maps"]["layers.5"])
    assert np.array_equal(snaps[0]["maps"]["layers.5"], snaps[2]["maps"]["layers.5"])  # frozen: same attention
    conf = np.array(summary["confusion"])
    assert conf.shape == (2, 2) and conf.sum() == 20 and summary["class_names"] == ["great", "other"]


def test_cached_features_equal_a_fresh_forward_pass(frozen_run):
    trainer, _, _ = frozen_run
    model, d = trainer.model, trainer.data
    plan = features.plan_cache(model, trainer.hier, trainer.chain, trainer.phases[0].plan)
    x = d["ds"].images[d["val_idx"]]
    feats, why = features.prefix_features(plan, model, {"val": x}, d["eval_tf"], lambda t: t)
    assert why.startswith("cached") and feats["val"].shape == (384,)
    cached = feats["val"][torch.arange(len(x))]
    torch.testing.assert_close(cached, text_models.sentence_embeddings(model, x), atol=1e-5, rtol=1e-5)


def test_save_and_load_a_text_model(frozen_run, tmp_path):
    trainer, _, _ = frozen_run
    save_model(trainer.model, trainer.cfg, trainer.class_names, tmp_path)
    model, cfg, names = load_model(tmp_path)
    assert cfg == trainer.cfg and names == ["great", "other"] and text_models.is_text_model(model)
    x = trainer.data["ds"].images[trainer.data["val_idx"]]
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.model(x), atol=1e-5, rtol=1e-5)


def test_partial_fine_tune_updates_only_the_unfrozen_layers(reviews):
    trainer, rec, summary = run(text_cfg(reviews, strategy="partial", freeze_blocks=5, epochs=1))
    frozen, trainable = ENCODER[:5], ["layers.4", "layers.5", "head"]
    assert rec.of("before_phase")[0]["trainable"] == trainable
    assert "80 texts x (32, 385)" in summary["cache"][0]  # layers 0..3 ran once; hidden states + mask kept
    end, hier = trainer.model.state_dict(), trainer.hier
    for b in hier.blocks:
        same = all(torch.equal(end[k], rec.start[k]) for k in b.param_names)
        assert same == (b.name in frozen), b.name
    m = rec.of("after_epoch")[0]["metrics"]
    assert all(m["drift"][b] == 0.0 for b in frozen) and all(m["drift"][b] > 0 for b in trainable)
    assert rec.of("before_phase")[0]["lrs"] == {b: strategies.default_lr("partial", modality="text") for b in trainable}


@pytest.mark.parametrize("strategy, kw, phases", [
    ("scratch", {}, [ENCODER + ["head"]]),
    ("two_phase", {"head_epochs": 1}, [["head"], ENCODER + ["head"]]),
    ("gradual", {"lr_decay": 2.6}, [["head"], ["layers.5", "head"]]),
])
def test_every_strategy_trains_minilm(reviews, strategy, kw, phases):
    cfg = text_cfg(reviews, strategy=strategy, per_class=8, max_tokens=16, **kw)
    trainer, rec, summary = run(cfg)
    assert summary["status"] == "completed", summary["reason"]
    assert [p["trainable"] for p in rec.of("before_phase")] == phases
    assert summary["weights"] == ("random" if strategy == "scratch" else "bundled")
    if strategy == "gradual":  # discriminative: the layer below the head learns 2.6x slower
        lrs = rec.of("before_phase")[1]["lrs"]
        assert lrs["layers.5"] == pytest.approx(lrs["head"] / 2.6)


@pytest.mark.parametrize("strategy, trains_embedding", [("feature_extraction", False), ("full", True)])
def test_glove_embedding_frozen_or_fine_tuned(reviews, strategy, trains_embedding):
    try:
        trainer, rec, summary = run(text_cfg(reviews, backbone="glove_50d", strategy=strategy, epochs=2, num_threads=1))
        blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        assert torch.get_num_threads() == 1 and blas <= {1}  # numpy's BLAS follows torch's thread count
    finally:
        torch.set_num_threads(2)
    assert summary["status"] == "completed" and summary["weights"] == "bundled"
    m = rec.of("after_epoch")[-1]["metrics"]
    assert (m["drift"]["stem"] > 0) == trains_embedding and m["drift"]["head"] > 0
    assert summary["cache"][0].startswith("cached" if not trains_embedding else "not cached")
    assert rec.of("before_fit")[0]["info"]["snapshot_layers"] == [] and rec.of("snapshot")[0]["maps"] == {}


def test_text_config_defaults_and_checks(reviews):
    cfg = default_text_config()
    assert (cfg.backbone, cfg.data, cfg.strategy, cfg.max_tokens, cfg.epochs) == (
        "minilm_l6", "fine_food", "feature_extraction", 64, 3)
    assert cfg.validate().modality == "text" and TrainConfig.from_json(cfg.to_json()) == cfg
    d = prepare(cfg)
    assert (len(d["train_idx"]), len(d["val_idx"])) == (1000, 1000)  # 500 per class; the set's 1,000 test reviews
    assert d["ds"].images.shape == (2000, 2, 64) and d["ds"].images.dtype == torch.long
    sub = prepare(text_cfg(reviews, classes=["other", "great"]))
    assert sub["ds"].class_names == ["other", "great"]
    assert sub["ds"].texts[0] in text_data.load_text_csv("reviews.csv", data_root=reviews).texts
    for bad, words in [(dict(data="animal_shapes"), r"^data 'animal_shapes' is an image data set but minilm_l6 is a "
                                                      r"text backbone: choose a text data set \(fine_food, bbc_news"),
                       (dict(backbone="mobilenetv2"), "is a text data set but mobilenetv2 is an image backbone"),
                       (dict(max_tokens=7), r"max_tokens must be a whole number of tokens .*8.*512.*, not 7"),
                       (dict(augment={"flip": True}), "augmentation is for images"),
                       (dict(weights_file="w.safetensors"), "not a weights file")]:
        with pytest.raises(ValueError, match=words) as err:
            text_cfg(reviews, **bad).validate()
        assert "\n" not in str(err.value)
    assert strategies.default_lr("full", modality="text") < strategies.default_lr("full")


# --------------------------------------------------------------------------- text training learns


def test_a_frozen_minilm_beats_the_majority_class_and_scratch_on_bbc_news():
    """Frozen pretrained MiniLM against the same run from random weights (frozen too: only the weights
    differ), on 20 BBC News articles per topic (5 topics), 64 tokens, 3 epochs, validated on 112 articles;
    the majority share is that of the actual validation labels. Measured (seeds 0-2): 0.83-0.91 pretrained,
    0.18-0.23 from random weights, majority 0.23; 5 s on two idle cores."""
    common = dict(backbone="minilm_l6", data="bbc_news", per_class=20, val_fraction=0.05, max_tokens=64, epochs=3,
                  batch_size=32, seed=0, strategy="feature_extraction")
    pre_trainer, _, pre = run(TrainConfig(**common))
    _, _, scratch = run(TrainConfig(**common, weights="random"))
    assert pre["weights"] == "bundled" and scratch["weights"] == "random"
    val_labels = pre_trainer.data["ds"].labels[pre_trainer.data["val_idx"]]
    majority = torch.bincount(val_labels).max().item() / len(val_labels)
    got = {"pretrained": pre["final_val_acc"], "scratch": scratch["final_val_acc"], "majority": majority}
    assert pre["final_val_acc"] >= majority + 0.4, got
    assert pre["final_val_acc"] >= scratch["final_val_acc"] + 0.4, got


# --------------------------------------------------------------------------- the command line's text runs


def _cli_config(*flags) -> TrainConfig:
    from tl_core import cli

    return cli._train_config(cli.build_parser().parse_args(["train", *flags]))


def test_the_cli_gives_a_text_backbone_the_text_defaults_and_flags_win(monkeypatch):
    from tl_core.training import config

    monkeypatch.setenv(config.TRUSTED_ENV, "0")  # the CLI marks its process trusted: undone after the test
    text = _cli_config("--backbone", "minilm_l6")
    assert (text.data, text.strategy, text.per_class, text.max_tokens, text.epochs) == (
        "fine_food", "feature_extraction", 500, 64, 3)  # 1,000 training reviews, as the app's default text run
    mine = _cli_config("--backbone", "minilm_l6", "--data", "bbc_news", "--per-class", "20", "--max-tokens", "32",
                       "--epochs", "1", "--strategy", "full")
    assert (mine.data, mine.strategy, mine.per_class, mine.max_tokens, mine.epochs) == ("bbc_news", "full", 20, 32, 1)
    image = _cli_config("--backbone", "mobilenetv2")  # an image backbone keeps the image defaults
    assert (image.data, image.per_class, image.epochs) == ("animal_shapes", 100, 3)


def test_a_cli_text_run_speaks_of_texts(reviews, tmp_path, monkeypatch, capsys):
    from tl_core import cli
    from tl_core.training import config

    monkeypatch.setenv(config.TRUSTED_ENV, "0")
    assert cli.main(["train", "--backbone", "minilm_l6", "--data", "reviews.csv", "--data-root", reviews,
                     "--per-class", "8", "--max-tokens", "16", "--epochs", "1", "--runs-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "16 train / 16 val texts" in err and "texts/s" in out and "texts_per_s: " in out, (out, err)
    assert "img" not in out + err and "images" not in out + err, (out, err)
