"""Secrets in params never reach MLflow: what the stages log as run params is redacted."""

from kdistill.config import load_params
from kdistill.tracking import _flatten, redact

from .conftest import ROOT


def test_uri_passwords_and_secret_keys_are_redacted():
    assert redact("tracking.mlflow_uri", "postgresql://alice:s3cr%40t@db:5432/mlflow") == "postgresql://alice:***@db:5432/mlflow"
    assert redact("x.hub_token", "hf_abcdef") == "***"
    assert redact("x.db_password", "hunter2") == "***"
    # nothing else changes: ports, paths and user-only URIs carry no secret
    for v in ("http://127.0.0.1:5000", "sqlite:///mlflow.db", "https://user@host/x", "file:///a/b:c@d"):
        assert redact("tracking.mlflow_uri", v) == v


def test_logged_params_carry_no_credentials():
    p = load_params(ROOT / "params.yaml")
    uri = "https://bob:pa55word@mlflow.example.org"
    p = p.model_copy(update={"tracking": p.tracking.model_copy(update={"mlflow_uri": uri})})
    flat = _flatten(p.model_dump(), "evaluate")
    assert flat["tracking.mlflow_uri"] == "https://bob:***@mlflow.example.org"
    assert not any("pa55word" in v for v in flat.values())
    assert flat["base.teacher"] == str(p.base.teacher)  # ordinary values are logged as they are
