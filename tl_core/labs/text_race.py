"""Does pretraining help on text? The same reviews, the same split and seeds for a Transformer encoder
(MiniLM-L6) trained from scratch, frozen, partly and fully fine-tuned, for GloVe word vectors frozen or
fine-tuned, against two lines that need no network: TF-IDF + logistic regression and the majority class.

The two lines are computed once, when the lab is created (``meta``), on exactly the runs' split
(``split_texts``: the calls of ``training.prepare`` for a text backbone, without the tokenising); the
analysis reads them from the lab's state and computes them itself only when the state has none.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import paired
from tl_core.labs.analysis import (LabResult, accs, best, by_seed, empty, finish_text, legend_below, mean_of, pct, pts,
                                   put_mean, seeds_note, wall_s)
from tl_core.labs.config import LabInfo, LabSettings
from tl_core.labs.plan import LabRun, pair_split, run_config

ENCODER, WORDS = "minilm_l6", "glove_50d"
TOKENS = {"default": 48, "gpu": 64}  # the token length of each preset (the max_tokens field)
PARTIAL_FREEZE = 5  # stem + layers.0..3 frozen: layers.4, layers.5 and the head train ("the last two layers")
# GloVe fine-tuned: the fresh head at 1e-2 (text "full" runs default to 1e-4, made for a Transformer), the
# word vectors 2.6x slower (ULMFiT's discriminative factor)
GLOVE_TUNED_LR, GLOVE_LR_DECAY = 1e-2, 2.6
_FIELDS = ("data", "per_class", "epochs", "batch_size", "lr", "val_fraction", "seed", "seeds", "only_seed", "device",
           "strategies")


INFO = LabInfo(
    "text_race", "Text: does pretraining help?",
    "Scratch, GloVe word vectors and a pretrained Transformer, frozen or fine-tuned, against TF-IDF: "
    "does pretraining help on text?",
    "Pretraining helps on text as on images: the pretrained MiniLM encoder, **fine-tuned**, beats the same "
    "network trained from scratch and beats a TF-IDF bag of words with logistic regression; training its last "
    "two layers already beats its frozen features. Taken as they are, **frozen** sentence features should still "
    "beat TF-IDF: the claim to watch. When TF-IDF wins, the lab says so: that teaches more than hiding it.",
    _FIELDS + ("max_tokens",),
    "200 reviews per class (400), the first 48 tokens, 2 epochs for the runs that train the encoder (10 for the "
    "cheap ones), one seed: 6 runs ≈ 2–3 minutes, dominated by the 1,000 validation reviews each epoch; a second "
    "seed would double it (run more seeds with the GPU preset, or one seed per student)",
    tag="text-race",
)


@dataclass(frozen=True)
class TextRun:
    key: str
    label: str
    backbone: str
    strategy: str  # the lab's strategy that selects it
    trains: str  # for people: what this run trains
    min_epochs: int = 0  # cheap runs train at least this many epochs: cached frozen features, tiny GloVe


# in run order: cheap ones first, so the first results come in fast; scratch (the slowest) last
RUNS = (
    TextRun("glove_frozen", "GloVe frozen", WORDS, "feature_extraction", "the head on averaged GloVe vectors", 10),
    TextRun("glove_tuned", "GloVe fine-tuned", WORDS, "full", "the GloVe vectors and the head", 5),
    TextRun("frozen", "MiniLM frozen (features)", ENCODER, "feature_extraction",
            "the head on mean-pooled MiniLM features", 10),
    TextRun("partial", "MiniLM last 2 layers", ENCODER, "partial", "Transformer layers 5–6 and the head"),
    TextRun("two_phase", "MiniLM two phases", ENCODER, "two_phase", "the head, then the whole encoder"),
    TextRun("gradual", "MiniLM gradual unfreezing", ENCODER, "gradual", "one more layer each epoch, top down"),
    TextRun("full", "MiniLM fine-tuned (whole model)", ENCODER, "full", "embeddings, all 6 layers and the head"),
    TextRun("scratch", "MiniLM from scratch", ENCODER, "scratch", "everything, from random weights"),
)
BY_KEY = {r.key: r for r in RUNS}
TFIDF, MAJORITY = "TF-IDF + logistic regression", "majority class"


def tokens(cfg: LabSettings) -> int:
    """The lab's token length: ``cfg.max_tokens`` (the preset sets it: 48, or 64 for the GPU preset)."""
    return int(cfg.max_tokens)


