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

One module per concept; the public names of all but ``texts`` are re-exported here, so
``from tl_core import data; data.X`` and ``from tl_core.data import X`` work for them:

- ``errors``: :class:`DataError`.
- ``builtin``: the built-in sets (``BUILTIN``, ``DatasetInfo``), their loaders and decode cache.
- ``sources``: the data root (``UNRESTRICTED``), :class:`Caps`, ``resolve_data_path``, regular-file checks
  (``check_regular``, ``read_regular``), ``safe_extract_zip``, ``extracted``, ``clean_stale_extractions``,
  finding a stored upload (:class:`Upload`, ``find_upload``, ``upload_name``, ``uploads_dir``).
- ``images``: reading one image file (``open_image``, ``read_image``, ``image_tensor``).
- ``folders``: scanning an ImageFolder tree, :class:`ValidationReport`, ``check_data``.
- ``sets``: :class:`ImageSet`, ``load_dataset``, ``split``, ``subset_classes``, sample grids.
- ``uploads``: uploads from the web page: ``save_upload``, ``save_text_upload``, ``list_uploads``,
  ``delete_upload``, the per-owner quota, clean-up after a killed process.
- ``transforms``: ``make_transforms``, normalisation modes, :class:`Augment`, ``network_view``.
- ``texts`` (not re-exported: ``tl_core.data.texts``): text sets (:class:`TextSet`), the built-in ones,
  user CSVs and folders of ``.txt`` files, tokenising.
"""
from .errors import DataError
from .builtin import DatasetInfo, BUILTIN, list_datasets, cache_dir, builtin_arrays
from .sources import (
    UNRESTRICTED, Caps, is_unrestricted, data_root_dir, data_root, file_kind, check_regular, read_regular,
    inside, resolve_data_path, safe_extract_zip, pid_alive, clean_stale_extractions, extracted, UPLOAD_FORMAT,
    UPLOAD_ID, KINDS, Upload, uploads_dir, clean_name, read_sidecar, find_upload, upload_name,
)
from .images import open_image, read_image, image_tensor, fit_square
from .folders import (
    VAL_DIR_NAMES, ValidationReport, scan_layout, scan_folder, usability_errors, read_user_data, check_data,
)
from .sets import ImageSet, load_dataset, split, subset_classes, class_counts, sample_grid
from .uploads import clean_stale_uploads, list_uploads, uploads_used, save_upload, save_text_upload, delete_upload
from .transforms import (
    IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, Augment, normalization_stats, ToRGB, make_transforms,
    TensorDataset, network_view,
)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
