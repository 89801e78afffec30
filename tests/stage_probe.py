"""Run by tests/test_stage_server.py as `python -m tests.stage_probe <how to end>`: says what it was given."""

import json
import os
import sys

preloaded = "torch" in sys.modules  # imported before this module ran: forked from the stage server
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "probe": os.environ.get("PROBE"),
                  "other": os.environ.get("OTHER"), "name": __name__,
                  "preloaded": preloaded, "spec": __spec__.name}), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
end = sys.argv[1]
if end == "raise":
    raise RuntimeError("the probe raised")
if end == "error":
    print("error: the probe's own one-line error", file=sys.stderr)
    sys.exit(2)
sys.exit(int(end))
