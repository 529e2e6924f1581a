"""service.codec: formats, modes, orientation, alpha, limits and malformed input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from numpy.typing import NDArray
from PIL import Image, ImageOps, JpegImagePlugin

from service import codec
from service.errors import InvalidArgument

LIMITS: dict[str, int] = {"max_pixels": 10_000_000, "max_bytes": 10 << 20}


def _smooth_rgb(height: int = 48, width: int = 64) -> NDArray[np.uint8]:
    """Gradients compress well in lossy formats, so their round trip stays close."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], -1
    ).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_writer(png: bytes) -> str:
    """Which writer made a PNG: fpng marks its files with a private `fdEC` chunk right after IHDR."""
    return "fpng" if png[33:41] == b"\x00\x00\x00\x05fdEC" else "libpng"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header for an RGB image, then the start of an unfinished pixel stream (one row, no
    end): a decoder that went past the header would fail on the missing rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    stream = zlib.compressobj()
    first_row = stream.compress(bytes(1 + 3 * min(width, 1000))) + stream.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", first_row)


class TestDecodeFormats:
    @pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
    def test_lossless_rgb_round_trip(self, fmt: str) -> None:
        rgb = _smooth_rgb()
        decoded = codec.decode(_save(Image.fromarray(rgb), fmt), **LIMITS)
        assert decoded.format == fmt and not decoded.is_gray and decoded.bit_depth == 8
        assert decoded.alpha is None
        np.testing.assert_array_equal(decoded.pixels, rgb)

    @pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
    def test_lossy_rgb_round_trip(self, fmt: str) -> None:
        rgb = _smooth_rgb()
        decoded = codec.decode(_save(Image.fromarray(rgb), fmt, quality=95), **LIMITS)
        assert (
            decoded.format == fmt and decoded.pixels.shape == rgb.shape and decoded.pixels.dtype == np.uint8
        )
        assert np.abs(decoded.pixels.astype(int) - rgb).mean() < 3

    @pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
    def test_grayscale_stays_one_plane(self, fmt: str) -> None:
        gray = _smooth_rgb()[..., 0]
        decoded = codec.decode(_save(Image.fromarray(gray), fmt), **LIMITS)
        if fmt == "WEBP":  # WebP stores colour only; a gray picture comes back as RGB with R = G = B
            assert decoded.pixels.shape == (*gray.shape, 3)
            return
        assert decoded.is_gray and decoded.pixels.shape == gray.shape and decoded.size == gray.shape
        assert np.abs(decoded.pixels.astype(int) - gray).max() <= (8 if fmt == "JPEG" else 0)

    @pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
    def test_16_bit_gray_keeps_16_bits(self, fmt: str) -> None:
        gray = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
        decoded = codec.decode(_save(Image.fromarray(gray), fmt), **LIMITS)
        assert decoded.bit_depth == 16 and decoded.is_gray and decoded.pixels.dtype == np.uint16
        np.testing.assert_array_equal(decoded.pixels, gray)

    def test_big_endian_16_bit_tiff(self) -> None:
        gray = np.array([[0, 1, 256], [40000, 65535, 7]], np.uint16)
        image = Image.frombytes("I;16B", (3, 2), gray.astype(">u2").tobytes())
        decoded = codec.decode(_save(image, "TIFF"), **LIMITS)
        assert decoded.pixels.dtype == np.uint16  # native byte order
        np.testing.assert_array_equal(decoded.pixels, gray)

    def test_32_bit_integer_tiff_is_clipped_to_16_bits(self) -> None:
        values = np.array([[-5, 0, 1000], [65535, 70000, 3]], np.int32)
        decoded = codec.decode(_save(Image.fromarray(values), "TIFF"), **LIMITS)
        np.testing.assert_array_equal(decoded.pixels, np.clip(values, 0, 65535))

    def test_float_tiff_is_refused(self) -> None:
        data = _save(Image.fromarray(np.zeros((4, 4), np.float32)), "TIFF")
        with pytest.raises(InvalidArgument, match="'F'"):
            codec.decode(data, **LIMITS)

    def test_bilevel_becomes_gray(self) -> None:
        bits = (np.indices((8, 8)).sum(0) % 2).astype(bool)
        decoded = codec.decode(_save(Image.fromarray(bits), "PNG"), **LIMITS)
        np.testing.assert_array_equal(decoded.pixels, bits * 255)

    def test_cmyk_jpeg_becomes_rgb(self) -> None:
        decoded = codec.decode(_save(Image.fromarray(_smooth_rgb()).convert("CMYK"), "JPEG"), **LIMITS)
        assert decoded.pixels.shape == (48, 64, 3) and decoded.alpha is None


