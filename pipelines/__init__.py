"""The Prefect flows and what they need to run DVC stages (see pipelines/flow.py)."""

import os

# Set before any module here imports Prefect, which reads its settings then: its temporary server gets 20 s to start
# by default, too short on a busy 2-core machine (the Makefile sets the same; this covers `python -m pipelines.flow`
# and the other entry points run directly).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
