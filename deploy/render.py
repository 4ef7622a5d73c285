"""The JSON work of deploy/deploy.sh: check the settings file, write the files gcloud reads.

Standard library only (it runs wherever gcloud does, Cloud Build's
google-cloud-cli image included). Each subcommand prints what deploy.sh
needs on stdout, or one ``error: ...`` line on stderr and exits 2.

  settings FILE PROJECT OUT     check FILE; write the plan deploy.sh reads to OUT (a JSON object)
  get PLAN NAME...              print values of the plan, whole, each ended by a NUL (deploy.sh reads them as data)
  env FILE OUT PROJECT [K=V..]  write FILE merged with what deploy.sh derives (for --env-vars-file)
  period CRON                   seconds between two runs of a cron schedule
  policy IN OUT [--duration S] [--alignment S] [--channel NAME]...
  dashboard IN OUT [--etag E]
  display-name FILE             the displayName of a policy or dashboard file
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

# What deploy.sh derives from the project it deploys to; a settings file that sets one is refused.
DERIVED = ("SESSION_TASKS_QUEUE", "SESSION_TASK_URL", "SESSION_TASKS_SERVICE_ACCOUNT", "SESSION_TASK_AUDIENCE")
# Whole numbers deploy.sh itself uses, with their defaults (docs/reference/settings.md).
NUMBERS = {"SESSION_TIME_BUDGET": 300, "SESSION_SHARDS": 16, "SESSION_CLEAR_SHARDS": 1, "SESSION_WRITE_SHARDS": 1}
CONFIG = Path(__file__).resolve().parent.parent / "session_core" / "config.py"


def library_settings(config: Path = CONFIG) -> frozenset[str]:
    """The SESSION_* variables the library reads: its ``VARIABLES`` table, parsed (not imported: stdlib only)."""
    for node in ast.parse(config.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "VARIABLES":
            assert node.value is not None
            names: dict[str, str] = ast.literal_eval(node.value)
            return frozenset(name for name in names.values() if name.startswith("SESSION_"))
    raise RefusedError(f"{config}: no VARIABLES table (is this a session_core checkout?)")


TOPIC = re.compile(
    r"(?:projects/(?P<project>[a-z][a-z0-9\-:.]*[a-z0-9])/topics/)?(?P<topic>(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254})"
)


class RefusedError(Exception):
    """What deploy.sh prints as ``error: ...`` before it changes anything."""


# A control character in a value could end a line of what a shell reads: refused, as the library does.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def load_settings(path: str, project: str) -> dict[str, str]:
    """The settings file, checked: a flat JSON object of strings naming only settings the functions may get."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RefusedError(f"--settings {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise RefusedError(f"--settings {path}: not JSON ({exc})") from None
    if not isinstance(loaded, dict) or not all(isinstance(value, str) for value in loaded.values()):
        raise RefusedError(f"--settings {path}: must be a flat JSON object whose values are all strings")
    known = library_settings()
    for name in sorted(loaded):
        if CONTROL.search(name) or CONTROL.search(loaded[name]):
            raise RefusedError(f"--settings {path}: {name!r} holds a control character ({loaded[name]!r})")
        if name not in known and name != "GOOGLE_CLOUD_PROJECT":
            hint = "SESSION_* only" if not name.startswith("SESSION_") else "see docs/reference/settings.md"
            raise RefusedError(f"--settings {path}: {name} is not a setting the functions read ({hint})")
        if name in DERIVED:
            raise RefusedError(f"--settings {path}: {name} is set by deploy.sh from the project; remove it")
    if loaded.get("SESSION_TASK_AUTH", "oidc").strip().lower() != "oidc":
        raise RefusedError(
            f"--settings {path}: SESSION_TASK_AUTH must be oidc in a deployment: 'none' opens session_task to anyone"
        )
    named = loaded.get("GOOGLE_CLOUD_PROJECT", project)
    if named != project:
        raise RefusedError(f"--settings {path}: GOOGLE_CLOUD_PROJECT is {named}, not {project}")
    topic = loaded.get("SESSION_EVENTS_TOPIC", "").strip()
    if topic and not TOPIC.fullmatch(topic):
        raise RefusedError(
            f"--settings {path}: SESSION_EVENTS_TOPIC must be a topic id or projects/P/topics/T, not {topic!r}"
        )
    for name in NUMBERS:
        if name in loaded and not loaded[name].strip().isdigit():
            raise RefusedError(f"--settings {path}: {name} must be a whole number, not {loaded[name]!r}")
    return loaded


def plan(loaded: dict[str, str], project: str) -> dict[str, str]:
    """What deploy.sh takes from a checked settings file: each value one JSON string, never a line."""
    number = {name: int(loaded.get(name, str(default))) for name, default in NUMBERS.items()}
    topic = loaded.get("SESSION_EVENTS_TOPIC", "").strip()
    match = TOPIC.fullmatch(topic) if topic else None
    return {
        "kind": loaded.get("SESSION_KIND", "").strip() or "viur-session",
        "database": loaded.get("SESSION_DATABASE", "").strip() or "(default)",
        "budget": str(number["SESSION_TIME_BUDGET"]),
        # A kill-all runs one task per shard at once, and a cleanup one per chain: a chain per clear shard in
        # each write shard.
        "shards": str(max(number["SESSION_SHARDS"], number["SESSION_WRITE_SHARDS"] * number["SESSION_CLEAR_SHARDS"])),
        # Lifecycle events: the topic's project and id (the functions publish there).
        "events_project": (match["project"] or project) if match else "",
        "events_topic": match["topic"] if match else "",
    }


def settings(args: argparse.Namespace) -> None:
    _write(args.out, plan(load_settings(args.file, args.project), args.project))


def get(args: argparse.Namespace) -> None:
    """Each named value of the plan, whole, followed by a NUL (which no value may hold)."""
    loaded = _load(args.plan)
    for name in args.names:
        value = loaded[name]
        if not isinstance(value, str) or "\0" in value:
            raise RefusedError(f"{args.plan}: {name} must be a string without NUL")
        sys.stdout.write(value + "\0")


def env(args: argparse.Namespace) -> None:
    merged = {**load_settings(args.file, args.project), "GOOGLE_CLOUD_PROJECT": args.project}
    for pair in args.pairs:
        name, _, value = pair.partition("=")
        merged[name] = value
    Path(args.out).write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def period(args: argparse.Namespace) -> None:
    """Seconds between runs of the four cron shapes whose period is one number."""
    fields = args.cron.split()
    every = re.compile(r"\*/([1-9][0-9]*)")
    fixed = re.compile(r"[0-9]{1,2}")
    if len(fields) == 5 and fields[2:] == ["*", "*", "*"]:
        minute, hour = fields[:2]
        if (match := every.fullmatch(minute)) and hour == "*" and 60 % int(match[1]) == 0:
            print(int(match[1]) * 60)
            return
        if fixed.fullmatch(minute) and hour == "*":
            print(3600)
            return
        if fixed.fullmatch(minute) and (match := every.fullmatch(hour)) and 24 % int(match[1]) == 0:
            print(int(match[1]) * 3600)
            return
        if fixed.fullmatch(minute) and fixed.fullmatch(hour):
            print(86400)
            return
    raise RefusedError(
        f"--schedule {args.cron!r}: use '*/N * * * *' (N divides 60), 'M * * * *', 'M */H * * *' (H divides 24) "
        "or 'M H * * *', so that the alerts know how often a run is due"
    )


def _load(path: str) -> dict[str, Any]:
    loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), path
    return loaded


