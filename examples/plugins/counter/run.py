#!/usr/bin/python3
"""counter: keep a run count in plugin state (state_updates) and in ./count (its cwd)."""
import json
import os
import sys

request = json.load(sys.stdin)
state = request.get("state") or {}
count = int(state.get("count", 0)) + 1
with open("count", "w") as fh:  # cwd is the account's private state_dir when confined
    fh.write(str(count))
json.dump({
    "status": "ok",
    "result": {"count": count, "cwd": os.getcwd(), "secrets": sorted(request.get("secrets", {}))},
    "state_updates": {"count": count},
}, sys.stdout)
