"""Synthetic H36M (docs/method.md §1.5): a posable 17-joint skeleton filmed by four H36M-like cameras.

`generate_synthetic` writes label pickles and JPEG images in exactly the format of the real
data (docs/method.md §1.1), so the whole pipeline runs on it without real data:

    out_dir/h36m_train.pkl         subjects 1, 5, 6, 7, 8
    out_dir/h36m_validation.pkl    subjects 9, 11
    out_dir/images/s_09_act_02_subact_01_ca_01/s_09_act_02_subact_01_ca_01_000001.jpg

What is simulated:
    * the skeleton: the 17 H36M joints (utils/skeleton.py order) with H36M-like bone lengths
      scaled per subject, posed by 26 joint angles (trunk, head, hips, knees, shoulders, elbows)
      clipped to human ranges. Each (subject, action, subaction) is a 50 fps sequence: a few key
      poses drawn from the action's tendencies (sitting bends hips and knees, phoning brings a
      hand to the ear, walking swings legs and arms, ...) blended over time, a gait cycle for the
      walking actions, and a random heading and position on the floor. The pose is a function of
      (sequence, frame) only, so every camera that films the same frame sees the same 3D pose.
    * the cameras: four per subject on a 5 m circle around the capture area, 1.4-1.7 m high,
      H36M-like intrinsics (fx ~ fy ~ 1145 px, principal point near (512, 515), small radial and
      tangential distortion), 1000 x 1002 frames; the root is 4-6 m from every camera.
    * the labels: 2D ground truth = projection (with distortion); "CPN detections" = ground
      truth plus a few pixels of noise and rare larger misses; the person box and crop from the
      root joint (datasets/camera.py).
    * the images: limbs drawn as anti-aliased strokes on a mildly textured background. Each
      joint's depth relative to the root, which the 2D coordinates lose, is visible at the joint:
      nearer parts are drawn thicker and brighter, farther ones thinner and darker, and nearer
      parts hide farther ones; the colour tells left (blue) from right (orange) and the trunk and
      head (green). So a model that reads the image can beat one that only sees 2D joints.

Crops (default) are drawn directly in 192 x 256 crop pixels; with `full_frames` the full
1000 x 1002 frame is drawn in frame pixels with the same strokes, so cropping a full frame
with `center`/`scale` gives nearly the crop-mode image (same background pixels, strokes that
differ only by rasterisation and JPEG noise).

Everything is a function of `seed` (and of the frame counts): the same arguments write
byte-identical files.
"""

import math
import os
import time

import cv2
import numpy as np

from datasets.camera import (
    apply_affine, box_from_root, crop_affine, pixels_to_screen, project, world_to_camera,
)
from datasets.coco_joints_file import write_coco_file
from datasets.label_writer import write_label_pickle
from datasets.labels import TRAIN_FILE, VAL_FILE
from utils.errors import MetaPoseError
from utils.skeleton import (
    ACTION_IDS, CROP_HEIGHT, CROP_WIDTH, LEFT_JOINTS, NUM_JOINTS, PARENTS, RIGHT_JOINTS,
    TRAIN_SUBJECTS, VALIDATION_SUBJECTS,
)

FRAME_WIDTH = 1000
FRAME_HEIGHT = 1002
FPS = 50.0
JPEG_QUALITY = 90
SUBACTIONS = (1, 2)
CAMERA_IDS = (0, 1, 2, 3)

# Separate random streams: every draw is np.random.default_rng([seed, DOMAIN, ...]).
_DOMAIN_ALLOCATION, _DOMAIN_SEQUENCE, _DOMAIN_JITTER = 1, 2, 3
_DOMAIN_CAMERA, _DOMAIN_BACKGROUND, _DOMAIN_DETECTION, _DOMAIN_KEY_POSE = 4, 5, 6, 7

# ----------------------------------------------------------------------------------------
# Skeleton
# ----------------------------------------------------------------------------------------

# H36M-like bone lengths of an average subject, millimetres.
BONE_LENGTHS_MM = {
    "hip": 133.0, "thigh": 450.0, "shin": 445.0, "spine": 235.0, "thorax": 255.0,
    "neck_nose": 115.0, "nose_head": 115.0, "shoulder": 150.0, "upper_arm": 280.0,
    "forearm": 250.0,
}
# Overall body size of each subject (S5 and S7 are the smaller actors in H36M).
SUBJECT_SCALES = {1: 0.98, 5: 0.93, 6: 1.04, 7: 0.95, 8: 1.02, 9: 1.01, 11: 0.99}


def subject_bones(subject):
    """Bone lengths (mm) of `subject`: the average scaled by SUBJECT_SCALES, +-3 % per bone.

    The per-bone proportions are a fixed property of the subject (not of the seed); left and
    right bones are equal, as in H36M.
    """
    rng = np.random.default_rng([0x5B0E5, int(subject)])
    scale = SUBJECT_SCALES[subject]
    return {name: length * scale * float(rng.uniform(0.97, 1.03))
            for name, length in BONE_LENGTHS_MM.items()}


# Joint angles in degrees. Body frame: x to the subject's right, y forward, z up.
# Limb angles exist per side: prefix r_ (right) or l_ (left).
TRUNK_PARAMS = ("spine_bend", "spine_side", "spine_twist", "chest_bend", "chest_side",
                "chest_twist", "head_pitch", "head_yaw")
LIMB_PARAMS = ("hip_flex", "hip_abd", "hip_twist", "knee",
               "arm_elev", "arm_azim", "arm_twist", "arm_swing", "elbow")
PARAMS = TRUNK_PARAMS + tuple(f"{side}_{name}" for side in "rl" for name in LIMB_PARAMS)
_INDEX = {name: index for index, name in enumerate(PARAMS)}

