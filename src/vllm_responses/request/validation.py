"""What is wrong with a request body, said the way OpenAI says it.

pydantic reports one error per member of every union a value failed to match; clients need
the one that names their mistake, with OpenAI's codes (``missing_required_parameter``,
``invalid_type``, ``invalid_value``, ...) and a ``param`` path such as
``input[0].content[1].text``. Also the limits every body is held to, whichever route it
reaches: nesting depth and ``metadata``.
"""

from typing import Any

from pydantic import ValidationError

from ..common.errors import APIError, invalid_request

# Deeper JSON than this is refused before anything walks it (schemas, content, metadata):
# real requests stay far below; recursive code (ours, pydantic's, vLLM's) stays safe.
MAX_DEPTH = 100
METADATA_KEYS, METADATA_KEY_LEN, METADATA_VALUE_LEN = 16, 64, 512

_BUILTIN_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def nested_too_deeply(param: str | None = None) -> APIError:
    return invalid_request("The request is nested too deeply to be processed.", param=param, code="nested_too_deeply")


def check_depth(data: dict[str, Any]) -> None:
    """Refuse a body nested deeper than :data:`MAX_DEPTH`, naming the top-level field (no recursion)."""
    for name, value in data.items():
        stack: list[tuple[Any, int]] = [(value, 2)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, dict):
                children = node.values()
            elif isinstance(node, list):
                children = node
            else:
                continue
            if depth > MAX_DEPTH:
                raise nested_too_deeply(name)
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """``metadata``: at most 16 string keys of up to 64 characters, string values of up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_request(
            f"Invalid type for '{param}': expected an object, but got {_kind(value)} instead.",
            param=param,
            code="invalid_type",
        )
    for key, text in value.items():
        if not isinstance(text, str):
            raise invalid_request(
                f"Invalid type for '{param}.{key}': expected a string, but got {_kind(text)} instead.",
                param=f"{param}.{key}",
                code="invalid_type",
            )
    if len(value) > METADATA_KEYS:
        raise invalid_request(
            f"Invalid '{param}': too many properties. Expected an object with at most {METADATA_KEYS} properties, "
            f"but got {len(value)} instead.",
            param=param,
            code="object_above_max_properties",
        )
    for key, text in value.items():
        if len(key) > METADATA_KEY_LEN:
            raise invalid_request(
                f"Invalid '{param}': key too long. Expected keys of at most {METADATA_KEY_LEN} characters, but got "
                f"one of {len(key)}.",
                param=param,
                code="string_above_max_length",
            )
        if len(text) > METADATA_VALUE_LEN:
            raise invalid_request(
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_VALUE_LEN}, but got a string with length {len(text)} instead.",
                param=f"{param}.{key}",
                code="string_above_max_length",
            )
    return value


def from_validation_error(exc: ValidationError, prefix: str) -> APIError:
    """The one error among pydantic's that names the client's mistake, as OpenAI would.

    At each union the value failed, members whose ``type`` (or whole shape) does not match
    are set aside; the first member left is followed. When none is left, the value itself is
    wrong: an unknown ``type`` is ``invalid_value`` at ``….type``, anything else
    ``invalid_type`` (or ``invalid_value`` for a string no literal allows).
    """
    errors = [(list(e["loc"]), e) for e in exc.errors()]
    return _best(errors, 0, prefix)


def _best(errors: list[tuple[list[Any], dict[str, Any]]], i: int, prefix: str) -> APIError:
    while True:
        here = [(p, e) for p, e in errors if len(p) == i]
        deeper = [(p, e) for p, e in errors if len(p) > i]
        if not deeper or (here and not any(_is_label(p[i]) for p, _ in deeper)):
            path, error = (here or deeper)[0]
            return _error(error, _param(prefix, path))
        if not any(_is_label(p[i]) for p, _ in deeper):
            first = deeper[0][0][i]
            errors, i = [(p, e) for p, e in deeper if p[i] == first], i + 1
            continue
        # A union: one group of errors per member (errors at the union itself are their own).
        groups: dict[Any, list[tuple[list[Any], dict[str, Any]]]] = {}
        for p, e in errors:
            groups.setdefault(p[i] if len(p) > i and _is_label(p[i]) else None, []).append((p, e))
        at = errors[0][0][:i]
        fitting = [(label, g) for label, g in groups.items() if label is not None and not _mismatch(g, i)]
        if fitting:
            errors = [(p[:i] + p[i + 1 :], e) for p, e in fitting[0][1]]
            continue
        return _no_member(groups, i, _param(prefix, at))


def _mismatch(group: list[tuple[list[Any], dict[str, Any]]], i: int) -> bool:
    """A union member that is not what the client meant: the value is not of its shape, or
    its ``type`` is another one."""
    for p, e in group:
        rest = p[i + 1 :]
        if not rest or (rest == ["type"] and e["type"] in ("literal_error", "missing")):
            return True
    return False


def _no_member(groups: dict[Any, list[tuple[list[Any], dict[str, Any]]]], i: int, param: str | None) -> APIError:
    errors = [(p, e) for g in groups.values() for p, e in g]
    types = [e for p, e in errors if p[i + 1 :] == ["type"] and e["type"] == "literal_error"]
    if types:
        value, where = types[0].get("input"), f"{param}.type" if param else "type"
        if not isinstance(value, str):
            return invalid_request(
                f"Invalid type for '{where}': expected a string, but got {_kind(value)} instead.",
                param=where,
                code="invalid_type",
            )
        supported = ", ".join(dict.fromkeys(str((e.get("ctx") or {}).get("expected", "")) for e in types))
        return invalid_request(
            f"Invalid value for '{where}': '{value}'. Supported values are: {supported}.", param=where
        )
    value = errors[0][1].get("input")
    literal = next((e for p, e in errors if e["type"] == "literal_error" and len(p) <= i + 1), None)
    if literal is not None and isinstance(value, str):
        return invalid_request(f"Invalid value for '{param}': {literal['msg']}.", param=param)
    return invalid_request(
        f"Invalid type for '{param}': expected one of the allowed types, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _error(error: dict[str, Any], param: str | None) -> APIError:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    name = f"'{param}'" if param else "the request"
    if kind == "missing":
        return invalid_request(f"Missing required parameter: {name}.", param=param, code="missing_required_parameter")
    if kind == "literal_error" or kind == "enum":
        if isinstance(value, str):
            return invalid_request(f"Invalid value for {name}: {msg}.", param=param)
        return invalid_request(
            f"Invalid type for {name}: {msg}, but got {_kind(value)}.", param=param, code="invalid_type"
        )
    if kind == "int_parsing_size" or (kind == "int_type" and _huge_integer(value)):
        return invalid_request(
            f"Invalid {name}: integer above maximum value.", param=param, code="integer_above_max_value"
        )
    if kind.endswith(("_type", "_parsing")) or kind in ("int_from_float", "is_instance_of"):
        return invalid_request(
            f"Invalid type for {name}: {msg}, but got {_kind(value)}.", param=param, code="invalid_type"
        )
    if kind == "string_too_long":
        return invalid_request(f"Invalid {name}: string too long. {msg}.", param=param, code="string_above_max_length")
    if kind == "too_long":
        return invalid_request(f"Invalid {name}: array too long. {msg}.", param=param, code="array_above_max_length")
    return invalid_request(f"Invalid value for {name}: {msg}.", param=param)


def _huge_integer(value: Any) -> bool:
    """An integer too large for 64 bits (JSON parsers read those as floats)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and float(value).is_integer()
        and abs(value) >= 2**63
    )


def _is_label(segment: Any) -> bool:
    """Whether a location segment names a union member (not a field, key or index)."""
    return isinstance(segment, str) and (
        segment[:1].isupper() or "[" in segment or "-" in segment or segment in _BUILTIN_LABELS
    )


def _param(prefix: str, path: list[Any]) -> str | None:
    parts = [prefix] if prefix else []
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif not _is_label(segment):
            parts.append(f".{segment}" if parts else segment)
    return "".join(parts) or None


def _kind(value: Any) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