def defaults(c: LabSettings, gpu: bool) -> None:
    """default: 400 reviews at 48 tokens, 2 epochs, 1 seed (≤ 5 min on 2 cores); gpu: the issue's sizes
    (1,000 reviews, 64 tokens, 3 epochs, 3 seeds)."""
    c.backbone, c.data = ENCODER, "fine_food"
    c.per_class, c.epochs, c.batch_size, c.seeds = (500, 3, 32, 3) if gpu else (200, 2, 16, 1)
    c.strategies = ["scratch", "feature_extraction", "partial", "full"]
    c.max_tokens = TOKENS["gpu" if gpu else "default"]


def check(cfg: LabSettings) -> None:
    from tl_core.data import texts as text_data

    if text_data.data_modality(cfg.data) == "image":
        raise ValueError(f"the text lab needs a text data set ({', '.join(text_data.TEXT_BUILTIN)}, a .csv file or a "
                         f"folder of .txt files), not the image set {cfg.data!r}")
    if "scratch" not in cfg.strategies:
        raise ValueError("the text lab needs the 'scratch' strategy: 'does pretraining help' is measured against it")
    if len(selected(cfg)) < 2:
        raise ValueError("pick at least one strategy besides scratch")


def selected(cfg: LabSettings) -> list[TextRun]:
    """The runs of the lab's strategies: MiniLM for each; feature_extraction and full also run GloVe."""
    return [r for r in RUNS if r.strategy in cfg.strategies]


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    out = []
    for r in selected(cfg):
        kw = dict(backbone=r.backbone, strategy=r.strategy, max_tokens=tokens(cfg),
                  epochs=max(cfg.epochs, r.min_epochs))
        if r.key == "partial":
            kw["freeze_blocks"] = PARTIAL_FREEZE
        if r.key == "glove_tuned" and cfg.lr is None:
            kw.update(lr=GLOVE_TUNED_LR, lr_decay=GLOVE_LR_DECAY)
        out.append(LabRun(r.key, r.label, run_config(cfg, r.label, **kw)))
    return out


# ----------------------------------------------------------------------------- the lines (no network)


def split_config(cfg: LabSettings):
    """A TrainConfig with the data, split and token length every run of the lab gets."""
    tc = run_config(cfg, "baseline", backbone=WORDS, strategy="feature_extraction", max_tokens=tokens(cfg))
    pair_split(tc, cfg.seed)
    return tc


def split_texts(train_cfg) -> dict:
    """The run's split as texts: what ``training.prepare`` tokenises (same loader, classes and
    ``data.split`` call), without the tokenizer. {"train": texts, "train_y", "val", "val_y", "classes"}."""
    from tl_core import data
    from tl_core.data import texts as text_data

    ds = text_data.load_text_dataset(train_cfg.data, train_cfg.data_root)
    if train_cfg.classes:
        ds = text_data.subset_classes(ds, train_cfg.classes)
    tr, va = data.split(ds, train_cfg.val_fraction, train_cfg.effective_split_seed, train_cfg.per_class)
    y = ds.labels.numpy()
    return {"train": [ds.texts[i] for i in tr.tolist()], "train_y": y[tr.numpy()],
            "val": [ds.texts[i] for i in va.tolist()], "val_y": y[va.numpy()], "classes": list(ds.class_names)}


def first_words(texts: list[str], n: int) -> list[str]:
    """Each text cut to its first ``n`` words (GloVe's split): TF-IDF reads what the networks read."""
    from tl_core.models.glove import split_words

    return [" ".join(split_words(t)[:n]) for t in texts]


def tfidf_accuracy(train: list[str], train_y, val: list[str], val_y) -> float:
    """TF-IDF of words and word pairs, then logistic regression: validation accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=10.0))
    with threadpool_limits(limits=1):
        model.fit(train, np.asarray(train_y))
        return float((model.predict(val) == np.asarray(val_y)).mean())


def baselines(cfg: LabSettings) -> dict:
    """TF-IDF + logistic regression and the majority class on the lab's split (the first ``tokens`` words)."""
    s = split_texts(split_config(cfg))
    n = tokens(cfg)
    t0 = time.perf_counter()
    acc = tfidf_accuracy(first_words(s["train"], n), s["train_y"], first_words(s["val"], n), s["val_y"])
    counts = np.bincount(s["val_y"], minlength=len(s["classes"]))
    top = int(counts.argmax())
    return {"tfidf": acc, "majority": float(counts[top] / counts.sum()), "majority_class": s["classes"][top],
            "n_train": len(s["train"]), "n_val": len(s["val"]), "tokens": n,
            "tfidf_s": round(time.perf_counter() - t0, 2)}


