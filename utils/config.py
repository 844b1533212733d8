"""YAML configuration: defaults, experiment files, `key=value` overrides, strict keys and types."""

import copy
import difflib
import math
import os

import yaml
from easydict import EasyDict

from datasets.registry import DATASET_MODULES
from utils.errors import MetaPoseError
from utils.input_files import shown_path
from utils.yaml_files import YamlSyntaxError, load_yaml_file, parse_yaml

DEFAULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

# Keys whose default is null: the type a non-null value must have.
NULLABLE_TYPES = {
    "data.cache_dir": str,
    "data.image_dir": str,
    "model.image_encoder.pretrained": str,
    "model.image_encoder.width": int,
    "model.text_encoder.pretrained": str,
    "model.text_encoder.width": int,
    "model.text_encoder.layers": int,
    "train.clip_grad": float,
    "speed.cpu_threads": int,
}

class Range:
    """The allowed interval of a numeric setting: [low, high], either end open or unbounded."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def contains(self, value):
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return (f"in {'(' if self.low_open else '['}{self.low}, {self.high}"
                f"{')' if self.high_open else ']'}")


CHOICES = {
    "data.dataset": DATASET_MODULES.keys(),  # the registered datasets (a live view)
    "data.image_mode": ("auto", "cropped", "full"),
    "data.keypoints_2d": ("cpn", "gt"),
    "model.image_encoder.type": ("hrnet_32", "hrnet_48"),
    "model.text_encoder.type": ("ViT-B/32", "ViT-L/14"),
    "model.text_encoder.mode": ("joint", "joint_action"),
    "model.text_encoder.layout": ("published", "sot_first"),
    "speed.amp": ("none", "bf16", "fp16"),
    "model.grid_convention": ("published", "pixel_centre"),
    "model.alignment.eval_noise": ("mean", "fixed"),
    "train.flip_mode": ("sample", "batch"),
}

# Allowed range of every numeric setting, checked on the merged config before anything runs.
# Convention: one line per numeric key of utils/defaults.yaml, `"key": Range(low, high)` with
# `low_open=True` / `high_open=True` for a strict bound (None = unbounded); a list value (e.g.
# data.image_size) is checked element by element and null (for nullable keys) is always allowed.
# Every number must also be finite. tests/test_config.py fails for a numeric key without a line
# here, so a new numeric key needs its range added next to its default.
# Seeds: NumPy's global seed, the samplers' and the flips' streams take 32-bit seeds, so a larger
# seed would alias a smaller one (or overflow torch's 64-bit generator).
MAX_SEED = 2 ** 32 - 1

NUMERIC_RANGES = {
    "seed": Range(0, MAX_SEED),
    "data.image_size": Range(8, None),               # pixels; the encoder's stem divides by 4
    "data.num_workers": Range(0, None),
    "data.synthetic.train_frames": Range(1, None),
    "data.synthetic.val_frames": Range(1, None),
    "data.synthetic.seed": Range(0, MAX_SEED),
    "data.synthetic.trunk.epochs": Range(1, None),
    "data.synthetic.trunk.batch_size": Range(1, None),
    "data.synthetic.trunk.lr": Range(0, None, low_open=True),
    "data.synthetic.trunk.sigma": Range(0, None, low_open=True),
    "model.image_encoder.width": Range(1, None),
    "model.text_encoder.prompt_tokens": Range(0, 75),  # 77 CLIP tokens hold SOT, prompts, EOT
    "model.text_encoder.width": Range(1, None),
    "model.text_encoder.layers": Range(1, None),
    "model.embed_dim": Range(1, None),
    "model.depth": Range(1, None),
    "model.deform_heads": Range(1, None),
    "model.deform_points": Range(1, None),
    "model.mlp_ratio": Range(0, None, low_open=True),
    "model.lift_heads": Range(1, None),
    "model.drop_rate": Range(0, 1, high_open=True),
    "model.drop_path": Range(0, 1, high_open=True),
    "loss.mpjpe": Range(0, None),
    "loss.kl": Range(0, None),
    "train.epochs": Range(1, None),
    "train.batch_size": Range(1, None),
    "train.lr": Range(0, None, low_open=True),
    "train.weight_decay": Range(0, None),
    "train.lr_decay": Range(0, 1, low_open=True),
    "train.clip_grad": Range(0, None, low_open=True),
    "train.flip_prob": Range(0, 1),
    "train.max_bad_steps": Range(1, None),
    "train.log_every": Range(1, None),
    "eval.batch_size": Range(1, None),
    "eval.every": Range(1, None),
    "eval.num_visualize": Range(0, None),
    "distributed.init_timeout": Range(0, None, low_open=True),
    "distributed.timeout": Range(0, None, low_open=True),
    "speed.cpu_threads": Range(1, None),
}

# Keys whose value must divide another's: (key, divisor key or fixed number, why).
DIVISIBLE_BY = [
    ("model.embed_dim", "model.deform_heads", "the deformable attention splits it into heads"),
    ("model.embed_dim", "model.lift_heads", "the lifting transformer splits it into heads"),
    ("model.embed_dim", 4, "the transformation alignment splits it into its 4 heads"),
]

BASE_KEY = "_base_"


CONFIG_REMEDY = ("Pass an existing YAML file with --config, for example "
                 "experiments/synthetic/demo.yaml or experiments/human36m/human36m.yaml.")


def safe_load_yaml(path, kind):
    """The YAML in the file `path` read strictly (utils/yaml_files.py); bad YAML, a key written
    twice or a path that is not a readable file is a MetaPoseError naming the `kind` of file
    (e.g. "config file"), the path and the line."""
    return load_yaml_file(path, kind)


def _read_yaml(path):
    content = load_yaml_file(path, "config file", CONFIG_REMEDY)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise MetaPoseError(f"config file '{shown_path(path)}' must hold a mapping of keys at "
                            f"the top level, found {type(content).__name__}.")
    return content


def _load_with_bases(path, seen=()):
    """Reads `path`, first merging the file named by its `_base_` key (relative to it)."""
    path = os.path.abspath(path)
    if path in seen:
        raise MetaPoseError(f"config file '{path}' includes itself through '{BASE_KEY}'.")
    content = _read_yaml(path)
    base = content.pop(BASE_KEY, None)
    if base is None:
        return [(path, content)]
    if not isinstance(base, str) or not base.strip():
        raise MetaPoseError(f"'{BASE_KEY}' in '{path}' is {base!r} ({type(base).__name__}) but "
                            "must be the path of the YAML file this one extends (relative to "
                            "it), e.g. '_base_: ../synthetic/demo.yaml'.")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    return _load_with_bases(base_path, seen + (path,)) + [(path, content)]


def _type_name(value_type):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(value_type, value_type.__name__)


def _check_entry(key, value, item, expected, default, source):
    """One entry of the list setting `value`, of the type of the default's entries (an integer
    also counts as a number)."""
    if expected is float and type(item) is int:
        return float(item)
    if type(item) is not expected:
        raise MetaPoseError(f"'{key}' in {source} is {value!r} but each entry must be "
                            f"{_type_name(expected)} (default: {default!r}).")
    return item


def _check_value(key, value, default, source):
    """Returns `value` converted to the type of `default`, or raises naming the key and file."""
    if value is None:
        if default is None or key in NULLABLE_TYPES:
            return None
        raise MetaPoseError(f"'{key}' in {source} is null but must be {_type_name(type(default))} "
                            f"(default: {default!r}).")
    expected = NULLABLE_TYPES.get(key, type(default)) if default is None else type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise MetaPoseError(f"'{key}' in {source} is {value!r} ({type(value).__name__}) but must be "
                            f"{_type_name(expected)} (default: {default!r}).")
    if isinstance(default, list) and default and len(value) != len(default):
        raise MetaPoseError(f"'{key}' in {source} has {len(value)} entries but must have "
                            f"{len(default)} (default: {default!r}).")
    if isinstance(default, list) and default:
        value = [_check_entry(key, value, item, type(default[0]), default, source)
                 for item in value]
    choices = CHOICES.get(key)
    if choices is not None and value not in choices:
        raise MetaPoseError(f"'{key}' in {source} is {value!r}; valid values are "
                            f"{', '.join(map(repr, choices))}.")
    return value


def _all_keys(tree, prefix=""):
    for name, value in tree.items():
        yield prefix + name
        if isinstance(value, dict):
            yield from _all_keys(value, prefix + name + ".")


def _closest_key(key, valid):
    """The valid key a user most likely meant by the unknown `key`, or None. Within a known
    section only its own keys are compared, leaf with leaf (whole dotted names would match on
    the shared section name alone), unless the leaf exists as it is in another section."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    if siblings:
        elsewhere = [k for k in valid if k.rpartition(".")[2] == leaf]
        if elsewhere:
            return elsewhere[0]
        hits = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        return siblings[hits[0]] if hits else None
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)  # a mistyped section
    if close:
        return close[0]
    leaves = {k.rpartition(".")[2]: k for k in valid}
    hits = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[hits[0]] if hits else None


