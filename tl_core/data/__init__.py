"""Datasets: the built-in sets, user folders and zips, splits and preprocessing.

Everything works offline. The built-in sets ship inside installed wheels; they are decoded
once, then kept in memory and in an on-disk ``.npz`` cache (``TL_CACHE_DIR``, default
``~/.cache/tl_lab``), so preparing one again takes milliseconds.

User data is an ImageFolder layout (one sub-folder per class, optionally inside ``train/``
and ``val/``), as a folder under the data root or as a ``.zip``. Reading it never trusts
the input: paths and links leading outside the data root are refused, only regular files are
opened, unsafe zip entries are refused, sizes are capped (:class:`Caps`), unreadable files
are skipped and listed in a :class:`ValidationReport`, and unusable data raises
:class:`DataError` before any training starts. The command line passes
``data_root=UNRESTRICTED``: its user may read any path.

Every image set is held as one uint8 tensor ``[N, C, H, W]``; :func:`make_transforms`
turns samples into what a backbone expects (size, interpolation, mean/std from
``tl_core.models.backbones.data_config``).

One module per concept; every name is re-exported here, so ``from tl_core import data;
data.X`` and ``from tl_core.data import X`` work for all of them:

- ``errors``: :class:`DataError`.
- ``builtin``: the built-in sets (``BUILTIN``, ``DatasetInfo``), their loaders and decode cache.
- ``sources``: the data root (``UNRESTRICTED``), :class:`Caps`, ``resolve_data_path``, regular-file checks
  (``check_regular``, ``read_regular``), ``safe_extract_zip``, ``extracted``, ``clean_stale_extractions``.
- ``images``: reading one image file (``open_image``, ``read_image``, ``image_tensor``).
- ``folders``: scanning an ImageFolder tree, :class:`ValidationReport`, ``check_data``.
- ``sets``: :class:`ImageSet`, ``load_dataset``, ``split``, ``subset_classes``, sample grids.
- ``uploads``: uploads from the web page: ``save_upload``, ``list_uploads``, ``delete_upload``, the
  per-owner quota, clean-up after a killed process.
- ``transforms``: ``make_transforms``, normalisation modes, :class:`Augment`, ``network_view``.
"""
from tl_core.data.builtin import _CACHE_VERSION, BUILTIN, DatasetInfo, _builtin_arrays, _package_dir, _read_pickled_array, cache_dir, list_datasets
from tl_core.data.errors import DataError
from tl_core.data.folders import VAL_DIR_NAMES, ValidationReport, check_data
from tl_core.data.images import image_tensor, open_image, read_image
from tl_core.data.sets import ImageSet, class_counts, load_dataset, sample_grid, split, subset_classes
from tl_core.data.sources import UNRESTRICTED, Caps, check_regular, clean_stale_extractions, data_root, data_root_dir, read_regular, resolve_data_path, safe_extract_zip
from tl_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, Augment, TensorDataset, ToRGB, make_transforms, network_view, normalization_stats
from tl_core.data.uploads import Upload, clean_stale_uploads, delete_upload, find_upload, list_uploads, save_text_upload, save_upload, upload_name, uploads_dir, uploads_used

__all__ = [
    "BUILTIN", "DatasetInfo", "cache_dir", "list_datasets",
    "DataError",
    "VAL_DIR_NAMES", "ValidationReport", "check_data",
    "image_tensor", "open_image", "read_image",
    "ImageSet", "class_counts", "load_dataset", "sample_grid", "split", "subset_classes",
    "UNRESTRICTED", "Caps", "check_regular", "clean_stale_extractions", "data_root", "data_root_dir",
    "read_regular", "resolve_data_path", "safe_extract_zip",
    "Upload", "clean_stale_uploads", "delete_upload", "find_upload", "list_uploads", "save_upload",
    "upload_name", "uploads_dir", "uploads_used",
    "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "Augment", "TensorDataset", "ToRGB",
    "make_transforms", "network_view", "normalization_stats",
]
