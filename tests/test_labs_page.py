"""The Labs page through AppTest: tabs, settings from the URL, and a tiny lab launched from the page
that runs in its background process and ends with a chart and a "what we measured" box."""
import time
from pathlib import Path

import pytest
import timm
import torch
from streamlit.testing.v1 import AppTest

from tl_core.models import backbones
from tl_core import labs

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


pytestmark = pytest.mark.usefixtures("app_env")


def _page(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()  # through the router
    assert not at.exception, at.exception
    at.switch_page("pages/labs.py")
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def test_labs_page_renders_every_lab_tab_and_reads_the_url():
    at = _page(lab="bn", epochs="2", per_class="12")
    assert [t.label for t in at.tabs] == [labs.LABS[k].title for k in labs.LABS]
    assert len([b for b in at.button if b.label == "Run this lab"]) == len(labs.LABS)
    assert at.session_state["labcfg_bn"]["epochs"] == 2 and at.session_state["labcfg_bn"]["per_class"] == 12
    assert at.number_input(key="bn_epochs").value == 2
    assert any("Not run yet" in i.value for i in at.info)
    # an edit goes back into the address
    at.number_input(key="race_epochs").set_value(3).run()
    assert not at.exception
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert q["lab"] == "race" and q["epochs"] == "3"
    # the GPU toggle switches to the bigger preset
    at.toggle(key="race_gpu").set_value(True).run()
    assert at.session_state["labcfg_race"]["preset"] == "gpu"
    assert at.session_state["labcfg_race"]["image_size"] == labs.default_config("race", "gpu").image_size


def test_seeds_widgets_student_links_verdict_rule_and_too_many_runs():
    at = _page(lab="bn", seeds="2", only_seed="1")
    assert at.session_state["labcfg_bn"]["seeds"] == 2 and at.session_state["labcfg_bn"]["only_seed"] == 1
    assert at.number_input(key="bn_seeds").value == 2 and at.selectbox(key="bn_only_seed").value == 1
    assert at.number_input(key="race_seeds").value == labs.default_config("race").seeds == 3
    assert sum("Verdict rule" in c.value for c in at.caption) == len(labs.LABS)  # stated in every tab
    assert any("only_seed=0" in c.value and "only_seed=1" in c.value for c in at.code)  # one link per student
    at.selectbox(key="bn_only_seed").set_value(None).run()
    at.number_input(key="bn_seeds").set_value(4).run()
    assert not at.exception
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert q["seeds"] == "4" and q["only_seed"] == "all"
    # a lab that would queue more runs than the limit: one clear line, nothing queued
    at.number_input(key="race_seeds").set_value(20).run()
    at.button(key="launch_race").click().run()
    assert any("120 runs" in e.value and "max_lab_runs" in e.value for e in at.error), [e.value for e in at.error]
    assert labs.list_labs() == []


@pytest.mark.slow
def test_tiny_lab_launched_from_the_page_completes_with_chart_and_verdict():
    torch.manual_seed(0)
    spec = backbones.BackboneSpec(
        key="tiny_cnn", label="Tiny CNN", family="Lab", timm_name="test_resnet", num_classes=10,
        data_config={"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
                     "crop_pct": 1.0})
    backbones.save_local_backbone(timm.create_model("test_resnet", num_classes=10), spec)
    backbones.forget("tiny_cnn")
    at = _page(lab="normalization", backbone="tiny_cnn", data="digits8", per_class="4", image_size="32",
               epochs="1", batch_size="16", seeds="1")
    assert at.session_state["labcfg_normalization"]["backbone"] == "tiny_cnn"
    at.button(key="launch_normalization").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    lab_id = labs.list_labs(lab="normalization")[0]["id"]
    t = time.time()
    while labs.read_state(lab_id)["status"] in labs.ACTIVE:
        assert time.time() - t < 180, "lab did not finish"
        time.sleep(0.3)
    assert labs.read_state(lab_id)["status"] == "completed"
    at.run()  # run_every never fires in AppTest: rerun by hand once the lab has ended
    assert not at.exception
    boxes = [b.value for b in list(at.success) + list(at.warning) if "What we measured" in b.value]
    assert boxes and "Accuracy gap" in boxes[0]
    assert len(at.get("plotly_chart")) >= 1
    assert len(at.get("download_button")) >= 2  # the config (JSON) and the results (CSV)


def _student(name: str, **query) -> AppTest:
    """The Labs page in classroom mode for student ``name`` (the name comes from the teacher's link)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["student"] = name
    at.run()
    assert not at.exception and at.session_state["student"] == name
    at.switch_page("pages/labs.py")
    for k, v in {"student": name, **query}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_students_lab_carries_the_owner_and_other_students_do_not_see_or_stop_it(monkeypatch):
    from tl_core.runs.store import RunStore

    monkeypatch.setenv("TL_TEACHER_PASSWORD", "open sesame")
    alice = _student("Alice", lab="bn", per_class="5", image_size="32", epochs="20", seeds="1")
    alice.button(key="launch_bn").click().run()
    assert not alice.exception and not alice.error, [e.value for e in alice.error]
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in alice.query_params.items()}
    assert q["student"] == "Alice" and q["lab"] == "bn"  # the lab's settings did not wipe the name from the URL
    state = labs.list_labs(lab="bn")[0]
    store = RunStore()
    assert state["owner"] == "Alice" and {store.get(r["run_id"]).owner for r in state["runs"]} == {"Alice"}
    assert [s["id"] for s in labs.list_labs(lab="bn", owner="Alice")] == [state["id"]]
    assert labs.list_labs(lab="bn", owner="Bob") == []

    bob = _student("Bob", lab="bn")
    tab = next(t for t in bob.tabs if t.label == labs.LABS["bn"].title)
    assert any("Not run yet" in i.value for i in tab.info)  # Alice's lab is not listed for Bob
    assert not [b for b in bob.button if b.key == f"stop_lab_bn_{state['id']}"]
    with pytest.raises(PermissionError, match="belongs to Alice"):
        labs.stop_lab(state["id"], by="Bob")
    assert not (labs.lab_dir(state["id"]) / labs.STOP_FILE).exists()

    alice.run()
    alice.button(key=f"stop_lab_bn_{state['id']}").click().run()  # her own: she may stop it
    assert not alice.exception and not alice.error, [e.value for e in alice.error]
    t = time.time()
    while labs.read_state(state["id"])["status"] in labs.ACTIVE:
        assert time.time() - t < 120, "the stopped lab did not end"
        time.sleep(0.3)
    assert all(not store.get(r["run_id"]).active for r in state["runs"])


def _link_warning(at: AppTest) -> str:
    found = [w.value for w in at.warning if "cannot take" in w.value]
    assert len(found) == 1, [w.value for w in at.warning]
    return found[0].replace("\\", "")  # as it reads: no markdown escapes


def test_a_link_with_out_of_range_values_says_so_and_the_form_shows_what_runs():
    from tl_core import limits

    at = _page(lab="yosinski", image_size="4096", epochs="1000")
    text, cfg, lim = _link_warning(at), at.session_state["labcfg_yosinski"], limits.current()
    for field, given, allowed in (("image_size", "4096", f"{lim.min_image_size} to {lim.max_image_size} pixels"),
                                  ("epochs", "1000", f"1 to {lim.max_epochs}")):
        line = next(x for x in text.splitlines() if x.startswith(f"- `{field}`"))  # one line per field
        assert f"the link says '{given}';" in line and allowed in line, line
        assert line.endswith(f"the form shows {cfg[field]} instead."), line
    # what the form shows is the config that Run takes, and the lab accepts it
    assert at.selectbox(key="yosinski_image_size").value == cfg["image_size"] <= lim.max_image_size
    assert at.number_input(key="yosinski_epochs").value == cfg["epochs"] <= lim.max_epochs
    labs.LabConfig.from_dict(cfg).validate()
    assert any(f"image_size={cfg['image_size']}&" in c.value and f"epochs={cfg['epochs']}&" in c.value
               for c in at.code)  # the link to share holds the same values
    # an edit is taken as it stands: the address now holds the form's values and the warning is gone
    at.number_input(key="yosinski_epochs").set_value(3).run()
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (q["epochs"], q["image_size"]) == ("3", str(cfg["image_size"])) and not at.warning


def test_a_link_is_read_value_by_value():
    cfg, notes = labs.LabConfig.from_link("lab=race&preset=huge&epochs=0&seeds=many&image_size=8&per_class=25"
                                          "&strategies=scratch,warp&run=abc")
    default, why = labs.default_config("race"), {n.field: n.why for n in notes}
    assert sorted(why) == ["epochs", "image_size", "preset", "seeds", "strategies"]  # per_class=25 was fine
    assert (cfg.preset, cfg.epochs, cfg.image_size, cfg.seeds, cfg.per_class) == ("default", 1, 16, default.seeds, 25)
    assert why["seeds"] == "expected a whole number from 1 to 100" and why["epochs"] == "the allowed range is 1 to 100"
    assert "unknown strategy 'warp'" in why["strategies"] and cfg.strategies == default.strategies
    assert cfg.validate() is cfg
    for lab in labs.LABS:  # a link the lab can take is read as it is, without a word
        c = labs.default_config(lab)
        assert labs.LabConfig.from_link(c.to_query_string()) == (c, [])


def test_the_form_keeps_to_the_servers_limits_and_shows_what_runs(monkeypatch):
    monkeypatch.setenv("TL_LIMIT_MAX_EPOCHS", "200")
    at = _page(lab="bn", epochs="150")
    assert not at.warning, [w.value for w in at.warning]
    widget = at.number_input(key="bn_epochs")
    assert widget.value == at.session_state["labcfg_bn"]["epochs"] == 150 and widget.max == 200
    # a setting the lab refuses is not applied, and the form goes back to the value in use
    kept = at.session_state["labcfg_freeze_depth"]["depths"]
    at.text_input(key="freeze_depth_depths").set_value("two, three").run()
    assert any("Setting not applied" in e.value for e in at.error), [e.value for e in at.error]
    assert at.text_input(key="freeze_depth_depths").value == labs.encode_value("depths", kept)
    assert at.session_state["labcfg_freeze_depth"]["depths"] == kept


def test_a_link_to_an_unknown_lab_names_the_labs_and_opens_the_first():
    at = _page(lab="nope", epochs="3")
    found = [w.value for w in at.warning if "no lab called" in w.value]
    assert len(found) == 1, [w.value for w in at.warning]
    assert "'nope'" in found[0] and all(f"`{k}`" in found[0] for k in labs.LABS)
    assert f"opened the first lab, {labs.LABS[next(iter(labs.LABS))].title}" in found[0]
    assert at.session_state["labcfg_race"]["epochs"] == labs.default_config("race").epochs  # not the link's 3


def test_the_networks_and_targets_of_a_lab_are_picked_on_the_form_and_its_seeds_say_how_they_split():
    at = _page(lab="kornblith")
    nets = at.multiselect(key="kornblith_networks")
    assert nets.value == labs.default_config("kornblith").networks and len(nets.value) == 5
    assert nets.format_func("efficientnet_lite1") == "EfficientNet-Lite1"
    nets.set_value(["mobilenetv2", "squeezenet1_1"]).run()
    assert not at.exception and not at.error
    assert at.session_state["labcfg_kornblith"]["networks"] == ["mobilenetv2", "squeezenet1_1"]
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert "mobilenetv2" in q["networks"] and "efficientnet_lite0" not in q["networks"]
    at.multiselect(key="kornblith_networks").set_value(["mobilenetv2"]).run()  # one network cannot be ranked
    assert any("at least two different networks" in e.value for e in at.error)
    assert at.session_state["labcfg_kornblith"]["networks"] == ["mobilenetv2", "squeezenet1_1"]  # what runs
    assert at.multiselect(key="kornblith_networks").value == ["mobilenetv2", "squeezenet1_1"]  # and the form shows it
    at.multiselect(key="layer_probe_domains").set_value(["mnist"]).run()
    assert at.session_state["labcfg_layer_probe"]["domains"] == ["mnist"]
    # Kornblith's seeds each split the data by their own seed; the other labs' seeds share one split
    assert "its own split" in at.number_input(key="kornblith_seeds").help
    assert "same split" in at.number_input(key="race_seeds").help
    rules = [c.value for c in at.caption if c.value.startswith("Verdict rule")]
    assert rules.count(labs.UNPAIRED_VERDICT_RULE) == 1 and rules.count(labs.VERDICT_RULE) == len(labs.LABS) - 1
