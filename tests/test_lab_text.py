"""The text lab "Does pretraining help on text?": its plan (strategies, backbones, one split), the TF-IDF and
majority lines on the runs' own split of real fine-food reviews, the pure analysis on hand-made records
(verdict, the TF-IDF line, the "TF-IDF beats frozen features" sentence), and one tiny lab end to end on
real fine-food reviews (as a user CSV) with the real MiniLM encoder and GloVe vectors (60 reviews, 16 tokens,
1 epoch)."""
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from tl_core import labs
from tl_core.models import arch as models
from tl_core.data import texts as text_data
from tl_core.labs import text_race
from tl_core.runs.store import RunStore
from tl_core.training.trainer import prepare

LINES = {"tfidf": 0.766, "majority": 0.652, "majority_class": "great", "n_train": 1000, "n_val": 500, "tokens": 64,
         "tfidf_s": 0.2}


def _cfg(**kw) -> labs.LabConfig:
    c = labs.default_config("text_race")
    for k, v in kw.items():
        setattr(c, k, v)  # max_tokens: LabConfig's field, or the attribute text_race.tokens reads
    return c


# ------------------------------------------------------------------ plan


def test_plan_races_six_models_on_one_split():
    cfg = labs.default_config("text_race")
    runs = labs.plan_runs(cfg)
    got = {r.key: (r.cfg.backbone, r.cfg.strategy) for r in runs}
    assert got == {"glove_frozen": ("glove_50d", "feature_extraction"), "glove_tuned": ("glove_50d", "full"),
                   "frozen": ("minilm_l6", "feature_extraction"), "partial": ("minilm_l6", "partial"),
                   "full": ("minilm_l6", "full"), "scratch": ("minilm_l6", "scratch")}
    assert runs[-1].key == "scratch"  # the slowest run last: the cheap results come in first
    # one split for every run: same data, cap, split seed and token length; the default stays CPU-sized
    assert {(r.cfg.data, r.cfg.per_class, r.cfg.effective_split_seed, r.cfg.max_tokens) for r in runs} == {
        ("fine_food", 200, 0, 48)}
    assert text_race.tokens(cfg) == 48 and cfg.seeds == 1
    by = {r.key: r.cfg for r in runs}
    # the last two layers: stem and layers.0..3 frozen
    names = models.block_names("minilm_l6", 48)
    assert names[by["partial"].freeze_blocks:] == ["layers.4", "layers.5", "head"]
    # the runs that train the encoder get the lab's epochs; the cheap ones (cached features, GloVe) more
    assert [by[k].epochs for k in ("partial", "full", "scratch")] == [cfg.epochs] * 3
    assert by["frozen"].epochs == by["glove_frozen"].epochs == 10 and by["glove_tuned"].epochs == 5
    assert by["glove_tuned"].lr == text_race.GLOVE_TUNED_LR and by["full"].lr is None  # None: the text default
    assert all(r.cfg.name.startswith("lab text-race · ") for r in runs)

    two = labs.plan_runs(_cfg(seeds=2, strategies=["scratch", "feature_extraction"]))
    assert [r.key for r in two] == ["glove_frozen@s0", "frozen@s0", "scratch@s0", "glove_frozen@s1", "frozen@s1",
                                    "scratch@s1"]
    assert {r.cfg.seed for r in two} == {0, 1} and {r.cfg.effective_split_seed for r in two} == {0}

    gpu = labs.default_config("text_race", "gpu")
    assert (gpu.per_class, gpu.epochs, gpu.seeds, text_race.tokens(gpu)) == (500, 3, 3, 64)


@pytest.mark.parametrize("change, words", [
    (dict(data="animal_shapes"), "the text lab needs a text data set"),
    (dict(strategies=["feature_extraction", "full"]), "needs the 'scratch' strategy"),
    (dict(strategies=["scratch"]), "at least one strategy besides scratch"),
])
def test_settings_the_lab_cannot_run_get_one_line(change, words):
    with pytest.raises(ValueError, match=words) as err:
        labs.plan_runs(_cfg(**change))
    assert "\n" not in str(err.value)


def test_config_round_trips():
    for preset in labs.PRESETS:
        c = labs.default_config("text_race", preset)
        assert labs.LabConfig.from_json(c.to_json()) == c == labs.LabConfig.from_query(c.to_query_string())
    ready = labs.ready_made()
    assert ready["text_default"] == labs.default_config("text_race")


# ------------------------------------------------------------------ the lines, on real reviews


