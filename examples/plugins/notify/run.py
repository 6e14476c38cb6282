#!/usr/bin/python3
"""notify: acknowledge the event it was handed."""
import json
import sys

request = json.load(sys.stdin)
event = request.get("event") or {}
json.dump({"status": "ok", "result": {"notified": event.get("type"), "payload": event.get("payload")}}, sys.stdout)
