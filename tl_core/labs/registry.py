"""The labs, built from their modules, and what needs to know every lab: ``LabConfig`` (the settings that
know their lab), ``default_config``, ``plan_runs``, ``analyse`` and the ready-made configs. A lab module holds:

- ``INFO``: its ``LabInfo`` (id, title, question, prediction, the fields it uses, timing);
- ``defaults(cfg, gpu)``: set its preset's values on a fresh ``LabConfig``;
- ``plan(cfg, wdir) -> list[LabRun]``: its runs for ONE seed (``wdir``: where built weights files go);
  ``plan_runs`` repeats them for every seed of ``cfg.run_seeds()``;
- ``analyse(cfg, recs, state=None) -> LabResult``: pure, records in (of one seed or several:
  ``analysis.by_seed``) → table, figure (mean and band), verdict text (``stats.paired``);
- optionally ``check(cfg)`` (raise ValueError for a setting the lab cannot run), ``meta(cfg) -> dict``
  (saved in the lab's state at creation, for the analysis) and ``after_run(run, state, store)`` (called by
  the lab process after each run).

Adding a lab: write the module, add it to ``MODULES`` (see docs/adding-a-lab.md).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl, urlencode

from tl_core import limits
from tl_core.labs import (adabn, bn, freeze_depth, kornblith, layer_probe, lp_ft, normalization, quadrant, race,
                          surgical, text_race, what_changed, yosinski)
from tl_core.labs.analysis import LabResult
from tl_core.labs.config import PRESETS, LabInfo, LabSettings, check_run_count, decode_value, encode_value
from tl_core.labs.plan import LabRun, seeded

MODULES: tuple[ModuleType, ...] = (race, freeze_depth, yosinski, quadrant, bn, normalization,  # the tab order
                                   what_changed, text_race, kornblith, surgical, adabn, layer_probe, lp_ft)
_BY_ID: dict[str, ModuleType] = {m.INFO.id: m for m in MODULES}
LABS: dict[str, LabInfo] = {m.INFO.id: m.INFO for m in MODULES}


def module(lab: str) -> ModuleType:
    """The module of a lab id (KeyError for an unknown one; ``LabConfig.validate`` names the choices)."""
    return _BY_ID[lab]


def _check_lab(lab) -> None:
    if lab not in LABS:
        raise ValueError(f"unknown lab {lab!r}; choose one of: {', '.join(LABS)}")


def _query_dict(query) -> dict[str, str]:
    """A query string or a mapping of strings (``st.query_params``: a repeated key keeps its last value)."""
    if isinstance(query, str):
        query = dict(parse_qsl(query.lstrip("?"), keep_blank_values=True))
    return {k: (v[-1] if isinstance(v, list) else v) for k, v in dict(query).items()}


@dataclass(frozen=True)
class LinkNote:
    """A value of a shared link that the lab could not take (``LabConfig.from_link``), and what it holds instead."""

    field: str
    given: str  # the value in the link, quoted (cut if long: limits.shown)
    why: str  # the allowed range, or the check that refused it
    now: str  # the value the lab holds instead, as a link writes it


class LabConfig(LabSettings):
    """``LabSettings`` that know their lab: its preset defaults, its fields in JSON and in the URL, its check."""

    # --- JSON
    def to_dict(self, compact: bool = False) -> dict:
        """All fields; ``compact``: only ``lab``, ``preset`` and the fields this lab uses (the rest come
        back from the preset's defaults in ``from_dict``)."""
        d = dataclasses.asdict(self)
        if compact:
            d = {k: d[k] for k in ("lab", "preset") + LABS[self.lab].fields}
        return d

    def to_json(self, indent: int | None = 2, compact: bool = True) -> str:
        return json.dumps(self.to_dict(compact=compact), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "LabConfig":
        limits.check_fields(cls, d, "lab config")
        lab = d.get("lab", "race")
        _check_lab(lab)
        base = default_config(lab, d.get("preset", "default")).to_dict()
        base.update(d)
        return cls(**base)

    @classmethod
    def from_json(cls, text: str) -> "LabConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a lab configuration (invalid JSON: {exc})") from None
        if not isinstance(d, dict):
            raise ValueError("not a lab configuration (expected a JSON object)")
        return cls.from_dict(d)

    # --- URL query string
    def to_query(self) -> dict[str, str]:
        """The fields this lab uses as strings (``st.query_params.from_dict`` / ``urlencode``)."""
        out = {"lab": self.lab, "preset": self.preset}
        for name in LABS[self.lab].fields:
            out[name] = encode_value(name, getattr(self, name))
        return out

    def to_query_string(self) -> str:
        return urlencode(self.to_query(), safe=",")

    @classmethod
    def from_query(cls, query) -> "LabConfig":
        """From a mapping of strings (``st.query_params``) or a query string; missing fields take the
        lab's preset defaults, unknown keys are ignored (the URL may carry other pages' parameters)."""
        query = _query_dict(query)
        lab = query.get("lab", "race")
        _check_lab(lab)
        cfg = default_config(lab, query.get("preset", "default"))
        names = {f.name for f in dataclasses.fields(cls)} - {"lab", "preset"}
        for key, text in query.items():
            if key in names:
                try:
                    setattr(cfg, key, decode_value(key, text))
                except ValueError as exc:
                    raise ValueError(f"query parameter {key}={limits.shown(text)}: {exc}") from None
        return cfg

    @classmethod
    def from_link(cls, query) -> tuple["LabConfig", list[LinkNote]]:
        """A shared link read as the Labs page opens it: like ``from_query``, but a value the lab cannot take
        does not refuse the whole link. A whole number outside its range (``int_ranges``) is clamped to the
        nearest bound; a value that cannot be read, or that ``validate`` still refuses, falls back to the
        preset's default. Returns the config (valid unless the preset's defaults are not) and one ``LinkNote``
        per value changed. An unknown lab is a ValueError."""
        query = _query_dict(query)
        lab = query.get("lab", "race")
        _check_lab(lab)
        notes: list[LinkNote] = []
        preset = query.get("preset", "default")
        if preset not in PRESETS:
            notes.append(LinkNote("preset", limits.shown(preset), f"the presets are {', '.join(PRESETS)}", "default"))
            preset = "default"
        default = default_config(lab, preset)
        cfg, given = copy.deepcopy(default), {}
        names = {f.name for f in dataclasses.fields(cls)} - {"lab", "preset"}
        for key in sorted(names & set(query), key=[*LABS[lab].fields, *sorted(names)].index):  # seeds before only_seed
            text = query[key]
            try:
                value = decode_value(key, text)
            except ValueError:
                notes.append(LinkNote(key, limits.shown(text), f"expected {_expected(cfg, key)}",
                                      encode_value(key, getattr(default, key))))
                continue
            clamped, why = _clamp(cfg, key, value)
            setattr(cfg, key, clamped)
            given[key] = text
            if why:
                notes.append(LinkNote(key, limits.shown(text), why, encode_value(key, clamped)))
        try:
            return cfg.validate(), notes
        except ValueError:
            pass
        try:
            good = copy.deepcopy(default).validate()
        except ValueError:  # the preset itself does not fit this server's limits: Run says why
            return cfg, notes
        for key, text in given.items():  # the link's values one by one: keep each one the lab accepts
            trial = copy.deepcopy(good)
            setattr(trial, key, getattr(cfg, key))
            try:
                good = trial.validate()
            except ValueError as exc:
                before = next((n.why + f"; at {n.now}, " for n in notes if n.field == key), "")
                notes = [n for n in notes if n.field != key]
                notes.append(LinkNote(key, limits.shown(text), before + str(exc),
                                      encode_value(key, getattr(default, key))))
        return good, notes

    def validate(self) -> "LabConfig":
        """The checks every lab shares (``LabSettings.validate``), then the lab's own ``check(cfg)``."""
        _check_lab(self.lab)
        super().validate()
        check = getattr(module(self.lab), "check", None)
        if check is not None:
            check(self)
        return self


def _range(cfg: LabSettings, key: str) -> str:
    """A whole-number field's allowed range in words: "16 to 1024 pixels"."""
    _, lo, hi, unit = cfg.int_ranges()[key]
    return f"{lo} to {hi}{unit.replace(' of ', ' ')}"


def _clamp(cfg: LabSettings, key: str, value):
    """``value`` of a whole-number field held to ``cfg.int_ranges()`` (each item of a list), and why it
    changed ("" if it did not)."""
    if key not in cfg.int_ranges():
        return value, ""
    _, lo, hi, _ = cfg.int_ranges()[key]
    items = value if isinstance(value, list) else [value]
    held = [v if v is None else min(max(v, lo), hi) for v in items]
    if held == items:
        return value, ""
    return (held if isinstance(value, list) else held[0]), f"the allowed range is {_range(cfg, key)}"


def _expected(cfg: LabSettings, key: str) -> str:
    """What a link may give for ``key``, in words."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(cfg)}[key]
    if key not in cfg.int_ranges():
        return f"a value of type {kind}"
    words = "whole numbers (comma-separated)" if kind.startswith("list") else "a whole number"
    return f"{words} from {_range(cfg, key)}" + (f", or {encode_value(key, None)}" if "None" in kind else "")


def default_config(lab: str, preset: str = "default") -> LabConfig:
    """The lab's default (<= 5 min on a 2-core CPU) or its bigger GPU configuration."""
    _check_lab(lab)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    gpu = preset == "gpu"
    c = LabConfig(lab=lab, preset=preset)
    module(lab).defaults(c, gpu)
    if gpu:
        c.val_fraction = 0.2
    return c


def plan_runs(cfg: LabConfig, lab_dir: str | os.PathLike | None = None) -> list[LabRun]:
    """The lab's runs for every seed, in execution order (seed after seed: ``plan.seeded``). ``lab_dir`` is
    where built weights files will go. Refuses (ValueError, before anything is queued) more than
    ``max_lab_runs``."""
    cfg.validate()
    wdir = Path(lab_dir or ".") / "weights"
    out: list[LabRun] = []
    for i, seed in enumerate(cfg.run_seeds()):
        runs = module(cfg.lab).plan(cfg, wdir / f"seed{seed}" if cfg.seeds > 1 else wdir)
        if i == 0:
            check_run_count(cfg, len(runs))
            for r in runs:
                if r.stage == 0 and not r.build:
                    r.cfg.validate()
        out += seeded(runs, cfg, seed, i, LABS[cfg.lab].run_tag)
    return out


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    """Pure: the lab's records → LabResult (no store, no training)."""
    res = module(cfg.lab).analyse(cfg, recs, state)
    if state is not None:
        res.extra["lab_id"] = state.get("id")
        res.extra["status"] = state.get("status")
    return res


# ----------------------------------------------------------------------------- ready-made files


def load_config_file(path) -> LabConfig:
    return LabConfig.from_json(Path(path).read_text())


def ready_made_dir() -> Path:
    """The repository's ``labs/`` folder (beside ``tl_core/``)."""
    return Path(__file__).resolve().parents[2] / "labs"


def ready_made() -> dict[str, LabConfig]:
    """The lab configs shipped in ``labs/*.json`` (name → config); unreadable files are skipped."""
    out = {}
    folder = ready_made_dir()
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[p.stem] = load_config_file(p)
        except (ValueError, OSError):
            continue
    return out
