"""Readers of the raw MPI-INF-3DHP release (docs/method.md §6), for tools/prepare_3dhp.py:

    S<s>/Seq<q>/camera.calibration        cameras 0..13, a text file (`read_calibration`)
    S<s>/Seq<q>/annot.mat                 MATLAB v5: cells annot2 (T, 56) pixels and
                                          univ_annot3 (T, 84) mm per camera
                                          (`read_train_annotation`)
    mpi_inf_3dhp_test_set/TS<n>/annot_data.mat
                                          MATLAB v7.3 (HDF5): annot2 (T,1,17,2), univ_annot3
                                          (T,1,17,3), valid_frame (T,1) (`read_test_annotation`;
                                          a MATLAB v5 file with the same variables works too)

Calibration file layout: a header line `Skeletool Camera Calibration File V1.0`, then one block
per camera: `name <c>` and indented lines `sensor <w> <h>`, `size <W> <H>` (frame pixels),
`animated 0`, `intrinsic <16 numbers>` (row-major 4x4: fx 0 cx 0 / 0 fy cy 0 / 0 0 1 0 /
0 0 0 1), `extrinsic <16 numbers>` (row-major 4x4 world -> camera, translation in mm) and
`radial 0`.
"""

from dataclasses import dataclass

import numpy as np

from datasets.mpi_inf_3dhp_labels import JOINTS_28_TO_17
from utils.errors import MetaPoseError

CALIBRATION_HEADER = "Skeletool Camera Calibration File"


@dataclass(frozen=True)
class Calibration:
    """One camera of a calibration file: frame size (width, height) px, pinhole intrinsics px,
    4x4 world -> camera extrinsic (mm), radial distortion coefficient."""

    camera: int
    size: tuple
    fx: float
    fy: float
    cx: float
    cy: float
    extrinsic: np.ndarray
    radial: float = 0.0


def _numbers(values, count, path, line_number, key):
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise MetaPoseError(f"calibration file '{path}' line {line_number}: '{key}' needs "
                            f"{count} numbers, found {' '.join(values)!r}.")
    return numbers


def _camera_from_block(block, path):
    name, line_number, fields = block
    for key in ("size", "intrinsic", "extrinsic"):
        if key not in fields:
            raise MetaPoseError(f"calibration file '{path}': camera '{name}' (line {line_number}) "
                                f"has no '{key}' line.")
    size = _numbers(fields["size"][0], 2, path, fields["size"][1], "size")
    intrinsic = np.array(_numbers(fields["intrinsic"][0], 16, path, fields["intrinsic"][1],
                                  "intrinsic")).reshape(4, 4)
    extrinsic = np.array(_numbers(fields["extrinsic"][0], 16, path, fields["extrinsic"][1],
                                  "extrinsic")).reshape(4, 4)
    pinhole = np.array([[intrinsic[0, 0], 0, intrinsic[0, 2], 0],
                        [0, intrinsic[1, 1], intrinsic[1, 2], 0],
                        [0, 0, 1, 0], [0, 0, 0, 1]])
    if not np.allclose(intrinsic, pinhole, atol=1e-6) or intrinsic[0, 0] <= 0 \
            or intrinsic[1, 1] <= 0 or min(size) <= 0:
        raise MetaPoseError(f"calibration file '{path}': camera '{name}' (line {line_number}) "
                            "has an intrinsic matrix that is not 'fx 0 cx 0 0 fy cy 0 0 0 1 0 0 0 "
                            "0 1' with positive focal lengths (or a non-positive size).")
    radial = _numbers(fields["radial"][0], 1, path, fields["radial"][1], "radial")[0] \
        if "radial" in fields else 0.0
    return Calibration(camera=int(name), size=(int(size[0]), int(size[1])),
                       fx=float(intrinsic[0, 0]), fy=float(intrinsic[1, 1]),
                       cx=float(intrinsic[0, 2]), cy=float(intrinsic[1, 2]), extrinsic=extrinsic,
                       radial=float(radial))


