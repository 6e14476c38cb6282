#!/usr/bin/python3
"""echo: answer with the payload and configured message; emit echo.done."""
import json
import sys

request = json.load(sys.stdin)
message = request.get("config", {}).get("message", "hello")
payload = request.get("payload") or {}
json.dump({
    "status": "ok",
    "result": {"message": message, "payload": payload, "command": request.get("command")},
    "events": [{"type": "echo.done", "payload": {"message": message, "payload": payload}}],
    "logs": [{"level": "info", "message": f"echoed {len(json.dumps(payload))} bytes"}],
}, sys.stdout)
