"""Training: ``config`` (TrainConfig and its checks), ``estimate`` (memory/time before a run), ``prefix`` and
``feature_store`` (frozen-prefix features, shared between runs), ``telemetry`` (drift, snapshots),
``checkpoint`` (save/load), ``trainer`` (the event-driven Trainer, ``fit``). Listed here: the names of these
modules that other packages, pages and tests use; the rest through their module."""
from .config import TRUSTED_ENV, TrainConfig, check_backbone, check_data_source, check_device, default_text_config
from .estimate import BASE_BYTES, ram_bytes, check
from .feature_store import MEMORY, default_folder, FeatureStore
from .prefix import plan_cache, PrefixCache, entry_keys, prefix_features
from .telemetry import to_map, snapshot_maps, default_snapshot_layers, AttentionSnapshots
from .checkpoint import save_model, load_model
from .trainer import EVENTS, METRICS, CancelFit, seed_everything, prepare, Trainer, outcome, fit, prewarm

__all__ = sorted(name for name in dir() if not name.startswith("_"))