def read_calibration(path):
    """{camera id: Calibration} of a `camera.calibration` file (module docstring).

    Raises:
        MetaPoseError naming the file and line for a missing file, a wrong header, a block
        without name, size, intrinsic or extrinsic, malformed numbers or a duplicate camera.
    """
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise MetaPoseError(f"calibration file '{path}' does not exist.") from None
    except OSError as error:
        raise MetaPoseError(f"calibration file '{path}' cannot be read ({error}).") from None
    numbered = [(number, line.split()) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered or not lines[numbered[0][0] - 1].strip().startswith(CALIBRATION_HEADER):
        raise MetaPoseError(f"calibration file '{path}' does not start with the line "
                            f"'{CALIBRATION_HEADER} V1.0'; is it a camera.calibration file of "
                            "MPI-INF-3DHP?")
    blocks = []
    for number, tokens in numbered[1:]:
        key, values = tokens[0], tokens[1:]
        if key == "name":
            if len(values) != 1 or not values[0].isdigit():
                raise MetaPoseError(f"calibration file '{path}' line {number}: 'name' must be "
                                    f"followed by a camera number, found {' '.join(values)!r}.")
            blocks.append((values[0], number, {}))
        elif not blocks:
            raise MetaPoseError(f"calibration file '{path}' line {number}: '{key}' comes before "
                                "the first 'name <camera>' line.")
        else:
            blocks[-1][2][key] = (values, number)
    cameras = {}
    for block in blocks:
        camera = _camera_from_block(block, path)
        if camera.camera in cameras:
            raise MetaPoseError(f"calibration file '{path}' describes camera {camera.camera} "
                                "twice.")
        cameras[camera.camera] = camera
    if not cameras:
        raise MetaPoseError(f"calibration file '{path}' describes no camera.")
    return cameras


# ----------------------------------------------------------------------------------------------
# Annotations


def _loadmat(path):
    """The variables of a MATLAB v5 file (scipy), or None for a v7.3 (HDF5) file."""
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):  # v7.3 files are HDF5 (with or without MATLAB's 512-byte header)
        return None
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        return None
    except (ValueError, TypeError, OSError) as error:
        raise MetaPoseError(f"annotation file '{path}' cannot be read as a MATLAB file "
                            f"({type(error).__name__}: {error}).") from None


def _cells(variables, key, path):
    """The per-camera arrays of a cell variable, in cell order."""
    if key not in variables:
        raise MetaPoseError(f"annotation file '{path}' has no variable '{key}' (it has "
                            f"{sorted(k for k in variables if not k.startswith('__'))}).")
    cells = np.asarray(variables[key])
    if cells.dtype != object:
        raise MetaPoseError(f"annotation file '{path}': '{key}' is a {cells.dtype} array, "
                            "expected a cell array with one (frames x coordinates) matrix per "
                            "camera.")
    return [np.asarray(cell, dtype=np.float64) for cell in cells.reshape(-1)]


