"""tl_core.models.probes: linear CKA against known cases, block CKA, feature projections, Grad-CAM.

Real models (timm's tiny test_resnet / test_vit, the bundled pretrained MobileNetV2) and real images
(the bundled animal_shapes set, skimage's cat photo); small sizes so the file runs in seconds."""
import copy

import numpy as np
import pytest
import timm
import torch

from tl_core.models import backbones
from tl_core import data
from tl_core.models import probes
from tl_core.models import surgery


def _random(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(_random(d, d, seed))
    return q


# --------------------------------------------------------------------------- linear CKA, known cases


@pytest.mark.parametrize("n,d", [(200, 16), (20, 64)])  # the feature form (d < n) and the Gram form (d > n)
def test_linear_cka_invariances(n, d):
    x = _random(n, d, 0)
    assert probes.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert probes.linear_cka(x, x @ _orthogonal(d, 1)) == pytest.approx(1.0, abs=1e-9)
    assert probes.linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)
    assert probes.linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # centring: a shift changes nothing
    # but CKA is not invariant to any invertible map: stretching one direction 30x lowers it
    stretch = torch.ones(d, dtype=torch.float64)
    stretch[0] = 30.0
    assert probes.linear_cka(x, x * stretch) < 0.5
    # symmetric, and the same in float32
    y = _random(n, d + 3, 2)
    assert probes.linear_cka(x, y) == pytest.approx(probes.linear_cka(y, x), abs=1e-12)
    assert probes.linear_cka(x.float(), y.float()) == pytest.approx(probes.linear_cka(x, y), abs=1e-5)


def test_linear_cka_matches_the_formula_in_both_forms():
    x, y = _random(30, 8, 3), _random(30, 50, 4)  # d2 > n: the Gram form
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert probes.linear_cka(x, y) == pytest.approx(float(expected), abs=1e-12)
    assert probes.linear_cka(x, y[:, :5]) == pytest.approx(
        float((yc[:, :5].T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc[:, :5].T @ yc[:, :5]).norm())), abs=1e-12)


def test_linear_cka_of_independent_features_is_near_zero():
    value = probes.linear_cka(_random(4000, 10, 5), _random(4000, 12, 6))
    assert 0 <= value < 0.02  # n >> d: expected about d / n
    assert probes.linear_cka(_random(50, 4, 7), torch.zeros(50, 4)) == 0.0  # a constant representation


def test_linear_cka_rejects_mismatched_examples():
    with pytest.raises(ValueError, match="same n"):
        probes.linear_cka(_random(10, 3, 0), _random(11, 3, 1))


# --------------------------------------------------------------------------- block CKA on real models


@pytest.fixture(scope="module")
def shapes64():
    """40 real animal_shapes images (4 per class), preprocessed for a 64 px network."""
    ds = data.load_dataset("animal_shapes")
    idx = torch.cat([torch.nonzero(ds.labels == c).flatten()[:4] for c in range(len(ds.class_names))])
    _, eval_tf = data.make_transforms(backbones.data_config("mobilenetv2"), 64)
    return eval_tf(ds.images[idx])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    return model, surgery.hierarchy(model, 64)


def test_block_cka_of_a_model_with_itself_is_one(resnet, shapes64):
    model, hier = resnet
    model.train()
    cka = probes.block_cka(model, copy.deepcopy(model), hier, shapes64, batch_size=16)
    assert list(cka) == hier.block_names
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in cka.values()), cka
    assert model.training  # handed back in the mode it came in


def test_block_cka_sees_only_what_changed(resnet, shapes64):
    model, hier = resnet
    new_head = copy.deepcopy(model)
    torch.nn.init.normal_(new_head.fc.weight, generator=torch.Generator().manual_seed(1))
    cka = probes.block_cka(model, new_head, hier, shapes64)
    assert all(cka[b] == pytest.approx(1.0, abs=1e-6) for b in hier.block_names[:-1]), cka
    assert cka["fc"] < 0.99

    new_last_stage = copy.deepcopy(model)
    with torch.no_grad():
        for p in new_last_stage.layer4.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    cka = probes.block_cka(model, new_last_stage, hier, shapes64)
    before = hier.block_names[:hier.block_names.index("layer4")]
    assert before == ["stem", "layer1", "layer2", "layer3"]
    assert all(cka[b] == pytest.approx(1.0, abs=1e-6) for b in before), cka
    assert cka["layer4"] < 0.99 and cka["fc"] < 0.99