# Human ranges (degrees): flexion forward is positive for hips (thigh forward), spine (bending
# forward), head (looking down), knees and elbows; arm_elev is the angle of the upper arm from
# hanging down, arm_azim the direction it is raised towards (0 forward, 90 sideways, >90 back).
LIMITS = {
    "spine_bend": (-20, 75), "spine_side": (-25, 25), "spine_twist": (-35, 35),
    "chest_bend": (-15, 35), "chest_side": (-15, 15), "chest_twist": (-25, 25),
    "head_pitch": (-35, 45), "head_yaw": (-60, 60),
    "hip_flex": (-25, 125), "hip_abd": (-12, 45), "hip_twist": (-30, 30), "knee": (0, 150),
    "arm_elev": (0, 170), "arm_azim": (-45, 160), "arm_twist": (-60, 90), "arm_swing": (-45, 45),
    "elbow": (0, 150),
}

_STANDING = {
    "spine_bend": (5, 6), "spine_side": (0, 4), "spine_twist": (0, 8), "chest_bend": (3, 5),
    "chest_side": (0, 3), "chest_twist": (0, 6), "head_pitch": (8, 10), "head_yaw": (0, 18),
    "hip_flex": (4, 6), "hip_abd": (5, 4), "hip_twist": (0, 8), "knee": (6, 6),
    "arm_elev": (12, 8), "arm_azim": (40, 35), "arm_twist": (0, 25), "arm_swing": (0, 6),
    "elbow": (18, 15),
}
_SEATED = {"hip_flex": (88, 8), "knee": (88, 12), "hip_abd": (8, 5)}
_ON_THE_FLOOR = {"hip_flex": (105, 15), "knee": (118, 18), "hip_abd": (18, 10),
                 "spine_bend": (28, 12)}

# Action tendencies: (mean, std) in degrees overriding _STANDING. A plain limb name applies to
# both sides; "act_" names to the active arm only (one side per sequence, right 70 %). An action
# may alternate between several such postures ("modes") from key pose to key pose.
ACTION_POSTURES = {
    2: [{"act_arm_elev": (80, 15), "act_arm_azim": (30, 30), "act_elbow": (15, 12),
         "head_yaw": (0, 25)}],                                                    # Directions
    3: [{"arm_elev": (30, 12), "arm_azim": (20, 25), "elbow": (75, 25),
         "spine_twist": (0, 12)}],                                                 # Discussion
    4: [dict(_SEATED, arm_elev=(25, 10), arm_azim=(10, 15), elbow=(115, 20),
             spine_bend=(15, 8), head_pitch=(18, 10))],                            # Eating
    5: [{"act_arm_elev": (115, 20), "act_arm_azim": (60, 25), "act_arm_twist": (60, 20),
         "act_elbow": (70, 25)}],                                                  # Greeting
    6: [{"act_arm_elev": (40, 10), "act_arm_azim": (25, 15), "act_elbow": (140, 6),
         "head_yaw": (0, 15)},
        dict(_SEATED, act_arm_elev=(40, 10), act_arm_azim=(25, 15), act_elbow=(140, 6))],  # Phoning
    7: [{"arm_elev": (55, 30), "arm_azim": (80, 30), "elbow": (40, 30), "hip_abd": (14, 7),
         "spine_side": (0, 8), "head_yaw": (0, 25), "knee": (10, 10)}],              # Posing
    8: [{"arm_elev": (20, 10), "elbow": (70, 20), "spine_bend": (10, 8)}],           # Purchases
    9: [dict(_SEATED, spine_bend=(8, 10), arm_elev=(20, 10), arm_azim=(10, 15),
             elbow=(65, 20), head_pitch=(10, 12))],                                # Sitting
    10: [{"spine_bend": (20, 10), "knee": (25, 15), "hip_flex": (30, 15)},
         dict(_ON_THE_FLOOR, arm_elev=(35, 15), arm_azim=(40, 30), elbow=(45, 25))],  # SittingDown
    11: [{"act_arm_elev": (30, 10), "act_arm_azim": (15, 15), "act_elbow": (135, 8)},
         dict(_SEATED, act_arm_elev=(30, 10), act_arm_azim=(15, 15),
              act_elbow=(135, 8))],                                                # Smoking
    12: [{"arm_elev": (65, 10), "arm_azim": (5, 10), "elbow": (115, 12),
          "head_pitch": (-5, 8)}],                                                 # TakingPhoto
    13: [{"arm_elev": (10, 6), "elbow": (25, 25), "knee": (8, 8), "hip_abd": (6, 4),
          "spine_side": (0, 6), "head_yaw": (0, 30)}],                             # Waiting
    14: [{"arm_elev": (8, 4), "elbow": (20, 10)}],                                 # Walking
    15: [{"act_arm_elev": (40, 10), "act_arm_azim": (15, 15), "act_elbow": (25, 15),
          "spine_bend": (12, 6)}],                                                 # WalkDog
    16: [{"arm_elev": (8, 4), "elbow": (25, 10), "head_yaw": (0, 25)}],            # WalkTogether
}
# Actions that walk around the capture area, with the strength of their gait cycle.
GAIT = {8: 0.6, 14: 1.0, 15: 0.8, 16: 0.9}
_GAIT_AMPLITUDE = {"hip_flex": 25.0, "knee": 40.0, "arm_swing": 20.0, "spine_twist": 5.0}
_JITTER_DEG = 2.5


def _posture_mean_std(posture, active_side):
    """(mean, std) arrays over PARAMS for one posture (overrides on top of _STANDING)."""
    mean = np.zeros(len(PARAMS))
    std = np.zeros(len(PARAMS))
    for name in TRUNK_PARAMS:
        mean[_INDEX[name]], std[_INDEX[name]] = posture.get(name, _STANDING[name])
    for side in "rl":
        for name in LIMB_PARAMS:
            value = posture.get(name, _STANDING[name])
            if side == active_side and f"act_{name}" in posture:
                value = posture[f"act_{name}"]
            mean[_INDEX[f"{side}_{name}"]], std[_INDEX[f"{side}_{name}"]] = value
    return mean, std


