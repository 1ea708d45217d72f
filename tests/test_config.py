"""TrainConfig bounds come from tl_core.limits (the environment or a limits file can change them)."""
import re

import pytest

from tl_core import limits
from tl_core.training.config import TrainConfig


def test_image_size_bounds_follow_the_limits(monkeypatch):
    assert TrainConfig(image_size=1024).validate().image_size == limits.Limits().max_image_size
    with pytest.raises(ValueError, match="image_size must be a whole number of pixels from 16 to 1024, not 1025"):
        TrainConfig(image_size=1025).validate()
    monkeypatch.setenv("TL_LIMIT_MAX_IMAGE_SIZE", "128")
    with pytest.raises(ValueError, match="from 16 to 128, not 160"):
        TrainConfig(image_size=160).validate()


@pytest.mark.parametrize("field,value", [("per_class", 0), ("batch_size", 0), ("head_epochs", True),
                                         ("num_threads", 0), ("freeze_blocks", -1)])
def test_whole_number_fields_get_one_line(field, value):
    with pytest.raises(ValueError, match=f"^{field}.* must be a whole number >= .*, not {value!r}$"):
        TrainConfig(**{field: value}).validate()


def test_a_limits_file_is_read_and_a_bad_one_says_what_is_wrong(tmp_path, monkeypatch):
    path = tmp_path / "limits.json"
    path.write_text('{"max_image_size": 128, "allow_any_timm": true}')
    monkeypatch.setenv("TL_LIMITS_FILE", str(path))
    lim = limits.current()
    assert lim.max_image_size == 128 and lim.allow_any_timm and lim.max_epochs == limits.Limits().max_epochs
    with pytest.raises(ValueError, match="from 16 to 128, not 160"):
        TrainConfig(image_size=160).validate()
    monkeypatch.setenv("TL_LIMIT_MAX_IMAGE_SIZE", "256")  # one variable wins over the file
    assert limits.current().max_image_size == 256
    monkeypatch.delenv("TL_LIMIT_MAX_IMAGE_SIZE")
    for text, why in [("{not json", "Expecting property name"), ("[512]", "it holds a JSON list"),
                      ('{"max_image_sise": 512}', "unknown limit.* max_image_sise; known: min_image_size"),
                      ('{"max_epochs": "lots"}', "limit max_epochs must be a whole number, not 'lots'")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=why) as err:
            TrainConfig().validate()
        assert "\n" not in str(err.value)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"^TL_LIMITS_FILE={re.escape(str(path))}: .*it must be a JSON object"):
        limits.current()
    monkeypatch.setenv("TL_LIMITS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=f"^TL_LIMITS_FILE={re.escape(str(tmp_path))}/missing.json: .*No such file"):
        limits.current()