def test_block_outputs_pool_large_maps(resnet, shapes64):
    model, hier = resnet
    outs = probes.block_outputs(model, hier, shapes64, max_features=512)
    assert list(outs) == hier.block_names
    for node in hier.blocks:
        assert outs[node.name].shape[0] == len(shapes64)
        assert outs[node.name].shape[1] <= max(512, node.out_shape[0])  # at least one value per channel
    assert outs["stem"].shape[1] == hier.block("stem").out_shape[0] * 4 ** 2  # 32 channels x 4x4 grid
    assert outs["fc"].shape[1] == 10  # small outputs are kept whole


def test_block_cka_on_a_vit(shapes64):
    vit = timm.create_model("test_vit", num_classes=10)
    hier = surgery.hierarchy(vit, 64)
    cka = probes.block_cka(vit, copy.deepcopy(vit), hier, shapes64, max_features=256)
    assert list(cka) == hier.block_names and all(v == pytest.approx(1.0, abs=1e-6) for v in cka.values())


def test_block_cka_rejects_raw_images(resnet):
    model, hier = resnet
    raw = data.load_dataset("animal_shapes").images[:4]
    with pytest.raises(ValueError, match="evaluation transform"):
        probes.block_cka(model, model, hier, raw)


# --------------------------------------------------------------------------- feature space


def test_pretrained_features_separate_classes_better_than_random():
    """"Features transfer": without any training, ImageNet features already group animal silhouettes
    by class far better than the same network at random init (nearest class mean, leave-one-out)."""
    ds = data.load_dataset("animal_shapes")
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.nonzero(ds.labels == c).flatten()[torch.randperm(800, generator=gen)[:10]]
                     for c in range(len(ds.class_names))])
    _, eval_tf = data.make_transforms(backbones.data_config("mobilenetv2"), 96)
    x, y = eval_tf(ds.images[idx]), ds.labels[idx].numpy()
    pretrained, _ = backbones.create_model("mobilenetv2", num_classes=10)
    torch.manual_seed(0)
    random_init, _ = backbones.create_model("mobilenetv2", num_classes=10, weights="random")
    acc = {}
    for name, model in (("pretrained", pretrained), ("random", random_init)):
        feats = probes.penultimate_features(model, x, batch_size=50)
        assert feats.shape == (100, 1280) and feats.dtype == np.float32
        acc[name] = probes.nearest_centroid_accuracy(feats, y)
        pts = probes.project_2d(feats)
        assert pts.shape == (100, 2) and np.isfinite(pts).all()
        assert pts[:, 0].var() >= pts[:, 1].var()  # PC 1 carries the most variance
    print(f"nearest class mean, leave-one-out, 10 classes: {acc}")
    assert acc["pretrained"] >= acc["random"] + 0.15, acc  # measured 0.55 vs 0.29 (chance 0.10)


def test_project_2d_methods_and_errors():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (15, 6)), rng.normal(8, 1, (15, 6))])
    labels = np.repeat([0, 1], 15)
    pca = probes.project_2d(feats)
    np.testing.assert_allclose(pca, probes.project_2d(feats))  # deterministic
    assert probes.nearest_centroid_accuracy(pca, labels) == 1.0
    tsne = probes.project_2d(feats, "tsne")
    assert tsne.shape == (30, 2) and probes.nearest_centroid_accuracy(tsne, labels) == 1.0
    assert probes.project_2d(feats[:, :1]).shape == (30, 2)
    with pytest.raises(ValueError, match="pca, tsne"):
        probes.project_2d(feats, "umap")
    with pytest.raises(ValueError, match="at least 3"):
        probes.project_2d(feats[:2])


def test_nearest_centroid_accuracy_leaves_each_example_out():
    feats = np.array([[0.0], [0.2], [1.0], [1.2], [5.0]])
    # each point is compared with its own class's mean without itself (the other point); 5.0 is alone
    # in class 2, which therefore cannot be predicted: it goes to class 1, the one miss
    assert probes.nearest_centroid_accuracy(feats, [0, 0, 1, 1, 2]) == pytest.approx(4 / 5)
    assert probes.nearest_centroid_accuracy(feats[:4], [0, 0, 1, 1]) == 1.0


# --------------------------------------------------------------------------- Grad-CAM


@pytest.fixture(scope="module")
def imagenet_mobilenet():
    model, _ = backbones.create_model("mobilenetv2")  # keeps the ImageNet head
    return model


