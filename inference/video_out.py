"""Writing the MP4 of tools/infer.py: H.264 (yuv420p, which browsers and phones play) through the
ffmpeg executable that the imageio-ffmpeg package ships; without that package, OpenCV's MPEG-4
Part 2 (`mp4v`, which browsers do not play), and a warning that says so."""

import contextlib
import subprocess
import tempfile
import warnings

import cv2
import numpy as np

from utils.errors import MetaPoseError

H264 = "H.264"
MP4V = "MPEG-4 Part 2 (mp4v)"
CLOSE_TIMEOUT_S = 120.0  # ffmpeg's time to finish the file after the last frame


def h264_encoder():
    """The path of an ffmpeg executable with libx264 (imageio-ffmpeg's), or None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the package without its binary for this platform
        return None


class VideoOut:
    """An MP4 of RGB frames, opened on the first frame (its size fixes the video's; frames of
    another size are resized to it). `codec` says which encoder wrote it."""

    def __init__(self, path, fps):
        self.path, self.fps = path, float(fps)
        self.size, self.frames = None, 0
        self._encoder = h264_encoder()
        self.codec = H264 if self._encoder else MP4V
        self._process = self._writer = self._log = None

    def _open(self, width, height):
        self.size = (width, height)
        if self._encoder:
            self._log = tempfile.TemporaryFile()
            command = [self._encoder, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                       "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                       "-r", f"{self.fps:.6f}", "-i", "pipe:0", "-an", "-c:v", "libx264",
                       "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                       "-movflags", "+faststart", self.path]
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                                 stdout=subprocess.DEVNULL, stderr=self._log)
            except OSError as error:
                raise MetaPoseError(f"the H.264 encoder '{self._encoder}' (imageio-ffmpeg) "
                                    f"cannot be started ({error.strerror or error}); reinstall "
                                    "imageio-ffmpeg, or use --no-render.") from None
            return
        warnings.warn("no H.264 encoder is installed (pip install imageio-ffmpeg provides one), "
                      f"so '{self.path}' is written as {MP4V}, which web browsers do not play.",
                      stacklevel=3)
        self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                       self.size)
        if not self._writer.isOpened():
            raise MetaPoseError(f"OpenCV cannot write the MP4 video '{self.path}' (no mp4v "
                                "encoder in this OpenCV build?); install imageio-ffmpeg, or use "
                                "--no-render to write predictions.json alone.")

    def _encoder_failed(self):
        text = ""
        if self._log is not None:
            self._log.seek(0)
            text = self._log.read().decode("utf-8", "replace").strip().splitlines()
            text = text[-1] if text else ""
        return MetaPoseError(f"the H.264 encoder stopped while writing '{self.path}'"
                             + (f": {text}" if text else "") + " (a full disk?). Free space, or "
                             "use --no-render to write predictions.json alone.")

    def write(self, frame_rgb):
        height, width = frame_rgb.shape[:2]
        if self.size is None:
            self._open(width + width % 2, height + height % 2)
        if (width, height) != self.size:
            frame_rgb = cv2.resize(frame_rgb, self.size, interpolation=cv2.INTER_AREA)
        frame_rgb = np.ascontiguousarray(frame_rgb, dtype=np.uint8)
        if self._process is not None:
            try:
                self._process.stdin.write(frame_rgb.tobytes())
            except (BrokenPipeError, OSError):
                self._process.wait()
                raise self._encoder_failed() from None
        else:
            self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self):
        """Finishes the file; raises MetaPoseError when the encoder failed."""
        if self._writer is not None:
            with contextlib.suppress(cv2.error):
                self._writer.release()
            self._writer = None
        if self._process is not None:
            process, self._process = self._process, None
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                status = process.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise MetaPoseError(f"the H.264 encoder did not finish '{self.path}' within "
                                    f"{CLOSE_TIMEOUT_S:g} s after the last frame; use "
                                    "--no-render to write predictions.json alone.") from None
            if status != 0:
                raise self._encoder_failed()
        if self._log is not None:
            self._log.close()
            self._log = None

    def abort(self):
        """Stops the encoder without finishing the file (the run failed)."""
        if self._process is not None:
            process, self._process = self._process, None
            process.kill()
            process.wait()
        self.close()
