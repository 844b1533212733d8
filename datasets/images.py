"""Image reading and the person crop of docs/method.md §1.1: full frame -> 192x256 crop pixels.

Pixel convention everywhere (full frames and crops): integer coordinates are pixel centres, so
pixel (0, 0) covers [-0.5, 0.5]^2 and a W-wide image spans [-0.5, W - 0.5]. The crop is the map
the H36M-Toolbox (and Context-Aware PoseFormer) cut their crops and `*_crop` joints with: the box
`center` goes to the centre of the crop, ((192 - 1) / 2, (256 - 1) / 2) = (95.5, 127.5), and the
zoom is (192 - 1) / (S - 1) with S = scale[0] * 200 full-frame pixels, so the first and last of
the box's S pixel centres land on crop pixels 0 and 191. `crop_affine` is the only definition of
that map: the synthetic generator, the loader's on-the-fly crop, tools/prepare_h36m.py and
tools/precrop_h36m.py all call it. Mirroring the crop is exactly x -> 191 - x.
"""


import cv2
import numpy as np

from datasets.image_headers import MAX_IMAGE_PIXELS, HeaderProblem, declared_size
from utils.atomic_files import atomic_write_bytes
from utils.errors import MetaPoseError
from utils.input_files import InputFileError, read_regular_file, shown_path
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

# OpenCV's own thread pool only oversubscribes the CPUs when DataLoader workers decode in
# parallel; one thread per worker is fastest.
cv2.setNumThreads(1)


# Real label paths are under 100 bytes ("s_01_act_02_subact_01_ca_01/..._000001.jpg"). The
# label cache stores every path at the width of the longest, so one long path would multiply
# the cache by the number of frames: paths are bounded well below PATH_MAX.
MAX_IMAGE_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # one folder or file name (NAME_MAX of Linux and macOS file systems)


def shown_image_path(relative):
    """A label image path for a message: repr() of it, or of its start when it is long."""
    if len(relative) <= 80:
        return repr(relative)
    return f"{relative[:60]!r}... ({len(relative):,} characters)"


def unsafe_image_path(relative):
    """Why the label image path `relative` (str) may not be used, or None when it is fine.

    A label's `image` must name a file inside the image folder: relative, with no `..`
    component and no NUL byte (a pickle must not make the loader read /etc/passwd or
    ../../anything), UTF-8 text (no lone surrogates), at most MAX_IMAGE_PATH_BYTES long with no
    name longer than MAX_NAME_BYTES. Both / and \\ count as separators.
    """
    if not relative:
        return "is empty"
    try:
        encoded, text = relative.encode("utf-8"), True
    except UnicodeEncodeError:
        encoded, text = relative.encode("utf-8", "surrogatepass"), False
    if len(encoded) > MAX_IMAGE_PATH_BYTES:
        return (f"is {len(encoded):,} bytes long, more than the {MAX_IMAGE_PATH_BYTES:,} an "
                "image path may have")
    longest = len(encoded) if len(encoded) <= MAX_NAME_BYTES else \
        max(len(name) for name in encoded.replace(b"\\", b"/").split(b"/"))
    if longest > MAX_NAME_BYTES:
        return (f"holds a name of {longest} bytes, more than the {MAX_NAME_BYTES} a file system "
                "allows")
    if not text:
        return "holds characters that are not text (lone UTF-16 surrogates)"
    if "\0" in relative:
        return "contains a NUL byte"
    if relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        return "is an absolute path"
    if ".." in relative.replace("\\", "/").split("/"):
        return "contains a '..' component that leaves the image folder"
    return None


