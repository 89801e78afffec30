import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
# One intra-op thread per test process, and for the processes the tests start (unless they set their own, as every
# pipeline stage does): the models here are tiny, and `make test` runs two pytest-xdist workers on 2 cores, where a
# second thread per process only oversubscribes the cores (OpenMP's waiting threads then cost more than the work:
# a trainer test took 4x longer with 2 threads than with 1 beside a busy core).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
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


def tiny_offline_shaped_teacher(out: Path) -> Path:
    """A tiny random BERT with a masked-LM head and the offline teacher's own tokenizer (its 30,522 WordPieces, so
    real text splits into sub-tokens as it would for the default teacher): 6 layers x 96, 12 heads, which the smoke
    profile's student shapes fit (TinyBERT-style and MiniLM-style 48 wide, 12 heads; DistilBERT-style every other
    layer; MobileBERT-style the teacher's depth with 4 heads grouping its 12). For the end-to-end runs of the token
    kinds, where a real teacher's minutes buy no extra coverage."""
    from transformers import AutoTokenizer

    from kdistill.models import resolve_teacher

    tok = AutoTokenizer.from_pretrained(resolve_teacher("offline:all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    cfg = tiny_config(layers=6, hidden=96, heads=12, ffn=192, vocab=len(tok))
    cfg.max_position_embeddings = 128
    BertForMaskedLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


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


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock between the pytest-xdist workers (each is a process of its own)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def _smoke_once(tmp_path_factory, request):
    """The smoke profile run once per test session, whichever pytest-xdist worker asks first (the others wait for
    it), uninterrupted, through Prefect, DVC and MLflow, with credentials in its environment. Leaves `proj/` (the
    project copy it ran in) and `pristine/` (a copy taken right after the run, never modified: the tests that need
    the finished run as it was copy it from there). Removed by the last worker to finish when every test passed, kept
    for a look when one failed."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "kdistill-smoke"
    root.mkdir(exist_ok=True)
    me = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with _locked(root / ".lock"):
        (root / f"user-{me}").touch()
        if not (root / "result.json").is_file():
            (root / "proj").mkdir()
            project = copy_project(root / "proj")
            proc = run_flow(project, "--profile", "smoke", **SECRET_ENV)
            (root / "stdout.txt").write_text(proc.stdout)
            (root / "stderr.txt").write_text(proc.stderr)
            if proc.returncode == 0:
                subprocess.run(["cp", "-a", str(project), str(root / "pristine")], check=True)
            (root / "result.json").write_text(json.dumps({"returncode": proc.returncode}))
    yield root
    with _locked(root / ".lock"):
        (root / f"done-{me}").write_text(str(request.session.testsfailed))
        users = {f.name.removeprefix("user-") for f in root.glob("user-*")}
        done = {f.name.removeprefix("done-"): int(f.read_text()) for f in root.glob("done-*")}
        if set(done) == users and not any(done.values()):
            shutil.rmtree(root / "proj", ignore_errors=True)
            shutil.rmtree(root / "pristine", ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_run(_smoke_once):
    """(the finished smoke-run process: returncode, stdout, stderr; the student weights it ended with). One run serves
    every end-to-end test that can start from a finished pipeline: the suite has a time budget."""
    from safetensors.torch import load_file

    result = json.loads((_smoke_once / "result.json").read_text())
    proc = SimpleNamespace(returncode=result["returncode"], stdout=(_smoke_once / "stdout.txt").read_text(),
                           stderr=(_smoke_once / "stderr.txt").read_text())
    weights = {}
    if proc.returncode == 0:
        for f in sorted((_smoke_once / "pristine" / "outputs-smoke" / "students").glob("*/model.safetensors")):
            weights[f.parent.name] = load_file(f)
    return proc, weights


@pytest.fixture(scope="session")
def smoke_project(_smoke_once, smoke_run):
    """The project the smoke run ran in, for the tests that read it or change it and put it back: they form one
    pytest-xdist group (one worker, one after another)."""
    return _smoke_once / "proj"


@pytest.fixture(scope="session")
def smoke_pristine(_smoke_once, smoke_run):
    """The finished smoke run as it was, for tests that copy it and then change their copy (they may run on another
    worker while the smoke_project tests change the project)."""
    return _smoke_once / "pristine"


# Short in-process modules (about 20 s together in the quiet suite) that the second worker runs before it waits for the
# smoke run: the run leaves a third of the cores idle while its stages wait on one another (measured with vmstat).
WHILE_SMOKE_RUNS = frozenset(f"tests.{m}" for m in (
    "test_losses", "test_dropout", "test_docs", "test_layout", "test_attention_and_layer_map", "test_config",
    "test_selection", "test_minilm", "test_student_init", "test_precision", "test_tracking_redaction",
    "test_report_speed", "test_families", "test_token_classification", "test_teacher_cache", "test_general_start",
    "test_glue_data", "test_tagged_data"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """For `make test`'s two pytest-xdist workers (`--dist loadgroup`): the tests that read or change the smoke run's
    project form one group, scheduled first (the longest chain); a few short modules next (WHILE_SMOKE_RUNS), then
    the tests that copy the finished run, a second group, so that the other worker fills the run's idle time, waits
    for the run and then works beside the first chain; every other module is a group of its own (a module-scoped
    fixture is built once, on one worker), in file order."""
    def group(item) -> str:
        names = getattr(item, "fixturenames", ())
        return "smoke" if "smoke_project" in names else "smoke-copies" if "smoke_pristine" in names else ""

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item) or item.module.__name__))

    def part(item) -> int:
        g = group(item)
        return {"smoke": 0, "smoke-copies": 2}.get(g, 1 if item.module.__name__ in WHILE_SMOKE_RUNS else 3)

    items.sort(key=part)  # stable: within each part, file order