def read_train_annotation(path):
    """{camera id: (pixels (T, 17, 2), univ_annot3 joints (T, 17, 3) mm)} of a training
    `annot.mat`, the 17 joints of the evaluation (`JOINTS_28_TO_17`, 3DHP order).

    Cells are indexed by camera 0..13, or by the file's `cameras` variable when it has one.
    Raises:
        MetaPoseError naming the file, variable and camera for a v7.3 file, a missing
        variable, or a cell that is not (T, 28 x 2) / (T, 28 x 3).
    """
    variables = _loadmat(path)
    if variables is None:
        raise MetaPoseError(f"annotation file '{path}' is a MATLAB v7.3 (HDF5) file; the "
                            "training annotations of the release are MATLAB v5 files. Re-save "
                            "it from MATLAB with save(..., '-v7') or use the original file.")
    pixels, joints = _cells(variables, "annot2", path), _cells(variables, "univ_annot3", path)
    if len(pixels) != len(joints):
        raise MetaPoseError(f"annotation file '{path}': annot2 has {len(pixels)} cameras but "
                            f"univ_annot3 has {len(joints)}.")
    ids = list(range(len(pixels)))
    if "cameras" in variables:
        ids = [int(c) for c in np.asarray(variables["cameras"]).reshape(-1)]
        if len(ids) != len(pixels):
            raise MetaPoseError(f"annotation file '{path}': 'cameras' lists {len(ids)} cameras "
                                f"but annot2 has {len(pixels)} cells.")
    result = {}
    for camera, pixel_cell, joint_cell in zip(ids, pixels, joints):
        if pixel_cell.ndim != 2 or pixel_cell.shape[1] != 56 or joint_cell.ndim != 2 \
                or joint_cell.shape[1] != 84 or len(pixel_cell) != len(joint_cell):
            raise MetaPoseError(f"annotation file '{path}': camera {camera} has annot2 "
                                f"{pixel_cell.shape} and univ_annot3 {joint_cell.shape}, "
                                "expected (T, 56) and (T, 84) (28 joints per frame).")
        selected = list(JOINTS_28_TO_17)
        result[camera] = (pixel_cell.reshape(-1, 28, 2)[:, selected],
                          joint_cell.reshape(-1, 28, 3)[:, selected])
    return result


def _test_variables(path):
    """annot2, univ_annot3, valid_frame as numpy arrays in h5py's (reversed MATLAB) axis order."""
    import h5py

    keys = ("annot2", "univ_annot3", "valid_frame")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in keys if key not in handle]
            if missing:
                raise MetaPoseError(f"annotation file '{path}' has no dataset '{missing[0]}' (it "
                                    f"has {sorted(handle.keys())}).")
            return {key: np.asarray(handle[key][()], dtype=np.float64) for key in keys}
    except OSError:
        pass  # not HDF5: a MATLAB v5 file
    variables = _loadmat(path)
    if variables is None:
        raise MetaPoseError(f"annotation file '{path}' cannot be read as HDF5 or MATLAB v5.")
    missing = [key for key in keys if key not in variables]
    if missing:
        raise MetaPoseError(f"annotation file '{path}' has no variable '{missing[0]}'.")
    # MATLAB order (2, 17, 1, T) -> h5py's order (T, 1, 17, 2)
    return {key: np.asarray(variables[key], dtype=np.float64).transpose() for key in keys}


def read_test_annotation(path):
    """(pixels (T, 17, 2), univ_annot3 joints (T, 17, 3) mm, valid (T,) bool) of a test
    sequence's `annot_data.mat` (already the 17 joints, 3DHP order).

    Raises:
        MetaPoseError naming the file and variable for unreadable files, missing variables or
        shapes that are not (T, [1,] 17, 2|3) with T valid flags.
    """
    variables = _test_variables(path)
    arrays = []
    for key, width in (("annot2", 2), ("univ_annot3", 3)):
        array = variables[key]
        core = tuple(n for n in array.shape[1:] if n != 1)
        if array.ndim < 3 or core != (17, width):
            raise MetaPoseError(f"annotation file '{path}': '{key}' has shape {array.shape} "
                                f"(axes in HDF5 order), expected (T, 1, 17, {width}).")
        arrays.append(array.reshape(len(array), 17, width))
    valid = variables["valid_frame"].reshape(-1)
    if len(valid) != len(arrays[0]) or len(arrays[0]) != len(arrays[1]):
        raise MetaPoseError(f"annotation file '{path}': annot2 has {len(arrays[0])} frames, "
                            f"univ_annot3 {len(arrays[1])} and valid_frame {len(valid)}; they "
                            "must agree.")
    return arrays[0], arrays[1], valid > 0.5
