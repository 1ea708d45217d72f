"""TrainConfig bounds come from tl_core.limits (the environment can change them)."""
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
