"""Training: ``config`` (TrainConfig and its checks), ``estimate`` (memory/time before a run), ``prefix`` and
``feature_store`` (frozen-prefix features, shared between runs), ``telemetry`` (drift, snapshots),
``checkpoint`` (save/load), ``trainer`` (the event-driven Trainer, ``fit``)."""
from .config import (
    OPTIMIZERS, SCHEDULES, TRUSTED_ENV, TrainConfig, check_backbone, check_data_source, check_device,
    TEXT_DEFAULTS, default_text_config,
)
from .estimate import (
    GB, REF_SIZE, BASE_BYTES, STORED_IMAGE_BYTES, CORE_S_PER_ELEMENT, FORWARD_SHARE, GPU_SPEEDUP,
    FALLBACK_ELEMENTS_PER_PIXEL, UNKNOWN_CLASSES, USER_DATA_MAX_IMAGES, Estimate, ram_bytes, gpu_bytes,
    model_size, image_counts, check,
)
from .feature_store import (
    FOLDER, SUFFIX, TMP_PREFIX, STALE_TMP_S, MEMORY_BYTES, tensor_digest, weights_digest, text_digest,
    entry_key, MEMORY, default_folder, FeatureStore,
)
from .prefix import (
    CACHE_LIMIT_BYTES, CACHED_VAL_BATCH, CachePlan, plan_cache, HELP_CHUNK, Fill, LIVE, PrefixCache, key_inputs,
    entry_keys, prefix_features, Batches, phase_loaders,
)
from .telemetry import (
    SNAPSHOT_CHANNELS, SNAPSHOT_SIZE, reset_peak_mem, peak_mem_mb, relative_change, Drift, GradNorms, to_map,
    snapshot_maps, default_snapshot_layers, layer_maps, Snapshots, AttentionSnapshots,
)
from .checkpoint import save_model, load_model
from .trainer import (
    EVENTS, METRICS, Diverged, CancelFit, seed_everything, prepare, build_optimizer, backward_step, Trainer,
    run_info, outcome, summarize, fit, prewarm,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
