"""Config loading: defaults, _base_ chains, overrides, strict keys with suggestions, type errors."""

import os

import pytest
import yaml

from utils.config import config_to_yaml, default_config, load_config
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = [os.path.join(REPO, "experiments", name) for name in
               ("human36m/human36m.yaml", "human36m/human36m_corrected.yaml",
                "synthetic/demo.yaml", "synthetic/demo_corrected.yaml", "tests/tiny.yaml")]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_shipped_experiments_load(path):
    config = load_config(path)
    assert config.model.image_encoder.type in ("hrnet_32", "hrnet_48")
    assert config.config_path == os.path.abspath(path)


def test_base_chain_merges_in_order():
    config = load_config(os.path.join(REPO, "experiments", "tests", "tiny.yaml"))
    assert config.data.root == "data/synthetic_tiny"      # tiny overrides demo
    assert config.data.num_workers == 0
    assert config.model.image_encoder.pretrained is None  # from demo (the base)
    assert config.train.lr_decay == 0.99                  # tiny's own, not demo's 0.75
    assert config.train.weight_decay == 0.1               # from the defaults


def test_base_relative_to_file_and_cycle(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "base.yaml", "train:\n  epochs: 7\n")
    child = write(tmp_path, "sub/child.yaml", "_base_: ../base.yaml\ntrain:\n  lr: 0.5\n")
    config = load_config(child)
    assert config.train.epochs == 7 and config.train.lr == 0.5
    loop = write(tmp_path, "loop.yaml", "_base_: loop.yaml\n")
    with pytest.raises(MetaPoseError, match="includes itself"):
        load_config(loop)


def test_overrides_parse_yaml_values_and_win(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=9", "train.lr=1e-4", "eval.flip_test=false",
                                "data.image_size=[128, 96]", "train.clip_grad=1",
                                "model.image_encoder.pretrained=null"])
    assert config.train.epochs == 9
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)
    assert config.eval.flip_test is False
    assert config.data.image_size == [128, 96]
    assert config.train.clip_grad == 1.0 and isinstance(config.train.clip_grad, float)
    assert config.model.image_encoder.pretrained is None


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, "c.yaml", "train:\n  learning_rate: 0.1\n  epochs: 2\n")
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    assert "train.learning_rate" in str(error.value) and path in str(error.value)
    with pytest.raises(MetaPoseError, match="Did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(MetaPoseError, match="Did you mean 'eval.flip_test'"):
        load_config(None, ["eval.fliptest=true"])


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, "c.yaml", "optimiser:\n  lr: 0.1\n")
    with pytest.raises(MetaPoseError, match="unknown config key 'optimiser'"):
        load_config(path)


@pytest.mark.parametrize("override, words", [
    ("train.epochs=many", ["train.epochs", "'many'", "integer"]),
    ("train.epochs=2.5", ["train.epochs", "integer"]),
    ("train.epochs=true", ["train.epochs", "integer"]),
    ("train.lr=fast", ["train.lr", "number"]),
    ("eval.flip_test=3", ["eval.flip_test", "true or false"]),
    ("data.image_size=[64]", ["data.image_size", "2"]),
    ("train.epochs=null", ["train.epochs", "null"]),
    ("model.image_encoder.type=resnet", ["model.image_encoder.type", "hrnet_32"]),
    ("speed.amp=fp8", ["speed.amp", "bf16"]),
    ("model=3", ["model", "mapping"]),
])
def test_type_errors_name_key_and_expectation(override, words):
    with pytest.raises(MetaPoseError) as error:
        load_config(None, [override])
    for word in words:
        assert word in str(error.value)


def test_yaml_syntax_error_reports_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "train:\n  epochs: 3\n  lr: [0.1\neval:\n  every: 1\n")
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    message = str(error.value)
    assert path in message and "not valid YAML" in message
    assert "line 4" in message  # the flow sequence opened on line 3 is found unclosed on line 4


