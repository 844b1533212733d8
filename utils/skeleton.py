"""The H36M 17-joint skeleton, its left/right pairs, body parts and the 15 action labels."""

NUM_JOINTS = 17

JOINT_NAMES = (
    "pelvis", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
    "belly", "neck", "nose", "head", "left shoulder", "left elbow", "left wrist",
    "right shoulder", "right elbow", "right wrist",
)

# Parent of each joint (pelvis is the root); used for drawing and bone lengths.
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)

LEFT_JOINTS = (4, 5, 6, 11, 12, 13)
RIGHT_JOINTS = (1, 2, 3, 14, 15, 16)


def _flip_permutation():
    perm = list(range(NUM_JOINTS))
    for left, right in zip(LEFT_JOINTS, RIGHT_JOINTS):
        perm[left], perm[right] = right, left
    return tuple(perm)


# joints_flipped = joints[..., FLIP_PERMUTATION, :] swaps every left joint with its right twin.
FLIP_PERMUTATION = _flip_permutation()

BODY_PARTS = (
    "body", "leg", "leg", "leg", "leg", "leg", "leg",
    "body", "body", "head", "head", "arm", "arm", "arm", "arm", "arm", "arm",
)

# H36M action ids 2..16 (sub-actions merged); id 1 is unused in the release.
ACTION_NAMES = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
    8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "TakingPhoto",
    13: "Waiting", 14: "Walking", 15: "WalkDog", 16: "WalkTogether",
}
ACTION_IDS = tuple(sorted(ACTION_NAMES))
FIRST_ACTION_ID = ACTION_IDS[0]
NUM_ACTIONS = len(ACTION_IDS)

TRAIN_SUBJECTS = (1, 5, 6, 7, 8)
VALIDATION_SUBJECTS = (9, 11)
ALL_SUBJECTS = TRAIN_SUBJECTS + VALIDATION_SUBJECTS

# Crop geometry shared by the data and the model: crop pixels are (x in [0, 192), y in [0, 256)).
CROP_WIDTH = 192
CROP_HEIGHT = 256