@functools.lru_cache(maxsize=8)
def _cached_baselines(cfg_json: str) -> dict:
    return baselines(LabSettings(**json.loads(cfg_json)))


def meta(cfg: LabSettings) -> dict:
    """Saved in the lab's state when it is created: the two lines, computed once."""
    return {"baselines": baselines(cfg)}


def lines(cfg: LabSettings, state: dict | None = None) -> dict:
    """The two lines: from the lab's state, else computed (once per configuration)."""
    got = ((state or {}).get("meta") or {}).get("baselines")
    return got or _cached_baselines(json.dumps(cfg.to_dict()))


# ----------------------------------------------------------------------------- analysis (pure)

# (run, compared with, claim): each > 0 on the predicted side; TFIDF stands for the TF-IDF line
CLAIMS = (("full", "scratch", "pretraining helps: MiniLM fine-tuned beats the same network trained from scratch"),
          ("full", TFIDF, "MiniLM fine-tuned beats TF-IDF + logistic regression"),
          ("partial", "frozen", "training the last two layers beats the frozen features"),
          ("frozen", TFIDF, "frozen MiniLM features beat TF-IDF + logistic regression"))


def _final(rec: dict) -> float | None:
    """The validation accuracy after the last epoch: no epoch is picked on the validation set (TF-IDF gets
    no such pick either)."""
    a = accs(rec)
    return a[-1] if a else None


def _value(g: dict, key: str, lines_: dict) -> float | None:
    return lines_["tfidf"] if key == TFIDF else _final(g[key]) if key in g else None


def _name(key: str) -> str:
    return TFIDF if key == TFIDF else BY_KEY[key].label if key in BY_KEY else key


def text_checks(groups: dict[int, dict], lines_: dict) -> list[dict]:
    """The claims of ``CLAIMS`` whose runs finished, paired over the seeds (TF-IDF: the same line for all)."""
    checks = []
    for better, worse, claim in CLAIMS:
        pairs = [(_value(g, better, lines_), _value(g, worse, lines_)) for g in groups.values()]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        p = paired([a - b for a, b in pairs])
        a, b = mean_of([a for a, _ in pairs]), mean_of([b for _, b in pairs])
        checks.append({"claim": claim, "measured": f"{_name(better)} {pct(a)} vs {_name(worse)} {pct(b)} "
                                                   f"({p.describe(pts)})", "agrees": p.agrees})
    return checks


def tfidf_vs_frozen(groups: dict[int, dict], lines_: dict) -> str:
    """The plain sentence on frozen features against TF-IDF ("" without a finished frozen run)."""
    frozen = [_final(g["frozen"]) for g in groups.values() if "frozen" in g]
    if not frozen:
        return ""
    f, t = mean_of(frozen), lines_["tfidf"]
    if t > f:
        tuned = [mean_of([_final(g[k]) for g in groups.values() if k in g]) for k in ("partial", "full")]
        tuned = [v for v in tuned if v is not None]
        after = (f" Fine-tuned, the same encoder reaches {pct(max(tuned))}: pretraining pays here once the encoder "
                 "adapts." if tuned else "")
        return (f"**TF-IDF + logistic regression beats the frozen MiniLM features**: {pct(t)} vs {pct(f)} "
                f"({pts(t - f)}). That is a finding, not a bug: all-MiniLM-L6-v2 was trained to put sentences of "
                "similar meaning close together, not to tell praise from complaint, while a logistic regression "
                "on word counts finds the words that carry this task." + after)
    return f"Frozen MiniLM features beat TF-IDF + logistic regression: {pct(f)} vs {pct(t)} ({pts(f - t)})."


def _rows(groups: dict[int, dict], lines_: dict) -> pd.DataFrame:
    multi = len(groups) > 1
    rows = []
    for r in RUNS:
        recs = [g[r.key] for g in groups.values() if r.key in g]
        if not recs:
            continue
        finals = [_final(x) for x in recs]
        row = {"model": r.label, "key": r.key, "trains": r.trains, "backbone": r.backbone,
               "epochs": max(len(accs(x)) for x in recs)}
        put_mean(row, "final acc", finals, multi)
        row["best acc"] = mean_of([best(x) for x in recs])
        row["vs TF-IDF (pts)"] = round((row["final acc"] - lines_["tfidf"]) * 100, 1)
        row.update({"time (s)": round(mean_of([wall_s(x) for x in recs]), 1),
                    "trainable params": recs[0]["summary"].get("trainable_params"),
                    "run": ", ".join(x["run_id"] for x in recs)})
        if multi:
            row["seeds"] = len(recs)
        rows.append(row)
    for key, name, trains, acc, secs in (
            ("tfidf", TFIDF, "word and word-pair TF-IDF, logistic regression (scikit-learn)", lines_["tfidf"],
             lines_.get("tfidf_s")),
            ("majority", MAJORITY, f"nothing: always answers {lines_['majority_class']!r}", lines_["majority"], None)):
        rows.append({"model": name, "key": key, "trains": trains, "final acc": acc, "best acc": acc,
                     "vs TF-IDF (pts)": round((acc - lines_["tfidf"]) * 100, 1), "time (s)": secs})
    return pd.DataFrame(rows)


