"""Prefect process work pools: created on first use by `make schedule`, `make worker` and the training pool."""

from __future__ import annotations


def ensure_work_pool(name: str) -> None:
    """Create the process work pool `name` unless it exists (a worker needs it, and so does a deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                print(f"created Prefect work pool '{name}' (process)")
            except ObjectAlreadyExists:  # created by a worker starting at the same moment
                pass
