"""viur-core's own Session.load, in a Python 3.12 venv of its own, agrees with our readers and our cleanup.

viur-core 3.9 needs Python 3.12 or newer; the suite builds its venv once (``.local/viur-venv``)
from PyPI. Each session lives its own lifetime through the shifted ``lastseen``, which is all
viur-core reads: it must see each one alive exactly until its own expiry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import datastore
from markupsafe import Markup

from session_core import Session, Settings
from session_core.clients import datastore_client
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.sweep import session_names
from session_core.rules import new_key
from session_core.session import Saved
from session_core.store import SessionRecord, SessionStore
from session_core.testing import Emulator
from tests.conftest import ROOT, Ctx
from tests.locks import locked
from tests.test_lifetimes import DAY, HOUR, MINUTE, T0, alive_for_the_reader, saved, viur_saved
from tests.test_values import same
from tests.test_wire import EVERY_VALUE, documented
from tests.viur.typed_json import typed

pytestmark = pytest.mark.slow
VIUR_CORE = "viur-core==3.9.3"
VENV = ROOT / ".local" / "viur-venv"
PROJECT = "viur-agreement"  # a project of its own: viur-core reads the default namespace


def python312() -> Path | None:
    found = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3"))
    on_path = shutil.which("python3.12")
    return found[-1] if found else Path(on_path) if on_path else None


@pytest.fixture(scope="module")
def viur_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lock = ROOT / "locks" / "viur-core.txt"  # viur-core and everything it needs, with hashes
    assert f"\n{VIUR_CORE} \\\n" in lock.read_text(), f"{VIUR_CORE}: not what locks/viur-core.in pins"
    marker = VENV / f".installed-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (VENV.parent / "viur-venv.lock").open("w") as building:  # this file and test_viur_inplace may run at once
        fcntl.flock(building, fcntl.LOCK_EX)
        return build_viur_venv(lock, marker, tmp_path_factory)


def build_viur_venv(lock: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """viur-core's venv from its lock, unless ``marker`` says it is built; then what session_core needs."""
    if not marker.exists():
        base = python312()
        if base is None:
            if os.environ.get("CI"):
                pytest.fail("CI needs Python 3.12 (pyenv) to check viur-core's own reader")
            pytest.skip("no Python 3.12 here: viur-core 3.9 needs it")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([str(base), "-m", "venv", str(VENV)], check=True, timeout=120)
        pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--require-hashes", "-r"]
        subprocess.run([*pip, str(ROOT / "locks" / "pip.txt")], check=True, timeout=900, capture_output=True)
        uv = [str(VENV / "bin" / "uv"), "pip", "install", "--quiet", "--python", str(VENV / "bin" / "python")]
        subprocess.run([*uv, "--require-hashes", "-r", str(lock)], check=True, timeout=900, capture_output=True)
        marker.touch()
    session_core_needs = VENV / ".installed-structlog-26.1.0"  # what session_core itself needs beyond viur-core's
    if not session_core_needs.exists():
        requirement = locked("runtime", "structlog", "26.1.0", tmp_path_factory.mktemp("locks"))
        pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--no-deps", "--require-hashes", "-r"]
        subprocess.run([*pip, str(requirement)], check=True, timeout=300, capture_output=True)
        session_core_needs.touch()
    return VENV / "bin" / "python"


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A well-formed service-account file signed by a throwaway key: viur-core asks for one at import."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path_factory.mktemp("viur") / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "throwaway",
                "private_key": pem.decode(),
                "client_email": f"viur@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


def in_viur_core(python: Path, credentials: Path, emulator: Emulator, script: str, given: object, *argv: str) -> Any:
    """Run ``tests/viur/<script>`` in viur-core's interpreter on ``emulator``, ``given`` on stdin: its JSON answer.

    The answer is the script's last line of stdout, parsed.
    """
    env = {
        "PATH": os.environ["PATH"],
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATASTORE_EMULATOR_HOST": emulator.host,
    }
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "viur" / script), *argv],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def viur_core_says_alive(
    python: Path, credentials: Path, emulator: Emulator, pairs: list[tuple[str, float]]
) -> list[bool]:
    """Whether viur-core's own Session.load accepts each (cookie, now) (``tests/viur/load.py``)."""
    answers: list[bool] = in_viur_core(python, credentials, emulator, "load.py", pairs)
    return answers


def test_viur_cores_reader_agrees_with_ours_and_with_cleanup_at_every_boundary(
    viur_python: Path, credentials: Path, datastore_emulator: Emulator
) -> None:
    client, settings = viur_layout(datastore_emulator)
    lifetimes = {"1 minute": MINUTE, "1 hour": HOUR, "30 days": 30 * DAY, "ViUR layout": HOUR}
    cookies = {name: saved(client, settings, life) for name, life in lifetimes.items() if name != "ViUR layout"}
    cookies["ViUR layout"] = viur_saved(client, settings)
    grace = settings.clear_grace.total_seconds()
    steps = sorted({T0 + life + extra + d for life in lifetimes.values() for extra in (0, grace) for d in (-1, 0, 1)})
    moments = sorted({now - shift for now in steps for shift in (0, grace)})
    pairs = [(cookie, now) for now in moments for cookie in cookies.values()]
    viur = dict(zip(pairs, viur_core_says_alive(viur_python, credentials, datastore_emulator, pairs), strict=True))
    ours = {pair: alive_for_the_reader(client, settings, *pair) for pair in pairs}
    assert viur == ours
    assert {
        pair: T0 + lifetimes[name] >= pair[1] for name, cookie in cookies.items() for pair in pairs if pair[0] == cookie
    } == ours
    for now in steps:
        start_clear_sessions(client, settings, now=now)
        present = set(session_names(client, settings))
        for cookie in cookies.values():
            assert (cookie in present) == viur[(cookie, now - grace)], (now - T0, cookie)


