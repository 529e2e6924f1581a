"""Image bytes <-> pixel arrays (PIL), with the request limits checked before any pixel is decoded.

Decoding keeps the file's integer samples (uint8, or uint16 for 16-bit grayscale) and leaves grayscale
as one plane: `service.color.lab` turns either into L through lookup tables, so no float image is built
here. PIL reduces 16-bit colour PNG/TIFF to 8 bits per channel when it opens them (it has no 16-bit RGB
mode); 16-bit grayscale stays 16-bit.

Alpha: kept as decoded and written back to PNG and WebP. JPEG has no alpha channel, so a JPEG output is
composited over white, as image editors do when they export a transparent image to JPEG.

JPEG pixels go through simplejpeg (libjpeg-turbo's TurboJPEG API, bundled in its wheel): it decodes
straight into the numpy array and encodes from it, which measured 1.3-1.8x faster than Pillow's
decoder and encoder (both libjpeg-turbo; Pillow pays for its tiled decode loop and array copies;
bench/results/gateway_overhead.md). The header is still read by Pillow first, for the limits, the
mode and EXIF orientation; a JPEG that simplejpeg will not take (CMYK, or a corrupt stream) is decoded
by Pillow as before, so errors and odd modes behave as they always did. Where simplejpeg is not
installed (the worker's image), Pillow does all of it.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidArgument

# The gateway's image installs simplejpeg (requirements.lock); the worker's image decodes Restore inputs
# through this module too (service/bus/wire.py) with Pillow alone, so without it Pillow does all JPEG.
try:
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only in the worker's image
    simplejpeg = None

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")

# What PIL's parsers and decoders raise on malformed or truncated input (OSError covers "image file is
# truncated" and decoder errors; SyntaxError "not a ... file"; struct.error short headers).
_MALFORMED = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)

_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes PIL converts to RGB for us (colour spaces we do not keep, padding byte).
_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
# JPEG modes simplejpeg decodes to our layout: PIL mode -> simplejpeg colorspace.
_TURBO_MODES = {"RGB": "RGB", "L": "GRAY"}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, EXIF orientation applied.

    pixels: `(H, W)` grayscale or `(H, W, 3)` RGB; uint8, or uint16 for 16-bit grayscale.
    alpha: `(H, W)`, same dtype as `pixels`, or None when the image has no alpha channel.
    format: the container, one of `INPUT_FORMATS`.
    """

    pixels: NDArray[np.uint8] | NDArray[np.uint16]
    alpha: NDArray[np.uint8] | NDArray[np.uint16] | None
    format: str

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.pixels.shape[0], self.pixels.shape[1]


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded: stored size (EXIF rotation aside) and format."""

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(data: bytes, *, max_pixels: int, max_bytes: int) -> ImageHeader:
    """The checks of `decode` on the header alone: the size a decode would allocate, without decoding.

    The gateway reserves its pixel budget from this before it decodes (service/gateway/admission.py).

    Raises:
        InvalidArgument: as `decode`, for everything the header shows.
    """
    image = _open(data, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        width, height = image.size
        return ImageHeader(width, height, _container(image))
    finally:
        image.close()


def decode(data: bytes, *, max_pixels: int, max_bytes: int) -> DecodedImage:
    """Decode PNG, JPEG, WebP, BMP or TIFF bytes (first frame), honouring EXIF orientation.

    The byte size is checked first and the pixel count from the header, before any pixel is decoded,
    so a decompression bomb costs only its header.

    Raises:
        InvalidArgument: empty or over `max_bytes`; not one of the formats; more than `max_pixels`
            pixels; truncated or corrupt; a pixel mode we do not serve (e.g. float TIFF).
    """
    image = _open(data, max_pixels=max_pixels, max_bytes=max_bytes)
    container = _container(image)
    try:
        if simplejpeg is not None and image.format == "JPEG" and image.mode in _TURBO_MODES:
            turbo = _decode_turbo(data, image)
            if turbo is not None:
                return DecodedImage(pixels=turbo, alpha=None, format=container)
        upright = ImageOps.exif_transpose(image)  # decodes the pixels
        pixels, alpha = _arrays(upright)
    except _MALFORMED as exc:
        raise InvalidArgument(f"{container} image is truncated or corrupt: {exc}") from None
    finally:
        image.close()
    return DecodedImage(pixels=pixels, alpha=alpha, format=container)


def _decode_turbo(data: bytes, header: Image.Image) -> NDArray[np.uint8] | None:
    """A plain RGB or gray JPEG by simplejpeg, EXIF orientation applied; None where it refuses the
    stream (strict: libjpeg's warnings about corrupt data are errors), so Pillow decides instead."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=_TURBO_MODES[header.mode], strict=True)
    except ValueError:
        return None
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    upright = _oriented(pixels, header.getexif().get(_EXIF_ORIENTATION, 1))
    return _frozen(np.ascontiguousarray(upright))


def _oriented(pixels: NDArray[Any], orientation: object) -> NDArray[Any]:
    """The upright view of stored pixels for an EXIF orientation (as `ImageOps.exif_transpose`)."""
    if orientation == 2:  # mirrored horizontally
        return pixels[:, ::-1]
    if orientation == 3:  # rotated 180
        return pixels[::-1, ::-1]
    if orientation == 4:  # mirrored vertically
        return pixels[::-1]
    if orientation == 5:  # transposed (mirrored about the main diagonal)
        return pixels.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90 counter-clockwise: turn it clockwise
        return np.rot90(pixels, k=-1)
    if orientation == 7:  # transversed (mirrored about the anti-diagonal)
        return pixels.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:  # stored rotated 90 clockwise: turn it counter-clockwise
        return np.rot90(pixels, k=1)
    return pixels  # 1, absent or not a valid value: as stored (exif_transpose ignores those too)


def _container(image: Image.Image) -> str:
    # PIL's JPEG opener reports multi-frame camera JPEGs (preview frames) as "MPO"; to users, a JPEG.
    return "JPEG" if image.format == "MPO" else str(image.format)


def _open(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """The opened (header-only) image, after the byte-size and pixel-count checks."""
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Our max_pixels check below is the guard; PIL's global one would only warn first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as exc:  # past 2x PIL's own limit: still a header-only refusal
        raise InvalidArgument(
            f"image has too many pixels: {exc} (this server's limit is {max_pixels})"
        ) from None
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"image is not a valid file of one of {', '.join(INPUT_FORMATS)} (starts with {data[:8]!r})"
        ) from None
    except _MALFORMED as exc:
        raise InvalidArgument(f"image header is malformed: {exc}") from None

    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InvalidArgument(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels"
        )
    if width * height == 0:
        image.close()
        raise InvalidArgument(f"image is {width}x{height}: it has no pixels")
    return image


def _arrays(image: Image.Image) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """(pixels, alpha) of a loaded image, read-only, normalised to L / LA / RGB / RGBA / uint16 gray."""
    mode = image.mode
    if mode in _UINT16_MODES:
        return _frozen(np.asarray(image).astype(np.uint16)), None  # astype also fixes byte order
    if mode == "I":  # 32-bit integer samples (some TIFFs): the 16-bit range is all we serve
        return _frozen(np.clip(np.asarray(image), 0, 65535).astype(np.uint16)), None
    if mode == "F":
        raise InvalidArgument("images with floating-point samples (PIL mode 'F') are not supported")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "La":  # premultiplied alpha
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode in _TO_RGB_MODES:
        image = image.convert("RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise InvalidArgument(f"unsupported pixel mode {mode!r}")

    array = np.asarray(image)
    if image.mode in ("L", "RGB"):
        return _frozen(array), None
    # LA / RGBA: colour and alpha as separate contiguous arrays.
    colour = array[..., 0] if image.mode == "LA" else array[..., :3]
    return _frozen(np.ascontiguousarray(colour)), _frozen(np.ascontiguousarray(array[..., -1]))


def _frozen(array: NDArray[Any]) -> NDArray[Any]:
    array.flags.writeable = False
    return array


def encode(
    rgb: NDArray[np.uint8],
    alpha: NDArray[np.uint8] | NDArray[np.uint16] | None,
    fmt: str,
    quality: int = 90,
) -> bytes:
    """Encode an sRGB image as PNG, JPEG or WebP.

    Args:
        rgb: `(H, W, 3)` uint8.
        alpha: `(H, W)` uint8 or uint16 (scaled to 8 bits), or None. Written to PNG and WebP; a JPEG is
            composited over white instead.
        fmt: "PNG", "JPEG" (or "JPG") or "WEBP", any case.
        quality: 1..100 for JPEG and WebP (lossy); PNG is lossless and ignores it (still validated).

    Raises:
        InvalidArgument: unknown format, quality out of range, or an image the format cannot hold
            (e.g. wider than WebP's 16383 pixels).
    """
    name = fmt.upper()
    name = "JPEG" if name == "JPG" else name
    if name not in OUTPUT_FORMATS:
        raise InvalidArgument(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise InvalidArgument(f"quality must be in 1..100, got {quality}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha must be {rgb.shape[:2]}, got {alpha.shape}")

    alpha8 = None if alpha is None else _alpha_uint8(alpha)
    if name == "JPEG" and simplejpeg is not None:
        # 4:2:0 chroma and libjpeg's quality scaling: what Pillow's JPEG writer does by default.
        pixels = np.ascontiguousarray(rgb if alpha8 is None else _over_white(rgb, alpha8))
        try:
            encoded: bytes = simplejpeg.encode_jpeg(pixels, quality, colorspace="RGB", colorsubsampling="420")
            return encoded
        except ValueError as exc:  # e.g. wider than JPEG's 65535 pixels
            height, width = rgb.shape[:2]
            raise InvalidArgument(f"cannot encode a {width}x{height} image as {name}: {exc}") from None
    if alpha8 is None:
        image = Image.fromarray(np.ascontiguousarray(rgb))
    elif name == "JPEG":
        image = Image.fromarray(_over_white(rgb, alpha8))
    else:
        image = Image.fromarray(np.dstack([rgb, alpha8]))

    options: dict[str, Any] = {} if name == "PNG" else {"quality": quality}
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=name, **options)
    except (OSError, ValueError) as exc:
        height, width = rgb.shape[:2]
        raise InvalidArgument(f"cannot encode a {width}x{height} image as {name}: {exc}") from None
    return buffer.getvalue()


def _alpha_uint8(alpha: NDArray[Any]) -> NDArray[np.uint8]:
    if alpha.dtype == np.uint8:
        return alpha
    if alpha.dtype == np.uint16:
        # Rounded 65535 -> 255 scaling: (a * 255 + 32767) // 65535 fits in uint32.
        return ((alpha.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise ValueError(f"alpha must be uint8 or uint16, got {alpha.dtype}")


def _over_white(rgb: NDArray[np.uint8], alpha: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """rgb * a + 255 * (1 - a), rounded, in integers."""
    a = alpha.astype(np.uint16)[..., None]
    blended = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)