class TestDecodeAlphaAndPalette:
    def test_rgba_png_keeps_alpha(self) -> None:
        rgb = _smooth_rgb()
        alpha = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
        decoded = codec.decode(_save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"), **LIMITS)
        np.testing.assert_array_equal(decoded.pixels, rgb)
        assert decoded.alpha is not None
        np.testing.assert_array_equal(decoded.alpha, alpha)

    def test_gray_alpha_png(self) -> None:
        la = np.dstack([_smooth_rgb()[..., 0], np.full((48, 64), 128, np.uint8)])
        decoded = codec.decode(_save(Image.fromarray(la, mode="LA"), "PNG"), **LIMITS)
        assert decoded.is_gray and decoded.alpha is not None
        np.testing.assert_array_equal(decoded.pixels, la[..., 0])
        np.testing.assert_array_equal(decoded.alpha, la[..., 1])

    def test_palette_png(self) -> None:
        image = Image.fromarray(_smooth_rgb()).quantize(colors=16)
        decoded = codec.decode(_save(image, "PNG"), **LIMITS)
        assert decoded.alpha is None
        np.testing.assert_array_equal(decoded.pixels, np.asarray(image.convert("RGB")))

    def test_palette_transparency_becomes_alpha(self) -> None:
        image = Image.fromarray(_smooth_rgb()).quantize(colors=16)
        image.info["transparency"] = 0
        decoded = codec.decode(_save(image, "PNG", transparency=0), **LIMITS)
        assert decoded.alpha is not None
        np.testing.assert_array_equal(decoded.alpha == 0, np.asarray(image) == 0)

    def test_arrays_are_read_only(self) -> None:
        decoded = codec.decode(_save(Image.fromarray(_smooth_rgb()), "PNG"), **LIMITS)
        with pytest.raises(ValueError, match="read-only"):
            decoded.pixels[0, 0, 0] = 1


class TestExifOrientation:
    @staticmethod
    def _jpeg_with_orientation(rgb: NDArray[np.uint8], orientation: int) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation tag
        return _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())

    def test_rotate_90_cw(self) -> None:
        # Stored 20 high x 40 wide, left half red, right half blue. Orientation 6 = display rotated 90°
        # clockwise: 40 high x 20 wide, the left half on top.
        rgb = np.zeros((20, 40, 3), np.uint8)
        rgb[:, :20, 0] = 255
        rgb[:, 20:, 2] = 255
        decoded = codec.decode(self._jpeg_with_orientation(rgb, 6), **LIMITS)
        assert decoded.size == (40, 20)
        top, bottom = decoded.pixels[:16].astype(int), decoded.pixels[24:].astype(int)
        assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50
        assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50

    def test_rotate_180(self) -> None:
        rgb = np.zeros((20, 40, 3), np.uint8)
        rgb[:10] = 255  # white top half
        decoded = codec.decode(self._jpeg_with_orientation(rgb, 3), **LIMITS)
        assert decoded.size == (20, 40)
        assert decoded.pixels[:8].mean() < 30 and decoded.pixels[12:].mean() > 220

    def test_upright_is_unchanged(self) -> None:
        rgb = _smooth_rgb()
        decoded = codec.decode(self._jpeg_with_orientation(rgb, 1), **LIMITS)
        assert decoded.size == (48, 64)

    @pytest.mark.parametrize("orientation", range(1, 9))
    @pytest.mark.parametrize("mode", ["RGB", "L"])
    def test_every_orientation_as_pillow_transposes_it(self, orientation: int, mode: str) -> None:
        # The JPEG fast path turns the pixels itself: it must agree with Pillow's exif_transpose.
        stored = Image.fromarray(_smooth_rgb(24, 40)).convert(mode)
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _save(stored, "JPEG", quality=95, exif=exif.tobytes())
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(ImageOps.exif_transpose(image))
        decoded = codec.decode(data, **LIMITS)
        np.testing.assert_array_equal(decoded.pixels, expected)
        assert decoded.pixels.flags.c_contiguous and not decoded.pixels.flags.writeable


