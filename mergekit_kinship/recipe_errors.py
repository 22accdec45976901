"""One-line messages for a recipe's mistakes: the field, what is wrong, the closest valid name.

pydantic reports every error of a model with its location and its own wording ("Extra inputs
are not permitted"); :func:`format_validation_error` turns the first into one line that names the
field as the user wrote it (no pydantic union tags) and, for an unknown key, the closest valid
one. :func:`yaml_error_text` does the same for a YAML syntax error, with PyYAML's line and column.
"""

from __future__ import annotations

import typing
from typing import Any, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError

from mergekit_kinship.errors import closest, did_you_mean


class FieldError(ValueError):
    """A validation error about ``path`` below the model that raises it (reported as its loc)."""

    def __init__(self, path: Sequence[str], message: str):
        super().__init__(message)
        self.path = tuple(path)


def format_validation_error(source: str, err: ValidationError, root: type[BaseModel]) -> str:
    """One line for pydantic's errors: the first, or the first unknown key (a misspelled key is
    also a missing one, e.g. evaluation.task and evaluation.tasks: the user wants the former)."""
    errors = err.errors()
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    parts, holder = _walk_loc(first["loc"], root)
    cause = (first.get("ctx") or {}).get("error")
    parts += [str(p) for p in getattr(cause, "path", ())]
    others = [e for e in errors if e is not first]
    if first["type"] == "extra_forbidden" and holder is not None:
        msg = "unknown key" + did_you_mean(parts[-1], _keys(holder))
        meant = (*first["loc"][:-1], closest(parts[-1], _keys(holder)))
        others = [e for e in others if not (e["type"] == "missing" and e["loc"] == meant)]
    else:
        msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(others)} more)" if others else ""
    return f"{source}: {'.'.join(parts) or 'recipe'}: {msg}{more}"


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _walk_loc(loc, root: type[BaseModel]) -> tuple[list[str], Optional[type[BaseModel]]]:
    """The recipe path of a pydantic error location without pydantic's union tags ('float',
    'list[ConditionalValue]', ...), and the model whose mapping holds the last key."""
    ann: Any = root
    parts: list[str] = []
    holder = None
    for part in loc:
        ann = _unwrap_optional(ann)
        members = _union_members(ann)
        if members is not None:  # a tag naming the union member that was tried
            ann = next((m for m in members if _type_name(m) == part), None)
            continue
        if isinstance(part, str) and part.startswith(("function-", "union[")):
            continue
        parts.append(str(part))
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            holder = ann
            field = ann.model_fields.get(part)
            ann = field.annotation if field is not None else None
        elif origin is list and args:
            ann = args[0]
        elif origin is dict and len(args) == 2:
            ann = args[1]
        else:
            ann = None
    return parts, holder


def _union_members(ann) -> Optional[tuple]:
    return typing.get_args(ann) if typing.get_origin(ann) is Union else None


def _unwrap_optional(ann):
    members = _union_members(ann)
    if members is not None and type(None) in members:
        rest = tuple(m for m in members if m is not type(None))
        return rest[0] if len(rest) == 1 else Union[rest]
    return ann


def _type_name(ann) -> str:
    """pydantic's tag for a union member: 'float', 'list[float]', 'ConditionalValue'."""
    args = typing.get_args(ann)
    if typing.get_origin(ann) is not None and args:
        return f"{typing.get_origin(ann).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def yaml_error_text(err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error, with the line and column (1-based) PyYAML reports."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return f"{where}not valid YAML: {problem}"
