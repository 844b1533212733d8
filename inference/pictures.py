"""The pictures of tools/infer.py: each frame with its people's boxes, numbers and 2D skeletons,
beside their 3D skeletons in one fixed cube for the whole run.

Speed: the frame panel is drawn with OpenCV at its output size; the 3D panel is one matplotlib
figure per output height, built once: its axes, panes, ground and labels are rendered once and
kept as a background, and each frame only restores that background and draws its skeleton lines
onto it (blitting). benchmarks/rendering.py measures it against a figure built for every frame.

Layout: the output is as tall as the input frame, within [MIN_HEIGHT, MAX_HEIGHT] pixels; the
frame panel keeps the frame's aspect, at most MAX_FRAME_PANEL_WIDTH wide (a wider frame is
letterboxed); the 3D panel is square. Width and height are even (H.264 needs that).

The 3D cube: root-relative joints (the pelvis at the origin), CUBE_HALF_SIZE metres each way
(a 2 m cube), the same for every frame of a run; several people stand side by side, person k
shifted by k * PERSON_SPACING along X, and the cube widened along X to hold the most people
any frame of the run has. An optional ground grid lies GROUND_DEPTH below the pelvis (a standing
adult's hip height).
"""

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede any pyplot import

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils.skeleton import LEFT_JOINTS, NUM_JOINTS, PARENTS, RIGHT_JOINTS  # noqa: E402

MIN_HEIGHT, MAX_HEIGHT = 360, 1080  # output height in pixels
MAX_FRAME_PANEL_WIDTH = 1920
CUBE_HALF_SIZE = 1.0  # metres
PERSON_SPACING = 1.0  # metres between people along X
GROUND_DEPTH = 0.95  # metres below the pelvis

# colours (RGB): left side blue, right side red, centre grey, missing joints pale
LEFT_RGB, RIGHT_RGB, CENTRE_RGB = (31, 119, 180), (214, 39, 40), (127, 127, 127)
MISSING_RGB = (200, 200, 200)
BOX_RGB = (255, 200, 0)
BONES = [(parent, joint) for joint, parent in enumerate(PARENTS) if parent >= 0]


def joint_rgb(joint):
    if joint in LEFT_JOINTS:
        return LEFT_RGB
    if joint in RIGHT_JOINTS:
        return RIGHT_RGB
    return CENTRE_RGB


def _even(value):
    return max(2, int(round(value / 2.0)) * 2)


def output_layout(width, height):
    """(output height, frame panel width, frame size inside the panel (w, h)) for a width x
    height input frame (module docstring)."""
    out_height = _even(min(max(height, MIN_HEIGHT), MAX_HEIGHT))
    scale = out_height / height
    if width * scale > MAX_FRAME_PANEL_WIDTH:
        scale = MAX_FRAME_PANEL_WIDTH / width
    inner = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    return out_height, _even(inner[0]), inner


def _plot_coordinates(joints):
    """Camera axes (x right, y down, z forward) -> plot axes (x, z depth, -y up)."""
    joints = np.asarray(joints, dtype=np.float64)
    return np.stack([joints[:, 0], joints[:, 2], -joints[:, 1]], axis=1)