class TestJpegFastPath:
    """simplejpeg decodes and encodes plain JPEGs; Pillow keeps everything it refuses."""

    def test_decode_equals_pillow(self) -> None:
        data = _save(Image.fromarray(_smooth_rgb(97, 131)), "JPEG", quality=85)
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(image)
        np.testing.assert_array_equal(codec.decode(data, **LIMITS).pixels, expected)

    def test_stream_simplejpeg_refuses_is_decoded_by_pillow(self) -> None:
        # Bytes before the end marker: libjpeg warns ("extraneous bytes"), strict simplejpeg refuses,
        # Pillow decodes the image as it always has.
        data = _save(Image.fromarray(_smooth_rgb()), "JPEG", quality=90)
        damaged = data[:-2] + b"\x00\x01\x02" + data[-2:]
        with pytest.raises(ValueError):
            simplejpeg.decode_jpeg(damaged, strict=True)
        with Image.open(io.BytesIO(damaged)) as image:
            expected = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(codec.decode(damaged, **LIMITS).pixels, expected)

    def test_encode_is_a_420_jpeg_at_the_quality(self) -> None:
        rgb = _smooth_rgb(64, 96)
        data = codec.encode(rgb, None, "JPEG", quality=90)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert JpegImagePlugin.get_sampling(image) == 2  # 4:2:0, Pillow's default
            # Same quantisation tables as Pillow's writer at the same quality.
            reference = Image.open(io.BytesIO(_save(Image.fromarray(rgb), "JPEG", quality=90)))
            assert getattr(image, "quantization", None) == getattr(reference, "quantization", 0)
            assert np.abs(np.asarray(image).astype(int) - rgb).mean() < 2

    @pytest.mark.parametrize("orientation", [1, 6])
    def test_without_simplejpeg_pillow_does_the_same(
        self, monkeypatch: pytest.MonkeyPatch, orientation: int
    ) -> None:
        # The worker's image has no simplejpeg (service/bus/wire.py decodes through this module).
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _save(Image.fromarray(_smooth_rgb(24, 40)), "JPEG", quality=95, exif=exif.tobytes())
        fast = codec.decode(data, **LIMITS).pixels
        monkeypatch.setattr(codec, "simplejpeg", None)
        np.testing.assert_array_equal(codec.decode(data, **LIMITS).pixels, fast)
        encoded = codec.encode(fast.astype(np.uint8), np.full(fast.shape[:2], 128, np.uint8), "JPEG")
        with Image.open(io.BytesIO(encoded)) as image:
            assert image.format == "JPEG" and image.size == (fast.shape[1], fast.shape[0])

    def test_encode_refusal_is_invalid_argument(self) -> None:
        with pytest.raises(InvalidArgument, match="cannot encode a 70000x1 image as JPEG"):
            codec.encode(np.zeros((1, 70000, 3), np.uint8), None, "JPEG")