def _sample_key_pose(rng, posture, active_side):
    """One key pose (degrees, over PARAMS): both sides share a draw, plus a smaller own part."""
    mean, std = _posture_mean_std(posture, active_side)
    pose = mean + std * rng.standard_normal(len(PARAMS))
    shared = rng.standard_normal(len(LIMB_PARAMS))
    for side_offset in (len(TRUNK_PARAMS), len(TRUNK_PARAMS) + len(LIMB_PARAMS)):
        block = slice(side_offset, side_offset + len(LIMB_PARAMS))
        own = rng.standard_normal(len(LIMB_PARAMS))
        pose[block] = mean[block] + std[block] * (0.8 * shared + 0.6 * own)
    return pose


def _clip_to_limits(pose):
    pose = pose.copy()
    for name, index in _INDEX.items():
        low, high = LIMITS[name[2:] if name[:2] in ("r_", "l_") else name]
        pose[index] = min(max(pose[index], low), high)
    for side in "rl":  # the arm cannot be lifted far backwards
        if pose[_INDEX[f"{side}_arm_azim"]] > 110:
            pose[_INDEX[f"{side}_arm_elev"]] = min(pose[_INDEX[f"{side}_arm_elev"]], 70)
    return pose


class _Sequence:
    """One (subject, action, subaction) performance: pose and root position as functions of time."""

    def __init__(self, seed, subject, action, subaction):
        rng = np.random.default_rng([seed, _DOMAIN_SEQUENCE, subject, action, subaction])
        self.key = (seed, subject, action, subaction)
        self.bones = subject_bones(subject)
        self.nposes = int(rng.integers(1000, 3500))
        self.active_side = "r" if rng.uniform() < 0.7 else "l"
        self.postures = ACTION_POSTURES[action]
        self.first_mode = int(rng.integers(len(self.postures)))
        self.key_period = float(rng.uniform(2.5, 5.0))  # seconds from one key pose to the next
        self.base_yaw = float(rng.uniform(0, 2 * np.pi))
        self.gait = GAIT.get(action, 0.0)
        self.gait_frequency = float(rng.uniform(0.8, 1.0))  # strides per second
        self.gait_phase = float(rng.uniform(0, 2 * np.pi))
        # walking actions go round a circle near the centre of the capture area
        self.path_radius = float(rng.uniform(0.3, 0.5))
        self.path_direction = 1.0 if rng.uniform() < 0.5 else -1.0
        self.path_speed = float(rng.uniform(0.4, 0.7)) / self.path_radius  # rad/s
        self.path_start = float(rng.uniform(0, 2 * np.pi))
        self._keys = {}

    def _key_pose(self, number):
        """Key pose `number` (0, 1, ...): (angles in degrees, (x, y) floor position m, yaw rad).

        Each key is drawn from its own random stream, so a sequence of any length is covered
        without repeating itself; consecutive keys alternate between the action's postures.
        """
        if number not in self._keys:
            rng = np.random.default_rng([self.key[0], _DOMAIN_KEY_POSE, *self.key[1:], number])
            posture = self.postures[(self.first_mode + number) % len(self.postures)]
            angles = _sample_key_pose(rng, posture, self.active_side)
            radius = 0.45 * math.sqrt(rng.uniform())  # stand or sit somewhere in the area
            angle = rng.uniform(0, 2 * np.pi)
            position = np.array([radius * math.cos(angle), radius * math.sin(angle)])
            yaw = self.base_yaw + math.radians(rng.normal(0, 35))
            self._keys[number] = (angles, position, yaw)
        return self._keys[number]

    def _blend(self, time_s):
        """The two key poses around `time_s` and the smooth weight of the second one."""
        position = time_s / self.key_period
        first = int(math.floor(position))
        fraction = position - first
        weight = fraction * fraction * (3.0 - 2.0 * fraction)
        return self._key_pose(first), self._key_pose(first + 1), weight

    def pose_at(self, image_id, with_face=False):
        """World joints (17, 3) in mm (z up, floor at z = 0) of frame `image_id` (1-based);
        with_face: also the (5, 3) face points of `face_points` (nose, eyes, ears), moved alike."""
        time_s = (image_id - 1) / FPS
        first, second, weight = self._blend(time_s)
        angles = (1.0 - weight) * first[0] + weight * second[0]
        jitter_rng = np.random.default_rng([self.key[0], _DOMAIN_JITTER, *self.key[1:], image_id])
        angles = angles + _JITTER_DEG * jitter_rng.standard_normal(len(PARAMS))
        if self.gait:
            phase = 2 * np.pi * self.gait_frequency * time_s + self.gait_phase
            amplitude = {name: value * self.gait for name, value in _GAIT_AMPLITUDE.items()}
            for side, sign in (("r", 1.0), ("l", -1.0)):
                angles[_INDEX[f"{side}_hip_flex"]] += sign * amplitude["hip_flex"] * np.sin(phase)
                swing = 0.5 + 0.5 * np.cos(phase - 0.3 + (0.0 if sign > 0 else np.pi))
                angles[_INDEX[f"{side}_knee"]] += amplitude["knee"] * swing ** 2
                angles[_INDEX[f"{side}_arm_swing"]] -= sign * amplitude["arm_swing"] * np.sin(phase)
            angles[_INDEX["spine_twist"]] += amplitude["spine_twist"] * np.sin(phase)
            path_angle = self.path_start + self.path_direction * self.path_speed * time_s
            position = self.path_radius * np.array([np.cos(path_angle), np.sin(path_angle)])
            yaw = path_angle + (0.0 if self.path_direction > 0 else np.pi)
        else:
            position = (1.0 - weight) * first[1] + weight * second[1]
            yaw = (1.0 - weight) * first[2] + weight * second[2]
        joints, face = pose_joints(_clip_to_limits(angles), self.bones, yaw, with_face=True)
        ankle_height = 80.0 * SUBJECT_SCALES[self.key[1]]
        lift = ankle_height - min(joints[3, 2], joints[6, 2])
        offset = np.array([position[0] * 1000.0, position[1] * 1000.0, lift])
        return (joints + offset, face + offset) if with_face else joints + offset


