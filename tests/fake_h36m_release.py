"""A fake raw Human3.6M release in the real file formats, for tests/test_prepare_h36m.py and
benchmarks/prepare_speed.py: D3_Positions_mono CDF files in either layout, a cameras.h5 (h5py)
and VideoPose3D-style CPN detections, with the poses of the synthetic skeleton, and optionally
the full frames drawn by the synthetic renderer."""

import os

import cv2
import h5py
import numpy as np
from cdflib.cdfwrite import CDF

from datasets.camera import project, world_to_camera
from datasets.synthetic import _Sequence, make_background, make_camera, render_full_frame
from tools.prepare_h36m import CAMERA_NAMES, CPN_FILE, H36M_TO_17, canonical_name, image_name

SEED = 7  # of the synthetic skeleton and cameras
CPN_EXTRA_FRAMES = 3  # the detections run a few frames past the poses, as in the release


def _write_cdf(path, poses_32):
    cdf = CDF(path, delete=True)
    cdf.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_DOUBLE, "Num_Elements": 1,
                   "Rec_Vary": True, "Dim_Sizes": [len(poses_32), 96]},
                  var_data=poses_32.reshape(1, len(poses_32), 96))
    cdf.close()


def write_cameras_h5(path, subjects):
    """cameras.h5 as the H36M projects ship it: R stored transposed, f/c/k/p column vectors."""
    with h5py.File(path, "w") as handle:
        for subject in subjects:
            for camera_id, name in enumerate(CAMERA_NAMES):
                camera = make_camera(SEED, subject, camera_id)
                group = handle.create_group(f"subject{subject}/camera{camera_id + 1}")
                group["R"] = camera["R"].T
                group["T"] = camera["T"]
                group["f"] = np.array([[camera["fx"]], [camera["fy"]]])
                group["c"] = np.array([[camera["cx"]], [camera["cy"]]])
                group["k"], group["p"] = camera["k"], camera["p"]
                group["Name"] = np.array([ord(char) for char in name], dtype=np.uint8)


def write_fake_release(root, recordings, frames, images=True, no_frames=(), missing_frames=None,
                       no_cpn=()):
    """Writes the release under `root`.

    Args:
        recordings: {subject: (layout "official" or "toolbox", [(file name, action, subaction,
            camera ids with a pose file)])}.
        frames: frames per recording (one pose every 9 synthetic frames).
        images: also write the full frames under root/images.
        no_frames: {(subject, name, camera_id)} recordings without frames (a missing video).
        missing_frames: {(subject, name, camera_id): 0-based frames without an image}.
        no_cpn: {(subject, name)} recordings the CPN file has no entry for.
    Returns:
        ({(subject, name, camera_id): (T, 17, 3) camera-frame poses, mm},
         {same key: (T, 17, 2) CPN pixels}).
    """
    rng = np.random.default_rng(0)
    missing_frames = missing_frames or {}
    poses, detections, cpn = {}, {}, {}
    for subject, (layout, subject_recordings) in recordings.items():
        folder = os.path.join(root, f"S{subject}", *(
            ("MyPoseFeatures", "D3_Positions_mono") if layout == "official"
            else ("Poses_D3_Positions_mono",)))
        os.makedirs(folder)
        cpn[f"S{subject}"] = {}
        for name, action, subaction, cameras in subject_recordings:
            sequence = _Sequence(SEED, subject, action, subaction)
            world = np.stack([sequence.pose_at(1 + 9 * t) for t in range(frames)])
            per_camera = []
            for camera_id in range(4):
                camera = make_camera(SEED, subject, camera_id)
                joints = world_to_camera(world, camera["R"], camera["T"])
                key = (subject, name, camera_id)
                poses[key] = joints
                pixels = project(joints, camera["fx"], camera["fy"], camera["cx"], camera["cy"],
                                 camera["k"], camera["p"])
                detections[key] = pixels + rng.normal(0, 3, pixels.shape)
                per_camera.append(np.concatenate([detections[key],
                                                  np.zeros((CPN_EXTRA_FRAMES, 17, 2))]))
                if camera_id not in cameras:
                    continue
                poses_32 = rng.normal(0, 300, (frames, 32, 3)) + joints[:, :1]
                poses_32[:, list(H36M_TO_17)] = joints
                _write_cdf(os.path.join(folder, f"{name}.{CAMERA_NAMES[camera_id]}.cdf"),
                           poses_32)
                if images and key not in no_frames:
                    _write_frames(root, subject, action, subaction, camera_id, camera, joints,
                                  pixels, missing_frames.get(key, ()))
            if (subject, name) not in no_cpn:
                cpn[f"S{subject}"][canonical_name(name)] = per_camera
        _write_cdf(os.path.join(folder, "_ALL 1.54138969.cdf"), np.zeros((2, 32, 3)))
    write_cameras_h5(os.path.join(root, "cameras.h5"), recordings)
    np.savez_compressed(os.path.join(root, CPN_FILE), positions_2d=np.array(cpn, dtype=object),
                        metadata=np.array({"layout_name": "h36m"}, dtype=object))
    return poses, detections


def _write_frames(root, subject, action, subaction, camera_id, camera, joints, pixels, missing):
    background = make_background(SEED, subject, camera_id)
    for frame in range(len(joints)):
        if frame in missing:
            continue
        path = os.path.join(root, "images",
                            image_name(subject, action, subaction, camera_id, frame + 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        depth = (joints[frame, :, 2] - joints[frame, 0, 2]) / 1000.0
        image = render_full_frame(background, pixels[frame], depth,
                                  camera["fx"] / joints[frame, :, 2])
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 95])