class TestDecodeLimitsAndErrors:
    def test_too_many_pixels_names_count_and_limit(self) -> None:
        data = _save(Image.fromarray(_smooth_rgb(100, 120)), "PNG")
        with pytest.raises(InvalidArgument, match=r"120x100 = 12000 pixels, over the limit of 11999 pixels"):
            codec.decode(data, max_pixels=11_999, max_bytes=1 << 20)
        assert codec.decode(data, max_pixels=12_000, max_bytes=1 << 20).size == (100, 120)

    @pytest.mark.parametrize(("width", "height"), [(5000, 4000), (20000, 5000)])
    def test_pixel_limit_is_checked_from_the_header(self, width: int, height: int) -> None:
        # No pixel data follows the header: decoding anything would fail as truncated instead.
        with pytest.raises(InvalidArgument, match=f"{width}x{height} = {width * height} pixels"):
            codec.decode(_png_header_only(width, height), **LIMITS)

    def test_header_only_png_fails_when_decoded(self) -> None:
        # The fixture above really lacks its pixels: under the limit it is refused as truncated.
        with pytest.raises(InvalidArgument, match="PNG image is truncated or corrupt"):
            codec.decode(_png_header_only(300, 200), **LIMITS)

    def test_decompression_bomb_past_pils_own_limit(self) -> None:
        with pytest.raises(InvalidArgument, match=r"1000000000 pixels.*limit is 10000000"):
            codec.decode(_png_header_only(40000, 25000), **LIMITS)

    def test_too_many_bytes(self) -> None:
        data = _save(Image.fromarray(_smooth_rgb()), "PNG")
        with pytest.raises(InvalidArgument, match=f"{len(data)} bytes, over the limit of 100 bytes"):
            codec.decode(data, max_pixels=10**6, max_bytes=100)

    def test_empty(self) -> None:
        with pytest.raises(InvalidArgument, match="empty"):
            codec.decode(b"", **LIMITS)

    @pytest.mark.parametrize("data", [b"garbage bytes, not an image", b"GIF89a" + bytes(100)])
    def test_not_an_accepted_format(self, data: bytes) -> None:
        with pytest.raises(InvalidArgument, match="not a valid file of one of PNG, JPEG, WEBP, BMP, TIFF"):
            codec.decode(data, **LIMITS)

    def test_real_gif_is_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="not a valid file of one of"):
            codec.decode(_save(Image.fromarray(_smooth_rgb()), "GIF"), **LIMITS)

    @pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
    @pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
    def test_truncated(self, fmt: str, keep: float) -> None:
        rng = np.random.default_rng(0)  # noise: large files, so every cut lands inside the pixel data
        data = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)), fmt)
        with pytest.raises(InvalidArgument):
            codec.decode(data[: int(len(data) * keep)], **LIMITS)

    def test_corrupt_pixel_data(self) -> None:
        data = bytearray(_save(Image.fromarray(_smooth_rgb()), "PNG"))
        data[60:200] = bytes(140)  # zero the compressed stream, keep the header
        with pytest.raises(InvalidArgument, match="PNG image is truncated or corrupt"):
            codec.decode(bytes(data), **LIMITS)


