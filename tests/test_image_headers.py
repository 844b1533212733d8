"""Image sizes read from the header before decoding (datasets/image_headers.py): every format
the loader takes is measured exactly, and a file that declares more than MAX_IMAGE_PIXELS is
refused by read_image without reaching the decoder."""

import struct

import cv2
import numpy as np
import pytest

from datasets import images
from datasets.image_headers import MAX_IMAGE_PIXELS, HeaderProblem, declared_size
from datasets.images import read_image
from utils.errors import MetaPoseError

HEIGHT, WIDTH = 37, 53
ENCODINGS = {
    "JPEG": (".jpg", []), "progressive JPEG": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "PNG": (".png", []), "BMP": (".bmp", []), "TIFF": (".tiff", []),
    "WebP lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "WebP lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "WebP extended": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
}


def encoded(name):
    channels = 4 if name == "WebP extended" else 3  # alpha makes a VP8X file
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, channels), np.uint8)
    extension, params = ENCODINGS[name]
    ok, data = cv2.imencode(extension, pixels, params)
    assert ok
    return bytearray(data.tobytes())


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_format_declares_its_real_size(tmp_path, name):
    data = encoded(name)
    assert declared_size(data)[1:] == (WIDTH, HEIGHT)
    path = tmp_path / f"frame{ENCODINGS[name][0]}"
    path.write_bytes(data)
    assert read_image(str(path)).shape == (HEIGHT, WIDTH, 3)


def _jpeg(width, height, stray=b""):
    data = encoded("JPEG")
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return data[:frame] + stray + data[frame:]


def _png(width, height):
    data = encoded("PNG")
    struct.pack_into(">II", data, 16, width, height)
    return data


def _bmp(width, height):
    data = encoded("BMP")
    struct.pack_into("<ii", data, 18, width, -height)  # top-down
    return data


def _bmp_core(width, height):
    return b"BM" + bytes(12) + struct.pack("<IHHHH", 12, width, height, 1, 24)


def _tiff(width, height, order="<", big=False):
    """A first image directory holding only ImageWidth and ImageLength (LONG)."""
    mark = b"II" if order == "<" else b"MM"
    if big:
        head = mark + struct.pack(order + "HHHQ", 43, 8, 0, 16)
        entries = b"".join(struct.pack(order + "HHQQ", tag, 4, 1, value)
                           for tag, value in ((256, width), (257, height)))
        return head + struct.pack(order + "Q", 2) + entries
    head = mark + struct.pack(order + "HI", 42, 8)
    entries = b"".join(struct.pack(order + "HHII", tag, 4, 1, value)
                       for tag, value in ((256, width), (257, height)))
    return head + struct.pack(order + "H", 2) + entries


def _webp_extended(width, height):
    data = encoded("WebP extended")
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return data


def _webp_lossless(width, height):
    data = encoded("WebP lossless")
    struct.pack_into("<I", data, 21, (width - 1) | (height - 1) << 14)
    return data


HUGE = {
    "JPEG 60000x60000": (_jpeg(60000, 60000), 60000, 60000),
    "JPEG 30000x30000": (_jpeg(30000, 30000), 30000, 30000),
    "JPEG with stray bytes before its frame header": (_jpeg(20000, 9000, b"\x00\x13"), 20000,
                                                      9000),
    "PNG": (_png(30000, 30000), 30000, 30000),
    "BMP": (_bmp(40000, 20000), 40000, 20000),
    "BMP core header": (_bmp_core(65535, 65535), 65535, 65535),
    "TIFF": (_tiff(100000, 1000), 100000, 1000),
    "big-endian TIFF": (_tiff(9000, 9000, ">"), 9000, 9000),
    "BigTIFF": (_tiff(2 ** 20, 2 ** 20, big=True), 2 ** 20, 2 ** 20),
    "WebP extended": (_webp_extended(16384, 16384), 16384, 16384),
    "WebP lossless": (_webp_lossless(16384, 8192), 16384, 8192),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_an_image_declaring_too_many_pixels_never_reaches_the_decoder(tmp_path, monkeypatch,
                                                                     name):
    data, width, height = HUGE[name]
    assert declared_size(data)[1:] == (width, height)
    path = tmp_path / "huge.img"
    path.write_bytes(data)

    def decoder_reached(*args):
        raise AssertionError("the decoder was called")
    monkeypatch.setattr(images.cv2, "imdecode", decoder_reached)
    with pytest.raises(MetaPoseError) as caught:
        read_image(str(path))
    message = str(caught.value)
    assert message.startswith(f"image '{path}' declares {width}x{height} pixels in its "), message
    assert f"more than the {MAX_IMAGE_PIXELS:,} an image may have" in message


def test_the_largest_allowed_size_passes_the_check():
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    assert declared_size(_png(side, side))[1:] == (side, side)
    assert side * side <= MAX_IMAGE_PIXELS


@pytest.mark.parametrize("data, words", [
    (b"P6\n53 37\n255\n" + bytes(53 * 37 * 3), "not a JPEG, PNG, BMP, TIFF or WebP file"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "ends early"),
    (b"\xff\xd8\xff\xda\x00\x08" + bytes(20), "holds no frame size"),
    (b"\x89PNG\r\n\x1a\n" + bytes(4) + b"IDAT" + bytes(16), "does not start with the IHDR"),
    (_tiff(10, 10)[:16], "ends early"),
])
def test_an_unreadable_or_foreign_header_is_refused(tmp_path, data, words):
    with pytest.raises(HeaderProblem, match=words):
        declared_size(data)
    path = tmp_path / "odd.jpg"
    path.write_bytes(data)
    with pytest.raises(MetaPoseError, match=f"cannot be decoded: .*{words}"):
        read_image(str(path))


@pytest.mark.parametrize("name, suffix", [("JPEG 60000x60000", ".jpg"), ("PNG", ".png")])
def test_infer_names_the_declared_size_of_a_huge_input_image_first(tmp_path, name, suffix):
    """An --input image that is too large is named as such, not as 'neither an image nor a
    video' followed by the list of video extensions."""
    from inference.media import open_input

    data, width, height = HUGE[name]
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(data)
    with pytest.raises(MetaPoseError) as caught:
        open_input(str(path))
    message = str(caught.value)
    assert message.startswith(f"input image '{path}' declares {width}x{height} pixels"), message
    assert "neither" not in message and ".mp4" not in message