def _unknown_key_error(key, defaults, source):
    close = _closest_key(key, list(_all_keys(defaults)))
    hint = f" Did you mean '{close}'?" if close else ""
    return MetaPoseError(f"unknown config key '{key}' in {source}.{hint} "
                         "Every valid key is listed with its meaning in utils/defaults.yaml.")


def _dotted_key_error(key, name, source):
    """A key written as one name with dots ('train.lr': 1): YAML nests sections by indentation,
    and only command-line overrides spell the path with dots."""
    section, _, leaf = name.partition(".")
    return MetaPoseError(
        f"config key '{key}' in {source} is one name that holds a dot, not the key '{leaf}' "
        f"inside the section '{section}': in a YAML file write '{section}:' on one line and "
        f"'{leaf}: ...' indented below it; dotted names are for command-line overrides "
        f"({key}=VALUE).")


def _merge(target, update, defaults, source, sources, prefix=""):
    """Merges `update` into `target`, checking keys and types; `sources[key]` records where each
    value set here came from (for the range check's message)."""
    for name, value in update.items():
        key = prefix + str(name)
        if isinstance(name, str) and "." in name and name not in defaults:
            raise _dotted_key_error(key, name, source)
        if name not in defaults:
            raise _unknown_key_error(key, _DEFAULTS_CACHE, source)
        default = defaults[name]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise MetaPoseError(f"'{key}' in {source} must be a mapping of sub-keys "
                                    f"({', '.join(default)}), found {value!r}.")
            _merge(target[name], value, default, source, sources, key + ".")
        else:
            target[name] = _check_value(key, value, default, source)
            sources[key] = source