class TestEncode:
    @pytest.mark.parametrize(
        ("fmt", "tolerance"), [("PNG", 0), ("png", 0), ("JPEG", 3), ("jpg", 3), ("WEBP", 3)]
    )
    def test_round_trip(self, fmt: str, tolerance: float) -> None:
        rgb = _smooth_rgb()
        decoded = codec.decode(codec.encode(rgb, None, fmt, quality=95), **LIMITS)
        assert decoded.format == {"PNG": "PNG", "JPG": "JPEG"}.get(fmt.upper(), fmt.upper())
        assert decoded.alpha is None
        assert np.abs(decoded.pixels.astype(int) - rgb).mean() <= tolerance

    @pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
    def test_alpha_is_preserved(self, fmt: str) -> None:
        rgb = _smooth_rgb()
        alpha = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
        decoded = codec.decode(codec.encode(rgb, alpha, fmt, quality=95), **LIMITS)
        assert decoded.alpha is not None
        np.testing.assert_array_equal(decoded.alpha, alpha)  # WebP keeps alpha lossless by default

    @pytest.mark.parametrize("writer", ["fpng", "libpng"])
    @pytest.mark.parametrize("with_alpha", [False, True])
    def test_png_is_lossless_with_its_channels_in_order(
        self, with_alpha: bool, writer: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Read back by Pillow (an independent decoder): every sample, RGB(A) order, on noise, from
        either writer (a bound of 0 pixels sends every image to libpng)."""
        if writer == "libpng":
            monkeypatch.setattr(codec, "FPNG_MAX_PIXELS", 0)
        rng = np.random.default_rng(3)
        rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
        alpha = rng.integers(0, 256, (37, 53), dtype=np.uint8) if with_alpha else None
        encoded = codec.encode(rgb, alpha, "PNG")
        assert _png_writer(encoded) == writer
        with Image.open(io.BytesIO(encoded)) as image:
            assert image.format == "PNG" and image.mode == ("RGBA" if with_alpha else "RGB")
            samples = np.asarray(image)
        np.testing.assert_array_equal(samples, rgb if alpha is None else np.dstack([rgb, alpha]))

    def test_png_over_fpngs_pixel_bound_goes_to_libpng(self) -> None:
        """fpng holds the GIL (codec.FPNG_MAX_PIXELS): one pixel over its bound, libpng writes."""
        width = 2048
        at = np.zeros((codec.FPNG_MAX_PIXELS // width, width, 3), np.uint8)
        assert _png_writer(codec.encode(at, None, "PNG")) == "fpng"
        over = np.zeros((codec.FPNG_MAX_PIXELS // width + 1, width, 3), np.uint8)
        assert _png_writer(codec.encode(over, None, "PNG")) == "libpng"

    @pytest.mark.parametrize("shape", [(2, 65536, 3), (65536, 2, 3)])
    def test_png_with_a_side_over_16_bits_is_whole(self, shape: tuple[int, int, int]) -> None:
        """fpng writes a side of 65536 as 0 into the header (a file no decoder reads): such an image,
        though far under the pixel bound, is written by libpng and reads back whole."""
        rgb = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
        encoded = codec.encode(rgb, None, "PNG")
        assert _png_writer(encoded) == "libpng"
        with Image.open(io.BytesIO(encoded)) as image:
            np.testing.assert_array_equal(np.asarray(image), rgb)

    def test_16_bit_alpha_is_scaled(self) -> None:
        alpha = np.array([[0, 255, 511], [65535, 128, 32896]], np.uint16)  # 255 -> 1, 511 -> 2: rounded
        decoded = codec.decode(codec.encode(np.zeros((2, 3, 3), np.uint8), alpha, "PNG"), **LIMITS)
        assert decoded.alpha is not None
        np.testing.assert_array_equal(decoded.alpha, np.round(alpha / 257.0))

    def test_jpeg_composites_alpha_over_white(self) -> None:
        rgb = np.zeros((32, 32, 3), np.uint8)  # black
        alpha = np.zeros((32, 32), np.uint8)
        alpha[:, 16:] = 255  # left transparent, right opaque
        decoded = codec.decode(codec.encode(rgb, alpha, "JPEG", quality=95), **LIMITS)
        assert decoded.alpha is None
        assert decoded.pixels[:, :12].mean() > 245 and decoded.pixels[:, 20:].mean() < 10

    def test_jpeg_half_alpha_is_blended(self) -> None:
        rgb = np.zeros((16, 16, 3), np.uint8)
        decoded = codec.decode(codec.encode(rgb, np.full((16, 16), 128, np.uint8), "JPEG", 100), **LIMITS)
        assert abs(decoded.pixels.mean() - 127) < 2

    @pytest.mark.parametrize("fmt", ["GIF", "TIFF", ""])
    def test_unknown_format(self, fmt: str) -> None:
        with pytest.raises(InvalidArgument, match=f"one of PNG, JPEG, WEBP, got {fmt!r}"):
            codec.encode(_smooth_rgb(), None, fmt)

    @pytest.mark.parametrize("quality", [0, 101, -5])
    def test_quality_out_of_range(self, quality: int) -> None:
        with pytest.raises(InvalidArgument, match=f"1..100, got {quality}"):
            codec.encode(_smooth_rgb(), None, "JPEG", quality)

    def test_webp_size_limit_is_invalid_argument(self) -> None:
        with pytest.raises(InvalidArgument, match="17000x1 image as WEBP"):
            codec.encode(np.zeros((1, 17000, 3), np.uint8), None, "WEBP")

    def test_rejects_non_uint8(self) -> None:
        with pytest.raises(ValueError, match="uint8"):
            codec.encode(np.zeros((4, 4, 3), np.float32), None, "PNG")


def _photo(height: int, width: int) -> NDArray[np.uint8]:
    """A crop of a sample photo (edges, texture, saturated colour: what chroma rounding meets)."""
    path = Path(__file__).parents[2] / "samples" / "coffee.jpg"
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:height, :width])


class TestYCbCr420:
    """`ycbcr420` (the numpy statement of libjpeg's Y'CbCr and 4:2:0 downsampling) against libjpeg
    itself: encoding its planes gives the very bytes simplejpeg writes from the RGB."""

    @pytest.mark.parametrize("shape", [(64, 96), (65, 96), (33, 16), (2, 32), (300, 400)])
    @pytest.mark.parametrize("quality", [90, 100])
    def test_same_jpeg_as_libjpeg_from_rgb(self, shape: tuple[int, int], quality: int) -> None:
        rgb = _photo(*shape)
        planes = codec.ycbcr420(rgb)
        assert codec.encode(planes, None, "JPEG", quality) == codec.encode(rgb, None, "JPEG", quality)

    @pytest.mark.parametrize("shape", [(64, 100), (65, 97), (300, 451), (17, 1), (2, 3)])
    def test_other_widths_differ_only_in_the_last_16_columns(self, shape: tuple[int, int]) -> None:
        # Widths that are not a multiple of 16 (the MCU) pad the last MCU differently: TurboJPEG
        # repeats the last chroma sample of the planes, libjpeg averages the repeated pixels. Only
        # that MCU column (and the column before it, which the decoder's chroma upsampling reads)
        # can change.
        rgb = _photo(*shape)
        from_planes = simplejpeg.decode_jpeg(codec.encode(codec.ycbcr420(rgb), None, "JPEG", 90))
        from_rgb = simplejpeg.decode_jpeg(codec.encode(rgb, None, "JPEG", 90))
        untouched = max(0, (shape[1] - 1) // 16 * 16 - 1)
        np.testing.assert_array_equal(from_planes[:, :untouched], from_rgb[:, :untouched])
        assert np.abs(from_planes.astype(int) - from_rgb).max() <= 16

    @pytest.mark.parametrize("width", [32, 48])
    def test_one_row_is_422_with_the_same_samples(self, width: int) -> None:
        # simplejpeg reads one chroma row for one row of pixels as 4:2:2 (it tries full vertical
        # resolution first): the same samples, only the decoder's chroma upsampling rounds otherwise.
        rgb = _photo(1, width)
        from_planes = codec.encode(codec.ycbcr420(rgb), None, "JPEG", 90)
        assert simplejpeg.decode_jpeg_header(from_planes)[3] == "422"
        decoded = simplejpeg.decode_jpeg(from_planes).astype(int)
        assert np.abs(decoded - simplejpeg.decode_jpeg(codec.encode(rgb, None, "JPEG", 90))).max() <= 2

    def test_odd_sizes_repeat_the_last_row_and_column(self) -> None:
        rgb = _photo(5, 7)
        planes = codec.ycbcr420(rgb)
        assert (planes.height, planes.width) == (5, 7)
        assert planes.luma.shape == (6, 8) and planes.cb.shape == planes.cr.shape == (3, 4)
        np.testing.assert_array_equal(planes.luma[5], planes.luma[4])
        np.testing.assert_array_equal(planes.luma[:, 7], planes.luma[:, 6])
        even = codec.ycbcr420(np.pad(rgb, ((0, 1), (0, 1), (0, 0)), mode="edge"))
        for got, expected in zip(
            (planes.luma, planes.cb, planes.cr), (even.luma, even.cb, even.cr), strict=True
        ):
            np.testing.assert_array_equal(got, expected)

    def test_gray_black_and_white(self) -> None:
        rgb = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
        planes = codec.ycbcr420(rgb)
        np.testing.assert_array_equal(planes.luma, rgb[..., 0])  # Y' of a gray is the gray
        assert np.all(planes.cb == 128) and np.all(planes.cr == 128)
        corners = codec.ycbcr420(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
        np.testing.assert_array_equal(corners.luma[0], [76, 29])  # 0.299 and 0.114 of 255, rounded

    @pytest.mark.parametrize(
        ("fmt", "alpha", "taken"),
        [("JPEG", False, True), ("jpg", False, True), ("JPEG", True, False), ("PNG", False, False),
         ("WEBP", False, False), ("GIF", False, False)],
    )  # fmt: skip
    def test_takes_ycbcr420(self, fmt: str, alpha: bool, taken: bool) -> None:
        assert codec.takes_ycbcr420(fmt, np.zeros((2, 2), np.uint8) if alpha else None) is taken

    def test_without_simplejpeg_only_rgb(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(codec, "simplejpeg", None)
        assert not codec.takes_ycbcr420("JPEG", None)

    def test_planes_keep_encodes_errors(self) -> None:
        planes = codec.ycbcr420(_smooth_rgb())
        with pytest.raises(InvalidArgument, match="'GIF'"):
            codec.encode(planes, None, "GIF")
        with pytest.raises(InvalidArgument, match=r"quality must be in 1\.\.100, got 0"):
            codec.encode(planes, None, "JPEG", 0)
        with pytest.raises(InvalidArgument, match="cannot encode a 70000x1 image as JPEG"):
            codec.encode(codec.ycbcr420(np.zeros((1, 70000, 3), np.uint8)), None, "JPEG")
        with pytest.raises(ValueError, match="JPEG without alpha"):
            codec.encode(planes, None, "PNG")
        with pytest.raises(ValueError, match="JPEG without alpha"):
            codec.encode(planes, np.zeros((48, 64), np.uint8), "JPEG")
        wrong = codec.YCbCr420(planes.luma, planes.cb, planes.cr[:, :-1], planes.height, planes.width)
        with pytest.raises(ValueError, match="planes"):
            codec.encode(wrong, None, "JPEG")


class TestJpegHeaderParser:
    """The marker parser that spares plain JPEGs a Pillow open agrees with Pillow wherever it answers,
    and hands everything else to Pillow (None)."""

    @staticmethod
    def _pillow(data: bytes) -> tuple[int, int, str, int]:
        with Image.open(io.BytesIO(data)) as image:
            return (*image.size, image.mode, image.getexif().get(0x0112, 1))

    def _check(self, data: bytes) -> None:
        plain = codec._jpeg_header(data)
        assert plain is not None
        width, height, mode, orientation = self._pillow(data)
        assert (plain.width, plain.height, plain.orientation) == (width, height, orientation)
        assert plain.colorspace == codec._TURBO_MODES[mode]

    @pytest.mark.parametrize(
        "name", ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "aitzgorri.jpg"]
    )
    def test_samples_agree_with_pillow(self, name: str) -> None:
        self._check((Path(__file__).parents[2] / "samples" / name).read_bytes())

    @pytest.mark.parametrize("orientation", range(0, 10))
    @pytest.mark.parametrize("mode", ["RGB", "L"])
    @pytest.mark.parametrize("progressive", [False, True])
    def test_every_orientation_gray_and_progressive(
        self, orientation: int, mode: str, progressive: bool
    ) -> None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "maker"  # another IFD0 entry before/after the orientation
        stored = Image.fromarray(_smooth_rgb(24, 40)).convert(mode)
        for raw in (exif.tobytes(), _big_endian_exif(orientation)):  # Intel and Motorola byte order
            data = _save(stored, "JPEG", quality=90, exif=raw, progressive=progressive)
            self._check(data)
            decoded = codec.decode(data, **LIMITS)
            with Image.open(io.BytesIO(data)) as image:
                np.testing.assert_array_equal(decoded.pixels, np.asarray(ImageOps.exif_transpose(image)))

    def test_no_exif_is_upright_and_probe_matches(self) -> None:
        data = _save(Image.fromarray(_smooth_rgb(30, 50)), "JPEG", quality=80)
        self._check(data)
        assert codec.probe(data, **LIMITS) == codec.ImageHeader(50, 30, "JPEG")

    def test_cmyk_xmp_and_mpo_go_to_pillow(self) -> None:
        cmyk = _save(Image.fromarray(_smooth_rgb()).convert("CMYK"), "JPEG")
        assert codec._jpeg_header(cmyk) is None
        assert codec.decode(cmyk, **LIMITS).pixels.shape == (48, 64, 3)  # as before: Pillow converts it
        xmp = (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>'
            b'<rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
        )
        data = _save(Image.fromarray(_smooth_rgb()), "JPEG", xmp=xmp)
        assert codec._jpeg_header(data) is None
        mpf = _save(
            Image.fromarray(_smooth_rgb()),
            "MPO",
            save_all=True,
            append_images=[Image.fromarray(_smooth_rgb())],
        )
        assert codec._jpeg_header(mpf) is None
        assert codec.probe(mpf, **LIMITS).format == "JPEG"

    @pytest.mark.parametrize("keep", [1, 3, 10, 40, 200, 400])
    def test_truncated_headers_give_todays_errors(self, keep: int, monkeypatch: pytest.MonkeyPatch) -> None:
        data = _save(Image.fromarray(_smooth_rgb()), "JPEG", quality=90)[:keep]
        assert codec._jpeg_header(data) is None
        errors = []
        for parser in (codec._jpeg_header, lambda data: None):  # with the parser, then Pillow alone
            monkeypatch.setattr(codec, "_jpeg_header", parser)
            for call in (codec.probe, codec.decode):
                with pytest.raises(InvalidArgument) as caught:
                    call(data, **LIMITS)
                errors.append(str(caught.value))
        assert errors[:2] == errors[2:]

    def test_malformed_exif_and_odd_orientation_types_go_to_pillow(self) -> None:
        assert codec._exif_orientation(b"II*\x00\xff\xff\x00\x00") is None  # IFD past the end
        assert codec._exif_orientation(b"XX*\x00\x08\x00\x00\x00") is None
        long_tag = (
            b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x04\x00\x01\x00\x00\x00\x06\x00\x00\x00"
        )
        assert codec._exif_orientation(long_tag) is None  # LONG, not SHORT
        short_tag = (
            b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
        )
        assert codec._exif_orientation(short_tag) == 6

    def test_limits_are_checked_as_before(self) -> None:
        data = _save(Image.fromarray(_smooth_rgb(30, 50)), "JPEG")
        with pytest.raises(InvalidArgument, match="50x30 = 1500 pixels, over the limit of 1000"):
            codec.probe(data, max_pixels=1000, max_bytes=1 << 20)
        with pytest.raises(InvalidArgument, match="over the limit of 1000"):
            codec.decode(data, max_pixels=1000, max_bytes=1 << 20)


def _big_endian_exif(orientation: int) -> bytes:
    """An Exif block in Motorola byte order: IFD0 with Make, then Orientation (one SHORT)."""
    entries = [
        struct.pack(">HHI4s", 0x010F, 2, 4, b"abc\x00"),
        struct.pack(">HHIH2x", 0x0112, 3, 1, orientation),
    ]
    return (
        b"Exif\x00\x00MM\x00*" + struct.pack(">IH", 8, len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"
    )
