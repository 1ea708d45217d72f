"""Pure functions from data to plotly figures: ``figures`` (images, runs, comparisons, labs' shared styling),
``probes`` (CKA, projections, Grad-CAM) and ``text`` (the text pictures). Listed here: the names of these
modules that other packages, pages and tests use; the rest through their module."""
from .figures import (
    FROZEN, TRAINABLE, FROZEN_LIGHT, VAL, NEUTRAL, RUN_COLOURS, layout, fmt_count, fmt_shape, block_rows,
    plan_counts, hierarchy_figure, effective_lrs, lr_figure, phase_boundaries, phase_starts, run_curves_figure,
    update_run_curves, compare_curves_figure, transfer_gains, drift_figure, montage, feature_maps_figure,
    filters_figure, class_counts_figure, sample_grid_figure, confusion_counts, confusion_cell, confusion_figure,
    per_class_figure, board_figure,
)
from .probes import CLASS_COLOURS, cka_bars, projection_scatter, grad_cam_overlay
from .text import text_block_rows, text_hierarchy_figure, text_lr_figure, attention_figure, text_counts_figure

__all__ = sorted(name for name in dir() if not name.startswith("_"))
