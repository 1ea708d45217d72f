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

One module per concept, bottom up: ``errors``, ``builtin`` (the built-in sets), ``sources`` (data root, caps,
regular files, safe zips, stored uploads), ``images``, ``folders`` (ImageFolder trees, ``check_data``), ``sets``
(``ImageSet``, ``split``), ``texts`` (text sets, tokenising), ``uploads``, ``transforms``, ``shifts`` (input and
label shifts, cached). Listed here: the names
that other packages, pages and tests use (``from tl_core.data import X``); the rest through their module.
"""
from .errors import DataError
from .builtin import BUILTIN, list_datasets, builtin_arrays, unpickle_numpy
from .sources import (
    UNRESTRICTED, Caps, data_root, check_regular, read_regular, resolve_data_path, safe_extract_zip,
    uploads_dir, find_upload, upload_name,
)
from .images import open_image, read_image, image_tensor
from .folders import check_data
from .sets import ImageSet, load_dataset, split, subset_classes, class_counts, sample_grid
from .uploads import list_uploads, uploads_used, save_upload, save_text_upload, delete_upload
from .transforms import (
    IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, Augment, normalization_stats, make_transforms, TensorDataset,
    network_view,
)
from .shifts import (SHIFTS, INPUT_SHIFTS, NOISE_STD, BLUR_SIGMA, check_shift, shifted, shift_images,
                     label_permutation, shift_view)

__all__ = sorted(name for name in dir() if not name.startswith("_"))
