"""The export step on tiny models: ONNX parity with PyTorch, int8, the registered pyfunc, MLflow's model server."""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
import transformers
from transformers import MobileBertConfig, MobileBertForSequenceClassification

from kdistill.config import Params
from kdistill.data.glue import glue_task
from kdistill.deploy.onnx_export import (
    ParityError,
    export_onnx,
    parity,
    quantize_int8,
    run_session,
    session,
)
from kdistill.deploy.onnx_fusion import fuse_bert
from kdistill.deploy.speed import interleaved_latency, speedup_ceiling

from .conftest import ROOT
from .listening import listening_addresses
from .serving import invoke, post, served


def _tiny_mobilebert():
    torch.manual_seed(0)
    cfg = MobileBertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, intra_bottleneck_size=16, embedding_size=16, true_hidden_size=16,
                           num_feedforward_networks=2, max_position_embeddings=64, normalization_type="no_norm",
                           hidden_act="relu", attn_implementation="eager")
    return MobileBertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("kind", ["bert", "mobilebert"])
def test_onnx_export_computes_what_pytorch_computes_at_any_batch_and_length(kind, make_bert, tmp_path):
    model = make_bert() if kind == "bert" else _tiny_mobilebert()
    raw = export_onnx(model, tmp_path / "raw.onnx")
    # no trace of where the code ran: the exporter's stack traces name this installation's files, which would make
    # the same weights give other bytes in another clone
    site = str(Path(transformers.__file__).resolve().parent.parent).encode()
    assert site not in raw.read_bytes() and not any(n.metadata_props for n in onnx.load(str(raw)).graph.node)
    c = model.config
    kernels = fuse_bert(raw, tmp_path / "model.onnx", c.num_attention_heads, c.hidden_size)
    # BERT: one Attention kernel per layer; MobileBERT's values come from another tensor than its queries: left as is
    assert kernels["Attention"] == (c.num_hidden_layers if kind == "bert" else 0)
    if kind == "bert":
        # residual + LayerNorm left as Add + LayerNormalization: ORT's fused CPU kernel for them is the slower one
        assert kernels["BiasGelu"] == c.num_hidden_layers and kernels["SkipLayerNormalization"] == 0
        assert kernels["LayerNormalization"] == 2 * c.num_hidden_layers + 1  # + the embeddings' LayerNorm
        ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
        assert not ops & {"Softmax", "Transpose", "Erf", "Where"}  # attention, GELU and mask subgraphs are gone
        # and the session does not fuse them back when it loads the graph: the kernels it ran, from its profile
        prof = session(tmp_path / "model.onnx", 1, profile_prefix=str(tmp_path / "prof"))
        run_session(prof, np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))
        trace = json.loads(Path(prof.end_profiling()).read_text())
        ran = {e["args"]["op_name"] for e in trace if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
        assert {"Attention", "BiasGelu", "LayerNormalization"} <= ran and "SkipLayerNormalization" not in ran
    fp32 = tmp_path / "model.onnx"
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx")
    s, q, r = session(fp32, 1), session(int8, 1), session(raw, 1)
    g = torch.Generator().manual_seed(1)
    for batch, seq in [(1, 3), (5, 17), (2, 40)]:  # shapes other than the export example's (2, 8): dynamic axes
        ids = torch.randint(5, 30, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq // 2:] = 0  # padding, which must be masked the same way
        types = torch.zeros_like(ids)
        types[:, seq // 3:] = 1
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
        got = run_session(s, ids.numpy(), mask.numpy(), types.numpy())
        assert got.shape == ref.shape
        assert np.abs(run_session(r, ids.numpy(), mask.numpy(), types.numpy()) - ref).max() < 1e-4  # as exported
        par = parity(ref, got, regression=False)
        assert par.max_abs_diff < 1e-4 and par.labels_differing == 0
        par.check("tiny", atol=1e-3)  # passes
        low = run_session(q, ids.numpy(), mask.numpy(), types.numpy())
        assert low.shape == ref.shape and np.isfinite(low).all()
        assert 0 < np.abs(low - ref).max() < 0.5  # really quantized, still close
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size


def test_parity_failure_names_the_model_the_difference_and_the_threshold():
    ref = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5]])
    bad = ref.copy()
    bad[2] = [0.6, 0.5]  # one label flips
    par = parity(ref, bad, regression=False)
    assert par.labels_differing == 1 and par.max_abs_diff == pytest.approx(0.6)
    with pytest.raises(ParityError, match=r"tinybert: .*6\.00e-01.*parity_atol is 1e-03.*1 predicted labels differ"):
        par.check("tinybert", atol=1e-3)
    with pytest.raises(ParityError):  # a NaN is never within tolerance
        parity(ref, ref * np.nan, regression=True).check("x", atol=1.0)


