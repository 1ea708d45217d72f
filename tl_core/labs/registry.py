"""The labs, built from their modules. A lab module holds:

- ``INFO``: its ``LabInfo`` (id, title, question, prediction, the LabConfig fields it uses, timing);
- ``defaults(cfg, gpu)``: set its preset's values on a fresh ``LabConfig``;
- ``plan(cfg, wdir) -> list[LabRun]``: its runs for ONE seed (``wdir``: where built weights files go);
  ``plan.plan_runs`` repeats them for every seed of ``cfg.run_seeds()``;
- ``analyse(cfg, recs, state=None) -> LabResult``: pure, records in (of one seed or several:
  ``analysis.by_seed``) → table, figure (mean and band), verdict text (``stats.paired``);
- optionally ``check(cfg)`` (raise ValueError for a setting the lab cannot run) and ``meta(cfg) -> dict``
  (saved in the lab's state at creation, for the analysis).

Adding a lab: write the module, add it to ``MODULES`` (see docs/adding-a-lab.md).
"""
from __future__ import annotations

from types import ModuleType

from tl_core.labs import bn
from tl_core.labs import freeze_depth
from tl_core.labs import normalization
from tl_core.labs import quadrant
from tl_core.labs import race
from tl_core.labs import text_race
from tl_core.labs import what_changed
from tl_core.labs import yosinski
from tl_core.labs.analysis import LabResult
from tl_core.labs.config import LabConfig, LabInfo

MODULES: tuple[ModuleType, ...] = (race, freeze_depth, yosinski, quadrant, bn, normalization,  # the tab order
                                   what_changed, text_race)
_BY_ID: dict[str, ModuleType] = {m.INFO.id: m for m in MODULES}
LABS: dict[str, LabInfo] = {m.INFO.id: m.INFO for m in MODULES}


def module(lab: str) -> ModuleType:
    """The module of a lab id (KeyError for an unknown one; ``LabConfig.validate`` names the choices)."""
    return _BY_ID[lab]


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    """Pure: the lab's records → LabResult (no store, no training)."""
    res = module(cfg.lab).analyse(cfg, recs, state)
    if state is not None:
        res.extra["lab_id"] = state.get("id")
        res.extra["status"] = state.get("status")
    return res
