"""The package as pip sees it: metadata, pins that fit the declared ranges, and a wheel that works installed."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import uuid
import zipfile
from email.message import Message
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import session_core
from session_core.testing import Emulator, free_port
from tests.conftest import ROOT, doc_python_blocks
from tests.test_emulators import group_alive

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared() -> dict[str, Requirement]:
    """Every requirement pyproject.toml declares: the runtime and every extra."""
    lines = [*PYPROJECT["dependencies"], *(r for extra in PYPROJECT["optional-dependencies"].values() for r in extra)]
    return {canonicalize_name(requirement.name): requirement for requirement in map(Requirement, lines)}


def pins() -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


def test_requirements_txt_pins_satisfy_the_ranges_pyproject_declares() -> None:
    pinned = pins()
    outside = {
        name: version
        for name, version in pinned.items()
        if name in declared() and version not in declared()[name].specifier
    }
    assert outside == {}
    # Cloud Functions installs requirements.txt: every runtime and functions dependency is pinned there.
    needed = [*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"]["functions"]]
    assert {canonicalize_name(Requirement(line).name) for line in needed} <= set(pinned)


def test_the_version_is_in_the_changelog() -> None:
    assert f"\n## {session_core.__version__}\n" in (ROOT / "CHANGELOG.md").read_text()


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Installed(NamedTuple):
    wheel: Path
    venv: Path  # a fresh venv with the wheel (and its flask extra) and pytest installed


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built from a copy of this checkout and installed into a fresh venv with its ``flask`` extra."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source, dist = tmp_path / "source", tmp_path / "dist"  # build from a copy: setuptools writes build/ beside it
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("session_core-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[flask]", "pytest", cwd=tmp_path)
    return Installed(wheel, venv)


def metadata_of(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser(policy=email.policy.compat32).parsestr(archive.read(name).decode())


@pytest.mark.slow
def test_the_wheels_long_description_is_the_readme(installed: Installed) -> None:
    metadata = metadata_of(installed.wheel)
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload() == (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_a_wheel_installs_into_a_fresh_venv_and_the_docs_examples_run_from_another_directory(
    installed: Installed, tmp_path: Path, datastore_emulator: Emulator
) -> None:
    wheel, venv = installed
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {name.split("/")[0] for name in names} == {"session_core", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "session_core/py.typed" in names and "session_core/testing.py" in names
    assert "session_core/pytest_plugin.py" in names
    assert "[pytest11]\nsession_core = session_core.pytest_plugin" in entry_points
    assert "Requires-Dist: google-cloud-datastore" in metadata and 'extra == "flask"' in metadata
    python = venv / "bin" / "python"

    app_dir = tmp_path / "someone-elses-app"
    app_dir.mkdir()
    flask_example = doc_python_blocks("how-to/flask.md")[0]
    (app_dir / "app.py").write_text(flask_example)
    (app_dir / "drive.py").write_text(
        "import session_core, sys\n"
        "assert 'site-packages' in session_core.__file__, session_core.__file__\n"
        "from app import app\n"
        "browser = app.test_client()\n"
        "assert browser.post('/cart/book').json == {'cart': ['book']}\n"
        "assert browser.post('/cart/pen').json == {'cart': ['book', 'pen']}\n"
        "assert browser.post('/login/alice').data == b'ok'\n"
        "assert browser.post('/cart/cup').json == {'cart': ['cup']}\n"
        "print('flask example ok')\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "DATASTORE_EMULATOR_HOST": datastore_emulator.host,
        "GOOGLE_CLOUD_PROJECT": "session-core-test",
        "SESSION_NAMESPACE": f"wheel-{uuid.uuid4().hex[:8]}",
    }
    assert "flask example ok" in run(python, "drive.py", cwd=app_dir, env=env)
    assert "kill-user" in run(venv / "bin" / "session-core", "--help", cwd=app_dir, env=env)

    # The testing page's blocks, one test file, run by pytest with the plugin its entry point loads (no -p):
    # its fixtures start an emulator of their own.
    testing_page = doc_python_blocks("how-to/testing.md")
    (app_dir / "test_example.py").write_text("\n\n".join(testing_page))
    tests = len(re.findall(r"^def test_", "".join(testing_page), re.M))
    no_emulator_env = {key: value for key, value in env.items() if key != "DATASTORE_EMULATOR_HOST"}
    out = run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py", cwd=app_dir, env=no_emulator_env
    )
    assert tests >= 2 and f"{tests} passed" in out

    # The pytest plugin, loaded through its entry point alone (no -p): its fixtures, beside the app's own.
    (app_dir / "test_plugin.py").write_text(
        "from session_core import Session\n"
        "def test_memory(session_core_memory_store):\n"
        "    session = Session(None, session_core_memory_store.settings, store=session_core_memory_store)\n"
        "    session['cart'] = 1\n"
        "    session.commit()\n"
        "    assert len(session_core_memory_store.sessions_of(None)) == 1\n"
    )
    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py", cwd=app_dir, env=env)
    assert "1 passed" in out
    fixtures = run(
        python, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", "test_plugin.py", cwd=app_dir, env=env
    )
    for name in ("emulator", "emulator_host", "settings", "client", "memory_store"):
        assert f"session_core_{name} " in fixtures
    assert "emulator" in run(venv / "bin" / "session-core", "--help", cwd=app_dir, env=env)


def stop_group(group: int, signum: int, process: subprocess.Popen[bytes]) -> int:
    """Signal a process group as a terminal's Ctrl-C does; its leader's exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)
    return process.wait(timeout=60)