def _colour(key: str) -> str:
    from tl_core.viz import figures as visuals

    return visuals.NEUTRAL if key == "scratch" else visuals.RUN_COLOURS[0 if key.startswith("glove") else 1]


def _figure(cfg: LabSettings, groups: dict[int, dict], lines_: dict) -> go.Figure:
    """Each run's final accuracy (mean; whiskers: min–max over the seeds), TF-IDF and the majority as lines."""
    from tl_core.viz import figures as visuals

    fig = go.Figure()
    values = [lines_["tfidf"], lines_["majority"]]
    for r in RUNS:
        finals = [_final(g[r.key]) for g in groups.values() if r.key in g]
        if not finals:
            continue
        m = float(np.mean(finals))
        values += finals
        fig.add_scatter(x=[r.label], y=[m], mode="markers+text", name=r.label, text=[pct(m)],
                        textposition="middle right", marker=dict(size=16, color=_colour(r.key)),
                        error_y=dict(type="data", symmetric=False, array=[max(finals) - m],
                                     arrayminus=[m - min(finals)], visible=len(finals) > 1))
    for name, acc, dash in ((TFIDF, lines_["tfidf"], "dash"),
                            (f"{MAJORITY} ({lines_['majority_class']})", lines_["majority"], "dot")):
        fig.add_hline(y=acc, line=dict(color=visuals.NEUTRAL, dash=dash, width=2),
                      annotation_text=f"{name}: {pct(acc)}", annotation_position="top left")
    fig.update_yaxes(title="validation accuracy after the last epoch", tickformat=".0%",
                     range=[max(0.0, min(values) - 0.05), min(1.02, max(values) + 0.05)])
    fig.update_layout(showlegend=False)
    visuals.layout(fig, f"Does pretraining help on text? {cfg.data}, {lines_['n_train']} training texts, "
                         f"{lines_['tokens']} tokens{seeds_note(len(groups))}", height=520)
    return legend_below(fig)


def _size_note(cfg: LabSettings, lines_: dict) -> str:
    if cfg.preset != "default":
        return ""
    return (f"Sized for a 2-core CPU: {lines_['n_train']} training texts, the first {lines_['tokens']} tokens, "
            f"{cfg.epochs} epoch(s) for the runs that train the encoder, {cfg.seeds} seed(s). The issue's reference "
            "(1,000 reviews, 64 tokens: TF-IDF 76.6%, frozen MiniLM 71.4%, last two layers 78.8%, whole model "
            "81.2%) is the GPU preset.")


def analyse_text_race(cfg: LabSettings, recs: list[dict], lines_: dict) -> LabResult:
    """Pure: run records and the two lines (``lines``) → table, figure, verdict."""
    groups, missing = by_seed(recs)
    if not groups:
        return empty("No finished runs yet.")
    checks = text_checks(groups, lines_)
    means = {r.key: mean_of([_final(g[r.key]) for g in groups.values() if r.key in g]) for r in RUNS}
    means = {k: v for k, v in means.items() if v is not None}
    top = max(means, key=means.get)
    headline = (f"After training on {lines_['n_train']} texts, validation on {lines_['n_val']}: TF-IDF + logistic "
                f"regression {pct(lines_['tfidf'])}, always answering {lines_['majority_class']!r} "
                f"{pct(lines_['majority'])}; the best network was **{BY_KEY[top].label}** with {pct(means[top])} "
                f"({pts(means[top] - lines_['tfidf'])} vs TF-IDF).")
    extra = tfidf_vs_frozen(groups, lines_)
    headline += f"\n\n{extra}" if extra else ""
    text, agrees = finish_text(headline, checks, missing, len(groups))
    note = _size_note(cfg, lines_)
    text += f"\n\n{note}" if note else ""
    return LabResult(_rows(groups, lines_), _figure(cfg, groups, lines_), text, agrees, checks,
                     {"seeds": list(groups), "baselines": lines_, "final": means})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_text_race(cfg, recs, lines(cfg, state))
