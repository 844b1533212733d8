"""What TensorBoard shows of a run beyond its curves: the resolved config (as text and as
hparams), and at each evaluation the dataset's per-group figures and each joint's error as bar
charts, the hparams metrics, and a grid of validation frames.

Every function takes the run's writer (utils/logger.build_tb_writer: on ranks other than 0 a
falsy NullWriter, with which nothing is drawn) and returns nothing. A view that cannot be drawn
or written is reported once in the log, and the run goes on without it. The tags and their x
axes are listed in docs/training.md, section "TensorBoard".
"""

import functools
import json

import yaml

from utils.config import config_to_yaml
from utils.logger import get_logger
from utils.skeleton import JOINT_NAMES

CONFIG_TAG = "config/yaml"
HPARAMS = "hparams"
FIGURES = "val_figures"
JOINT_ERRORS = "val_joint_error_mm"
FRAME_GRID_TAG = f"{FIGURES}/frames"
PER_JOINT_FIGURE_TAG = f"{FIGURES}/per_joint_error_mm"
GRID_COLUMNS = 2

_reported = set()  # views whose failure was logged already


def _view(what):
    """Runs the decorated view only with a truthy writer, and turns its failure into one
    warning: TensorBoard output must never end a training."""

    def decorate(function):
        @functools.wraps(function)
        def guarded(writer, *args, **kwargs):
            if not writer:
                return
            try:
                function(writer, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 (drawing or writing; the run goes on)
                if what not in _reported:
                    _reported.add(what)
                    get_logger().warning("cannot write the %s to TensorBoard (%s: %s); the run "
                                         "goes on without it", what, type(error).__name__, error)
        return guarded
    return decorate


# ----------------------------------------------------------------------------------------------
# Once, at the start


def flat_hparams(config):
    """The resolved config as {dotted key: bool, int, float or str}: lists as JSON text, empty
    values as "null" (the hparams plugin takes no other types)."""
    flat = {}

    def visit(tree, prefix):
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                visit(value, name + ".")
            elif value is None:
                flat[name] = "null"
            elif isinstance(value, (bool, int, float, str)):
                flat[name] = value
            else:
                flat[name] = json.dumps(value)

    visit(yaml.safe_load(config_to_yaml(config)), "")
    return flat


def hparams_metric_tags(metric_set):
    """The hparams plugin's metrics of a dataset: the last value of each of its overview tags
    (val/p1_mm -> hparams/p1_mm) and the best score so far (hparams/best_p1_mm)."""
    tags = [f"{HPARAMS}/{tag.split('/', 1)[1]}" for tag in metric_set.overview_tags]
    return tags + [best_score_tag(metric_set)] if tags else []


def best_score_tag(metric_set):
    return f"{HPARAMS}/best_{metric_set.overview_tags[0].split('/', 1)[1]}"


@_view("resolved config")
def write_run_config(writer, config, metric_set):
    """The resolved config as YAML text (tag config/yaml) and as the run's hparams, with the
    dataset's metric tags (`hparams_metric_tags`), at step 0."""
    writer.add_text(CONFIG_TAG, "```yaml\n" + config_to_yaml(config) + "```", 0)
    from torch.utils.tensorboard.summary import hparams
    experiment, session_start, _ = hparams(
        flat_hparams(config), {tag: 0.0 for tag in hparams_metric_tags(metric_set)})
    writer.add_summary(experiment)
    writer.add_summary(session_start)


# ----------------------------------------------------------------------------------------------
# At each evaluation


def write_evaluation(writer, summary, epoch, metric_set):
    """Everything drawn from an evaluation's summary at x = `epoch`: the dataset's per-group
    bar chart, each joint's error (scalars and a bar chart), the hparams metrics' last values."""
    _write_breakdown(writer, summary, epoch, metric_set)
    _write_joint_errors(writer, summary, epoch)
    _write_overview(writer, summary, epoch, metric_set)


@_view("per-group figure")
def _write_breakdown(writer, summary, epoch, metric_set):
    breakdown = metric_set.breakdown(summary)
    if breakdown is None or not any(breakdown[1].values()):
        return
    kind, panels = breakdown
    figure = bar_figure(panels, f"per {kind}: {metric_set.headline(summary)}", kind)
    writer.add_image(f"{FIGURES}/per_{kind}", _pixels(figure), epoch, dataformats="HWC")


def joint_tag(name):
    return f"{JOINT_ERRORS}/{name.replace(' ', '_')}"


@_view("per-joint errors")
def _write_joint_errors(writer, summary, epoch):
    errors = summary.get("per_joint_mm")
    if not errors:
        return
    for name, value in zip(JOINT_NAMES, errors):
        writer.add_scalar(joint_tag(name), value, epoch)
    mean = sum(errors) / len(errors)
    figure = bar_figure({"error (mm)": dict(zip(JOINT_NAMES, errors))},
                        f"per joint: mean {mean:.1f} mm (the frame-averaged MPJPE)", "joint")
    writer.add_image(PER_JOINT_FIGURE_TAG, _pixels(figure), epoch, dataformats="HWC")


@_view("hparams metrics")
def _write_overview(writer, summary, epoch, metric_set):
    scalars = metric_set.scalars(summary)
    for tag, metric in zip(metric_set.overview_tags, hparams_metric_tags(metric_set)):
        writer.add_scalar(metric, scalars[tag], epoch)


@_view("best score")
def write_best_score(writer, metric_set, best_score, epoch):
    """The best score so far (hparams/best_<score>) at x = `epoch`, the epoch just evaluated."""
    if metric_set.overview_tags and best_score is not None:
        writer.add_scalar(best_score_tag(metric_set), best_score, epoch)


@_view("grid of validation frames")
def write_frame_grid(writer, samples, step):
    """The frames `samples` (utils/visualization.draw_samples_grid's) as one image."""
    from utils.visualization import draw_samples_grid
    figure = draw_samples_grid(samples, GRID_COLUMNS)
    writer.add_image(FRAME_GRID_TAG, _pixels(figure), step, dataformats="HWC")


# ----------------------------------------------------------------------------------------------
# Figures


# Bar chart layout in inches: each panel's axes, the room under them for the rotated names,
# and the margins (fixed sizes instead of tight_layout, which takes longer than the drawing).
_PANEL_HEIGHT, _NAMES_HEIGHT, _TITLE_HEIGHT, _LEFT, _RIGHT = 1.7, 1.0, 0.5, 0.8, 0.2


def bar_figure(panels, title, xlabel):
    """One bar chart per panel, stacked: {panel label with its unit: {bar name: value}}."""
    from utils.visualization import new_figure
    count = len(panels)
    widest = max(len(bars) for bars in panels.values())
    width = max(5.5, 0.45 * widest + _LEFT + _RIGHT)  # room for the title
    height = count * (_PANEL_HEIGHT + _NAMES_HEIGHT) + _TITLE_HEIGHT
    figure = new_figure(width, height)
    figure.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width,
                           bottom=_NAMES_HEIGHT / height, top=1 - _TITLE_HEIGHT / height,
                           hspace=_NAMES_HEIGHT / _PANEL_HEIGHT)
    axes = figure.subplots(count, 1, squeeze=False)[:, 0]
    for ax, (label, bars) in zip(axes, panels.items()):
        names, values = list(bars), list(bars.values())
        drawn = ax.bar(range(len(names)), values, color="tab:blue")
        ax.bar_label(drawn, fmt="%.1f", fontsize=6)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    axes[-1].set_xlabel(xlabel, fontsize=8, labelpad=0)
    figure.suptitle(title, fontsize=9)
    return figure


def _pixels(figure):
    from utils.visualization import figure_to_array
    return figure_to_array(figure)