def test_interleaved_timing_runs_every_variant_once_per_round_in_turns():
    calls = []
    runners = {n: (lambda n: lambda ids, mask: calls.append((n, ids.shape)))(n) for n in ("a", "b", "c")}
    out = interleaved_latency(runners, batch=2, seq=7, warmup=1, repeats=6)
    assert set(out) == {"a", "b", "c"} and all(r["rounds"] == 6 for r in out.values())
    assert all(shape == (2, 7) for _, shape in calls)
    rounds = [sorted(n for n, _ in calls[3 * k: 3 * k + 3]) for k in range(7)]  # warm-up round, then 6 timed
    assert all(r == ["a", "b", "c"] for r in rounds)
    assert all(r["p50"] <= r["p95"] and r["throughput"] > 0 for r in out.values())
    short = interleaved_latency(runners, batch=1, seq=3, warmup=0, repeats=1000, max_seconds=0.0)
    assert all(r["rounds"] == 5 for r in short.values())  # the time bound stops it, never before 5 rounds


def test_speedup_ceiling_scales_only_the_matrix_products_with_the_flops():
    # teacher 20 ms: 16 in matrix products (int8 and fp32 forms both count), 4 elsewhere; student 5 ms, 2 elsewhere
    teacher = {"MatMul": 10.0, "Attention": 4.0, "DynamicQuantizeMatMul": 2.0, "LayerNormalization": 3.0}
    student = {"MatMul": 2.0, "Attention": 1.0, "LayerNormalization": 1.5}
    # 8x fewer FLOPs: matrix products 16 / 8 = 2 ms, plus the student's own 2 ms of the rest -> 20 / 4 = 5x
    assert speedup_ceiling(20.0, teacher, 5.0, student, 8.0) == pytest.approx(5.0)
    # a student that is all matrix products reaches the FLOPs reduction exactly
    assert speedup_ceiling(16.0, {"MatMul": 16.0}, 3.0, {"MatMul": 3.0}, 8.0) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="positive"):
        speedup_ceiling(20.0, teacher, 5.0, student, 0.0)


def test_int8_is_registered_only_when_it_passed_and_is_clearly_faster():
    from tasks.export import choose_variant

    def pick(fp32_ms, int8_ms, registrable=True, gain=0.05):
        timing = {"bs1_seq64": {"s/onnx-fp32": {"p50": fp32_ms}, "s/onnx-int8": {"p50": int8_ms}}}
        return choose_variant({"onnx-int8": {"registrable": registrable}}, timing, "s", "bs1_seq64", gain)

    assert pick(10.0, 8.0) == "onnx-int8"  # 20% faster, within int8_max_drop
    assert pick(10.0, 9.99) == "onnx-fp32"  # 0.1% faster: inside the noise, not worth int8's accuracy change
    assert pick(10.0, 9.5) == "onnx-int8" and pick(10.0, 9.51) == "onnx-fp32"  # the 5% edge
    assert pick(10.0, 9.99, gain=0.0) == "onnx-int8"
    assert pick(10.0, 5.0, registrable=False) == "onnx-fp32"  # over int8_max_drop: never
    assert pick(8.0, 10.0) == "onnx-fp32"


SST2 = glue_task("sst2")


@pytest.fixture
def registered(make_bert, tiny_tokenizer, tmp_path, monkeypatch):
    """A tiny classifier exported and registered as `t-sst2-tinybert` in a throw-away MLflow store."""
    from tasks.export import register

    model = make_bert(vocab=len(tiny_tokenizer))
    out = tmp_path / "onnx"
    out.mkdir()
    export_onnx(model, out / "model.onnx")
    tiny_tokenizer.save_pretrained(out / "tokenizer")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    p = Params.model_validate({"tracking": {"registry_prefix": "t-"}, "base": {"max_seq_len": 16}})
    row = {"onnx-fp32": {"metrics": {"accuracy": 0.75}}}
    mlflow.set_experiment("export-test")
    with mlflow.start_run():
        version, champion = register(p, "tinybert", out, "onnx-fp32", row, SST2, "# card")
    return model, tiny_tokenizer, uri, version, champion, p, out


