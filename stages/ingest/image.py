"""Decode, orient, convert, resize and re-encode one image with PIL.

Every way an image can be bad maps to its own reason code (Rejected).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.ledger import Rejected

ORIENTATION_TAG = 0x0112  # EXIF orientation; 5..8 swap width and height


@dataclass
class Encoded:
    data: bytes
    format: str  # "jpg" | "webp"
    width: int
    height: int
    original_width: int  # as displayed, after EXIF orientation
    original_height: int
    original_format: str


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end
            return False
    return b"\0" not in head


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for every mode PIL can give: alpha composited on white, 16-bit scaled down."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _target(w: int, h: int, policy: str, size: int) -> tuple[int, int]:
    """Size to resize to before any crop or pad."""
    if policy == "fit":  # shrink only, keep the aspect ratio
        s = min(1.0, size / max(w, h))
    elif policy == "center_crop":  # shorter side to `size`, then crop
        s = size / min(w, h)
    elif policy == "pad":  # longer side to `size`, then pad
        s = size / max(w, h)
    else:
        s = 1.0
    return max(1, round(w * s)), max(1, round(h * s))


def decode_resize_encode(data: bytes, *, policy: str = "fit", size: int = 512, fmt: str = "jpg",
                         quality: int = 90, max_pixels: int = 89_478_485) -> Encoded:
    if not data:
        raise Rejected("empty_file", "the file is empty (0 bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own check, applied before any pixel is decoded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        # Say what it looks like, never what it holds: the bytes could be anyone's file.
        kind = "an HTML/XML document" if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")) else \
            "text" if _looks_like_text(data[:512]) else "unrecognised binary data"
        raise Rejected("not_an_image", f"not an image: {kind} ({len(data)} bytes)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad headers
        raise Rejected("corrupt", f"bad image header: {type(e).__name__}: {e}") from None

    ow, oh = im.size
    if ow * oh > max_pixels:
        raise Rejected("decompression_bomb", f"{ow}x{oh} = {ow * oh} pixels > max_pixels={max_pixels}")
    original_format = (im.format or "").lower()
    try:
        # JPEG keeps EXIF in the header; other formats may need the pixels first.
        orientation = im.getexif().get(ORIENTATION_TAG, 1) if original_format in ("jpeg", "mpo") else None
        if orientation in (5, 6, 7, 8):
            ow, oh = oh, ow
        tw, th = _target(ow, oh, policy, size)
        if orientation is not None and tw < ow:
            # Draft mode: libjpeg decodes at 1/2..1/8 scale, never below the target size.
            im.draft(None, (tw, th) if orientation not in (5, 6, 7, 8) else (th, tw))
        im.load()
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) else "corrupt"
        raise Rejected(reason, f"{original_format or 'image'} does not decode: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise SyntaxError, ValueError, ...
        raise Rejected("corrupt", f"{original_format or 'image'} does not decode: {type(e).__name__}: {e}") from None

    try:
        if orientation is None:
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            if orientation in (5, 6, 7, 8):
                ow, oh = oh, ow
                tw, th = _target(ow, oh, policy, size)
        if orientation != 1:  # exif_transpose copies the image even when there is nothing to do
            im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.Resampling.BICUBIC)
        if policy == "center_crop":
            left, top = (tw - size) // 2, (th - size) // 2
            im = im.crop((left, top, left + size, top + size))
        elif policy == "pad" and im.size != (size, size):
            canvas = Image.new("RGB", (size, size), (0, 0, 0))
            canvas.paste(im, ((size - tw) // 2, (size - th) // 2))
            im = canvas
    except Exception as e:  # noqa: BLE001 - bad EXIF or an unconvertible mode
        raise Rejected("corrupt", f"{original_format or 'image'} cannot be converted: {type(e).__name__}: {e}") from None

    out = io.BytesIO()
    if fmt == "webp":
        im.save(out, format="WEBP", quality=quality)
    else:
        im.save(out, format="JPEG", quality=quality)
    return Encoded(out.getvalue(), fmt, im.width, im.height, ow, oh, original_format)


def open_image(data: bytes, mode: str = "RGB", least: int | None = None) -> Image.Image:
    """The one way stages decode an image: EXIF orientation applied, converted to `mode`
    (RGB: alpha on white, 16-bit scaled). With `least`, JPEG draft mode decodes at
    1/2..1/8 scale, never below `least` px a side: a small copy costs a fraction of a
    full decode. The image's size before any of that is in info["original_size"]."""
    im = Image.open(io.BytesIO(data))
    size = im.size
    if least:
        im.draft(mode if mode in ("RGB", "L") else None, (least, least))
    im = ImageOps.exif_transpose(im)
    im = _to_rgb(im) if mode == "RGB" else im.convert(mode)
    im.info["original_size"] = size
    return im


def preview(data: bytes, side: int = 96) -> bytes | None:
    """A small JPEG of an image, for the report; None when the bytes do not decode."""
    try:
        im = open_image(data, "RGB", least=side)
        im.thumbnail((side, side))
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=70)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - a thumbnail is best effort by design
        return None
