"""Typed JSON: session values with their kind at every depth, for comparing what viur-core holds with ours.

Imported by ``session_io.py`` (in viur-core's interpreter) and by ``tests/test_viur_agreement.py``.
"""

import base64
import datetime


def typed(value):
    """A value as typed JSON: its kind and content, at every depth (a dict's key too)."""
    if value is None:
        return {"none": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": repr(value)}  # "nan" and "inf" included
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
        return {"datetime": aware.astimezone(datetime.UTC).isoformat()}
    if isinstance(value, list):
        return {"list": [typed(item) for item in value]}
    if isinstance(value, dict):
        key = getattr(value, "key", None)
        return {"dict": {name: typed(item) for name, item in value.items()}, "key": typed(key) if key else None}
    if hasattr(value, "flat_path"):
        return {"key": [str(part) for part in value.flat_path]}
    if hasattr(value, "latitude"):
        return {"geo": [value.latitude, value.longitude]}
    return {"other": f"{type(value).__name__}: {value!r}"}


def untyped(value):
    """The value of typed JSON (dicts, lists and the scalars viur-core stores)."""
    [(kind, content)] = [(k, v) for k, v in value.items() if k != "key"]
    if kind == "dict":
        return {name: untyped(item) for name, item in content.items()}
    if kind == "list":
        return [untyped(item) for item in content]
    if kind == "float":
        return float(content)
    if kind == "bytes":
        return base64.b64decode(content)
    if kind == "datetime":
        return datetime.datetime.fromisoformat(content)
    return content
