"""Networks: ``backbones`` (the catalogue, weights, preprocessing), ``surgery`` (hierarchy, freeze plans,
BatchNorm), ``strategies`` (presets to phases), ``text`` and ``glove`` (text backbones), ``arch`` (what a
config names), ``weight_files`` (reading weights safely, key converters), ``probes`` (CKA, features,
Grad-CAM). Listed here: the names of these modules that other packages, pages and tests use; the rest
through their module."""
from .surgery import (
    BN_MODES, Hierarchy, is_module, hierarchy, dummy_input, BlockSetting, FreezePlan, block_modules, apply_plan,
    count_params, param_groups, sequential_chain, fold_batchnorm, probe_at,
)
from .strategies import STRATEGIES, Phase, default_lr, group_decay, schedule
from .text import (
    TEXT_MODELS, pack, unpack, minilm_path, bert_classes, build_minilm, minilm_tokenizer, is_text_model,
    sentence_embeddings, attention_maps,
)
from .glove import VOCAB_SIZE, DIM, WORD_PATTERN, glove_matrix, split_words, WordVectors, nearest_words, analogy
from .backbones import (
    IMAGENET_CLASSES, BackboneSpec, CATALOGUE, local_backbones_dir, catalogue, get_spec,
    save_local_backbone, torchvision_url, is_online, weight_status,
    guess_backbone, create_text_model, text_tokenizer, check_weights, create_model, param_count, converted_dir,
    readable_weights, arch_definition, create_code,
)
from .weight_files import WeightsError, keep_weights, read_state_dict
from .arch import (is_timm_arch, build_arch, modality, block_groups, block_names, data_config_for,
                   jsonable_data_config)
from .probes import (
    linear_cka, block_outputs, block_cka, penultimate_features, project_2d, nearest_centroid_accuracy,
    cam_layer, grad_cam,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