def _write(path: str, value: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def policy(args: argparse.Namespace) -> None:
    """An alert policy file with the schedule's window and the notification channels filled in."""
    value = _load(args.input)
    for condition in value["conditions"]:
        for kind in ("conditionAbsent", "conditionThreshold"):
            if kind not in condition:
                continue
            if args.duration is not None:
                condition[kind]["duration"] = f"{args.duration}s"
            if args.alignment is not None:
                for aggregation in condition[kind].get("aggregations", []):
                    aggregation["alignmentPeriod"] = f"{args.alignment}s"
    if args.channel:
        value["notificationChannels"] = list(args.channel)
    _write(args.out, value)


def dashboard(args: argparse.Namespace) -> None:
    value = _load(args.input)
    if args.etag:
        value["etag"] = args.etag  # the update replaces exactly the version it read
    _write(args.out, value)


def display_name(args: argparse.Namespace) -> None:
    print(_load(args.file)["displayName"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="render.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("settings")
    command.add_argument("file")
    command.add_argument("project")
    command.add_argument("out")
    command.set_defaults(run=settings)
    command = commands.add_parser("get")
    command.add_argument("plan")
    command.add_argument("names", nargs="+")
    command.set_defaults(run=get)
    command = commands.add_parser("env")
    command.add_argument("file")
    command.add_argument("out")
    command.add_argument("project")
    command.add_argument("pairs", nargs="*")
    command.set_defaults(run=env)
    command = commands.add_parser("period")
    command.add_argument("cron")
    command.set_defaults(run=period)
    command = commands.add_parser("policy")
    command.add_argument("input")
    command.add_argument("out")
    command.add_argument("--duration", type=int)
    command.add_argument("--alignment", type=int)
    command.add_argument("--channel", action="append", default=[])
    command.set_defaults(run=policy)
    command = commands.add_parser("dashboard")
    command.add_argument("input")
    command.add_argument("out")
    command.add_argument("--etag", default="")
    command.set_defaults(run=dashboard)
    command = commands.add_parser("display-name")
    command.add_argument("file")
    command.set_defaults(run=display_name)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except RefusedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
