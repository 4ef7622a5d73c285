"""Session values round-trip with their type, or fail with SessionDataError before any RPC."""

from __future__ import annotations

import decimal
import math
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from google.cloud import datastore
from google.cloud.datastore import helpers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from session_core import SessionDataError, Settings, values
from session_core.store import SessionRecord, SessionStore
from tests.conftest import RpcCounter, examples

KEY = datastore.Key("viur-session", "a" * 64, project="p")


def through_the_wire(data: dict[str, Any]) -> dict[str, Any]:
    """What a save and a load do to the data, short of the RPC: encode, protobuf and back, decode."""
    entity = datastore.Entity(KEY, exclude_from_indexes=("data",))
    entity["data"] = values.encode(data)
    return values.decode(helpers.entity_from_protobuf(helpers.entity_to_protobuf(entity))["data"])


def same(expected: Any, got: Any) -> bool:
    """Equal with the same type, at every depth (NaN is NaN; a naive datetime comes back as UTC)."""
    if isinstance(expected, datetime):
        wanted = expected if expected.tzinfo is not None else expected.replace(tzinfo=UTC)
        return isinstance(got, datetime) and got.tzinfo is not None and got == wanted
    if type(expected) is not type(got):
        return False
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(got)
    if isinstance(expected, dict):
        return expected.keys() == got.keys() and all(same(expected[k], got[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return len(expected) == len(got) and all(map(same, expected, got))
    return bool(expected == got)


ROUND_TRIPS = {
    "flask flashes": [("message", "saved"), ("error", "bad <b>input</b>")],
    "tuple": (1, "a", None),
    "tuples in tuples": ((1, 2), (3, (4,))),
    "lists in lists": [[1, [2, [3]]], [], [[]]],
    "markup": Markup("<b>hi</b>"),
    "markup in a list": [Markup("<i>x</i>"), "plain"],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "aware datetime": datetime(2026, 11, 26, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
    "naive datetime (taken as UTC)": datetime(2026, 11, 26, 12, 30, 5, 123456),
    "bytes": b"\x00\xff",
    "int64 bounds": [-(2**63), 2**63 - 1],
    "floats": [0.5, -0.0, math.inf, -math.inf, math.nan],
    "empties": {"list": [], "dict": {}, "tuple": (), "str": "", "bytes": b""},
    "a dict that looks like a tag": {"~tuple": [1, 2]},
    "a dict that looks like an escape": {"~dict": {"~uuid": "x"}},
    "a tag-like key among others": {"~tuple": 1, "other": 2},
    "deep but allowed": {"a": {"b": {"c": {"d": [1, (2, [3])]}}}},
    "unicode": "Grüße, 世界 🎉",
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_values_round_trip_with_their_type(name: str) -> None:
    data = {"value": ROUND_TRIPS[name]}
    assert same(data, through_the_wire(data))


def test_what_viur_writes_is_stored_natively_so_viur_core_reads_it_unchanged() -> None:
    data = {
        "language": "de",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "blob": b"x",
        "when": datetime(2026, 1, 1, tzinfo=UTC),
        "ids": [1, 2, 3],
        "prefs": {"theme": "dark", "tags": ["a", "b"]},
    }
    entity = values.encode(data)
    assert dict(entity) == {**data, "prefs": entity["prefs"]} and dict(entity["prefs"]) == data["prefs"]
    assert not any(name.startswith("~") for name in entity) and set(entity.exclude_from_indexes) == set(data)


def test_the_tagged_forms_are_documented_entities_with_one_property() -> None:
    entity = values.encode({"t": (1,), "l": [[1]], "m": Markup("x"), "u": uuid.UUID(int=1), "d": {"~list": 1}})
    assert dict(entity["t"]) == {"~tuple": [1]}
    assert dict(entity["l"][0]) == {"~list": [1]}
    assert dict(entity["m"]) == {"~markup": "x"}
    assert dict(entity["u"]) == {"~uuid": "00000000-0000-0000-0000-000000000001"}
    assert list(entity["d"]) == ["~dict"] and dict(entity["d"]["~dict"]) == {"~list": 1}


class Thing:
    pass


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def self_referencing_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["me"] = value
    return value


def self_referencing_list() -> list[Any]:
    value: list[Any] = []
    value.append([value])
    return value


class Text(str):
    pass


OUT_OF_RANGE = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
REFUSED = {
    "a set": ({1, 2}, "session['v']"),
    "an object": (Thing(), "session['v']"),
    "a Decimal": (decimal.Decimal("1.5"), "session['v']"),
    "a date": (date(2026, 1, 1), "session['v']"),
    "a bytearray": (bytearray(b"x"), "session['v']"),
    "a str subclass (its type would be lost)": (Text("x"), "session['v']"),
    "an int key": ({1: "x"}, "session['v'][1]"),
    "a reserved key": ({"__x__": 1}, "session['v']['__x__']"),
    "an empty key": ({"": 1}, "session['v']['']"),
    "a key over 1500 bytes": ({"k" * 1501: 1}, "session['v']['" + "k" * 1501 + "']"),
    "an int beyond 64 bits": ([1, 2**63], "session['v'][1]"),
    "a negative int beyond 64 bits": (-(2**63) - 1, "session['v']"),
    "a lone surrogate": ({"x": "a\ud800b"}, "session['v']['x']"),
    "a lone surrogate in a key": ({"a\udfffb": 1}, "session['v']['a\\udfffb']"),
    "nesting deeper than Datastore allows": (deep(19), "session['v']" + "['a']" * 19),
    "tags count towards the depth": ((deep(17),), "session['v'][0]" + "['a']" * 17),
    "a dict that contains itself": (self_referencing_dict(), "session['v']['me']"),
    "a list that contains itself": (self_referencing_list(), "session['v'][0][0]"),
    "a datetime outside years 1 to 9999 in UTC": (
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        "session['v']",
    ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_cannot_round_trip_raises_session_data_error_naming_the_path(name: str) -> None:
    value, path = REFUSED[name]
    with pytest.raises(SessionDataError) as raised:
        values.encode({"v": value})
    assert raised.value.path == path


def test_the_deepest_allowed_nesting_is_stored() -> None:
    for value in (deep(18), [deep(17)]):  # the data entity and 19 levels: Datastore's 20
        assert same({"v": value}, through_the_wire({"v": value}))


def test_an_entity_over_one_mebibyte_is_refused_before_any_rpc(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    store = SessionStore(client, settings)
    big = SessionRecord("b" * 64, {"blob": b"x" * (1024 * 1024)}, "__guest__", "k" * 13, 2e9)
    with pytest.raises(SessionDataError, match="limit for an entity"):
        store.insert(big)
    fits = SessionRecord("c" * 64, {"blob": b"x" * (1024 * 1024 - 2000)}, "__guest__", "k" * 13, 2e9)
    assert rpcs.total == 0
    assert store.insert(fits)  # just under the limit: the emulator takes it


# -- generated values --------------------------------------------------------------

naive = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda delta: timezone(timedelta(minutes=delta // timedelta(minutes=1)))
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.uuids()
    | st.text(max_size=8).map(Markup)
    | naive
    | st.builds(lambda moment, tz: moment.replace(tzinfo=tz), naive, offsets)
)
names = st.text(min_size=1, max_size=6).filter(lambda n: not (n.startswith("__") and n.endswith("__")))
names |= st.sampled_from(sorted(values.TAGS))


def nested(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=24,
    )


# Nine sessions in ten hold only storable values; the tenth hides one that is not, somewhere.
storable = st.dictionaries(names, nested(scalars, names), max_size=5)
unstorable_leaves = (
    st.sets(st.integers(), min_size=1, max_size=2)
    | st.builds(Thing)
    | st.integers(min_value=2**63, max_value=2**80)
    | st.text(max_size=3).map(lambda t: t + "\ud800")
)
unstorable = st.dictionaries(
    names | st.sampled_from(["", "__x__"]), nested(unstorable_leaves | scalars, names), min_size=1, max_size=5
)
sessions = st.integers(0, 9).flatmap(
    lambda n: unstorable.map(lambda d: (False, d)) if n == 0 else storable.map(lambda d: (True, d))
)
# The only limits a session of storable values can still meet: Datastore's depth, and years 1 to 9999 in UTC.
STORABLE_LIMITS = ("nested deeper than Datastore's", "datetime is outside years 1 to 9999")


def round_trips_or_refuses(session: tuple[bool, dict[str, Any]], save_and_load: Any) -> None:
    storable, data = session
    try:
        got = save_and_load(data)
    except SessionDataError as exc:  # refused before any RPC: the documented answer for what cannot round-trip
        assert not storable or exc.reason.startswith(STORABLE_LIMITS), (data, str(exc))
        return
    assert same(data, got), (data, got)


@settings(max_examples=examples(10_000), derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions)
def test_ten_thousand_generated_sessions_round_trip_or_raise_session_data_error(
    data: tuple[bool, dict[str, Any]],
) -> None:
    round_trips_or_refuses(data, through_the_wire)


@settings(
    max_examples=examples(200),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=sessions)
def test_two_hundred_generated_sessions_round_trip_through_the_emulator(
    client: datastore.Client, settings: Settings, data: tuple[bool, dict[str, Any]]
) -> None:
    store = SessionStore(client, settings)

    def save_and_load(data: dict[str, Any]) -> dict[str, Any]:
        name = uuid.uuid4().hex * 2
        assert store.insert(SessionRecord(name, data, "__guest__", "k" * 13, 2e9))
        [entity] = client.get_multi([store.key(name)])
        return dict(SessionStore.from_entity(entity).data)

    round_trips_or_refuses(data, save_and_load)
