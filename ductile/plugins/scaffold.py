"""``ductile plugin new``: a plugin that already honours the confined runtime contract.

What the scaffold gets right so an author does not have to learn it from a refusal:

* the entrypoint's ``#!`` is ``/usr/bin/python3`` (or ``/bin/sh``), an interpreter every
  account can reach (a pyenv or venv under a 0700 home is not);
* files are root-or-author owned, 0644 / 0755, directories 0755: nothing an account could
  rewrite, everything an account can read and run;
* the code writes only under its working directory (the account's private state_dir), reads
  secrets from the request, never from the environment, and answers with exactly one JSON
  object on stdout (logs go to ``logs`` or stderr);
* ``handle`` reads ``event.payload`` (it always has an event: a pipeline's, a webhook's, or
  the ``api.trigger`` envelope), other commands read ``payload``;
* its event is ``<name>.done``, outside the gateway's namespaces;
* ``fixtures/<command>.json`` describe what each command is sent and must answer, and
  ``ductile plugin test`` runs them confined.

``scaffold`` returns the files as data (pure); ``write_scaffold`` is the edge.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Literal

from ductile.config.model import NAME, NAME_HINT
from ductile.errors import UsageError
from ductile.plugins.emits import reserved

Lang = Literal["python", "sh"]
LANGS: tuple[Lang, ...] = ("python", "sh")


@dataclass(frozen=True)
class ScaffoldFile:
    path: str          # relative to the plugin directory
    text: str
    mode: int


PYTHON_TEMPLATE = '''\
#!/usr/bin/python3
"""{name}: one ductile plugin (protocol 2). Standard library only, so it runs under the
system Python every account can reach.

ductile runs this file once per job, as the plugin's account, in its private state_dir (the
working directory, also HOME). It reads ONE JSON request on stdin and writes ONE JSON object
on stdout. Write files only under the working directory; read secrets only from
request["secrets"]; print diagnostics to stderr or return them in "logs".
"""
import json
import sys


def poll(request):
    """Scheduled or triggered work: read request["payload"]; remember things in state."""
    runs = request["state"].get("runs", 0) + 1
    return {{"status": "ok", "result": {{"runs": runs}}, "state_updates": {{"runs": runs}}}}


def handle(request):
    """An event arrived: a pipeline's, a webhook's, or for a direct call the envelope
    {{"type": "api.trigger", "payload": <payload>}}. Read its payload."""
    event = request.get("event") or {{}}
    data = event.get("payload") or {{}}
    if "message" not in data:
        return {{"status": "error", "error": "event.payload must include message", "retry": False}}
    with open("last-message.txt", "w") as fh:  # relative: inside the private state_dir
        fh.write(str(data["message"]))
    return {{"status": "ok", "result": {{"received": data["message"], "from": event.get("type")}},
            "events": [{{"type": "{name}.done", "payload": {{"message": data["message"]}}}}]}}


def health(request):
    return {{"status": "ok", "result": "healthy"}}


COMMANDS = {{"poll": poll, "handle": handle, "health": health}}


def main():
    request = json.load(sys.stdin)
    command = COMMANDS.get(request.get("command"))
    if command is None:
        response = {{"status": "error", "error": "unknown command " + repr(request.get("command")), "retry": False}}
    else:
        try:
            response = command(request)
        except Exception as err:  # answer in the protocol instead of a traceback ductile must guess from
            response = {{"status": "error", "error": type(err).__name__ + ": " + str(err)}}
    json.dump(response, sys.stdout)


if __name__ == "__main__":
    main()
'''

SH_TEMPLATE = '''\
#!/bin/sh
# {name}: one ductile plugin (protocol 2), POSIX sh. It reads ONE JSON request on stdin and
# writes ONE JSON object on stdout, as the plugin's account, in its private state_dir (the
# working directory). Write only there; secrets arrive only in the request.
request=$(cat)
command=$(printf '%s' "$request" | sed -n 's/.*"command": *"\\([A-Za-z0-9_-]*\\)".*/\\1/p')
case "$command" in
  poll)   printf '{{"status": "ok", "result": {{"polled": true}}}}' ;;
  handle) date -u +%Y-%m-%dT%H:%M:%SZ > last-handled.txt
          printf '{{"status": "ok", "result": {{"handled": true}}, "events": [{{"type": "{name}.done", "payload": {{}}}}]}}' ;;
  health) printf '{{"status": "ok", "result": "healthy"}}' ;;
  *)      printf '{{"status": "error", "error": "unknown command", "retry": false}}' ;;
esac
'''

MANIFEST_TEMPLATE = """\
# {name}: read by ductile's discovery (and by upstream ductile: manifest_spec/manifest_version).
manifest_spec: ductile.plugin
manifest_version: 1
name: {name}
version: "0.1.0"
protocol: 2
entrypoint: {entrypoint}
description: "{name}: describe what it does."
concurrency_safe: true
commands:
  - {{name: poll, type: read, description: "Scheduled or triggered work."}}
  - {{name: handle, type: write, description: "React to an event (reads event.payload)."}}
  - {{name: health, type: read, description: "Report whether the plugin can work."}}