@pytest.mark.parametrize("quadrant", [0, 3])
def test_grad_cam_finds_the_cat_in_its_quadrant(imagenet_mobilenet, quadrant):
    """A real cat photo in one quadrant of a grey canvas: the pretrained network calls it a cat, and
    its Grad-CAM puts most of the mass (more than the other three quadrants together) and its peak there."""
    from PIL import Image
    from skimage.data import chelsea

    size, half = 160, 80
    canvas = np.full((size, size, 3), 128, np.uint8)
    r, c = divmod(quadrant, 2)
    canvas[r * half:(r + 1) * half, c * half:(c + 1) * half] = np.asarray(Image.fromarray(chelsea()).resize((half, half)))
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in data.normalization_stats(backbones.data_config("mobilenetv2")))
    x = (torch.from_numpy(canvas).permute(2, 0, 1) / 255 - mean) / std  # normalised only: the layout stays exact
    model = imagenet_mobilenet
    with torch.no_grad():
        assert 281 <= int(model.eval()(x[None]).argmax()) <= 285  # tabby .. Egyptian cat
    cam = probes.grad_cam(model, x)
    assert cam.shape == (size, size) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    mass = cam[r * half:(r + 1) * half, c * half:(c + 1) * half].sum() / cam.sum()
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert mass > 0.5, mass  # measured 0.61-0.65 (uniform: 0.25)
    assert (peak[0] // half, peak[1] // half) == (r, c)


def test_grad_cam_on_a_frozen_model_leaves_it_untouched(resnet, shapes64):
    model, hier = resnet
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        cam = probes.grad_cam(model, shapes64[0], target_class=3, hier=hier)
        assert probes.cam_layer(model, hier) == "layer4"
        assert cam.shape == (64, 64) and 0 <= cam.min() and cam.max() <= 1
        assert all(p.grad is None for p in model.parameters()) and model.training
        by_module = probes.grad_cam(model, shapes64[0], target_class=3, layer="layer4.0", hier=hier)
        assert by_module.shape == (64, 64)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_grad_cam_on_a_vit_explains_patch_tokens(shapes64):
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=10)
    hier = surgery.hierarchy(vit, 64)
    # the class token alone feeds the head, so the last block's patch tokens get no gradient: use its input
    assert probes.cam_layer(vit, hier) == hier.block_names[-4]
    cam = probes.grad_cam(vit, shapes64[0], hier=hier)
    assert cam.shape == (64, 64) and cam.max() == pytest.approx(1.0) and cam.std() > 0


def test_grad_cam_errors_say_what_to_do(resnet, shapes64):
    model, hier = resnet
    with pytest.raises(ValueError, match="target_class must be in 0..9"):
        probes.grad_cam(model, shapes64[0], target_class=10, hier=hier)
    with pytest.raises(ValueError, match="not a module of this model"):
        probes.grad_cam(model, shapes64[0], layer="layer9", hier=hier)
    with pytest.raises(ValueError, match="needs a conv backbone"):
        probes.grad_cam(model, shapes64[0], layer="fc", hier=hier)
    with pytest.raises(ValueError, match="evaluation transform"):
        probes.grad_cam(model, data.load_dataset("animal_shapes").images[0], hier=hier)


# --------------------------------------------------------------------------- text models (Inspect: text runs)


@pytest.fixture(scope="module")
def minilm_reviews():
    """The real MiniLM encoder and 24 real fine-food reviews (12 per class), packed at 16 tokens."""
    from tl_core.data import texts as text_data
    from tl_core.models import text as text_models

    food = text_data.load_text_builtin("fine_food")
    rows = torch.cat([torch.nonzero(food.labels == c).flatten()[:12] for c in range(2)])
    x = text_data.tokenize([food.texts[i] for i in rows], text_models.minilm_tokenizer(), 16)
    return text_models.build_minilm(2), x, food.labels[rows].numpy()


def test_block_cka_and_sentence_embeddings_of_a_text_model(minilm_reviews):
    """The probes read packed token batches too: CKA sees only the Transformer layer that changed, and the
    penultimate features are the mean-pooled sentence embeddings."""
    from tl_core.models import text as text_models

    model, x, labels = minilm_reviews
    hier = surgery.hierarchy(model, 16)
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for p in tuned.layers[5].parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    cka = probes.block_cka(model, tuned, hier, x)
    assert list(cka) == hier.block_names == ["stem", *[f"layers.{i}" for i in range(6)], "head"]
    assert all(cka[b] == pytest.approx(1.0, abs=1e-6) for b in hier.block_names[:6]), cka
    assert cka["layers.5"] < 0.99
    feats = probes.penultimate_features(model, x)
    np.testing.assert_allclose(feats, text_models.sentence_embeddings(model, x).numpy(), atol=1e-5)
    assert probes.project_2d(feats).shape == (24, 2) and 0 <= probes.nearest_centroid_accuracy(feats, labels) <= 1

