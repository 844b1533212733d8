"""The pixel size an image file declares in its header, read before anything is decoded.

A decoder allocates the pixels its header declares: a 6 kB JPEG can declare 60000x60000 pixels
(10.8 GB of RGB), and OpenCV then fails with an allocation error or its own pixel limit. The
loader reads the five formats MetaPose takes — JPEG, PNG, BMP, TIFF (and BigTIFF), WebP — and
refuses any image that declares more than MAX_IMAGE_PIXELS before the decoder sees it. The
parsers follow each format's specification as the decoders read it (libjpeg skips stray bytes
before a marker; TIFF and BMP sizes are in the first image directory / info header).
"""

import struct

# 64 Mi pixels (e.g. 8192 x 8192, or 8K UHD 7680 x 4320 with room to spare): 192 MiB of decoded
# RGB. Human3.6M frames are 1000 x 1002, MPI-INF-3DHP frames 2048 x 2048.
MAX_IMAGE_PIXELS = 2 ** 26
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WebP")

# JPEG start-of-frame markers (SOF0-SOF15 without DHT C4, JPG C8 and DAC CC): they hold the size.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset([0x01, 0xD8] + list(range(0xD0, 0xD8)))


class HeaderProblem(Exception):
    """The file is not one of FORMATS, or its header cannot be read: the text says which."""


def _unpack(fmt, data, offset):
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise HeaderProblem("its header ends early (a truncated file?)")
    return struct.unpack_from(fmt, data, offset)


def _jpeg_size(data):
    position = 2
    while position < len(data):
        if data[position] != 0xFF:  # a stray byte: libjpeg skips it, looking for a marker
            position += 1
            continue
        marker = data[position + 1] if position + 1 < len(data) else None
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (None, 0xD9, 0xDA):  # end of file, end of image, start of scan
            break
        (length,) = _unpack(">H", data, position + 2)
        if marker in _JPEG_FRAME_MARKERS:
            height, width = _unpack(">HH", data, position + 5)
            return width, height
        position += 2 + length
    if position >= len(data):
        raise HeaderProblem("its header ends early (a truncated file?)")
    raise HeaderProblem("its JPEG header holds no frame size (no SOF marker before the image "
                        "data)")


def _png_size(data):
    length, kind = _unpack(">I4s", data, 8)
    if kind != b"IHDR":
        raise HeaderProblem("its PNG header does not start with the IHDR chunk")
    return _unpack(">II", data, 16)


def _bmp_size(data):
    (header_size,) = _unpack("<I", data, 14)
    if header_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return _unpack("<HH", data, 18)
    width, height = _unpack("<ii", data, 18)
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _tiff_size(data):
    order = "<" if data[:2] == b"II" else ">"
    (version,) = _unpack(order + "H", data, 2)
    big = version == 43
    if big:
        (offset,) = _unpack(order + "Q", data, 8)
        (count,) = _unpack(order + "Q", data, offset)
        first, step, value_at = offset + 8, 20, 12
    else:
        (offset,) = _unpack(order + "I", data, 4)
        (count,) = _unpack(order + "H", data, offset)
        first, step, value_at = offset + 2, 12, 8
    sizes = {}
    for index in range(min(count, 4096)):
        entry = first + index * step
        tag, kind = _unpack(order + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            code = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if code is None:
                raise HeaderProblem(f"its TIFF tag {tag} has the type {kind}, not an integer")
            (sizes[tag],) = _unpack(order + code, data, entry + value_at)
    if 256 not in sizes or 257 not in sizes:
        raise HeaderProblem("its first TIFF image directory holds no width or height")
    return sizes[256], sizes[257]


def _webp_size(data):
    (kind,) = _unpack("4s", data, 12)
    if kind == b"VP8 ":  # lossy: a key frame header after a 3-byte frame tag
        if _unpack("3s", data, 23)[0] != b"\x9d\x01\x2a":
            raise HeaderProblem("its WebP (VP8) frame header lacks the start code")
        width, height = _unpack("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":  # lossless: 14-bit sizes minus one after the signature byte
        (bits,) = _unpack("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # extended: 24-bit canvas sizes minus one
        width, height = _unpack("<3s3s", data, 24)
        return (int.from_bytes(width, "little") + 1, int.from_bytes(height, "little") + 1)
    raise HeaderProblem(f"its WebP header has the unknown chunk {kind!r}")


def _format_of(data):
    if data[:2] == b"\xff\xd8":
        return "JPEG", _jpeg_size
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG", _png_size
    if data[:2] == b"BM":
        return "BMP", _bmp_size
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", _tiff_size
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP", _webp_size
    raise HeaderProblem(f"it is not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} file (it "
                        f"starts with {bytes(data[:8])!r})")


def declared_size(data):
    """(format, width, height) that the image file bytes `data` declare in their header.

    Raises:
        HeaderProblem when `data` is not a JPEG, PNG, BMP, TIFF or WebP file, or its header
        cannot be read.
    """
    data = memoryview(data).cast("B")
    name, read_size = _format_of(data)
    width, height = read_size(data)
    return name, int(width), int(height)
