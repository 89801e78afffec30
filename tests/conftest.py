import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
WORDS = (
    "the a movie film was is good bad great awful fun boring plot actor story very not and but it this "
    "of to in love hate funny dull ride best worst scene"
).split()


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """`mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in os.environ, so a test that points MLflow at its own
    server would leak that server's address into every later test (and into the subprocesses they start)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in __import__("sys").modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable and mlflow's own global
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def tiny_config(layers=2, hidden=24, heads=4, ffn=48, vocab=None, **kw):
    return BertConfig(
        vocab_size=vocab or (5 + len(WORDS)),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=64,
        attn_implementation="eager",
        **kw,
    )


@pytest.fixture
def tiny_tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # BertTokenizerFast(vocab_file=...) silently builds a 5-token tokenizer in transformers 5: use `vocab=`.
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    assert tok.convert_tokens_to_ids("movie") == 5 + WORDS.index("movie")
    return tok


@pytest.fixture
def make_bert():
    def make(kind="seq", seed=0, **kw):
        torch.manual_seed(seed)
        cfg = tiny_config(**kw)
        cls = {"seq": BertForSequenceClassification, "base": BertModel, "mlm": BertForMaskedLM}[kind]
        return cls(cfg).eval()

    return make


def copy_project(dst):
    """The tracked and untracked (not ignored) files of the project, as a fresh git repo sharing .venv and .assets."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith("runs/") or not (ROOT / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        (dst / f).write_bytes((ROOT / f).read_bytes())
    for link in (".venv", ".assets"):
        (dst / link).symlink_to(ROOT / link)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=dst, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flow_env(project) -> dict:
    """The environment `python -m pipelines.flow` gets in a copy of the project: its own Prefect home, no outside
    tracking URI, params or outputs overrides."""
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("MLFLOW_TRACKING_URI", "KDISTILL_PARAMS", "KDISTILL_OUTPUTS", "KDISTILL_DEBUG"):
        env.pop(k, None)
    return env


# credentials a user may have in the environment: none may reach MLflow, Prefect, DVC's records or the logs
SECRET = "kdistill-test-secret-7f3a9c"
SECRET_ENV = {"HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET,
              "DATABASE_URL": f"postgresql://user:{SECRET}@127.0.0.1:9/db"}


def run_flow(project, *args, **env):
    return subprocess.run([sys.executable, "-m", "pipelines.flow", *args], cwd=project, env={**flow_env(project), **env},
                          capture_output=True, text=True)


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory, request):
    """The project copy the end-to-end tests share (2 GB once the smoke profile ran): removed at the end when every
    test passed, kept for a look when one failed."""
    root = tmp_path_factory.mktemp("kdistill")
    yield copy_project(root / "proj")
    if request.session.testsfailed == 0:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_run(smoke_project):
    """The smoke profile run once, uninterrupted, through Prefect, DVC and MLflow in `smoke_project`, with
    credentials in its environment; (the finished process, the student weights it ended with). One run serves every
    end-to-end test that can start from a finished pipeline: the suite has a time budget."""
    from safetensors.torch import load_file

    proc = run_flow(smoke_project, "--profile", "smoke", **SECRET_ENV)
    weights = {}
    if proc.returncode == 0:
        for f in sorted((smoke_project / "outputs-smoke" / "students").glob("*/model.safetensors")):
            weights[f.parent.name] = load_file(f)
    return proc, weights


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """For `make test`'s two pytest-xdist workers (`--dist loadgroup`): the tests that share the smoke run form one
    group, scheduled first (it is the longest chain); every other module is a group of its own, so a module-scoped
    fixture is built once, on one worker."""
    smoke = {i for i in items if "smoke_project" in getattr(i, "fixturenames", ())}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("smoke" if item in smoke else item.module.__name__))
    items.sort(key=lambda i: i not in smoke)  # stable: the smoke group first, the rest in file order