def read_image(path):
    """(H, W, 3) uint8 RGB pixels of the JPEG, PNG, BMP, TIFF or WebP image at `path`.

    The size its header declares is checked before decoding: more than MAX_IMAGE_PIXELS
    (datasets/image_headers.py: 64 Mi pixels, e.g. 8192 x 8192) is refused, so that a small file
    that declares a huge image never reaches the decoder's allocation.
    Raises:
        MetaPoseError naming the file when it is missing, unreadable, not a regular file (a
        FIFO, device or folder: never opened for reading), not one of those formats, declares
        too many pixels, is a truncated JPEG or cannot be decoded. (The bytes are read here and
        decoded from memory, so that OpenCV and libjpeg print nothing to stderr for such files.)
    """
    remedy = "Replace it, or set data.skip_bad_images=true to drop such frames."
    try:
        data = np.frombuffer(read_regular_file(
            path, "image", "Label image paths must name image files inside the image folder; "
            "replace the entry or the file, or set data.skip_bad_images=true to drop such "
            "frames."), dtype=np.uint8)
    except InputFileError as error:
        if error.problem != "does not exist":
            raise
        raise MetaPoseError(
            f"image '{shown_path(path)}' does not exist. Check data.root and data.image_dir, or "
            "set data.skip_bad_images=true to drop frames whose image is missing.") from None
    shown = shown_path(path)
    if not data.size:
        raise MetaPoseError(f"image '{shown}' cannot be decoded (an empty file). {remedy}")
    try:
        kind, width, height = declared_size(data)
    except HeaderProblem as problem:
        raise MetaPoseError(f"image '{shown}' cannot be decoded: {problem}. {remedy}") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise MetaPoseError(
            f"image '{shown}' declares {width}x{height} pixels in its {kind} header, more than "
            f"the {MAX_IMAGE_PIXELS:,} an image may have (decoded it would take "
            f"{width * height * 3 / 2 ** 30:.1f} GiB). Scale it down to at most "
            f"{MAX_IMAGE_PIXELS:,} pixels (e.g. 8192x8192), or set data.skip_bad_images=true to "
            "drop such frames.")
    if _truncated_jpeg(data):
        raise MetaPoseError(
            f"image '{shown}' is a truncated JPEG: its {data.size} bytes end before the JPEG end "
            f"marker (an interrupted copy or extraction?). {remedy}")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as error:  # e.g. memory for the pixels, which the size check keeps rare
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise MetaPoseError(f"image '{shown}' cannot be decoded (OpenCV: "
                            f"{lines[-1].strip() if lines else error}). {remedy}") from None
    if image is None:
        raise MetaPoseError(
            f"image '{shown}' cannot be decoded (corrupt or not an image). {remedy}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _truncated_jpeg(data):
    """Whether `data` (uint8 file bytes) starts like a JPEG but has no end-of-image marker
    (FF D9) in its last kilobyte. Entropy-coded JPEG data never holds FF D9, so a cut file lacks
    it; writers that pad after the marker (zeros, newlines) still pass."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    return data[-1024:].tobytes().rfind(b"\xff\xd9") < 0


def crop_affine(center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """(2, 3) float64 affine matrix from full-frame pixels to crop pixels (the toolbox's map).

    Args:
        center: (x, y) box centre in full-frame pixels.
        scale: (w/200, h/200) box size; only the width S = scale[0] * 200 px sets the zoom
            (aspect preserved, no rotation). S must exceed one pixel.
        out_w, out_h: crop size in pixels (192 x 256).
    Returns:
        M with crop = M @ (x, y, 1): `center` -> ((out_w-1)/2, (out_h-1)/2) and a zoom of
        (out_w - 1) / (S - 1) crop pixels per full-frame pixel.
    """
    size = float(scale[0]) * 200.0
    if not size > 1.0:
        raise ValueError(f"box width scale[0] * 200 = {size} px must exceed 1 px")
    zoom = (out_w - 1.0) / (size - 1.0)
    return np.array([
        [zoom, 0.0, (out_w - 1) / 2.0 - zoom * float(center[0])],
        [0.0, zoom, (out_h - 1) / 2.0 - zoom * float(center[1])],
    ])


def full_frame_to_crop(points, center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """(..., 2) full-frame pixels -> crop pixels with the same map as `crop_from_full_frame`."""
    matrix = crop_affine(center, scale, out_w, out_h)
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_to_full_frame(points, center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """(..., 2) crop pixels -> full-frame pixels: the inverse of `full_frame_to_crop`."""
    matrix = crop_affine(center, scale, out_w, out_h)
    points = np.asarray(points, dtype=np.float64)
    return (points - matrix[:, 2]) / np.diag(matrix[:, :2])


def crop_from_full_frame(image, center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """The (out_h, out_w, C) person crop of a full frame, bilinear, black outside the frame.

    Args:
        image: (H, W, C) uint8 full frame.
        center, scale: the label's box (see `crop_affine`).
    """
    matrix = crop_affine(center, scale, out_w, out_h)
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def resize_image(image, size_hw):
    """Resizes (H, W, C) to `size_hw` = (height, width): area averaging when shrinking."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def is_crop_image(image):
    """Whether an (H, W, ...) image is a stored person crop: exactly 256 x 192 (H x W)."""
    return image.shape[:2] == (CROP_HEIGHT, CROP_WIDTH)


def write_crop_file(frame_path, crop_path, center, scale, quality=95):
    """Cuts the 256x192 crop of the full frame `frame_path` with `crop_affine` and writes it as
    a JPEG to `crop_path` atomically (never a half-written file under that name).

    Raises:
        MetaPoseError when the frame cannot be read (see `read_image`) or the crop not written.
    """
    crop = crop_from_full_frame(read_image(frame_path), center, scale)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MetaPoseError(f"cannot encode the crop of '{frame_path}' as JPEG.")
    try:
        atomic_write_bytes(crop_path, encoded.tobytes())
    except OSError as error:
        raise MetaPoseError(f"cannot write the crop '{crop_path}' ({error}); check that the "
                            "output folder is writable and has space.") from None
