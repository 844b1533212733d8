"""Temporal smoothing of video predictions: people linked into tracks across consecutive frames
by box overlap, then each track's joints filtered with a centred Gaussian window.

The filter is zero-lag (the whole video is known) and keeps a constant or linearly moving joint
unchanged away from the ends; at a track's ends the window is cut and renormalised.
"""

import dataclasses
import math

import numpy as np

from inference.boxes import box_iou
from utils.errors import MetaPoseError

DEFAULT_MIN_IOU = 0.3
MAX_SIGMA = 1000.0  # frames; a wider window is a whole video's mean (documented in --smooth)


def link_tracks(frames, min_iou=DEFAULT_MIN_IOU):
    """Tracks over `frames` (a list of per-frame lists of Person): lists of (frame, person)
    index pairs. A person continues the track of the previous frame's person whose box overlaps
    it most (greedy by IoU, at least `min_iou`); otherwise it starts a track."""
    tracks, open_tracks = [], {}  # open: person index in the previous frame -> track
    for frame, people in enumerate(frames):
        pairs = sorted(((box_iou(frames[frame - 1][previous].box, person.box), previous, index)
                        for previous in open_tracks for index, person in enumerate(people)),
                       reverse=True) if frame else []
        taken_previous, continued = set(), {}
        for iou, previous, index in pairs:
            if iou < min_iou or previous in taken_previous or index in continued:
                continue
            taken_previous.add(previous)
            continued[index] = open_tracks[previous]
        open_tracks = {}
        for index in range(len(people)):
            track = continued.get(index)
            if track is None:
                track = []
                tracks.append(track)
            track.append((frame, index))
            open_tracks[index] = track
    return tracks


def check_sigma(sigma, where="--smooth"):
    """`sigma` as a float in [0, MAX_SIGMA] frames, else a MetaPoseError naming `where`."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_SIGMA):
        raise MetaPoseError(f"{where} {sigma!r} must be a number of frames between 0 (off) and "
                            f"{MAX_SIGMA:g}; it is the standard deviation of the Gaussian "
                            "filter over each person's track.")
    return value


def gaussian_smooth(series, sigma):
    """(T, ...) values smoothed along axis 0 with a centred Gaussian of `sigma` frames (window
    +-3 sigma, cut and renormalised at the ends, never longer than the series); sigma = 0
    returns a copy. Raises MetaPoseError for a sigma outside [0, MAX_SIGMA]."""
    sigma = check_sigma(sigma, "smoothing sigma")
    series = np.asarray(series, dtype=np.float64)
    if sigma == 0 or len(series) < 2:
        return series.copy()
    radius = min(int(math.ceil(3 * sigma)), len(series) - 1)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = np.empty_like(series)
    for t in range(len(series)):
        lo, hi = max(0, t - radius), min(len(series), t + radius + 1)
        weights = kernel[lo - t + radius:hi - t + radius]
        out[t] = np.tensordot(weights / weights.sum(), series[lo:hi], axes=1)
    return out


def with_track_ids(frames, min_iou=DEFAULT_MIN_IOU):
    """New per-frame lists of Person with `track_id` set: the index of the person's track in
    `link_tracks` (numbered by first appearance)."""
    numbered = [list(people) for people in frames]
    for number, track in enumerate(link_tracks(frames, min_iou)):
        for f, i in track:
            numbered[f][i] = dataclasses.replace(frames[f][i], track_id=number)
    return numbered


def smooth_people(frames, sigma, min_iou=DEFAULT_MIN_IOU):
    """New per-frame lists of Person whose 2D and 3D joints are smoothed along their tracks
    (`sigma` in frames) and whose `track_id` is set; boxes and scores are kept as predicted.
    Root-relative joints stay root-relative (the filter is linear)."""
    sigma = check_sigma(sigma, "smoothing sigma")
    smoothed = [list(people) for people in frames]
    for number, track in enumerate(link_tracks(frames, min_iou)):
        people = [frames[f][i] for f, i in track]
        joints_3d = gaussian_smooth([p.joints_3d for p in people], sigma)
        joints_2d = gaussian_smooth([p.joints_2d for p in people], sigma)
        raw = [p.joints_3d_raw for p in people]
        raw = gaussian_smooth(raw, sigma) if all(r is not None for r in raw) else raw
        for (f, i), person, j3, j2, r3 in zip(track, people, joints_3d, joints_2d, raw):
            smoothed[f][i] = dataclasses.replace(person, joints_3d=j3, joints_2d=j2,
                                                 joints_3d_raw=r3, track_id=number)
    return smoothed
