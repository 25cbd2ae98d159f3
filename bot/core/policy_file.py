"""Loading the policy file: YAML in, a validated :class:`bot.core.policy.Policy` out.

Every problem is reported at once, one per line, as ``file:line:column: field.path: what is wrong.
The fix.`` so an editor can jump to it. Line numbers come from the YAML node tree: pydantic reports
where in the *data* a problem is, and we walk the same path through the composed nodes (falling
back to the nearest parent when the path leads to a key that is absent).
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bot.core.errors import ConfigError
from bot.core.policy import Loc, Policy, PolicyReferenceError

_EXAMPLE = "examples/policy.yaml is a commented starting point"

# What a value should have been, for pydantic's type errors (several mean "union member failed").
_KINDS = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "tuple_type": "a list (`- item` lines, or [a, b])",
    "list_type": "a list (`- item` lines, or [a, b])",
    "time_delta_type": "a duration such as 30m or 2h",
    "time_delta_parsing": "a duration such as 30m or 2h",
}


@dataclass(frozen=True, order=True)
class _Problem:
    line: int  # 1-based
    column: int  # 1-based
    path: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def load_policy(path: Path, *, platforms: Collection[str] | None = None) -> Policy:
    """Read and validate the policy file. Raises :class:`ConfigError` listing every problem.

    With ``platforms`` (the chat platforms configured), an approval channel on another platform is
    one of those problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file. Point ACKGATE_POLICY_FILE at your policy YAML; {_EXAMPLE}.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file. Point ACKGATE_POLICY_FILE at the YAML file.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8 text. Save the file as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}). Check that Ackgate's user may read it.") from None
    return parse_policy(text, source=str(path), platforms=platforms)