class Pose3DPanel:
    """The square 3D panel of one output height: a matplotlib figure built once, with a pool of
    line and text artists that each frame moves (blitting onto the cached background)."""

    def __init__(self, size_px, max_people, ground=True):
        self.size_px, self.max_people = int(size_px), max(1, int(max_people))
        dpi = 100.0
        self.figure = Figure(figsize=(self.size_px / dpi, self.size_px / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0.0, 0.02, 1.0, 0.92), projection="3d")
        self._static_scene(ground)
        self.lines, self.texts = [], []
        for _ in range(self.max_people):
            bones = []
            for parent, joint in BONES:
                line, = self.axes.plot([0, 0], [0, 0], [0, 0], linewidth=2,
                                       color=np.array(joint_rgb(joint)) / 255.0, animated=True)
                bones.append(line)
            self.lines.append(bones)
            self.texts.append(self.axes.text(0, 0, 0, "", fontsize=9, animated=True,
                                             ha="center", va="bottom"))
        self.canvas.draw()  # renders the static scene and fixes the projection
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)

    def _static_scene(self, ground):
        axes = self.axes
        half, width = CUBE_HALF_SIZE, PERSON_SPACING * (self.max_people - 1)
        axes.set_xlim(-half, half + width)
        axes.set_ylim(-half, half)
        axes.set_zlim(-half, half)
        axes.set_box_aspect((2 * half + width, 2 * half, 2 * half), zoom=1.15)
        axes.set_xlabel("X (m)", fontsize=7, labelpad=-4)
        axes.set_ylabel("Z depth (m)", fontsize=7, labelpad=-4)
        axes.set_zlabel("-Y up (m)", fontsize=7, labelpad=-4)
        axes.tick_params(labelsize=6, pad=-1)
        axes.view_init(elev=15, azim=-70)
        if ground:
            ticks = np.arange(-half, half + width + 1e-9, 0.5)
            depth = np.arange(-half, half + 1e-9, 0.5)
            for x in ticks:
                axes.plot([x, x], [-half, half], [-GROUND_DEPTH] * 2, color="0.8", linewidth=0.6)
            for y in depth:
                axes.plot([-half, half + width], [y, y], [-GROUND_DEPTH] * 2, color="0.8",
                          linewidth=0.6)
        self.figure.suptitle("3D, root-relative (m)", fontsize=8, y=0.99)

    def render(self, people):
        """(size, size, 3) uint8 RGB of the panel with `people`: dicts of "joints_3d" (17, 3)
        root-relative camera metres, "missing" (17,) bool and "label" text; the first
        `max_people` are drawn."""
        self.canvas.restore_region(self.background)
        axes = self.axes
        for slot, person in enumerate(people[:self.max_people]):
            points = _plot_coordinates(person["joints_3d"]) + [slot * PERSON_SPACING, 0, 0]
            missing = np.asarray(person.get("missing", np.zeros(NUM_JOINTS, bool)), bool)
            for line, (parent, joint) in zip(self.lines[slot], BONES):
                pair = [parent, joint]
                line.set_data_3d(points[pair, 0], points[pair, 1], points[pair, 2])
                line.set_linestyle("--" if missing[pair].any() else "-")
                line.set_linewidth(1.0 if missing[pair].any() else 2.0)
                axes.draw_artist(line)
            text = self.texts[slot]
            text.set_text(person.get("label", ""))
            top = points[np.argmax(points[:, 2])]
            text.set_position_3d((top[0], top[1], min(top[2] + 0.12, CUBE_HALF_SIZE)))
            axes.draw_artist(text)
        self.canvas.blit(self.figure.bbox)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def _dashed_line(image, start, end, colour, thickness, dash):
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    length = float(np.hypot(*(end - start)))
    steps = max(1, int(length // dash))
    for k in range(0, steps, 2):
        a = start + (end - start) * (k / steps)
        b = start + (end - start) * (min(k + 1, steps) / steps)
        cv2.line(image, tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b),
                 colour, thickness, cv2.LINE_AA)


def _label(image, text, origin, scale, colour=(255, 255, 255), background=(0, 0, 0)):
    """`text` at `origin` (its top left) on a filled background, clipped to the image."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, int(round(scale * 2)))
    (width, height), base = cv2.getTextSize(text, font, scale, thickness)
    x = int(min(max(origin[0], 0), max(image.shape[1] - width - 4, 0)))
    y = int(min(max(origin[1], 0), max(image.shape[0] - height - base - 4, 0)))
    cv2.rectangle(image, (x, y), (x + width + 4, y + height + base + 4), background, -1)
    cv2.putText(image, text, (x + 2, y + height + 2), font, scale, colour, thickness,
                cv2.LINE_AA)


def draw_frame_panel(image, people, title, panel_size, inner_size):
    """The frame resized into a (panel height, panel width) canvas (letterboxed when needed)
    with each person's box, label and 2D skeleton; missing joints hollow, their bones thin
    and dashed."""
    out_height, panel_width = panel_size
    inner_w, inner_h = inner_size
    frame_h, frame_w = image.shape[:2]
    shrink = inner_w <= frame_w
    resized = cv2.resize(image, (inner_w, inner_h),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    canvas = np.zeros((out_height, panel_width, 3), np.uint8)
    top, left = (out_height - inner_h) // 2, (panel_width - inner_w) // 2
    canvas[top:top + inner_h, left:left + inner_w] = resized
    zoom = np.array([inner_w / frame_w, inner_h / frame_h])
    offset = np.array([left, top], np.float64)

    def to_panel(points):  # pixel centres: x' = (x + 0.5) * zoom - 0.5
        return (np.asarray(points, np.float64) + 0.5) * zoom - 0.5 + offset

    thick = max(2, out_height // 270)
    text_scale = max(0.4, out_height / 900.0)
    for person in people:
        box = to_panel(np.reshape(person["box"], (2, 2)))
        corner_a = tuple(int(round(v)) for v in np.clip(box[0], -1e5, 1e5))
        corner_b = tuple(int(round(v)) for v in np.clip(box[1], -1e5, 1e5))
        cv2.rectangle(canvas, corner_a, corner_b, BOX_RGB, max(1, thick // 2), cv2.LINE_AA)
        points = to_panel(person["joints_2d"])
        missing = np.asarray(person.get("missing", np.zeros(NUM_JOINTS, bool)), bool)
        for parent, joint in BONES:
            a, b = points[parent], points[joint]
            if missing[[parent, joint]].any():
                _dashed_line(canvas, a, b, MISSING_RGB, max(1, thick // 2), 3 * thick)
            else:
                cv2.line(canvas, tuple(int(round(v)) for v in a),
                         tuple(int(round(v)) for v in b), (255, 255, 255), thick + 2, cv2.LINE_AA)
                cv2.line(canvas, tuple(int(round(v)) for v in a),
                         tuple(int(round(v)) for v in b), joint_rgb(joint), thick, cv2.LINE_AA)
        for joint, point in enumerate(points):
            centre = tuple(int(round(v)) for v in point)
            if missing[joint]:
                cv2.circle(canvas, centre, thick + 1, MISSING_RGB, 1, cv2.LINE_AA)
            else:
                cv2.circle(canvas, centre, thick + 1, joint_rgb(joint), -1, cv2.LINE_AA)
        _label(canvas, person.get("label", ""), (box[0][0], box[0][1] - 24 * text_scale),
               text_scale * 0.8, colour=(0, 0, 0), background=BOX_RGB)
    if title:
        _label(canvas, str(title), (4, 4), text_scale * 0.7)
    return canvas


class FootageRenderer:
    """Draws every frame of one run (module docstring): `render(image, people, title)` ->
    (H, W, 3) uint8 RGB. `max_people`: the most people of any frame of the run (it fixes the
    cube's width); `ground`: draw the ground grid."""

    def __init__(self, max_people, ground=True):
        self.max_people, self.ground = max(1, int(max_people)), bool(ground)
        self._panels = {}

    def _panel(self, height):
        if height not in self._panels:
            self._panels[height] = Pose3DPanel(height, self.max_people, self.ground)
        return self._panels[height]

    def render(self, image, people, title=None):
        """people: dicts with "box" (4,), "joints_2d" (17, 2) pixels of `image`, "joints_3d"
        (17, 3) root-relative metres, "missing" (17,) bool and "label" (e.g. "#3")."""
        frame_h, frame_w = image.shape[:2]
        out_height, panel_width, inner = output_layout(frame_w, frame_h)
        left = draw_frame_panel(image, people, title, (out_height, panel_width), inner)
        right = self._panel(out_height).render(people)
        if len(people) > self.max_people:
            _label(right, f"{len(people) - self.max_people} more not shown", (4, 4), 0.4)
        return np.concatenate([left, right], axis=1)
