"""What the bench reports share: reading a run's JSON, a program's version."""

import json
import subprocess


def load(path):
    """A `telemark bench --json` result; an error entry when the run left none."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"error": "no result"}


def version(cmd):
    """The first line a program prints about itself."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0]
    except Exception:
        return "unknown"