@pytest.mark.slow
def test_the_readme_quick_start_pasted_into_a_fresh_venv_answers_against_session_core_emulator(
    installed: Installed, tmp_path: Path
) -> None:
    """The README's two terminals: ``session-core emulator``, then its exports, app.py and ``flask --app app run``."""
    bin_dir = installed.venv / "bin"
    shell = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(tmp_path))}
    emulator = subprocess.Popen(
        [bin_dir / "session-core", "emulator"],
        cwd=tmp_path,
        env=shell,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a terminal of its own: Ctrl-C reaches its process group
    )
    server: subprocess.Popen[bytes] | None = None
    java_group = None
    try:
        assert emulator.stdout is not None and emulator.stderr is not None
        running = emulator.stderr.readline().decode()  # written after the exports were flushed to stdout
        assert " running at " in running, running + emulator.stderr.read().decode()[-2000:]
        java_group = int(re.search(r"process group (\d+)", running)[1])  # type: ignore[index]
        printed = os.read(emulator.stdout.fileno(), 65536).decode()
        exports = dict(re.findall(r"^export (\w+)=(\S*)$", printed, re.M))
        assert "DATASTORE_EMULATOR_HOST" in exports, printed

        app_dir = tmp_path / "quick-start"
        app_dir.mkdir()
        [quick_start] = doc_python_blocks("README.md")
        (app_dir / "app.py").write_text(quick_start)
        port = free_port()
        server = subprocess.Popen(
            [bin_dir / "flask", "--app", "app", "run", "--port", str(port)],
            cwd=app_dir,
            env={**shell, **exports},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert server.stderr is not None
        said = b""
        while b"Running on http://" not in said:  # flask says where it listens once it does
            line = server.stderr.readline()
            assert line, f"flask run ended before it served:\n{said.decode()}"
            said += line

        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        answers = [browser.open(f"http://127.0.0.1:{port}/", timeout=30).read().decode() for _ in range(2)]
        assert answers == ["visit 1\n", "visit 2\n"]
        assert [cookie.name for cookie in jar] == ["session"]

        assert stop_group(server.pid, signal.SIGINT, server) == 0
        assert stop_group(emulator.pid, signal.SIGINT, emulator) == 0
        assert emulator.stderr.read().decode().startswith("stopped the firestore emulator")
        assert not group_alive(java_group) and not group_alive(emulator.pid)  # no gcloud wrapper, no Java child left
    finally:
        for process in (server, emulator):
            if process is not None and process.poll() is None:
                stop_group(process.pid, signal.SIGKILL, process)
        if java_group is not None and group_alive(java_group):
            os.killpg(java_group, signal.SIGKILL)
        for stream in (emulator.stdout, emulator.stderr, server.stderr if server else None):
            if stream is not None:
                stream.close()
