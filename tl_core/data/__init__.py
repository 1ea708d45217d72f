"""Datasets: the built-in sets, user folders and zips, splits and preprocessing.

Everything works offline. The built-in sets ship inside installed wheels; they are decoded
once, then kept in memory and in an on-disk ``.npz`` cache (``TL_CACHE_DIR``, default
``~/.cache/tl_lab``), so preparing one again takes milliseconds.

User data is an ImageFolder layout (one sub-folder per class, optionally inside ``train/``
and ``val/``), as a folder under the data root or as a ``.zip``. Reading it never trusts
the input: unsafe zip entries are refused, sizes are capped (:class:`Caps`), unreadable
files are skipped and listed in a :class:`ValidationReport`, and unusable data raises
:class:`DataError` before any training starts.

Every image set is held as one uint8 tensor ``[N, C, H, W]``; :func:`make_transforms`
turns samples into what a backbone expects (size, interpolation, mean/std from
``tl_core.backbones.data_config``).

One module per concept; every name is re-exported here, so ``from tl_core import data;
data.X`` and ``from tl_core.data import X`` work for all of them:

- ``errors``: :class:`DataError`.
- ``builtin``: the built-in sets (``BUILTIN``, ``DatasetInfo``), their loaders and decode cache.
- ``sources``: the data root, :class:`Caps`, ``resolve_data_path``, ``safe_extract_zip``.
- ``images``: reading one image file (``open_image``, ``read_image``, ``image_tensor``).
- ``folders``: scanning an ImageFolder tree, :class:`ValidationReport`, ``check_data``.
- ``sets``: :class:`ImageSet`, ``load_dataset``, ``split``, ``subset_classes``, sample grids.
- ``transforms``: ``make_transforms``, normalisation modes, :class:`Augment`, ``network_view``.
"""
from .builtin import (
    _CACHE_VERSION,
    BUILTIN,
    DatasetInfo,
    _builtin_arrays,
    _package_dir,
    _read_pickled_array,
    cache_dir,
    list_datasets,
)
from .errors import DataError
from .folders import VAL_DIR_NAMES, ValidationReport, check_data
from .images import image_tensor, open_image, read_image
from .sets import ImageSet, class_counts, load_dataset, sample_grid, split, subset_classes
from .sources import Caps, data_root, data_root_dir, resolve_data_path, safe_extract_zip
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    Augment,
    TensorDataset,
    ToRGB,
    make_transforms,
    network_view,
    normalization_stats,
)

__all__ = [
    "BUILTIN", "DatasetInfo", "cache_dir", "list_datasets",
    "DataError",
    "VAL_DIR_NAMES", "ValidationReport", "check_data",
    "image_tensor", "open_image", "read_image",
    "ImageSet", "class_counts", "load_dataset", "sample_grid", "split", "subset_classes",
    "Caps", "data_root", "data_root_dir", "resolve_data_path", "safe_extract_zip",
    "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "Augment", "TensorDataset", "ToRGB",
    "make_transforms", "network_view", "normalization_stats",
]