def test_baseline_split_is_the_runs_split():
    cfg = _cfg(per_class=30, max_tokens=16)
    split = text_race.split_texts(text_race.split_config(cfg))
    run = next(r.cfg for r in labs.plan_runs(cfg) if r.key == "frozen")
    d = prepare(run)
    n = len(d["train_idx"])
    assert (len(split["train"]), len(split["val"])) == (60, 1000)
    assert d["ds"].texts[:n] == split["train"] and d["ds"].texts[n:] == split["val"]
    assert d["ds"].labels.tolist() == [*split["train_y"].tolist(), *split["val_y"].tolist()]
    assert split["classes"] == d["ds"].class_names == ["great", "other"]


def test_tfidf_beats_the_majority_on_fine_food_reviews():
    b = text_race.baselines(_cfg(per_class=500, max_tokens=64))
    assert (b["n_train"], b["n_val"], b["tokens"], b["majority_class"]) == (1000, 1000, 64, "great")
    assert b["majority"] == pytest.approx(0.658)  # 658 great among the 1,000 test reviews
    assert b["majority"] < b["tfidf"] < 1
    assert text_race.first_words(["Don't buy it, it's GREAT!"], 4) == ["do n't buy it"]


# ------------------------------------------------------------------ analysis on hand-made records


def _rec(key, accs, seed=None, status="completed"):
    tagged = f"{key}@s{seed}" if seed is not None else key
    return {"key": tagged, "label": text_race.BY_KEY[key].label, "run_id": f"id-{tagged}", "seed": seed,
            "status": status, "reason": None, "config": {}, "summary": {"wall_s": 2.0, "trainable_params": 10},
            "epochs": [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)]}


def _analyse(recs, lines=LINES, cfg=None):
    return labs.analyse(cfg or labs.default_config("text_race"), recs, {"meta": {"baselines": lines}})


def _issue_table(frozen=0.714):
    """The issue's reference numbers (one seed): TF-IDF 76.6% beats frozen MiniLM 71.4%."""
    return [_rec("scratch", [0.66, 0.69, 0.71]), _rec("glove_frozen", [0.70, 0.718]), _rec("frozen", [0.70, frozen]),
            _rec("partial", [0.75, 0.77, 0.788]), _rec("full", [0.812])]


def test_analysis_states_that_tfidf_beats_frozen_features():
    res = _analyse(_issue_table())
    assert res.agrees is False and res.verdict() == "disagrees"
    checks = {c["claim"]: c["agrees"] for c in res.checks}
    assert checks == {text_race.CLAIMS[0][2]: True, text_race.CLAIMS[1][2]: True, text_race.CLAIMS[2][2]: True,
                      text_race.CLAIMS[3][2]: False}
    assert "**TF-IDF + logistic regression beats the frozen MiniLM features**: 76.6% vs 71.4% (+5.2 pts)" in res.text
    assert "Fine-tuned, the same encoder reaches 81.2%" in res.text and "single seed" in res.text
    assert "best network was **MiniLM fine-tuned (whole model)** with 81.2% (+4.6 pts vs TF-IDF)" in res.text
    # the lines: in the figure and in the table
    notes = [a.text for a in res.figure.layout.annotations]
    assert any(t.startswith("TF-IDF + logistic regression: 76.6%") for t in notes)
    assert any(t.startswith("majority class (great): 65.2%") for t in notes)
    assert len(res.figure.layout.shapes) == 2 and len(res.figure.data) == 5
    t = res.table.set_index("model")
    assert t.loc["TF-IDF + logistic regression", "final acc"] == pytest.approx(0.766)
    assert t.loc["majority class", "final acc"] == pytest.approx(0.652)
    assert t.loc["MiniLM last 2 layers", "vs TF-IDF (pts)"] == pytest.approx(2.2)
    assert t.loc["MiniLM frozen (features)", "epochs"] == 2 and "final acc" in res.percent_columns()
    assert "Sized for a 2-core CPU" in res.text  # the default preset says why it is smaller


def test_analysis_agrees_when_frozen_features_beat_tfidf():
    res = _analyse(_issue_table(frozen=0.80))
    assert res.agrees is True and "agrees with the prediction" in res.text
    assert "beats the frozen MiniLM features" not in res.text
    assert "Frozen MiniLM features beat TF-IDF + logistic regression: 80.0% vs 76.6% (+3.4 pts)" in res.text