def test_missing_file_and_bad_override_form(tmp_path):
    with pytest.raises(MetaPoseError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(MetaPoseError, match="dotted.key=value"):
        load_config(None, ["train.epochs"])
    path = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(MetaPoseError, match="mapping"):
        load_config(path)


def test_resolved_yaml_round_trips(tmp_path):
    tiny = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
    config = load_config(tiny, ["train.epochs=4"])
    text = config_to_yaml(config)
    assert "config_path" not in yaml.safe_load(text)
    path = write(tmp_path, "resolved.yaml", "# git commit: abc\n" + text)
    again = load_config(path)
    again.pop("config_path")
    config.pop("config_path")
    assert again == config


# ---------------------------------------------------------------------------------------------
# Ranges of numeric settings (checked at load time, before anything runs)


@pytest.mark.parametrize("override, words", [
    ("train.batch_size=0", ["'train.batch_size'", "is 0", ">= 1"]),
    ("train.lr=-1", ["'train.lr'", "is -1.0", "> 0"]),
    ("train.lr=.nan", ["'train.lr'", "nan", "> 0"]),
    ("train.lr=.inf", ["'train.lr'", "inf"]),
    ("eval.every=0", ["'eval.every'", "is 0", ">= 1"]),
    ("train.log_every=0", ["'train.log_every'", ">= 1"]),
    ("data.num_workers=-1", ["'data.num_workers'", "is -1", ">= 0"]),
    ("data.image_size=[0,0]", ["'data.image_size'", "[0, 0]", ">= 8 (each entry)"]),
    ("data.image_size=[64,-48]", ["'data.image_size'", "[64, -48]"]),
    ("train.flip_prob=1.5", ["'train.flip_prob'", "in [0, 1]"]),
    ("train.lr_decay=0", ["'train.lr_decay'", "in (0, 1]"]),
    ("train.clip_grad=0", ["'train.clip_grad'", "> 0"]),
    ("train.epochs=0", ["'train.epochs'", ">= 1"]),
    ("model.drop_path=[0.1, 1.0]", ["'model.drop_path'", "in [0, 1)"]),
    ("model.image_encoder.width=0", ["'model.image_encoder.width'", ">= 1"]),
    ("distributed.init_timeout=0", ["'distributed.init_timeout'", "> 0"]),
    ("model.embed_dim=30", ["'model.embed_dim'", "is 30", "not divisible by 4",
                            "'model.deform_heads'"]),
    ("model.embed_dim=36", ["'model.embed_dim'", "is 36", "not divisible by 8",
                            "'model.lift_heads'"]),
    ("model.lift_heads=3", ["'model.embed_dim'", "not divisible by 3"]),
    ("seed=99999999999999999999", ["'seed'", "99999999999999999999", "in [0, 4294967295]"]),
    ("data.synthetic.seed=4294967296", ["'data.synthetic.seed'", "in [0, 4294967295]"]),
])
def test_out_of_range_values_name_key_value_and_range(override, words):
    with pytest.raises(MetaPoseError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert f"command-line override '{override}'" in message
    for word in words:
        assert word in message, (word, message)


def test_range_error_names_the_file_that_set_the_value(tmp_path):
    path = write(tmp_path, "zero.yaml", "train:\n  batch_size: 0\n")
    with pytest.raises(MetaPoseError, match=f"'train.batch_size' in '{path}' is 0"):
        load_config(path)
    # A later override with a good value wins over the bad one of the file.
    assert load_config(path, ["train.batch_size=4"]).train.batch_size == 4


def _numeric_leaves(tree, prefix=""):
    from utils.config import NULLABLE_TYPES

    for name, value in tree.items():
        key = prefix + name
        if isinstance(value, dict):
            yield from _numeric_leaves(value, key + ".")
        elif value is None:
            if NULLABLE_TYPES.get(key) in (int, float):
                yield key
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key
        elif isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            yield key


def test_every_numeric_default_has_a_range():
    """A numeric key added to utils/defaults.yaml needs its line in NUMERIC_RANGES."""
    from utils.config import NUMERIC_RANGES

    numeric = set(_numeric_leaves(default_config()))
    assert numeric - set(NUMERIC_RANGES) == set()
    assert set(NUMERIC_RANGES) - numeric == set()  # no stale entries
    for key, allowed in NUMERIC_RANGES.items():  # the defaults themselves are allowed
        value = default_config()
        for part in key.split("."):
            value = value[part]
        for item in (value if isinstance(value, list) else [value]):
            assert item is None or allowed.contains(item), key


@pytest.mark.parametrize("base", ["3", "[a.yaml, b.yaml]", "''", "{x: 1}"])
def test_base_that_is_not_a_path(tmp_path, base):
    path = write(tmp_path, "child.yaml", f"_base_: {base}\ntrain:\n  epochs: 2\n")
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    assert "'_base_'" in str(error.value) and path in str(error.value)
    assert "path of the YAML file" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Strict YAML: a key written twice, nesting, keys written with dots


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  epochs: 3\nmodel:\n  depth: 1\ntrain:\n  lr: 0.1\n", "train", "lines 1 and 5"),
    ("model:\n  depth: 1\n  embed_dim: 32\n  depth: 2\n", "model.depth", "lines 2 and 4"),
    ("seed: 1\n'seed': 2\n", "seed", "lines 1 and 2"),
    ("model:\n  image_encoder:\n    frozen: true\n    type: hrnet_32\n    frozen: false\n",
     "model.image_encoder.frozen", "lines 3 and 5"),
])
def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path, text, key, lines):
    path = write(tmp_path, "twice.yaml", text)
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    assert str(error.value).startswith(f"config file '{path}' has the key '{key}' twice ({lines})")


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    path = write(tmp_path, "merge.yaml", "train: &base\n  epochs: 3\n  lr: 0.1\n"
                                         "eval:\n  every: 2\n")
    assert load_config(path).train.epochs == 3
    from utils.yaml_files import parse_yaml
    assert parse_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n", "test") == \
        {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}