def _lookup(tree, key):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _check_ranges(config, sources):
    """Raises MetaPoseError for the first numeric setting outside its NUMERIC_RANGES entry (or
    not finite) and the first DIVISIBLE_BY relation that does not hold."""
    def origin(key):
        return sources.get(key, "utils/defaults.yaml")

    for key, allowed in NUMERIC_RANGES.items():
        value = _lookup(config, key)
        for item in (value if isinstance(value, list) else [value]):
            if item is None:
                continue
            if not math.isfinite(item) or not allowed.contains(item):
                raise MetaPoseError(f"'{key}' in {origin(key)} is {value!r}, out of range: it "
                                    f"must be {allowed.describe()}"
                                    f"{' (each entry)' if isinstance(value, list) else ''}.")
    for key, divisor_key, why in DIVISIBLE_BY:
        value = _lookup(config, key)
        divisor = divisor_key if isinstance(divisor_key, int) else _lookup(config, divisor_key)
        if value % divisor:
            named = "" if isinstance(divisor_key, int) else f" ('{divisor_key}' in " \
                f"{origin(divisor_key)})"
            raise MetaPoseError(f"'{key}' in {origin(key)} is {value}, which is not divisible by "
                                f"{divisor}{named}: {why}. Choose a multiple of {divisor}.")