def parse_policy(text: str, *, source: str = "policy.yaml", platforms: Collection[str] | None = None) -> Policy:
    """Validate policy YAML given as text; ``source`` names it in error messages."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        problems = _duplicate_keys(root) if root is not None else []
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_error(exc, source)) from None
    finally:
        loader.dispose()
    if root is None:
        raise ConfigError(f"{source}:1:1: the file is empty. Add resources: and flows:; {_EXAMPLE}.")
    try:
        policy = Policy.model_validate(data, context=None if platforms is None else {"platforms": tuple(platforms)})
    except ValidationError as exc:
        problems += _explain(exc.errors(), root)
    if problems:
        raise ConfigError("\n".join(p.render(source) for p in sorted(set(problems))))
    return policy


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    what = f"{exc.context}: {exc.problem}" if exc.context else str(exc.problem)
    if exc.context_mark and mark and exc.context_mark.line != mark.line:
        what += f" (the construct began on line {exc.context_mark.line + 1})"
    hint = "check the indentation and quoting on this line and the one before"
    if "'\\t'" in what:
        hint = "YAML does not allow tabs for indentation; use spaces"
    elif "single document" in what:
        hint = "keep one document per policy file (remove the extra `---`)"
    return f"{where}: invalid YAML: {what}. Fix: {hint}."


def _duplicate_keys(root: yaml.Node) -> list[_Problem]:
    """safe_load silently keeps the last of two equal keys; a policy must not mean two things."""
    problems: list[_Problem] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in node.value:
                stack.append(value)
                if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                    continue
                if key.value in first:
                    earlier = first[key.value].start_mark.line + 1
                    problems.append(
                        _at(key, "", f"duplicate key {key.value!r} (first on line {earlier}). Keep only one.")
                    )
                else:
                    first[key.value] = key
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return problems


def _at(node: yaml.Node, path: str, message: str) -> _Problem:
    return _Problem(node.start_mark.line + 1, node.start_mark.column + 1, path, message)


# --- following a pydantic location through the YAML nodes and the model types ----------------


@dataclass
class _Walk:
    node: yaml.Node  # the deepest node reached: the nearest parent when the path leaves the file
    key: yaml.Node | None  # the key node of the last step, when it was found
    annotation: object  # the expected type at the end of the path, or None when unknown
    path: str


def _unwrap(annotation: object) -> object:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: object) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _tags(annotation: object) -> dict[str, type[BaseModel]]:
    """The ``type:`` values of a discriminated union, in declaration order."""
    out: dict[str, type[BaseModel]] = {}
    for member in map(_unwrap, get_args(annotation)):
        if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
            for tag in get_args(member.model_fields["type"].annotation):
                out[str(tag)] = member
    return out


def _child(annotation: object, element: str | int) -> object:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(element))
        return field.annotation if field is not None else None
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    if get_origin(annotation) in (tuple, list) and args:
        return args[0]
    return None


def _walk(root: yaml.Node, loc: Loc) -> _Walk:
    walk = _Walk(node=root, key=None, annotation=Policy, path="")
    lost = False
    for element in loc:
        annotation = _unwrap(walk.annotation)
        if element == "[key]":  # the error is about the dict key of the previous step
            walk.node = walk.key or walk.node
            continue
        if _is_union(annotation):
            tags = _tags(annotation)
            members = {getattr(m, "__name__", str(m)): m for m in map(_unwrap, get_args(annotation))}
            if isinstance(element, str) and (element in tags or element in members):
                # pydantic names the union member it tried; the file has no such level
                walk.annotation = tags.get(element) or members[element]
                continue
        walk.annotation = _child(annotation, element)
        walk.path += f"[{element}]" if isinstance(element, int) else _segment(element, first=not walk.path)
        if lost:
            continue
        found = _step(walk.node, element)
        if found is None:
            lost, walk.key = True, None
        else:
            walk.key, walk.node = found
    return walk


def _segment(name: str, *, first: bool) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name if first else f".{name}"
    return f"[{name!r}]"


def _step(node: yaml.Node, element: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        # the last equal key wins, as in safe_load
        matches = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(element)]
        return matches[-1] if matches else None
    if isinstance(node, yaml.SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
        return None, node.value[element]
    return None


# --- turning pydantic errors into sentences --------------------------------------------------


def _explain(errors: list[ErrorDetails], root: yaml.Node) -> list[_Problem]:
    problems: list[_Problem] = []
    type_errors: dict[tuple[int, int, str], tuple[list[str], object]] = {}
    for err in errors:
        reference = err.get("ctx", {}).get("error")
        if isinstance(reference, PolicyReferenceError):
            for loc, message in reference.problems:
                walk = _walk(root, loc)
                problems.append(_at(walk.node, walk.path, _sentence(message)))
            continue
        if not err["loc"]:
            message = f"the policy must be a mapping with resources: and flows: keys; {_EXAMPLE}."
            problems.append(_at(root, "", message))
            continue
        walk = _walk(root, tuple(err["loc"]))
        kind = _KINDS.get(err["type"])
        if kind is not None:
            # a value that fails every member of a union yields one error per member: merge them
            mark = walk.node.start_mark
            kinds, _ = type_errors.setdefault((mark.line, mark.column, walk.path), ([], err["input"]))
            if kind not in kinds:
                kinds.append(kind)
            continue
        problems.append(_problem(err, walk, root))
    for (line, column, path), (kinds, value) in type_errors.items():
        message = f"should be {' or '.join(kinds)}, not {_show(value)}."
        problems.append(_Problem(line + 1, column + 1, path, message))
    return problems


def _problem(err: ErrorDetails, walk: _Walk, root: yaml.Node) -> _Problem:
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
    if kind == "extra_forbidden":
        name = str(loc[-1])
        model = _unwrap(_walk(root, loc[:-1]).annotation)
        allowed = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        hint = _suggest(name, allowed) or f" Allowed here: {', '.join(allowed)}."
        return _at(walk.key or walk.node, walk.path, f"unknown key {name!r}.{hint}")
    if kind == "missing":
        field = str(loc[-1])
        where = "at the top level" if len(loc) == 1 else "here"
        return _at(walk.node, walk.path, f"is required but missing. Add `{field}:` {where}.")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = list(_tags(_unwrap(walk.annotation)))
        found = _step(walk.node, "type")
        node = found[1] if found else walk.node
        path = f"{walk.path}.type"
        if kind == "union_tag_not_found":
            return _at(node, path, f"is missing. Add `type:` with one of {', '.join(tags)}.")
        tag = str(ctx.get("tag", ""))
        return _at(node, path, f"{tag!r} is not one of {', '.join(tags)}.{_suggest(tag, tags)}")
    if kind == "literal_error":
        allowed = [str(a) for a in get_args(_unwrap(walk.annotation))] if walk.annotation else []
        value = str(err["input"])
        listed = ", ".join(allowed) or str(ctx.get("expected", ""))
        return _at(walk.node, walk.path, f"{_show(err['input'])} is not one of {listed}.{_suggest(value, allowed)}")
    return _at(walk.node, walk.path, _sentence(str(err["msg"]).removeprefix("Value error, ")))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _sentence(message: str) -> str:
    return message if message.endswith((".", "?", "!")) else f"{message}."


def _show(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    shown = repr(value)
    return shown if len(shown) <= 60 else f"{shown[:57]}..."