def test_a_key_written_twice_in_an_override_value_is_refused():
    with pytest.raises(MetaPoseError, match=r"'train\.epochs=\{a: 1, a: 2\}' has the key 'a' "
                                            r"twice \(both on line 1\)"):
        load_config(None, ["train.epochs={a: 1, a: 2}"])


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000, "model: " + "{b: " * 50_000,
                                  "data:\n  image_size: &a [*a, 1]\n"])
def test_deep_or_recursive_yaml_is_one_clear_error(tmp_path, text):
    path = write(tmp_path, "deep.yaml", text)
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    assert path in str(error.value)


@pytest.mark.parametrize("text, key, section, leaf", [
    ("'train.lr': 1\n", "train.lr", "train", "lr"),
    ("model:\n  image_encoder.frozen: false\n", "model.image_encoder.frozen", "image_encoder",
     "frozen"),
])
def test_a_key_written_with_dots_in_a_file_says_how_to_nest_it(tmp_path, text, key, section,
                                                               leaf):
    path = write(tmp_path, "dotted.yaml", text)
    with pytest.raises(MetaPoseError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"config key '{key}' in '{path}' is one name that holds a dot")
    assert f"write '{section}:' on one line and '{leaf}: ...' indented below it" in message
    assert "Did you mean" not in message


def test_a_config_that_is_not_a_regular_file_is_named_as_what_it_is(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    for path, problem in ((tmp_path, "is a folder, not a file"),
                          (fifo, "is a FIFO (named pipe), not a regular file"),
                          ("/dev/zero", "is a device, not a regular file")):
        with pytest.raises(MetaPoseError, match="Pass an existing YAML file") as error:
            load_config(str(path))
        assert f"config file '{path}' {problem}." in str(error.value)


@pytest.mark.parametrize("override", ["data.image_size=[[1], 2]", "data.image_size=[a, 2]",
                                      "data.image_size=[64.5, 48]", "model.drop_path=[0.1, x]"])
def test_every_entry_of_a_list_setting_has_its_type(override):
    with pytest.raises(MetaPoseError, match="each entry must be"):
        load_config(None, [override])


def test_the_largest_seed_runs_where_seeds_are_used():
    """The seed range is the one the samplers, loaders and RNG seeding take."""
    from datasets.loaders import build_train_loader
    from utils import distributed as dist_utils
    from utils.config import MAX_SEED

    class Context:
        world_size, rank, device = 1, 0, __import__("torch").device("cpu")

    class Frames(list):
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    config = load_config(None, [f"seed={MAX_SEED}", f"data.synthetic.seed={MAX_SEED}"])
    loader = build_train_loader(Frames(range(10)), 4, 0, config.seed, Context())
    loader.generator.manual_seed(dist_utils.epoch_seed(config.seed, 0, 3))
    dist_utils.seed_everything(config.seed + 1)
    assert sum(len(batch) for batch in loader) == 8


def test_make_synthetic_takes_the_seeds_the_config_takes(capsys):
    from tools import make_synthetic
    from utils.config import MAX_SEED
    assert make_synthetic.parse_args(["--out", "x", "--seed", str(MAX_SEED)]).seed == MAX_SEED
    with pytest.raises(SystemExit):
        make_synthetic.parse_args(["--out", "x", "--seed", "99999999999999999999"])
    assert "expected an integer from 0 to 4294967295" in capsys.readouterr().err