# The performance model, public for the synthetic MPI-INF-3DHP set (datasets/synthetic_3dhp.py).
Performance = _Sequence


# ----------------------------------------------------------------------------------------
# Forward kinematics
# ----------------------------------------------------------------------------------------

def _rot_x(degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(radians):
    c, s = math.cos(radians), math.sin(radians)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _arm_direction(elevation, azimuth, side_sign):
    """Rotation taking the hanging arm (0, 0, -1) to elevation/azimuth (degrees), shortest way."""
    theta, phi = math.radians(elevation), math.radians(azimuth)
    axis = np.array([math.cos(phi), -side_sign * math.sin(phi), 0.0])
    skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                     [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(theta) * skew + (1.0 - math.cos(theta)) * skew @ skew


_NOSE_DIRECTION = np.array([0.0, 0.45, 0.89]) / np.linalg.norm([0.0, 0.45, 0.89])
_HEAD_DIRECTION = np.array([0.0, -0.25, 0.97]) / np.linalg.norm([0.0, -0.25, 0.97])
_DOWN = np.array([0.0, 0.0, -1.0])
_UP = np.array([0.0, 0.0, 1.0])


# Face points in the head's frame (x right, y forward, z up), mm from joint 9 (the nose) for
# the average head: eyes above and beside the nose, ears on the sides of the skull behind them.
# COCO's head keypoints; docs/method.md §1.5. With these, the head joint of
# inference/keypoints.py's COCO -> H36M conversion lands within about 10 mm of joint 10.
FACE_NAMES = ("nose", "left eye", "right eye", "left ear", "right ear")
_FACE_OFFSETS_MM = np.array([[0.0, 0.0, 0.0], [-32.0, 0.0, 55.0], [32.0, 0.0, 55.0],
                             [-72.0, -50.0, 48.0], [72.0, -50.0, 48.0]])


def face_points(nose, head_rotation, bones):
    """(5, 3) nose, left eye, right eye, left ear, right ear in mm, from the nose joint and the
    head's rotation; the face scales with the subject's nose-to-head bone."""
    scale = bones["nose_head"] / BONE_LENGTHS_MM["nose_head"]
    return nose + (head_rotation @ (_FACE_OFFSETS_MM * scale).T).T


def pose_joints(angles, bones, yaw, with_face=False):
    """Forward kinematics: joint angles -> (17, 3) joints in mm, pelvis at the origin, z up.

    Args:
        angles: (len(PARAMS),) degrees, in PARAMS order.
        bones: bone lengths in mm (see `subject_bones`).
        yaw: heading in radians (rotation of the body about the vertical axis).
        with_face: also return the (5, 3) face points (`face_points`).
    """
    a = {name: angles[index] for name, index in _INDEX.items()}
    joints = np.zeros((NUM_JOINTS, 3))
    root = _rot_z(yaw)
    spine = root @ _rot_z(math.radians(a["spine_twist"])) @ _rot_y(a["spine_side"]) \
        @ _rot_x(-a["spine_bend"])
    joints[7] = spine @ _UP * bones["spine"]
    chest = spine @ _rot_z(math.radians(a["chest_twist"])) @ _rot_y(a["chest_side"]) \
        @ _rot_x(-a["chest_bend"])
    joints[8] = joints[7] + chest @ _UP * bones["thorax"]
    head = chest @ _rot_z(math.radians(a["head_yaw"])) @ _rot_x(-a["head_pitch"])
    joints[9] = joints[8] + head @ _NOSE_DIRECTION * bones["neck_nose"]
    joints[10] = joints[9] + head @ _HEAD_DIRECTION * bones["nose_head"]
    # (hip, knee, ankle) and (shoulder, elbow, wrist) joint indices per side; x points right.
    for side, sign, (hip, knee, ankle), (shoulder, elbow, wrist) in (
            ("r", 1.0, (1, 2, 3), (14, 15, 16)), ("l", -1.0, (4, 5, 6), (11, 12, 13))):
        joints[hip] = root @ np.array([sign * bones["hip"], 0.0, 0.0])
        thigh = root @ _rot_x(a[f"{side}_hip_flex"]) @ _rot_y(-sign * a[f"{side}_hip_abd"]) \
            @ _rot_z(math.radians(sign * a[f"{side}_hip_twist"]))
        joints[knee] = joints[hip] + thigh @ _DOWN * bones["thigh"]
        shin = thigh @ _rot_x(-a[f"{side}_knee"])
        joints[ankle] = joints[knee] + shin @ _DOWN * bones["shin"]
        joints[shoulder] = joints[8] + chest @ np.array([sign * bones["shoulder"], 0.0, -25.0])
        upper = chest @ _rot_x(a[f"{side}_arm_swing"]) \
            @ _arm_direction(a[f"{side}_arm_elev"], a[f"{side}_arm_azim"], sign) \
            @ _rot_z(math.radians(sign * a[f"{side}_arm_twist"]))
        joints[elbow] = joints[shoulder] + upper @ _DOWN * bones["upper_arm"]
        fore = upper @ _rot_x(a[f"{side}_elbow"])
        joints[wrist] = joints[elbow] + fore @ _DOWN * bones["forearm"]
    if with_face:
        return joints, face_points(joints[9], head, bones)
    return joints


# ----------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------

# H36M-like intrinsics of the four cameras: fx, fy, cx, cy, k (radial), p (tangential).
_INTRINSICS = (
    (1145.0, 1143.8, 512.5, 515.5, (-0.207, 0.248, -0.003), (-0.0009, -0.0029)),
    (1149.7, 1147.6, 508.8, 508.1, (-0.194, 0.240, 0.007), (-0.0016, -0.0027)),
    (1149.1, 1148.8, 519.8, 501.4, (-0.208, 0.255, -0.002), (-0.0008, -0.0015)),
    (1145.5, 1144.8, 515.0, 501.9, (-0.198, 0.218, -0.009), (-0.0006, -0.0008)),
)


def make_camera(seed, subject, camera_id):
    """The label `camera` dict (docs/method.md §1.1) of one subject's camera: R (3,3), T (3,1) mm world
    position (X_cam = R @ (X_world - T)), fx, fy, cx, cy (px), k (3,1), p (2,1).

    The cameras stand in the corners of the room, 4.85-5.15 m from its centre, 1.4-1.7 m high,
    looking at a point about 0.9 m above the floor near the centre.
    """
    rng = np.random.default_rng([seed, _DOMAIN_CAMERA, subject, camera_id])
    angle = np.radians(45.0 + 90.0 * camera_id + rng.uniform(-4, 4))
    radius = rng.uniform(4850.0, 5150.0)
    centre = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(1400, 1700)])
    target = np.array([rng.uniform(-100, 100), rng.uniform(-100, 100), rng.uniform(800, 1000)])
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, _UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    fx, fy, cx, cy, k, p = _INTRINSICS[camera_id]
    return {
        "R": np.stack([right, down, forward]), "T": centre.reshape(3, 1),
        "fx": fx, "fy": fy, "cx": cx, "cy": cy,
        "k": np.array(k, dtype=np.float64).reshape(3, 1),
        "p": np.array(p, dtype=np.float64).reshape(2, 1),
    }


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------

