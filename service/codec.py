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
bench/results/gateway_overhead.md). The header of a plain JPEG (8-bit gray or 3-component
baseline/progressive, EXIF orientation or none) is read by a small marker parser (`_jpeg_header`: SOFn
for the size, the first APP1 Exif's orientation tag), 25 us less per read than opening it with Pillow;
anything it does not fully understand (XMP, MPO, Adobe/CMYK, 12-bit, a truncated or odd header, a size
over the limit) is opened by Pillow as before, and a JPEG that simplejpeg will not take (a corrupt
stream) is decoded by Pillow, so errors and odd modes behave as they always did. Where simplejpeg is not
installed (the worker's image), Pillow does all of it.

PNG, the API's default output, is written by fpng (Rich Geldreich's fast PNG writer, public domain, in
the `fpng` wheel's MIT binding) up to `FPNG_MAX_PIXELS`: 13-16x faster than libpng for files 15-30 %
larger (`_encode_png`). Larger images, and any with a side of 65536 or more (fpng writes such a size
mod 2^16 into the header: a broken file), go to OpenCV's libpng with zlib's run-length strategy
(4.7x faster than Pillow's writer for files 1-2 % larger); Pillow where neither is installed (the
worker's image).

A JPEG without alpha can also be written from its own samples, Y'CbCr 4:2:0 (`YCbCr420`, made by
`ycbcr420` from sRGB as libjpeg would, or by the gateway's Lab kernel straight from L and ab): the
encoder then skips libjpeg's colour conversion and chroma downsampling, 24 % of the encode
(bench/results/gateway_overhead.md). `takes_ycbcr420` says where `encode` takes that form.
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
# OpenCV writes PNG (the gateway's image has it; the worker's does not, and encodes its own PNGs).
try:
    import cv2
except ImportError:  # pragma: no cover - exercised only in the worker's image
    cv2 = None  # type: ignore[assignment]  # checked before use, as simplejpeg is
try:
    import fpng
except ImportError:  # pragma: no cover - exercised only in the worker's image
    fpng = None

# fpng holds the GIL while it encodes (its binding does not release it; libpng through OpenCV does), so
# the bound is on how long one encode may keep the gateway's event loop waiting: at 2^21 pixels a photo
# took 10-13 ms as RGB, 28 ms as RGBA (512²: 0.9 / 2.3 ms). Beyond it libpng's GIL-free encode, about
# ten times longer (2048²: 152 ms), is the better trade.
FPNG_MAX_PIXELS = 1 << 21  # 2 MP: 1920x1080 is under it
FPNG_MAX_SIDE = 65535  # fpng writes each side into 16 bits of the 32-bit IHDR field

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
    _check_bytes(data, max_bytes)
    plain = _jpeg_header(data)
    if plain is not None and _within(plain, max_pixels):
        return ImageHeader(plain.width, plain.height, "JPEG")
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
    _check_bytes(data, max_bytes)
    try_turbo = simplejpeg is not None
    plain = _jpeg_header(data) if try_turbo else None
    if plain is not None and _within(plain, max_pixels):
        turbo = _decode_turbo(data, plain.colorspace, plain.orientation)
        if turbo is not None:
            return DecodedImage(pixels=turbo, alpha=None, format="JPEG")
        try_turbo = False  # refused: Pillow decides, without a second try by simplejpeg
    image = _open(data, max_pixels=max_pixels, max_bytes=max_bytes)
    container = _container(image)
    try:
        if try_turbo and image.format == "JPEG" and image.mode in _TURBO_MODES:
            turbo = _decode_turbo(data, _TURBO_MODES[image.mode], image.getexif().get(_EXIF_ORIENTATION, 1))
            if turbo is not None:
                return DecodedImage(pixels=turbo, alpha=None, format=container)
        upright = ImageOps.exif_transpose(image)  # decodes the pixels
        pixels, alpha = _arrays(upright)
    except _MALFORMED as exc:
        raise InvalidArgument(f"{container} image is truncated or corrupt: {exc}") from None
    finally:
        image.close()
    return DecodedImage(pixels=pixels, alpha=alpha, format=container)


def _decode_turbo(data: bytes, colorspace: str, orientation: object) -> NDArray[np.uint8] | None:
    """A plain RGB or gray JPEG by simplejpeg, EXIF orientation applied; None where it refuses the
    stream (strict: libjpeg's warnings about corrupt data are errors), so Pillow decides instead."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError:
        return None
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    upright = _oriented(pixels, orientation)
    return _frozen(np.ascontiguousarray(upright))


@dataclass(frozen=True)
class _PlainJpeg:
    width: int
    height: int
    colorspace: str  # simplejpeg's: "RGB" (3 components) or "GRAY"
    orientation: int  # EXIF orientation tag, 1 where there is none


# SOFn markers (C4 DHT, C8 JPG and CC DAC are not frames); markers without a length.
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
_SOS = 0xDA


def _jpeg_header(data: bytes) -> _PlainJpeg | None:
    """The frame size, component count and EXIF orientation of a plain JPEG from its markers, without
    Pillow; None for anything else, which then goes through Pillow as before: not a JPEG, a truncated
    or odd header, other than 8-bit 1 or 3 components, an APP1 other than Exif (XMP, whose
    tiff:Orientation Pillow's getexif also reads), MPO (APP2 MPF), Adobe APP14 (CMYK, transforms),
    an orientation tag not stored as one SHORT, or a malformed Exif block."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    size = len(data)
    pos = 2
    frame: tuple[int, int, int] | None = None
    orientation = 1
    seen_exif = False
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 2 + length
        if length < 2 or end > size:
            return None
        if marker == _SOS:
            break
        segment = data[pos + 4 : end]
        if marker in _SOF_MARKERS:
            if frame is not None or len(segment) < 6 or segment[0] != 8:
                return None
            frame = ((segment[3] << 8) | segment[4], (segment[1] << 8) | segment[2], segment[5])
        elif marker == 0xE1:
            if segment[:6] != b"Exif\x00\x00":
                return None
            if not seen_exif:  # Pillow keeps the first Exif block
                seen_exif = True
                found = _exif_orientation(segment[6:])
                if found is None:
                    return None
                orientation = found
        elif (marker == 0xE2 and segment[:4] == b"MPF\x00") or marker == 0xEE:
            return None
        pos = end
    else:
        return None  # no SOS: truncated
    if frame is None or frame[2] not in (1, 3):
        return None
    width, height, components = frame
    return _PlainJpeg(width, height, "GRAY" if components == 1 else "RGB", orientation)


def _within(plain: _PlainJpeg, max_pixels: int) -> bool:
    """Whether the parsed header passes every size check `_open` makes (else Pillow's open decides,
    with its messages: over our limit, no pixels, or past PIL's own decompression-bomb limit)."""
    pixels = plain.width * plain.height
    bomb = Image.MAX_IMAGE_PIXELS
    return 0 < pixels <= max_pixels and (bomb is None or pixels <= 2 * bomb)


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag (0x0112) of IFD0 of an Exif TIFF block, 1 without one; None if malformed or
    not one SHORT (Pillow then decides)."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if tiff[0] == 0x49 else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _EXIF_ORIENTATION:
            if kind != 3 or values != 1:
                return None
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return int(value)
    return 1


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


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")


def _open(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """The opened (header-only) image, after the byte-size and pixel-count checks."""
    _check_bytes(data, max_bytes)
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


@dataclass(frozen=True)
class YCbCr420:
    """An image as a 4:2:0 JPEG stores it: libjpeg's Y'CbCr of the sRGB pixels, chroma averaged
    over 2x2 (`ycbcr420`), for `encode` to write without converting (see `takes_ycbcr420`).

    luma: `(H + H % 2, W + W % 2)` uint8 Y'. TurboJPEG reads Y' to even width and height, so an odd
        image's last row or column is repeated into the padding (as libjpeg pads before encoding).
    cb, cr: `((H + 1) // 2, (W + 1) // 2)` uint8.
    height, width: the image's size.
    """

    luma: NDArray[np.uint8]
    cb: NDArray[np.uint8]
    cr: NDArray[np.uint8]
    height: int
    width: int


# libjpeg's RGB -> Y'CbCr (jccolor.c): JFIF's full-range BT.601 in 16-bit fixed point, FIX(x) =
# round(x * 65536); Y' rounds with ONE_HALF, Cb and Cr with ONE_HALF - 1 (255 never rounds to 256).
_FIX = np.array([[19595, 38470, 7471], [-11059, -21709, 32768], [32768, -27439, -5329]], np.int64)
_ROUND = np.array([1 << 15, (128 << 16) + (1 << 15) - 1, (128 << 16) + (1 << 15) - 1], np.int64)


def ycbcr420(rgb: NDArray[np.uint8]) -> YCbCr420:
    """`(H, W, 3)` uint8 sRGB -> what libjpeg encodes for it at 4:2:0: Y'CbCr per pixel as jccolor.c
    computes it, then Cb and Cr as jcsample.c's h2v2_downsample: (sum of the 2x2 block + bias) >> 2,
    the bias alternating 1, 2 along the row; an odd last row or column replicated first, as libjpeg
    does. The numpy statement (`service.color.fused.lab_to_ycbcr420_upsampled` computes the same)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge").astype(np.int64)
    luma, cb, cr = ((padded @ _FIX[c] + _ROUND[c]) >> 16 for c in range(3))
    bias = 1 + (np.arange(padded.shape[1] // 2) & 1)

    def downsampled(plane: NDArray[np.int64]) -> NDArray[np.uint8]:
        total = plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]
        return ((total + bias) >> 2).astype(np.uint8)

    return YCbCr420(luma.astype(np.uint8), downsampled(cb), downsampled(cr), height, width)


def takes_ycbcr420(fmt: str, alpha: NDArray[Any] | None) -> bool:
    """Whether `encode` takes this output as `YCbCr420`: a JPEG without alpha (with alpha it is
    composited over white in sRGB first), where simplejpeg is installed (Pillow takes only RGB)."""
    return simplejpeg is not None and alpha is None and _output_format(fmt) == "JPEG"


def encode(
    pixels: NDArray[np.uint8] | YCbCr420,
    alpha: NDArray[np.uint8] | NDArray[np.uint16] | None,
    fmt: str,
    quality: int = 90,
) -> bytes:
    """Encode an sRGB image as PNG, JPEG or WebP.

    Args:
        pixels: `(H, W, 3)` uint8 sRGB, or, where `takes_ycbcr420(fmt, alpha)`, its `YCbCr420`
            (the same JPEG where the width is a multiple of 16; otherwise the last 16 columns can
            differ a little, as TurboJPEG pads planes by repeating the last chroma sample where
            libjpeg averages the repeated pixels).
        alpha: `(H, W)` uint8 or uint16 (scaled to 8 bits), or None. Written to PNG and WebP; a JPEG is
            composited over white instead.
        fmt: "PNG", "JPEG" (or "JPG") or "WEBP", any case.
        quality: 1..100 for JPEG and WebP (lossy); PNG is lossless and ignores it (still validated).

    Raises:
        InvalidArgument: unknown format, quality out of range, or an image the format cannot hold
            (e.g. wider than WebP's 16383 pixels).
    """
    name = _output_format(fmt)
    if name not in OUTPUT_FORMATS:
        raise InvalidArgument(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise InvalidArgument(f"quality must be in 1..100, got {quality}")
    if isinstance(pixels, YCbCr420):
        if not takes_ycbcr420(name, alpha):
            raise ValueError(
                f"Y'CbCr 4:2:0 planes encode as JPEG without alpha only (takes_ycbcr420), not {name}"
            )
        return _encode_ycbcr420(pixels, quality)
    rgb = pixels
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
    if name == "PNG" and cv2 is not None:
        return _encode_png(rgb, alpha8)
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


def _encode_png(rgb: NDArray[np.uint8], alpha8: NDArray[np.uint8] | None) -> bytes:
    """PNG by fpng where it may take the image (module docstring), else by OpenCV's libpng.

    Why two: PNG is the API's default output. Pillow's writer (zlib level 6) took 60 ms of a 512²
    request, 62 % of its time at c=1; libpng's per-row filter choice plus Z_RLE measured 4.7x faster
    (512²: 60 -> 12.7 ms; 2048²: 787 -> 169 ms) for files 1-2 % larger. fpng (one filter, its own
    deflate coder) is 13-16x faster again (a 512² photo 13.4 -> 0.85 ms, 768x512 20.2 -> 1.4 ms,
    2048² 201 -> 22 ms; files 15 %, 18 % and 28 % larger) but holds the GIL. Lossless either way."""
    height, width = rgb.shape[:2]
    if fpng is not None and height * width <= FPNG_MAX_PIXELS and max(height, width) <= FPNG_MAX_SIDE:
        samples = rgb if alpha8 is None else np.dstack([rgb, alpha8])
        fast: bytes = fpng.from_ndarray(np.ascontiguousarray(samples))
        return fast
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    image = bgr if alpha8 is None else np.dstack([bgr, alpha8])
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    try:
        ok, encoded = cv2.imencode(".png", image, params)
    except cv2.error as exc:
        raise InvalidArgument(f"cannot encode a {width}x{height} image as PNG: {exc}") from None
    if not ok:
        raise InvalidArgument(f"cannot encode a {width}x{height} image as PNG")
    return encoded.tobytes()


def _output_format(fmt: str) -> str:
    name = fmt.upper()
    return "JPEG" if name == "JPG" else name


def _encode_ycbcr420(planes: YCbCr420, quality: int) -> bytes:
    height, width = planes.height, planes.width
    even = (height + height % 2, width + width % 2)
    half = (even[0] // 2, even[1] // 2)
    arrays = (planes.luma, planes.cb, planes.cr)
    shapes = tuple(p.shape for p in arrays)
    if shapes != (even, half, half) or any(p.dtype != np.uint8 or not p.flags.c_contiguous for p in arrays):
        raise ValueError(
            f"{width}x{height} needs C-contiguous uint8 planes {even}, {half}, {half}; got {shapes}"
        )
    try:
        encoded: bytes = simplejpeg.encode_jpeg_yuv_planes(
            planes.luma[:height, :width], planes.cb, planes.cr, quality
        )
    except ValueError as exc:  # e.g. wider than JPEG's 65535 pixels
        raise InvalidArgument(f"cannot encode a {width}x{height} image as JPEG: {exc}") from None
    return encoded


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
