"""Networks: ``backbones`` (the catalogue, weights, preprocessing), ``surgery`` (hierarchy, freeze plans,
BatchNorm), ``strategies`` (presets to phases), ``text`` and ``glove`` (text backbones), ``arch`` (what a
config names), ``probes`` (CKA, features, Grad-CAM). A name two modules define (``data_config``, ``describe``,
``forget``) is reached through its module."""
from .surgery import (
    BN_MODES, Node, Hierarchy, is_module, hierarchy, dummy_input, BlockSetting, FreezePlan, block_modules,
    apply_plan, count_params, param_groups, sequential_chain, FOLDABLE_NORMS, fold_batchnorm,
)
from .strategies import (
    StrategyInfo, STRATEGIES, Phase, TEXT_LRS, default_lr, default_freeze_blocks, group_decay, schedule,
)
from .text import (
    MINILM_PACKAGE, MINILM_DIR, TextModelInfo, TEXT_MODELS, pack, unpack, with_mask, split_mask, MaskedMeanPool,
    TextClassifier, minilm_path, bert_classes, minilm_config, build_minilm, HFTokenizer, minilm_tokenizer,
    is_text_model, sentence_embeddings, attention_maps,
)
from .glove import (
    VOCAB_SIZE, DIM, PAD, SEARCH_WORDS, WORD_PATTERN, glove_dir, glove_words, glove_matrix, split_words,
    WordTokenizer, glove_tokenizer, PackedWordEmbedding, build_glove, WordVectors, nearest_words, analogy,
)
from .backbones import (
    IMAGENET_CLASSES, STATUS_LABELS, WeightsError, Bundled, BackboneSpec, CATALOGUE, local_backbones_dir,
    catalogue, get_spec, save_local_backbone, WeightsStatus, torchvision_url, is_online, weight_status,
    keep_weights, read_state_dict, check_finite_weights, CONVERTERS, guess_backbone, load_weights,
    create_text_model, text_tokenizer, check_weights, create_model, param_count,
)
from .arch import (
    is_timm_arch, build_arch, modality, BLOCK_NAMES, block_names, data_config_for, jsonable_data_config,
)
from .probes import (
    MAX_FEATURES, PROJECTIONS, linear_cka, block_outputs, block_cka, penultimate_features, project_2d,
    nearest_centroid_accuracy, cam_layer, grad_cam,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