# Stroke radius (mm) of the bone ending at each joint (index = child joint); 0 = no bone.
_BONE_RADIUS_MM = np.array([0, 70, 60, 45, 70, 60, 45, 80, 80, 45, 60, 50, 40, 33, 50, 40, 33],
                           dtype=np.float64)
_JOINT_RADIUS_MM = np.array([75, 65, 55, 45, 65, 55, 45, 70, 70, 55, 65, 50, 42, 36, 50, 42, 36],
                            dtype=np.float64)
_SEGMENTS_PER_BONE = 3
_COLOURS_BGR = np.zeros((NUM_JOINTS, 3))
_COLOURS_BGR[:] = (90, 230, 90)  # trunk and head: green
_COLOURS_BGR[list(RIGHT_JOINTS)] = (40, 120, 255)  # right: orange
_COLOURS_BGR[list(LEFT_JOINTS)] = (255, 160, 40)  # left: blue
# Face discs (nose, left eye, right eye, left ear, right ear; the nose is joint 9's disc): pale
# eyes and full-colour ears, tinted by side like the limbs.
_FACE_RADIUS_MM = np.array([0.0, 16.0, 16.0, 22.0, 22.0])
_FACE_COLOURS_BGR = np.array([[0, 0, 0], [255, 225, 190], [190, 225, 255], [255, 160, 40],
                              [40, 120, 255]], dtype=np.float64)
_SHIFT = 4  # sub-pixel bits of cv2 drawing
_ONE = 1 << _SHIFT


def depth_brightness(depth_m):
    """Shade factor of a body part `depth_m` metres behind (+) or before (-) the root."""
    return np.clip(0.6 - 0.7 * np.asarray(depth_m), 0.2, 1.0)


def depth_thickness(depth_m):
    """Stroke width factor (on top of perspective) of a part `depth_m` metres behind the root."""
    return np.clip(1.0 - 0.5 * np.asarray(depth_m), 0.5, 1.6)


_CHILDREN = np.arange(1, NUM_JOINTS)
_PARENT_OF_CHILD = np.array(PARENTS[1:])
# Segment start / end / middle positions along a bone, (S,)
_SEGMENT_T0 = np.arange(_SEGMENTS_PER_BONE) / _SEGMENTS_PER_BONE
_SEGMENT_T1 = (np.arange(_SEGMENTS_PER_BONE) + 1) / _SEGMENTS_PER_BONE


