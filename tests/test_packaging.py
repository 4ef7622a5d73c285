"""The package as pip sees it: metadata, pins that fit the declared ranges, and a wheel that works installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import session_core
from session_core.testing import Emulator
from tests.conftest import ROOT, doc_python_blocks

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


@pytest.mark.slow
def test_a_wheel_installs_into_a_fresh_venv_and_the_readme_examples_run_from_another_directory(
    tmp_path: Path, datastore_emulator: Emulator
) -> None:
    source, dist = tmp_path / "source", tmp_path / "dist"  # build from a copy: setuptools writes build/ beside it
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("session_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {name.split("/")[0] for name in names} == {"session_core", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "session_core/py.typed" in names and "session_core/testing.py" in names
    assert "session_core/pytest_plugin.py" in names
    assert "[pytest11]\nsession_core = session_core.pytest_plugin" in entry_points
    assert "Requires-Dist: google-cloud-datastore" in metadata and 'extra == "flask"' in metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[flask]", "pytest", cwd=tmp_path)

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

    [pytest_example] = doc_python_blocks("how-to/testing.md")
    (app_dir / "test_example.py").write_text(pytest_example)
    no_emulator_env = {key: value for key, value in env.items() if key != "DATASTORE_EMULATOR_HOST"}
    out = run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py", cwd=app_dir, env=no_emulator_env
    )
    assert "1 passed" in out

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