def test_registered_student_is_an_onnx_pyfunc_and_champion_moves_only_on_improvement_or_a_faster_tie(registered):
    from mlflow import MlflowClient

    from tasks.export import register

    model, tok, uri, version, champion, p, out = registered
    assert champion
    texts = ["the movie was good", "a dull boring plot", "great fun"]
    served = mlflow.pyfunc.load_model("models:/t-sst2-tinybert@champion").predict(texts)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    assert served["label"].tolist() == [SST2.labels[i] for i in probs.argmax(-1).tolist()]  # the task's names
    assert np.allclose(served["probability"], probs.max(-1).values.numpy(), atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model("models:/t-sst2-tinybert@champion")
    for bad in ([None], [3.5], ["fine", None]):  # never classified as the text "None" or "3.5"
        with pytest.raises(Exception, match=r"is not text"):
            pyfunc.predict(bad)
    client = MlflowClient()
    v = client.get_model_version("t-sst2-tinybert", version)
    # the card, after the variant this version runs (a timing decides it: the card file does not carry it)
    assert v.tags["variant"] == "onnx-fp32" and v.description == "This version runs **onnx-fp32** (`model.onnx`).\n\n# card"

    with mlflow.start_run():  # a worse run registers a version but keeps the champion
        v2, moved = register(p, "tinybert", out, "onnx-fp32", {"onnx-fp32": {"metrics": {"accuracy": 0.5}}}, SST2, "")
    assert not moved and str(client.get_model_version_by_alias("t-sst2-tinybert", "champion").version) == str(version)
    with mlflow.start_run():
        v3, moved = register(p, "tinybert", out, "onnx-fp32", {"onnx-fp32": {"metrics": {"accuracy": 0.9}}}, SST2, "")
    assert moved and str(client.get_model_version_by_alias("t-sst2-tinybert", "champion").version) == str(v3)
    tie = {"metrics": {"accuracy": 0.9}}
    with mlflow.start_run():  # the same score, faster (e.g. a better-fused graph): the champion moves
        v4, moved = register(p, "tinybert", out, "onnx-fp32", {"onnx-fp32": {**tie, "p50_ms": 5.0}}, SST2, "")
    assert moved and client.get_model_version("t-sst2-tinybert", v4).tags["p50_ms"] == "5.000"
    with mlflow.start_run():  # the same score, slower: it stays
        v5, moved = register(p, "tinybert", out, "onnx-fp32", {"onnx-fp32": {**tie, "p50_ms": 6.0}}, SST2, "")
    assert not moved and str(client.get_model_version_by_alias("t-sst2-tinybert", "champion").version) == str(v4)


@pytest.mark.slow
def test_make_serve_answers_on_loopback_and_stops_cleanly(registered, tmp_path):
    model, tok, uri, *_ = registered
    with served("t-sst2-tinybert", uri) as (proc, url):
        texts = ["the movie was good", "a dull boring plot"]
        preds = invoke(url, texts)
        with torch.no_grad():
            want = model(**tok(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
        assert [r["label"] for r in preds] == [SST2.labels[i] for i in want]
        for bad in ([None], [1, 2]):  # not text: HTTP 400 with a JSON error, nothing classified
            with pytest.raises(urllib.error.HTTPError) as err:
                invoke(url, bad)
            assert err.value.code == 400 and "is not text" in json.loads(err.value.read())["message"]
        _malformed_requests_get_a_prediction_or_a_short_json_error(url, tmp_path)
        # bound to loopback only: every listening socket of the server's process tree, and no answer elsewhere
        port = int(url.rsplit(":", 1)[1])
        assert {ip for ip, _ in listening_addresses(proc.pid)} == {"127.0.0.1"}
        with socket.socket() as s:
            s.settimeout(1)
            addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
            for a in addrs:
                assert s.connect_ex((a, port)) != 0, f"server reachable on {a}"
        load = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url", url,
                               "--requests", "20", "--clients", "2"], capture_output=True, text=True, timeout=120)
        assert load.returncode == 0, load.stdout + load.stderr
        assert "20 ok, 0 errors" in load.stdout and "p99" in load.stdout and "requests/s" in load.stdout
    assert proc.returncode == 0
    with pytest.raises(OSError):  # the port is free again: nothing left serving
        urllib.request.urlopen(f"{url}/ping", timeout=2)


def _malformed_requests_get_a_prediction_or_a_short_json_error(url, tmp_path):
    """What a new user sends: one string is one text; what is not text gets a JSON error saying what was received and
    what is expected; no answer carries a traceback or a path of the installation or the artifact store."""
    def send(payload, content_type="application/json"):
        status, text = post(url, payload if isinstance(payload, bytes) else json.dumps(payload).encode(), content_type)
        for leak in ("stack_trace", "Traceback", str(ROOT), "site-packages", str(tmp_path)):
            assert leak not in text, (payload if not isinstance(payload, dict) or len(str(payload)) < 200 else "", text)
        return status, json.loads(text)

    one = send({"inputs": "the movie was good"})
    assert one[0] == 200 and [r["label"] for r in one[1]["predictions"]] == [invoke(url, ["the movie was good"])[0]["label"]]
    status, body = send({"inputs": ""})  # an empty text is still one text
    assert status == 200 and len(body["predictions"]) == 1
    status, body = send({"inputs": [["a good movie", "a dull plot"]]})
    assert status == 400 and "one text per row" in body["message"] and "inputs" in body["message"]
    status, body = send({"inputs": {"review": ["a good movie"], "stars": [5]}})
    assert status == 400 and "`text` column" in body["message"] and "'review'" in body["message"]
    status, body = send({"dataframe_split": {"columns": ["review", "stars"], "data": [["a good movie", 5]]}})
    assert status == 400 and "`text` column" in body["message"]
    status, body = send({"dataframe_split": {"columns": ["stars"], "data": [[5]]}})  # one column, not text
    assert status == 400 and "is not text" in body["message"] and "int" in body["message"]
    status, body = send({"dataframe_records": [{"text": "fun"}, {"text": 3}]})
    assert status == 400 and "input row 1, text: int 3 is not text" in body["message"]
    status, body = send({"inputs": ["great fun", "a dull boring plot"] * 5000})  # a 10,000-row batch
    assert status == 200 and len(body["predictions"]) == 10_000
    alone = invoke(url, ["great fun", "a dull boring plot"])  # the same answers as in a small request
    assert [r["label"] for r in body["predictions"][-2:]] == [r["label"] for r in alone]
    assert np.allclose([r["probability"] for r in body["predictions"][-2:]], [r["probability"] for r in alone], atol=1e-5)
    status, body = send(b"this is not json {")
    assert status == 400 and "valid JSON" in body["message"]


def test_the_served_model_refuses_what_is_not_text_and_reads_one_string_as_one_text(registered):
    """The pyfunc as `mlflow.pyfunc` calls it: every refusal an MlflowException (INVALID_PARAMETER_VALUE), never
    another exception (which MLflow's server would answer with a traceback); an error inside the model a short one."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    pyfunc = mlflow.pyfunc.load_model("models:/t-sst2-tinybert@champion")
    model = pyfunc.unwrap_python_model()
    assert len(model.predict(None, np.array("the movie was good"))) == 1  # what MLflow makes of {"inputs": "..."}
    assert len(model.predict(None, "great fun")) == 1
    for bad, says in ((np.array([["a", "b"]]), "shape [1, 2]"), ({"review": ["x"]}, "got dict"),
                      (pd.DataFrame({"a": ["x"], "b": ["y"]}), "got the columns ['a', 'b']"),
                      ([{"text": "x"}], "row 0, text: dict"), (7, "got int 7")):
        with pytest.raises(MlflowException, match=re.escape(says)) as err:
            model.predict(None, bad)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    model.session = None  # the model itself broken: one line for the caller, the traceback in the server's log
    with pytest.raises(MlflowException, match=r"the model failed on this request \(AttributeError\)") as err:
        model.predict(None, ["fine"])
    assert err.value.error_code == "INTERNAL_ERROR"


def test_serve_names_a_missing_model(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", "sst2-nothing"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: models:/sst2-nothing@champion not found")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("family", ["distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_a_student_of_every_family_exports_to_onnx_with_parity(family, tmp_path):
    """The families without token types take only input_ids and attention_mask (a third positional argument is
    something else to them: MPNet's position ids); DeBERTa's relative terms and ModernBERT's rotary and sliding-window
    attention export as they compute."""
    from kdistill.deploy.onnx_export import load_for_export

    from .families import SENTENCES, save_teacher

    _, tok = save_teacher(family, tmp_path / "m", "seq")
    model = load_for_export(tmp_path / "m")
    export_onnx(model, tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", True, False)
    names = [i.name for i in session(tmp_path / "model.onnx", 1).get_inputs()]
    assert names == (["input_ids", "attention_mask"] + (["token_type_ids"] if family == "deberta-v2" else []))
    enc = tok(SENTENCES, padding=True, return_tensors="np")  # rows of different lengths: padding in the batch
    with torch.no_grad():
        want = model(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).logits
    for f in ("model.onnx", "model.int8.onnx"):
        got = run_session(session(tmp_path / f, 1), enc["input_ids"], enc["attention_mask"])
        assert got.shape == tuple(want.shape)
        if f == "model.onnx":
            parity(want.numpy(), got, False).check(family, 1e-4)