def draw_skeleton(image, points, depth_m, pixels_per_mm, face=None):
    """Draws the body onto `image` (in place), farthest parts first.

    Every bone is drawn as a few anti-aliased strokes whose width (perspective size times
    `depth_thickness`) and shade (`depth_brightness`) follow the depth along the bone; every
    joint as a lighter disc. Parts nearer the camera cover farther ones.

    Args:
        image: (H, W, 3) uint8 BGR canvas (a crop or a full frame).
        points: (17, 2) joint pixels in that canvas (integer pixel centres).
        depth_m: (17,) joint depth minus root depth, metres (camera z).
        pixels_per_mm: (17,) canvas pixels per millimetre at each joint (focal / depth [* zoom]).
        face: optional (points (5, 2), depth_m (5,), pixels_per_mm (5,)) of the face points
            (`FACE_NAMES`): the eyes and ears are drawn as small discs in the same depth order,
            so they show on the side of the head that faces the camera.
    """
    points = np.asarray(points, dtype=np.float64)
    depth_m = np.asarray(depth_m, dtype=np.float64)
    pixels_per_mm = np.asarray(pixels_per_mm, dtype=np.float64)
    parent, child = _PARENT_OF_CHILD[:, None], _CHILDREN[:, None]  # (16, 1)
    mid = 0.5 * (_SEGMENT_T0 + _SEGMENT_T1)[None, :]  # (1, S)

    def along(values, t):  # values at parent -> child, interpolated at t: (16, S, ...)
        t = t[..., None] if values.ndim == 2 else t
        return (1.0 - t) * values[parent] + t * values[child]

    segment_depth = along(depth_m, mid)  # (16, S)
    widths = np.maximum(1, np.rint(2.0 * _BONE_RADIUS_MM[child] * along(pixels_per_mm, mid)
                                   * depth_thickness(segment_depth))).astype(int)
    colours = _COLOURS_BGR[_CHILDREN][:, None, :] * depth_brightness(segment_depth)[..., None]
    starts = _to_fixed(along(points, np.broadcast_to(_SEGMENT_T0[None, :], mid.shape)))
    ends = _to_fixed(along(points, np.broadcast_to(_SEGMENT_T1[None, :], mid.shape)))
    joint_shade = depth_brightness(depth_m)[:, None]
    joint_colours = (0.7 * _COLOURS_BGR + 0.3 * 255.0) * joint_shade
    radii = np.maximum(_ONE, np.rint(_JOINT_RADIUS_MM * pixels_per_mm * depth_thickness(depth_m)
                                     * _ONE)).astype(int)
    centres = _to_fixed(points)
    discs = [(centres[j], radii[j], joint_colours[j]) for j in range(NUM_JOINTS)]
    disc_depth = [depth_m - 1e-3]
    if face is not None:
        face_px, face_depth, face_ppm = (np.asarray(value, dtype=np.float64) for value in face)
        face_radii = np.maximum(_ONE, np.rint(_FACE_RADIUS_MM * face_ppm
                                              * depth_thickness(face_depth) * _ONE)).astype(int)
        face_colours = _FACE_COLOURS_BGR * depth_brightness(face_depth)[:, None] / 0.6
        discs += list(zip(_to_fixed(face_px), face_radii, face_colours))[1:]  # eyes and ears
        disc_depth.append(face_depth[1:] - 2e-3)
    # draw order: farthest first; a joint's disc goes just above the strokes at its depth
    order = np.argsort(-np.concatenate([segment_depth.ravel(), *disc_depth]), kind="stable")
    segments = segment_depth.size
    for item in order.tolist():
        if item < segments:
            bone, piece = divmod(item, _SEGMENTS_PER_BONE)
            cv2.line(image, tuple(starts[bone][piece]), tuple(ends[bone][piece]),
                     _colour(colours[bone, piece]), int(widths[bone, piece]), cv2.LINE_AA,
                     _SHIFT)
        else:
            centre, radius, colour = discs[item - segments]
            cv2.circle(image, tuple(centre), int(radius), _colour(colour), -1, cv2.LINE_AA,
                       _SHIFT)


def _to_fixed(points):
    """Pixel coordinates (..., 2) -> nested lists of cv2 fixed-point integers."""
    return np.rint(np.asarray(points) * _ONE).astype(np.int64).tolist()


def _colour(colour):
    return tuple(min(max(float(value), 0.0), 255.0) for value in colour)


