"""The run as plain code: ``codegen`` (image script), ``codegen_text`` (text script), their shared ``sections``,
and ``notebook`` (a Jupyter notebook). A name two modules define (``RUN_CODE``, ``SCHEDULE_CODE``,
``TRAIN_LOOP_CODE``), or that names a module (``notebook``), is reached through its module."""
from .sections import OPTIMIZERS, Section, Phases, block_members, phase_entry, freeze_plan_code, optimizer_code
from .codegen_text import plain_module, text_sections
from .codegen import code_sections, join_sections, generate_code
from .notebook import (
    Cell, OPTIMIZER_NAMES, as_config, filename, BATCHES_MD, BATCHES_CODE, MODEL_END, FREEZE_MD, OPTIMISER_MD,
    SCHEDULE_MD, LOOP_MD, LOOP_CODE, RUN_MD, CURVES_MD, CURVES_CODE, cells,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