def test_analysis_uses_the_final_epoch_and_only_the_claims_it_can_decide():
    # the frozen run peaked above TF-IDF at epoch 1, but ends below it: the final epoch counts
    res = _analyse([_rec("scratch", [0.6]), _rec("frozen", [0.80, 0.70]), _rec("full", [], status="failed")])
    assert [c["claim"] for c in res.checks] == [text_race.CLAIMS[3][2]] and res.agrees is False
    assert "MiniLM fine-tuned (whole model)" in res.text  # the failed run is named
    assert res.table.set_index("model").loc["MiniLM frozen (features)", "best acc"] == pytest.approx(0.80)
    within = _analyse([_rec("scratch", [0.6]), _rec("frozen", [0.77])])  # +0.4 pts: within the single-seed TOL
    assert within.agrees is None and "inconclusive" in within.text
    assert labs.analyse(labs.default_config("text_race"), [], {"meta": {"baselines": LINES}}).agrees is None


def test_analysis_over_three_seeds_pools_paired_differences():
    recs = [_rec(k, [a + 0.01 * s], s) for s in (0, 1, 2)
            for k, a in (("scratch", 0.70), ("frozen", 0.70), ("partial", 0.78), ("full", 0.81))]
    res = _analyse(recs, cfg=labs.default_config("text_race", "gpu"))
    assert res.seeds == [0, 1, 2] and "Pooled over 3 seeds" in res.text and "[95%:" in res.text
    checks = {c["claim"]: c["agrees"] for c in res.checks}
    assert checks[text_race.CLAIMS[0][2]] is True and checks[text_race.CLAIMS[3][2]] is False
    t = res.table.set_index("model")
    assert t.loc["MiniLM fine-tuned (whole model)", "final acc"] == pytest.approx(0.82)
    assert t.loc["MiniLM fine-tuned (whole model)", "final acc 95% interval"] == "81.0–83.0%"
    assert t.loc["MiniLM from scratch", "seeds"] == 3 and "Sized for a 2-core CPU" not in res.text
    full = next(tr for tr in res.figure.data if tr.name == "MiniLM fine-tuned (whole model)")
    assert full.error_y.visible and full.error_y.array[0] == pytest.approx(0.01)


# ------------------------------------------------------------------ end to end (tiny, real data)


@pytest.fixture
def reviews_root(tmp_path, monkeypatch):
    """The data root holds reviews.csv: the first 40 great and 40 other fine-food training reviews (so that
    validation is 20 reviews, not the set's 1,000)."""
    food = text_data.load_text_builtin("fine_food")
    df = pd.DataFrame({"review": food.texts, "score": [food.class_names[y] for y in food.labels.tolist()]})
    df[~food.split_hint.numpy()].groupby("score").head(40).to_csv(tmp_path / "reviews.csv", index=False)
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path))


def test_text_lab_end_to_end(reviews_root):
    cfg = _cfg(data="reviews.csv", per_class=30, val_fraction=0.25, max_tokens=16, epochs=1, batch_size=16,
               strategies=["scratch", "feature_extraction"])
    with threadpool_limits(limits=2):
        res = labs.run_lab(cfg)
    t = res.table.set_index("key")
    assert list(t.index) == ["glove_frozen", "frozen", "scratch", "tfidf", "majority"]
    store = RunStore()
    try:
        for key in ("glove_frozen", "frozen", "scratch"):
            info = store.get(t.loc[key, "run"])
            assert info.status == "completed" and info.config["max_tokens"] == 16
            final = [m["val_acc"] for m in store.metrics(t.loc[key, "run"], "epoch")][-1]
            assert t.loc[key, "final acc"] == pytest.approx(final, abs=1e-6)  # read back from the store
        assert t.loc["scratch", "epochs"] == 1 and t.loc["frozen", "epochs"] == 10
        assert t.loc["frozen", "trainable params"] < t.loc["scratch", "trainable params"]
    finally:
        store.close()
    b = res.extra["baselines"]
    assert (b["n_train"], b["n_val"], b["tokens"]) == (60, 20, 16) and 0 <= b["tfidf"] <= 1
    assert b["majority"] == pytest.approx(0.5)  # 10 and 10 validation reviews
    assert t.loc["tfidf", "final acc"] == b["tfidf"] and len(res.checks) == 1  # frozen vs TF-IDF
    assert ("beats the frozen MiniLM features" in res.text) == (b["tfidf"] > t.loc["frozen", "final acc"])
    state = labs.list_labs(lab="text_race")[0]
    assert state["meta"]["baselines"] == b and np.isfinite(b["tfidf_s"])  # computed once, at creation
