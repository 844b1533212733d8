"""The pieces of inference one by one: COCO -> H36M by its properties, heatmap decoding, boxes
and the crop map's inverse, smoothing and track linking, the person detector's filtering."""

import numpy as np
import pytest
import torch

from datasets.images import crop_to_full_frame, full_frame_to_crop
from inference.boxes import PersonDetector, box_to_center_scale, check_box, whole_frame_box
from inference.heatmaps import decode_heatmaps, heatmap_to_crop
from inference.keypoints import COCO_FLIP_PERMUTATION, check_keypoints, coco_to_h36m
from inference.predictor import Person
from inference.smoothing import gaussian_smooth, link_tracks, smooth_people
from utils.errors import MetaPoseError
from utils.skeleton import FLIP_PERMUTATION, LEFT_JOINTS, RIGHT_JOINTS

# COCO joints
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHO, R_SHO, L_HIP, R_HIP = 0, 1, 2, 3, 4, 5, 6, 11, 12
COCO_LEFT = (1, 3, 5, 7, 9, 11, 13, 15)
# H36M joints
PELVIS, R_HIP36, L_HIP36, BELLY, NECK, NOSE36, HEAD = 0, 1, 4, 7, 8, 9, 10


def random_coco(rng, width=640):
    return rng.uniform(0, width, size=(17, 2))


def mirror_x(points, axis_x):
    mirrored = points.copy()
    mirrored[..., 0] = 2 * axis_x - mirrored[..., 0]
    return mirrored


def test_symmetric_coco_gives_symmetric_h36m():
    rng = np.random.default_rng(0)
    axis = 320.0
    coco = random_coco(rng)
    coco[NOSE, 0] = axis
    for left in COCO_LEFT:  # every right joint is the mirror of its left twin
        coco[COCO_FLIP_PERMUTATION[left]] = mirror_x(coco[left], axis)
    h36m = coco_to_h36m(coco)
    for left, right in zip(LEFT_JOINTS, RIGHT_JOINTS):
        np.testing.assert_allclose(h36m[right], mirror_x(h36m[left], axis), atol=1e-9)
    for centre in (PELVIS, BELLY, NECK, NOSE36, HEAD):
        assert h36m[centre, 0] == pytest.approx(axis, abs=1e-9)


def test_flip_commutes_with_conversion_and_definitions_hold():
    rng = np.random.default_rng(1)
    coco = random_coco(rng)
    flipped_coco = mirror_x(coco, 99.5)[list(COCO_FLIP_PERMUTATION)]
    np.testing.assert_allclose(coco_to_h36m(flipped_coco),
                               mirror_x(coco_to_h36m(coco), 99.5)[list(FLIP_PERMUTATION)],
                               atol=1e-9)
    h36m = coco_to_h36m(coco)
    np.testing.assert_allclose(h36m[PELVIS], (coco[L_HIP] + coco[R_HIP]) / 2)
    np.testing.assert_allclose(h36m[NECK], (coco[L_SHO] + coco[R_SHO]) / 2)
    np.testing.assert_allclose(h36m[BELLY], (h36m[PELVIS] + h36m[NECK]) / 2)
    np.testing.assert_allclose(h36m[NOSE36], coco[NOSE])
    np.testing.assert_allclose(h36m[[R_HIP36, 2, 3, L_HIP36, 5, 6, 11, 12, 13, 14, 15, 16]],
                               coco[[12, 14, 16, 11, 13, 15, 5, 7, 9, 6, 8, 10]])
    # an affine map of the image (rotation, zoom, shift) commutes with the conversion
    angle, zoom, shift = 0.4, 1.7, np.array([12.0, -30.0])
    rotation = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(coco_to_h36m(coco @ rotation.T + shift), h36m @ rotation.T + shift,
                               atol=1e-9)


def test_head_lies_above_the_eyes_and_scores_take_the_weakest_source():
    coco = np.zeros((17, 2))
    coco[:, 1] = 300.0
    coco[NOSE] = (100, 110)
    coco[[L_EYE, R_EYE]] = [(110, 100), (90, 100)]
    coco[[L_EAR, R_EAR]] = [(120, 104), (80, 104)]
    h36m, scores = coco_to_h36m(coco, np.linspace(0.1, 0.9, 17))
    assert h36m[HEAD, 0] == pytest.approx(100.0) and h36m[HEAD, 1] < 100.0  # y points down
    assert scores[PELVIS] == pytest.approx(min(np.linspace(0.1, 0.9, 17)[[L_HIP, R_HIP]]))
    assert scores[NOSE36] == pytest.approx(0.1)