config_keys:
  optional: []
"""


def _fixture(payload: dict[str, object], expect: dict[str, object]) -> str:
    return json.dumps({"payload": payload, "expect": expect}, indent=2) + "\n"


def check_name(name: str) -> None:
    """A usable plugin name whose event is not in a gateway namespace, or a UsageError."""
    if not re.fullmatch(NAME, name):
        raise UsageError(f"{name!r} is not a valid plugin name", where="plugin new NAME",
                         fix=f"use a name of {NAME_HINT}")
    closed = reserved(f"{name}.done")
    if closed is not None:
        raise UsageError(f"a plugin named {name!r} would emit {name}.done, which is in the gateway's namespace "
                         f"{closed}", where="plugin new NAME", fix="choose a name that does not start with plugin, "
                         "pipeline, job, api, ductile or webhook")


def scaffold(name: str, lang: Lang) -> list[ScaffoldFile]:
    """The files of a new plugin, as data."""
    check_name(name)
    entry = "run.py" if lang == "python" else "run.sh"
    code = (PYTHON_TEMPLATE if lang == "python" else SH_TEMPLATE).format(name=name)
    handle_expect: dict[str, object] = {"status": "ok", "events": [f"{name}.done"]}
    if lang == "python":
        handle_expect["result"] = {"received": "hello", "from": "api.trigger"}
    return [
        ScaffoldFile("manifest.yaml", MANIFEST_TEMPLATE.format(name=name, entrypoint=entry), 0o644),
        ScaffoldFile(entry, code, 0o755),
        ScaffoldFile("fixtures/poll.json", _fixture({}, {"status": "ok"}), 0o644),
        ScaffoldFile("fixtures/handle.json", _fixture({"message": "hello"}, handle_expect), 0o644),
        ScaffoldFile("fixtures/health.json", _fixture({}, {"status": "ok", "result": "healthy"}), 0o644),
    ]


def unreachable_ancestor(path: str) -> str | None:
    """The first directory above ``path`` an account could not traverse (no o+x), or None."""
    probe = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if not os.stat(probe).st_mode & stat.S_IXOTH:
                return probe
        except OSError:
            return probe
        if probe == "/":
            return None
        probe = os.path.dirname(probe)


def write_scaffold(directory: str, files: list[ScaffoldFile]) -> str:
    """Create ``directory`` (it must not exist) and the files, with exact modes. Returns it."""
    target = os.path.abspath(directory)
    if os.path.lexists(target):
        raise UsageError(f"{target} already exists; nothing was written", where="plugin new",
                         fix="choose another NAME or --dir, or remove it")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise UsageError(f"{parent} is not a directory", where="plugin new --dir", fix="create it first")
    os.mkdir(target, 0o755)
    try:
        os.chmod(target, 0o755)
        for f in files:
            path = os.path.join(target, f.path)
            sub = os.path.dirname(path)
            if not os.path.isdir(sub):
                os.mkdir(sub, 0o755)
                os.chmod(sub, 0o755)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, f.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f.text)
            os.chmod(path, f.mode)
    except BaseException:
        import shutil

        shutil.rmtree(target, ignore_errors=True)  # a half-written plugin helps nobody
        raise
    return target
