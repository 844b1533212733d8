"""Reading the YAML a user writes (config files, prompts files, override values) strictly.

yaml.safe_load keeps the last of two equal keys in a mapping and drops the first without a word,
and recurses once per level of nesting until Python's recursion limit. Here a key given twice in
one mapping (at any level) is an error naming both lines, nesting deeper than MAX_YAML_DEPTH is
refused before it is built, and a file must be a regular file of at most MAX_YAML_BYTES.
Merge keys (`<<: *anchor`) still let a mapping override what it merges: that is what they are for.
"""

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from utils.errors import MetaPoseError
from utils.input_files import read_regular_file, shown_path

# Configs and prompts files are a few kilobytes and nest 3 levels deep; these bounds leave a wide
# margin and keep a hostile file from exhausting memory or the interpreter's stack.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlSyntaxError(MetaPoseError):
    """Text that is not YAML at all (a caller may then take it as a plain string)."""


class _Refused(Exception):
    """A structural problem found while composing: (text, line number or None)."""

    def __init__(self, text, line=None):
        super().__init__(text)
        self.text, self.line = text, line


class _DepthLimitedLoader(yaml.SafeLoader):
    """The safe loader with a bound on nesting, checked while the node tree is composed."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"it nests deeper than {MAX_YAML_DEPTH} levels", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _key_path(path):
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _first_repeated_key(root):
    """(dotted key, first line, second line) of the first key written twice in one mapping of
    the node tree `root` (every node visited once: anchors may share or nest nodes), or None."""
    stack, visited = [(root, ())], set()
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, MappingNode):
            seen = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        return (_key_path(path + (key_node.value,)), seen[key],
                                key_node.start_mark.line + 1)
                    seen[key] = key_node.start_mark.line + 1
                    stack.append((value_node, path + (key_node.value,)))
                else:
                    stack.append((value_node, path + ("?",)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, path + (index,)) for index, item in enumerate(node.value))
    return None


def parse_yaml(text, source):
    """The value of the YAML document `text` (None when empty).

    source: what the text is, for messages, e.g. "config file 'a.yaml'".
    Raises:
        MetaPoseError naming `source` and the line for a key written twice in one mapping or
        nesting deeper than MAX_YAML_DEPTH; YamlSyntaxError (a MetaPoseError) for bad syntax.
    """
    loader = _DepthLimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        repeated = _first_repeated_key(node)
        if repeated is not None:
            key, first, second = repeated
            lines = f"lines {first} and {second}" if first != second else f"both on line {first}"
            raise MetaPoseError(
                f"{source} has the key '{shown_path(key)}' twice ({lines}); "
                "YAML would keep the second and silently drop the first. Write the key once "
                "(merge the settings under it into one block).")
        return loader.construct_document(node)
    except _Refused as refused:
        where = f" at line {refused.line}" if refused.line else ""
        raise MetaPoseError(f"{source} is refused{where}: {refused.text}. Write it as a plain "
                            "mapping of settings.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise YamlSyntaxError(f"{source} is not valid YAML{where}: {problem}. Fix the syntax "
                              "there (indentation, colons, quotes).") from None
    finally:
        loader.dispose()


def load_yaml_file(path, kind, remedy=""):
    """parse_yaml of the file `path` (a regular file of at most MAX_YAML_BYTES, UTF-8).

    kind: what the file is, e.g. "config file"; remedy: what to do, added to the message when
    the path is not a readable regular file.
    """
    data = read_regular_file(path, kind, remedy, max_bytes=MAX_YAML_BYTES)
    source = f"{kind} '{shown_path(path)}'"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MetaPoseError(f"{source} is not UTF-8 text (byte {error.start}: "
                            f"{data[error.start:error.start + 1]!r}). Save it as UTF-8.") from None
    return parse_yaml(text, source)