def _parse_override(text):
    if "=" not in text:
        raise MetaPoseError(f"override '{text}' must have the form dotted.key=value, "
                            "for example train.epochs=5.")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw, f"the value of command-line override '{text}'") \
            if raw.strip() else None
    except YamlSyntaxError:  # not YAML: the text itself (e.g. a path with a colon)
        value = raw
    tree = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


_DEFAULTS_CACHE = _read_yaml(DEFAULTS_PATH)


def default_config():
    """The defaults alone, as an attribute dictionary."""
    return EasyDict(copy.deepcopy(_DEFAULTS_CACHE))


def load_config(path, overrides=()):
    """Merges the YAML at `path` (and its `_base_` chain) and `overrides` over the defaults.

    Args:
        path: experiment YAML file; `None` uses the defaults alone.
        overrides: iterable of "dotted.key=value" strings, values parsed as YAML.
    Returns:
        EasyDict with attribute access, e.g. `config.model.image_encoder.type`.
    Raises:
        MetaPoseError naming the file and key for a missing file, bad YAML, an unknown key
        (with the closest valid key), a value of the wrong type or outside its range
        (NUMERIC_RANGES, DIVISIBLE_BY).
    """
    merged, sources = copy.deepcopy(_DEFAULTS_CACHE), {}
    if path is not None:
        for file_path, content in _load_with_bases(path):
            _merge(merged, content, _DEFAULTS_CACHE, f"'{file_path}'", sources)
    return _finish(merged, sources, overrides, os.path.abspath(path) if path is not None else None)


def config_from_mapping(mapping, source, overrides=(), remedy=None):
    """The config stored as a plain mapping (e.g. the "config" entry of a training checkpoint)
    merged over the defaults with the same checks as `load_config`; `source` names where the
    mapping came from in messages (e.g. "the config stored in 'best.pt'"). A key or value of the
    mapping that this version does not accept (e.g. a key a checkpoint written by an earlier
    version holds) is a MetaPoseError naming it, followed by `remedy` (what the user can do
    instead, since a stored mapping is not edited by hand)."""
    merged, sources = copy.deepcopy(_DEFAULTS_CACHE), {}
    content = {key: value for key, value in mapping.items() if key != "config_path"}
    try:
        _merge(merged, content, _DEFAULTS_CACHE, source, sources)
    except MetaPoseError as error:
        if remedy is None:
            raise
        raise MetaPoseError(f"{error} {remedy}") from None
    return _finish(merged, sources, overrides, None)


def _finish(merged, sources, overrides, config_path):
    for text in overrides:
        _merge(merged, _parse_override(text), _DEFAULTS_CACHE, f"command-line override '{text}'",
               sources)
    _check_ranges(merged, sources)
    config = EasyDict(merged)
    config["config_path"] = config_path
    # Kept beside the keys (an attribute, not an item: it is no setting and never saved).
    object.__setattr__(config, _SOURCES_ATTRIBUTE, dict(sources))
    return config


_SOURCES_ATTRIBUTE = "_setting_sources"


def setting_source(config, key):
    """Where the value of the dotted `key` in `config` (from load_config or
    config_from_mapping) was set: "'<file>'", "command-line override '<text>'", ... or
    "utils/defaults.yaml" when nothing overrode the default."""
    return getattr(config, _SOURCES_ATTRIBUTE, {}).get(key, "utils/defaults.yaml")


def config_to_yaml(config):
    """The resolved config as YAML text (for the run directory)."""
    plain = {k: v for k, v in _to_plain(config).items() if k != "config_path"}
    return yaml.safe_dump(plain, sort_keys=False)


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
