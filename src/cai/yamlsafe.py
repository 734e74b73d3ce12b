"""YAML for user files (configs, constitutions): bounded size, bounded aliases, no duplicate keys.

Plain ``yaml.safe_load`` accepts three things that hurt here: a small file whose anchors and aliases expand into
gigabytes (an alias bomb), a mapping that repeats a key (the last value silently wins), and ``version: 1.10``
read as the float 1.1. :func:`load_yaml` composes the document once (libyaml when available), checks the node
graph in linear time, then builds Python values from the same nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cai.errors import UserInputError

MAX_ALIASES = 100
"""Alias uses (``*name``) allowed in one document; ordinary configs need few or none."""

MAX_EXPANDED_NODES = 100_000
"""Extra nodes the aliases may add once expanded (the document's own nodes are not counted)."""

CONFIG_MAX_BYTES = 1 << 20
CONSTITUTION_MAX_BYTES = 16 << 20

KEEP_AS_TEXT = frozenset({"version"})
"""Keys whose plain scalar value is kept exactly as written (``version: 1.10`` stays "1.10")."""

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_NUMBER_TAGS = {"tag:yaml.org,2002:float", "tag:yaml.org,2002:int"}


class YamlError(UserInputError):
    """A YAML file that cannot be read safely. ``line`` is 1-based when known."""

    def __init__(self, message: str, *, fix: str, path: str, line: int | None = None):
        self.path = path
        self.line = line
        self.problem = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}", fix=fix)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    pass


def read_text_limited(path: str | Path, *, max_bytes: int, what: str) -> str:
    """The UTF-8 text of ``path``, refusing files bigger than ``max_bytes`` before reading them."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise YamlError(f"cannot read the {what} ({e.strerror or e}).", fix="check the path.", path=str(path)) from None
    if not path.is_file():
        raise YamlError(f"is not a file (a {what} must be a YAML file).", fix="pass the path of a .yaml file.",
                        path=str(path))
    if size > max_bytes:
        raise YamlError(
            f"the {what} is {size:,} bytes, more than the {max_bytes:,} allowed.",
            fix=f"split or shorten the file; a {what} over {max_bytes >> 20} MiB is almost certainly not what you meant.",
            path=str(path),
        )
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise YamlError(f"not valid UTF-8 ({e.reason} at byte {e.start}).", fix="save the file as UTF-8.",
                        path=str(path), line=line) from None


def compose(text: str, *, path: str) -> yaml.Node | None:
    """Compose one YAML document and check it (aliases, duplicate keys); ``KEEP_AS_TEXT`` values become strings."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise YamlError(f"YAML syntax error: {getattr(e, 'problem', None) or e}", fix="fix the YAML at that line.",
                        path=path, line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    if node is not None:
        _check(node, path)
    return node


def construct(node: yaml.Node | None, *, path: str) -> Any:
    """Python values (dict, list, str, int, float, bool, None) from a node returned by :func:`compose`."""
    if node is None:
        return None
    loader = _Loader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise YamlError(f"YAML error: {getattr(e, 'problem', None) or e}", fix="fix the YAML at that line.",
                        path=path, line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, *, max_bytes: int = CONFIG_MAX_BYTES, what: str = "config file") -> tuple[Any, yaml.Node | None]:
    """Read, check and build ``path``. Returns (data, composed node) so callers can map fields to lines."""
    name = str(path)
    text = read_text_limited(path, max_bytes=max_bytes, what=what)
    node = compose(text, path=name)
    return construct(node, path=name), node


def _check(root: yaml.Node, path: str) -> None:
    """One pass over the node graph: count alias uses, refuse cycles and repeated keys, fix up version values."""
    seen: set[int] = set()
    alias_uses = 0
    first_alias_line: int | None = None
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            alias_uses += 1
            if first_alias_line is None:
                first_alias_line = node.start_mark.line + 1
            if alias_uses > MAX_ALIASES:
                raise YamlError(
                    f"more than {MAX_ALIASES} uses of YAML aliases (*name); such files can expand to gigabytes.",
                    fix="write the repeated values out instead of using &anchors and *aliases.",
                    path=path, line=first_alias_line,
                )
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    sig = (k.tag, k.value)
                    if sig in keys:
                        raise YamlError(
                            f"duplicate key '{k.value}' (first given at line {keys[sig]}); YAML keeps only the last one.",
                            fix="remove one of the two, or rename it.", path=path, line=line,
                        )
                    keys[sig] = line
                    if (k.value in KEEP_AS_TEXT and isinstance(v, yaml.ScalarNode) and v.tag in _NUMBER_TAGS
                            and not v.style):
                        v.tag = _STR
                stack.append(k)
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    if alias_uses:
        _check_expansion(root, path, first_alias_line)


def _check_expansion(root: yaml.Node, path: str, line: int | None) -> None:
    """Size of the document with every alias written out, in linear time; refuse cycles and large expansions."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    distinct = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        nid = id(node)
        if children_done:
            kids = _children(node)
            size[nid] = 1 + sum(size[id(c)] for c in kids)
            on_path.discard(nid)
            distinct += 1
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise YamlError("an alias refers to a value that contains it (a recursive alias).",
                            fix="remove the recursive &anchor / *alias.", path=path, line=node.start_mark.line + 1)
        on_path.add(nid)
        stack.append((node, True))
        for c in _children(node):
            if id(c) not in size:
                stack.append((c, False))
    expanded = size[id(root)]
    if expanded - distinct > MAX_EXPANDED_NODES:
        raise YamlError(
            f"its aliases expand to {expanded:,} values ({expanded - distinct:,} added, at most "
            f"{MAX_EXPANDED_NODES:,} allowed); this looks like an alias bomb.",
            fix="write the repeated values out instead of using &anchors and *aliases.", path=path, line=line,
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