@pytest.mark.parametrize("values, message", [
    (np.zeros((16, 2)) + 50, "16 joints"),
    (np.full((17, 2), np.nan), "not finite"),
    (np.full((17, 2), 0.3), "normalised"),
    (np.full((17, 2), 5000.0), "17 lie outside the 640x480 frame"),
    ("junk", "not a list"),
])
def test_keypoint_checks(values, message):
    with pytest.raises(MetaPoseError, match=message):
        check_keypoints(values, 640, 480, "'kp.json' frame 'a.jpg'", "coco")


def test_decode_heatmaps_quarter_offset_and_border():
    height, width = 16, 12
    ys, xs = np.mgrid[0:height, 0:width]
    peaks = [(5.3, 7.0), (0.0, 3.0), (8.0, 9.8)]  # (x, y): right of 5, at the border, below 9
    maps = np.stack([np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0) for x, y in peaks])
    coords, maxima = decode_heatmaps(torch.tensor(maps[None]))
    np.testing.assert_allclose(coords[0].numpy(), [(5.25, 7.0), (0.0, 3.0), (8.0, 9.75)])
    assert maxima.shape == (1, 3) and float(maxima[0, 1]) == pytest.approx(1.0)
    crop = heatmap_to_crop(coords, (height, width))
    np.testing.assert_allclose(crop[0, 0].numpy(), (5.25 * 16, 7.0 * 16))


def test_boxes_and_the_inverse_crop_map():
    center, scale = box_to_center_scale([10, 20, 110, 420], padding=1.5)  # tall box
    np.testing.assert_allclose(center, (60, 220))
    np.testing.assert_allclose(scale * 200, (400 * 0.75 * 1.5, 400 * 1.5))
    square = box_to_center_scale([0, 0, 300, 300])[1] * 200
    assert square[0] == pytest.approx(300)  # a label's square box keeps its width: its own crop
    points = np.random.default_rng(2).uniform(0, 500, (17, 2))
    np.testing.assert_allclose(crop_to_full_frame(full_frame_to_crop(points, center, scale),
                                                  center, scale), points, atol=1e-9)
    corners = full_frame_to_crop([[0, 0], [639, 0]], *box_to_center_scale(whole_frame_box(640,
                                                                                          480)))
    np.testing.assert_allclose(corners[:, 0], (0, 191), atol=1e-9)  # frame edge to edge
    for box, message in (([0, 0, 5], "four"), ([5, 5, 1, 9], "reversed"),
                         ([700, 10, 800, 90], "outside"), ([np.nan, 0, 4, 4], "finite")):
        with pytest.raises(MetaPoseError, match=message):
            check_box(box, 640, 480, "box 0")


def person(box, value):
    return Person(joints_3d=np.full((17, 3), value), joints_2d=np.full((17, 2), value),
                  box=np.asarray(box, np.float64))


def test_track_linking_and_gaussian_smoothing():
    left, right = [0, 0, 10, 20], [50, 0, 60, 20]
    frames = [[person(left, 0), person(right, 10)], [person(right, 11), person(left, 1)],
              [person(left, 2)]]
    assert link_tracks(frames) == [[(0, 0), (1, 1), (2, 0)], [(0, 1), (1, 0)]]
    line = np.arange(20.0)[:, None] * np.array([1.0, -2.0])
    np.testing.assert_allclose(gaussian_smooth(line, 2.0)[6:14], line[6:14], atol=1e-9)
    noisy = np.random.default_rng(3).normal(size=(200, 3))
    assert gaussian_smooth(noisy, 2.0).std() < 0.5 * noisy.std()
    smoothed = smooth_people(frames, 1.0)
    assert smoothed[1][0].joints_3d[0, 0] == pytest.approx(10.5, abs=0.3)  # the right person
    assert frames[1][0].joints_3d[0, 0] == 11  # the input is left as it was


def test_detector_keeps_people_above_threshold_in_pixel_centre_coordinates():
    detector = PersonDetector("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random",
                              threshold=0.3)
    boxes, scores = detector([np.zeros((64, 80, 3), np.uint8)])[0]  # runs with random weights
    assert boxes.shape[1:] == (4,) and boxes.shape[0] == scores.shape[0]

    def fake(images):
        boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 9, 9], [1, 1, 4, 4.0], [2, 2, 3, 3]])
        return [{"boxes": boxes, "labels": torch.tensor([1, 3, 1, 1]),
                 "scores": torch.tensor([0.5, 0.9, 0.8, 0.1])}]

    detector.model = fake
    boxes, scores = detector([np.zeros((64, 80, 3), np.uint8)])[0]
    np.testing.assert_allclose(scores, (0.8, 0.5), rtol=1e-6)
    np.testing.assert_allclose(boxes[0], (0.5, 0.5, 3.5, 3.5))
    with pytest.raises(MetaPoseError, match="unknown detector"):
        PersonDetector("yolo")