def test_viur_cores_reader_sees_a_busy_session_expire_at_its_absolute_end(
    viur_python: Path, credentials: Path, datastore_emulator: Emulator
) -> None:
    client, settings = viur_layout(datastore_emulator)
    settings = replace(settings, absolute_life_time=timedelta(minutes=90))
    end = T0 + 90 * MINUTE
    cookie = saved(client, settings, None)  # created at T0: its absolute end is T0 + 90 minutes
    busy = Session(client, settings, clock=lambda: T0 + 50 * MINUTE)  # in use 50 minutes later: idle until T0 + 110
    assert busy.load(Ctx({settings.cookie_name: cookie}))
    busy["n"] = 2
    assert busy.commit() is Saved.WRITTEN and busy.expires == end
    pairs = [(cookie, now) for now in (end - 1, end, end + 1, T0 + 100 * MINUTE)]
    viur = viur_core_says_alive(viur_python, credentials, datastore_emulator, pairs)
    ours = [alive_for_the_reader(client, settings, *pair) for pair in pairs]
    assert viur == ours == [True, True, False, False]
    grace = settings.clear_grace.total_seconds()
    start_clear_sessions(client, settings, now=end + grace - 1)
    assert cookie in set(session_names(client, settings))
    start_clear_sessions(client, settings, now=end + grace + 1)
    assert cookie not in set(session_names(client, settings))


def viur_core_session(python: Path, credentials: Path, emulator: Emulator, mode: str, given: object) -> Any:
    """What viur-core's own Session does in its interpreter (``tests/viur/session_io.py``): read, rewrite or write."""
    return in_viur_core(python, credentials, emulator, "session_io.py", given, mode)


def viur_layout(emulator: Emulator) -> tuple[datastore.Client, Settings]:
    """A client and settings for the sessions viur-core reads: its project, cookie name and plain key names."""
    settings = Settings(
        project=PROJECT, emulator_host=emulator.host, cookie_name=f"viur_cookie_{PROJECT}", key_storage="plain"
    )
    return datastore_client(settings), settings


def both_our_paths(client: datastore.Client, settings: Settings, cookie: str) -> list[dict[str, Any]]:
    """A session's data read by the request path (raw protobufs) and by the client library."""
    store = SessionStore(client, settings)
    entity = client.get(store.key(cookie))
    assert entity is not None
    return [dict(store.lookup_all([cookie])[cookie].data), dict(SessionStore.from_entity(entity).data)]


def test_viur_core_reads_every_value_the_request_path_writes_and_we_read_back_what_it_rewrites(
    viur_python: Path, credentials: Path, datastore_emulator: Emulator
) -> None:
    client, settings = viur_layout(datastore_emulator)
    cookie = new_key()
    written = SessionRecord(cookie, EVERY_VALUE, "__guest__", "k" * 13, time.time())
    assert SessionStore(client, settings).insert(written)  # the request path: raw protobufs

    # One entity, three readers: our two paths get the values back; viur-core holds their documented stored forms.
    ours = both_our_paths(client, settings, cookie)
    [viur] = viur_core_session(viur_python, credentials, datastore_emulator, "rewrite", [cookie])
    assert all(same(EVERY_VALUE, data) for data in ours)
    assert viur == typed({name: documented(value) for name, value in EVERY_VALUE.items()})

    # viur-core saved it back as it read it: every tagged form still reads as its value, both ways.
    rewritten = both_our_paths(client, settings, cookie)
    assert all(same({**EVERY_VALUE, "viur": "was here"}, data) for data in rewritten)


def test_we_read_what_viur_core_writes_both_ways_tagged_forms_included(
    viur_python: Path, credentials: Path, datastore_emulator: Emulator
) -> None:
    client, settings = viur_layout(datastore_emulator)
    when = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    held_by_viur = {
        "text": "Grüße, 世界",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "blob": b"\x00\xff",
        "when": when,
        "ids": [1, 2, 3],
        "prefs": {"theme": "dark", "tags": ["a", "b"]},
        "a tuple": {"~tuple": [1, "a"]},
        "a list in a list": [{"~list": [1, 2]}],
        "a uuid": {"~uuid": "12345678-1234-5678-1234-567812345678"},
        "markup": {"~markup": "<b>hi</b>"},
        "an escaped dict": {"~dict": {"~uuid": "not one"}},
    }
    cookie = viur_core_session(viur_python, credentials, datastore_emulator, "write", typed(held_by_viur)["dict"])

    expected = {
        **held_by_viur,
        "a tuple": (1, "a"),
        "a list in a list": [[1, 2]],
        "a uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "markup": Markup("<b>hi</b>"),
        "an escaped dict": {"~uuid": "not one"},
    }
    assert all(same(expected, data) for data in both_our_paths(client, settings, cookie))
    [viur] = viur_core_session(viur_python, credentials, datastore_emulator, "read", [cookie])
    assert viur == typed(held_by_viur)
