"""Reading one user image: lazily, under the pixel cap, upright, as 8-bit RGB."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tl_core.data.errors import DataError
from tl_core.data.sources import Caps, check_regular


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit scaled (not clipped), transparency over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255):
            a = a / 257  # 0..65535 -> 0..255
        elif im.mode == "F" and a.max() <= 1.0:
            a = a * 255
        im = Image.fromarray(a.round().clip(0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")  # L, 1, CMYK (PIL undoes Adobe's inverted CMYK JPEGs), YCbCr


_RESIZE = "resize the image (a few hundred pixels a side is plenty) and try again"


def _bomb_message(exc: Exception, caps: Caps) -> str:
    """Our pixel-cap message for PIL's decompression-bomb refusal (PIL says only the pixel count)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    if pixels is not None and pixels <= caps.max_pixels:  # a teacher raised our cap above PIL's guard
        return (f"{pixels:,} pixels, over the decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
                "pixels that every image is held to")
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return f"{count}, over the max_pixels cap of {caps.max_pixels:,}"


def open_image(path: str | Path, caps: Caps = Caps()) -> Image.Image:
    """Open an image lazily (header only) and apply the max_pixels cap before anything is decoded.
    Only a regular file is opened (checked with ``stat`` first: a FIFO would block). Raises DataError
    with the reason (and ``advice``) for a special file, a non-image or an image over the cap."""
    check_regular(path)
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our cap below is the rule
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(_bomb_message(exc, caps), advice=_RESIZE) from None
    except Exception:  # UnidentifiedImageError, or a plugin failing on odd bytes
        raise DataError("not an image file", advice="save it as PNG or JPEG and try again") from None
    w, h = im.size
    if w * h > caps.max_pixels:
        im.close()
        raise DataError(f"{w}x{h} = {w * h:,} pixels, over the max_pixels cap of {caps.max_pixels:,}", advice=_RESIZE)
    return im


def read_image(path: str | Path, caps: Caps = Caps(), draft_size: int | None = None) -> Image.Image:
    """Decode one image file as RGB, upright (EXIF orientation applied). Raises DataError with
    the reason for a non-image, a corrupt or truncated file, or one over ``caps.max_pixels``.
    ``draft_size`` lets JPEGs decode at a reduced scale (at least that many pixels a side)."""
    with open_image(path, caps) as im:
        if draft_size:
            im.draft(None, (draft_size, draft_size))
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except Image.DecompressionBombError as exc:  # some formats learn their real size only here
            raise DataError(_bomb_message(exc, caps), advice=_RESIZE) from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            raise DataError(f"corrupt or truncated image ({exc})",
                            advice="the file is damaged: export or download it again") from None


def image_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor [3, H, W], the input make_transforms expects."""
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def fit_square(im: Image.Image, side: int) -> np.ndarray:
    """Centre crop to a square and resize to ``side`` (the shorter side is kept whole)."""
    return np.asarray(ImageOps.fit(im, (side, side), Image.Resampling.BICUBIC))