def make_background(seed, subject, camera_id):
    """(1002, 1000, 3) uint8 BGR full-frame background of one subject's camera: a tinted wall
    and a darker tiled floor with soft blotches (built at half resolution, then enlarged)."""
    rng = np.random.default_rng([seed, _DOMAIN_BACKGROUND, subject, camera_id])
    half = (FRAME_WIDTH // 2, FRAME_HEIGHT // 2)
    base = np.float32(rng.uniform(75, 120)) + rng.uniform(-12, 12, 3).astype(np.float32)
    light = cv2.resize(rng.standard_normal((7, 7), dtype=np.float32), half,
                       interpolation=cv2.INTER_CUBIC)[..., None] * np.float32(14.0)
    tint = cv2.resize(rng.standard_normal((5, 5, 3), dtype=np.float32), half,
                      interpolation=cv2.INTER_CUBIC) * np.float32(5.0)
    speckle = cv2.resize(rng.standard_normal((48, 48), dtype=np.float32), half,
                         interpolation=cv2.INTER_LINEAR)[..., None] * np.float32(5.0)
    rows = np.arange(half[1], dtype=np.float32)[:, None] * np.float32(2.0)
    cols = np.arange(half[0], dtype=np.float32)[None, :] * np.float32(2.0)
    floor = (rows > np.float32(rng.uniform(380, 470))).astype(np.float32)
    tiles = np.sign(np.sin(cols / np.float32(37.0) + rows / np.float32(91.0))
                    * np.sin(rows / np.float32(23.0))) * np.float32(5.0) * floor
    shade = (tiles - np.float32(25.0) * floor)[..., None]
    image = np.clip(base + light + tint + speckle + shade, 0, 255).astype(np.uint8)
    return cv2.resize(image, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_LINEAR)


_FRAME_MASKS = {}


def _frame_mask(shape):
    """(H, W) uint8 all 255: warped like the background, it shows where the frame ends."""
    if shape not in _FRAME_MASKS:
        _FRAME_MASKS[shape] = np.full(shape, 255, dtype=np.uint8)
    return _FRAME_MASKS[shape]


def render_crop(background, matrix, points_px, depth_m, pixels_per_mm, face=None):
    """(256, 192, 3) uint8 BGR crop drawn directly in crop pixels.

    Args:
        background: full-frame background (see `make_background`; any frame size).
        matrix: (2, 3) full-frame -> crop affine (`crop_affine`).
        points_px: (17, 2) joints in full-frame pixels; depth_m, pixels_per_mm as in
            `draw_skeleton` (pixels_per_mm in full-frame pixels; the zoom is applied here).
        face: optional (points (5, 2) full-frame pixels, depth_m (5,), pixels_per_mm (5,)) of
            the face points, as `draw_skeleton` takes them (in full-frame pixels here).
    Outside the full frame the crop is black, as a crop of the full frame would be.
    """
    size = (CROP_WIDTH, CROP_HEIGHT)
    canvas = cv2.warpAffine(background, matrix, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    plain = canvas.copy()
    zoom = matrix[0, 0]
    if face is not None:
        face = (apply_affine(face[0], matrix), face[1], np.asarray(face[2]) * zoom)
    draw_skeleton(canvas, apply_affine(points_px, matrix), depth_m, pixels_per_mm * zoom, face)
    height, width = background.shape[:2]
    corners = apply_affine([[-0.5, -0.5], [width - 0.5, height - 0.5]], matrix)
    if corners[0, 0] > 0 or corners[0, 1] > 0 or corners[1, 0] < CROP_WIDTH - 1 \
            or corners[1, 1] < CROP_HEIGHT - 1:  # the crop reaches past the frame's edge
        inside = cv2.warpAffine(_frame_mask((height, width)), matrix, size,
                                flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0) == 255
        canvas = np.where(inside[..., None], canvas, plain)
    return canvas


def render_full_frame(background, points_px, depth_m, pixels_per_mm, face=None):
    """(1002, 1000, 3) uint8 BGR full frame drawn in frame pixels."""
    canvas = background.copy()
    draw_skeleton(canvas, points_px, depth_m, pixels_per_mm, face)
    return canvas


# ----------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------

def sequence_name(subject, action, subaction, camera_id):
    """'s_01_act_02_subact_01_ca_01' (camera ids 0..3 are written 01..04)."""
    return f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera_id + 1:02d}"


def image_name(subject, action, subaction, camera_id, image_id):
    """Relative image path 's_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000001.jpg'."""
    folder = sequence_name(subject, action, subaction, camera_id)
    return f"{folder}/{folder}_{image_id:06d}.jpg"


def _detection_noise(seed, video, image_id):
    """(17, 2) pixel error of the simulated CPN detector for one image."""
    rng = np.random.default_rng([seed, _DOMAIN_DETECTION, *video, image_id])
    sigma = np.full((NUM_JOINTS, 1), 2.5)
    sigma[[3, 6, 13, 16]] = 4.5  # ankles and wrists are harder
    sigma[[2, 5, 12, 15, 9, 10]] = 3.5
    noise = rng.standard_normal((NUM_JOINTS, 2)) * sigma
    misses = rng.uniform(size=NUM_JOINTS) < 0.02  # rare larger errors
    noise[misses] += rng.standard_normal((int(misses.sum()), 2)) * 12.0
    return noise


def _allocate(seed, split_code, subjects, frames):
    """[(subject, action, subaction, camera_id, video_id, image_ids)] spreading `frames` over
    all sequences and cameras: a seeded permutation of the videos is cycled, so even a few
    frames cover many subjects, actions and cameras. Cameras film different instants of a
    sequence, so every frame shows its own pose."""
    videos = [(subject, action, subaction, camera_id)
              for subject in subjects for action in ACTION_IDS
              for subaction in SUBACTIONS for camera_id in CAMERA_IDS]
    order = np.random.default_rng([seed, _DOMAIN_ALLOCATION, split_code]).permutation(len(videos))
    counts = np.zeros(len(videos), dtype=np.int64)
    np.add.at(counts, order[np.arange(frames) % len(videos)], 1)
    per_video = -(-frames // len(videos))  # ceil
    plan = []
    for video_id, (video, count) in enumerate(zip(videos, counts)):
        if count:
            plan.append((*video, video_id, int(count), per_video))
    return plan


def _split_entries(seed, split_code, subjects, frames, out_dir, full_frames, backgrounds):
    """(label entries, (N, 17, 2) COCO-17 crop pixels) of one split; writes its images."""
    entries, coco = [], []
    sequences = {}
    for subject, action, subaction, camera_id, video_id, count, per_video in \
            _allocate(seed, split_code, subjects, frames):
        if (subject, action, subaction) not in sequences:
            sequences[(subject, action, subaction)] = _Sequence(seed, subject, action, subaction)
        sequence = sequences[(subject, action, subaction)]
        nposes = max(sequence.nposes, 4 * per_video + 4)
        camera = make_camera(seed, subject, camera_id)
        if (subject, camera_id) not in backgrounds:
            backgrounds[(subject, camera_id)] = make_background(seed, subject, camera_id)
        background = backgrounds[(subject, camera_id)]
        folder = os.path.join(out_dir, "images", sequence_name(subject, action, subaction,
                                                               camera_id))
        os.makedirs(folder, exist_ok=True)
        for index in range(count):
            # instants spread over the sequence, offset per camera
            image_id = 1 + int((index + (camera_id + 0.5) / 4.0) * nposes / count)
            entry, points_px, face = _make_entry(seed, sequence, camera, camera_id, video_id,
                                                 image_id, nposes)
            image = _render(entry, points_px, face, camera, background, full_frames)
            coco.append(coco_joints(entry["joints_2d_gt_crop"], apply_affine(
                face[0], crop_affine(entry["center"], entry["scale"]))))
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {entry['image']}")
            with open(os.path.join(out_dir, "images", entry["image"]), "wb") as handle:
                handle.write(encoded.tobytes())
            entries.append(entry)
    return entries, np.array(coco, dtype=np.float32).reshape(-1, 17, 2)


def _make_entry(seed, sequence, camera, camera_id, video_id, image_id, nposes):
    _, subject, action, subaction = sequence.key
    joints_world, face_world = sequence.pose_at(image_id, with_face=True)
    joints_cam = world_to_camera(joints_world, camera["R"], camera["T"])  # mm
    face_cam = world_to_camera(face_world, camera["R"], camera["T"])
    intrinsics = (camera["fx"], camera["fy"], camera["cx"], camera["cy"])
    gt_px = project(joints_cam, *intrinsics, k=camera["k"], p=camera["p"])
    face = camera_face(face_cam, joints_cam[0, 2], camera["fx"],
                       project(face_cam, *intrinsics, k=camera["k"], p=camera["p"]))
    cpn_px = gt_px + _detection_noise(seed, (subject, action, subaction, camera_id), image_id)
    center, scale, box = box_from_root(joints_cam[0], *intrinsics)
    matrix = crop_affine(center, scale)
    entry = {
        "image": image_name(subject, action, subaction, camera_id, image_id),
        "joints_3d": joints_cam / 1000.0,
        "joints_2d_gt": pixels_to_screen(gt_px, FRAME_WIDTH, FRAME_HEIGHT),
        "joints_2d_cpn": pixels_to_screen(cpn_px, FRAME_WIDTH, FRAME_HEIGHT),
        "joints_2d_gt_crop": apply_affine(gt_px, matrix),
        "joints_2d_cpn_crop": apply_affine(cpn_px, matrix),
        "subject": int(subject),
        "action": int(action),
        "subaction": int(subaction),
        "camera_id": int(camera_id),
        "image_id": int(image_id),
        "video_id": int(video_id),
        "camera": {key: (value.copy() if isinstance(value, np.ndarray) else float(value))
                   for key, value in camera.items()},
        "center": center,
        "scale": scale,
        "box": box,
        "joints_vis": np.ones((NUM_JOINTS, 3)),
        "source": "h36m",
        "nposes": int(nposes),
    }
    return entry, gt_px, face


def camera_face(face_cam, root_depth_mm, focal, face_px):
    """The `face` argument of `draw_skeleton` from the (5, 3) camera-frame face points (mm),
    the root's depth (mm), the focal length (px) and the points' (5, 2) frame pixels."""
    return face_px, (face_cam[:, 2] - root_depth_mm) / 1000.0, focal / face_cam[:, 2]


def coco_joints(h36m_points, face_points_2d):
    """(17, 2) COCO-17 joints (inference/keypoints.py's COCO_NAMES order) from the (17, 2) H36M
    joints and the (5, 2) face points (nose, eyes, ears) in the same pixels."""
    h36m_points = np.asarray(h36m_points, dtype=np.float64)
    return np.concatenate([np.asarray(face_points_2d, dtype=np.float64),
                           h36m_points[list(_COCO_BODY_FROM_H36M)]])


def _render(entry, points_px, face, camera, background, full_frames):
    """The image of one entry: `points_px` (17, 2) are its ground-truth joints in frame pixels,
    `face` its face points (`camera_face`)."""
    joints_mm = entry["joints_3d"] * 1000.0
    depth_m = (joints_mm[:, 2] - joints_mm[0, 2]) / 1000.0
    pixels_per_mm = camera["fx"] / joints_mm[:, 2]
    if full_frames:
        return render_full_frame(background, points_px, depth_m, pixels_per_mm, face)
    return render_crop(background, crop_affine(entry["center"], entry["scale"]), points_px,
                       depth_m, pixels_per_mm, face)


# The H36M joint of every COCO body joint, COCO order from the left shoulder (index 5) on.
_COCO_BODY_FROM_H36M = (11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3)


def write_pickle(entries, path):
    """Pickles `entries` (a list of label dicts) to `path` atomically, with the user's umask
    (datasets/label_writer.py: the same writer as tools/prepare_h36m.py)."""
    write_label_pickle(entries, path)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MetaPoseError(f"synthetic data: {name} must be a positive integer, got {value!r}. "
                            "Set data.synthetic.train_frames / val_frames (or --train-frames / "
                            "--val-frames) to at least 1.")


def prepare_output(out_dir, train_frames, val_frames, seed):
    """Checks a generator's arguments and creates `out_dir`/images (both synthetic sets).

    Raises:
        MetaPoseError for non-positive counts, a negative seed or an unwritable folder.
    """
    _check_count("train_frames", train_frames)
    _check_count("val_frames", val_frames)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MetaPoseError(f"synthetic data: seed must be a non-negative integer, got {seed!r}.")
    try:
        os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    except OSError as error:
        raise MetaPoseError(f"synthetic data: cannot create the output folder '{out_dir}' "
                            f"({error}). Choose a writable folder (--out / data.root).") from None


def generate_synthetic(out_dir, train_frames, val_frames, seed, full_frames=False, verbose=True,
                       train_file=TRAIN_FILE, val_file=VAL_FILE):
    """Writes a synthetic H36M set in the label and image format of docs/method.md §1.1.

    Args:
        out_dir: output folder (created); receives the label pickles `train_file` and `val_file`
            and images/<sequence>/<sequence>_<frame>.jpg.
        train_frames: entries of subjects 1, 5, 6, 7, 8 (>= 1).
        val_frames: entries of subjects 9, 11 (>= 1).
        seed: integer; the same arguments give byte-identical files.
        full_frames: write full 1000 x 1002 frames instead of 256 x 192 crops.
        verbose: print the counts, sizes and time.
        train_file, val_file: label file names inside `out_dir` (default: the names that
            tools/prepare_h36m.py writes).
    Returns:
        dict with train_frames, val_frames, seconds, train_file, val_file, image_dir.
    Raises:
        MetaPoseError for non-positive counts or a negative seed.
    """
    start = time.perf_counter()
    prepare_output(out_dir, train_frames, val_frames, seed)
    backgrounds = {}
    summary = {"image_dir": os.path.join(out_dir, "images")}
    for split_code, (split, subjects, frames, file_name) in enumerate((
            ("train", TRAIN_SUBJECTS, train_frames, train_file),
            ("validation", VALIDATION_SUBJECTS, val_frames, val_file))):
        entries, coco = _split_entries(int(seed), split_code, subjects, int(frames), out_dir,
                                       full_frames, backgrounds)
        path = os.path.join(out_dir, file_name)
        write_pickle(entries, path)
        write_coco_file(path, [entry["image"] for entry in entries], coco)
        summary[f"{'train' if split == 'train' else 'val'}_frames"] = len(entries)
        summary[f"{'train' if split == 'train' else 'val'}_file"] = path
        if verbose:
            print(f"synthetic H36M {split}: {len(entries)} frames of subjects "
                  f"{', '.join(map(str, subjects))} -> {path} "
                  f"({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    summary["seconds"] = time.perf_counter() - start
    if verbose:
        kind = "full 1000x1002 frames" if full_frames else "256x192 crops"
        print(f"synthetic H36M: {summary['train_frames']} train + {summary['val_frames']} "
              f"validation frames ({kind}) written to {out_dir} in {summary['seconds']:.1f} s",
              flush=True)
    return summary
