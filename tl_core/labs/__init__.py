"""Labs: small reproducible experiments that put a claim of transfer-learning theory to the test.

A lab is a ``LabConfig`` (a small JSON, or a URL query string that a teacher shares) that expands
into ordinary training runs (``TrainConfig``s, all on the same data and split, feature caching on,
repeated for k paired seeds) plus a PURE analysis: recorded metrics and summaries in → a results
table, a plotly figure (means with a band over the seeds) and a "what we measured" text that states
the measured outcome in numbers, compares it with the prediction (a 95% bootstrap interval of the
paired difference over the seeds) and says so when they disagree.

    labs = race | freeze_depth | yosinski | quadrant | bn | normalization | what_changed | text_race
           | kornblith

The package, bottom up (each module imports only those above it in this list):

- ``stats``: the bootstrap interval and the verdict rule (``paired``, ``VERDICT_RULE``);
- ``analysis``: ``LabResult`` and the helpers every lab's analysis shares (grouping records by seed, bands,
  ``finish_text``, ``pct``...);
- ``config``: ``LabSettings`` (the fields, validation against ``tl_core.limits``), ``LabInfo``, ``PRESETS``;
- ``plan``: ``LabRun``, the helpers plans share (``run_config``, ``depth_groups``...), building weights files;
- one module per lab (``race``, ``freeze_depth``, ``yosinski``, ``quadrant``, ``bn``, ``normalization``,
  ``what_changed``, ``text_race``): its ``INFO``, preset ``defaults``, ``plan`` and ``analyse``;
- ``registry``: ``LABS`` from those modules, and what needs to know every lab: ``LabConfig`` (JSON / URL
  query round trips, the lab's own check), ``default_config``, ``plan_runs``, ``analyse``, the ready-made
  configs in ``labs/*.json``;
- ``runner``: lab folders and state, ``launch_lab`` / ``execute`` / ``stop_lab`` / ``run_lab``, ``records``,
  ``progress``, ``result``, the ``python -m tl_core.labs`` command line.
"""
from tl_core.labs.stats import (TOL, VERDICT_RULE, UNPAIRED_VERDICT_RULE, Paired, RankCorrelation, Spread,
                                 bootstrap_interval, bootstrap_rank_correlation, paired, rank_correlation, spread,
                                 tol_rule)
from tl_core.labs.analysis import LabResult, base_key, by_seed, result_csv, seed_of
from tl_core.labs.config import PRESETS, LabInfo, LabSettings, check_run_count, decode_value, encode_value
from tl_core.labs.plan import LabRun, depth_groups, mix_state_dicts, pair_split
from tl_core.labs.bn import analyse_bn, frozen_bn_drift
from tl_core.labs.freeze_depth import analyse_freeze_depth
from tl_core.labs.kornblith import IMAGENET_TOP1, analyse_kornblith
from tl_core.labs.normalization import analyse_normalization, normalization_views
from tl_core.labs.quadrant import analyse_quadrant, textbook_choice
from tl_core.labs.race import analyse_race, epochs_to_reach, race_benefits
from tl_core.labs.yosinski import YOSINSKI_PAPER, analyse_yosinski, yosinski_backbone_keys, yosinski_classes
from tl_core.labs.registry import (LABS, LabConfig, analyse, default_config, load_config_file, plan_runs, ready_made,
                                   ready_made_dir)
from tl_core.labs.runner import (ACTIVE, LAB_LOG, LAB_STATE, STOP_FILE, create_lab, execute, lab_dir, labs_dir,
                                 launch_lab, list_labs, main, progress, read_state, records, result, run_lab, stop_lab)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
