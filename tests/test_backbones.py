"""The catalogue, the weight-resolution order, and proof that the bundled weights are really pretrained."""
import json
import pickle
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from tl_core.models import backbones
from tl_core import cli

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(key: str) -> torch.Tensor:
    cfg = backbones.data_config(key)
    size = cfg["input_size"][1]
    tf = T.Compose([T.ToImage(), T.Resize(int(size / cfg["crop_pct"])), T.CenterCrop(size),
                    T.ToDtype(torch.float32, scale=True), T.Normalize(cfg["mean"], cfg["std"])])
    return tf(Image.fromarray(skdata.chelsea()))[None]


def test_catalogue_rows_come_from_the_weights_own_config():
    rows = {k: backbones.describe(k) for k in backbones.CATALOGUE}
    assert {"mobilenetv2", "efficientnet_lite0", "resnet18", "resnet50", "mobilenetv3", "efficientnet_b0",
            "convnext_atto", "vit_tiny"} <= set(rows)
    assert rows["mobilenetv2"]["mean"] == [0.485, 0.456, 0.406] and rows["mobilenetv2"]["interpolation"] == "bilinear"
    assert rows["efficientnet_lite0"]["mean"] == [0.5, 0.5, 0.5] and rows["efficientnet_lite0"]["std"] == [0.5, 0.5, 0.5]
    assert rows["vit_tiny"]["mean"] == [0.5, 0.5, 0.5]
    assert rows["resnet50"]["params"] == 25_557_032
    assert rows["mobilenetv2"]["weights"] == rows["efficientnet_lite0"]["weights"] == "bundled"
    for key, size, crop in (("efficientnet_lite1", 240, 272), ("efficientnet_lite2", 260, 292)):  # timm's cfg
        assert rows[key]["mean"] == rows[key]["std"] == [0.5, 0.5, 0.5] and rows[key]["interpolation"] == "bicubic"
        assert rows[key]["input_size"] == size and round(size / rows[key]["crop_pct"]) == crop
    squeeze = rows["squeezenet1_1"]  # Caffe's input: 0..255 minus the mean, in RGB order
    assert squeeze["mean"] == [0.481176, 0.457647, 0.407843] and squeeze["std"] == [0.003922] * 3
    assert (squeeze["input_size"], squeeze["crop_pct"], squeeze["params"]) == (224, 0.875, 1_235_496)
    bundled = [k for k, r in rows.items() if r["weights"] == "bundled" and backbones.get_spec(k).modality == "image"]
    assert bundled == ["mobilenetv2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                       "squeezenet1_1"]
    assert rows["resnet18"]["weights"] == "download"  # empty caches, nothing bundled


@pytest.mark.parametrize("key", ["mobilenetv2", "efficientnet_lite0"])
def test_bundled_weights_are_really_pretrained(key):
    x = _chelsea(key)
    pretrained, status = backbones.create_model(key)
    random_init, _ = backbones.create_model(key, weights="random")
    assert status.kind == "bundled"
    with torch.no_grad():
        top = pretrained.eval()(x).argmax(-1).item()
        top_random = random_init.eval()(x).argmax(-1).item()
    assert top in CAT_CLASSES, f"pretrained {key} called the cat class {top}"
    assert top_random not in CAT_CLASSES


def test_bundled_mobilenetv2_matches_torchvision_exactly():
    """The torchvision file is mapped onto timm's MobileNetV2 tensor by tensor: same outputs."""
    ours, status = backbones.create_model("mobilenetv2")
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(status.source, weights_only=True))
    x = _chelsea("mobilenetv2")
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-4, rtol=1e-4)


def test_new_head_for_target_classes():
    model, _ = backbones.create_model("mobilenetv2", num_classes=7)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_missing_weights_offline_names_the_options():
    with pytest.raises(backbones.WeightsError) as err:
        backbones.create_model("resnet18", allow_download=True)  # TL_OFFLINE=1: no network is tried
    msg = str(err.value)
    for option in ("weights file", "cache", "download", "random"):
        assert option in msg
    assert "mobilenetv2" in msg  # what does work offline


def test_user_safetensors_file_loads_first(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "my_resnet.safetensors"
    save_file(src.state_dict(), str(path))
    model, status = backbones.create_model("resnet18", num_classes=3, weights_file=path)
    assert status.kind == "user"
    torch.testing.assert_close(model.state_dict()["layer3.0.conv1.weight"], src.state_dict()["layer3.0.conv1.weight"])
    assert model.get_classifier().out_features == 3


def test_mismatched_weights_list_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(backbones.WeightsError, match="missing keys: .*unexpected keys: "):
        backbones.create_model("mobilenetv2", weights_file=path)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    with pytest.raises(backbones.WeightsError, match="not a safe weights file"):
        backbones.read_state_dict(path)


def test_hugging_face_cache_is_found_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snap = cache / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    ref = timm.create_model("resnet18")
    save_file(ref.state_dict(), str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert backbones.weight_status("resnet18").kind == "cached"
    model, status = backbones.create_model("resnet18")
    assert status.kind == "cached"
    torch.testing.assert_close(model.state_dict()["fc.weight"], ref.state_dict()["fc.weight"])


def test_local_backbone_saved_by_a_lab_joins_the_catalogue():
    model = timm.create_model("test_resnet", num_classes=5)
    spec = backbones.BackboneSpec("source_a", "Source net (task A)", "Lab", "test_resnet", num_classes=5,
                                  data_config={"input_size": (3, 32, 32), "interpolation": "bilinear",
                                               "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0})
    backbones.save_local_backbone(model, spec)
    assert "source_a" in backbones.catalogue()
    loaded, status = backbones.create_model("source_a", num_classes=3)
    assert status.kind == "user"
    torch.testing.assert_close(loaded.state_dict()["layer1.0.conv1.weight"], model.state_dict()["layer1.0.conv1.weight"])
    assert backbones.describe("source_a")["mean"] == [0.5, 0.5, 0.5]


def test_cli_backbones_and_layers(capsys):
    assert cli.main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["key"]: r["weights"] for r in rows}["efficientnet_lite0"] == "bundled"
    assert cli.main(["layers", "resnet18", "--image-size", "64", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)["tree"]
    assert [n["kind"] for n in tree] == ["stem", "stage", "stage", "stage", "stage", "head"]
    assert tree[1]["children"][0]["out_shape"] == [64, 16, 16]


def test_cli_bad_backbone_is_one_clear_line():
    bad = subprocess.run([sys.executable, "-m", "tl_core", "layers", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown backbone 'nope'" in bad.stderr
