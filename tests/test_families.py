"""Teachers of every family the engine reads (BERT, RoBERTa, XLM-RoBERTa, ELECTRA), tiny and random: each recipe's
general and task phases run a few steps and build a student of the teacher's family; the others are refused with the
reason before any work; a teacher already fine-tuned for the data's labels is used as it is."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForSequenceClassification

from kdistill import recipes
from kdistill.config import parse_params
from kdistill.data.batches import pad_collate, tokenize_task
from kdistill.data.task import Task
from kdistill.distill.attention import AttentionScores
from kdistill.distill.objectives import Intermediate
from kdistill.models import ModelSpecError, teacher_config
from kdistill.recipes.base import GeneralContext, TaskContext
from kdistill.teacher_head import TeacherHeadError, near_chance, plan
from kdistill.train.evaluation import score
from kdistill.train.phases import run_phases

from .families import FAMILIES, SENTENCES, save_teacher

SHAPES = {  # every recipe at a size the tiny teachers (2 layers, width 32, 4 heads) allow
    "general_distill": {"tinybert": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32},
                                     "optim": {"batch_size": 4, "max_steps": 2}},
                        "distilbert": {"optim": {"batch_size": 4, "max_steps": 2}, "init_layers": [0]},
                        "mobilebert": {"student": {"bottleneck": 8, "heads": 2, "ffn": 16, "stacked_ffn": 1, "embedding": 8},
                                       "progressive": {"steps_per_layer": 1, "batch_size": 4},
                                       "joint": {"optim": {"batch_size": 4, "max_steps": 1}}},
                        "minilm": {"student": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32}, "relation_heads": 4,
                                   "optim": {"batch_size": 4, "max_steps": 2}}},
    "task_distill": {"tinybert": {"intermediate": {"batch_size": 4, "max_steps": 2}, "cache_teacher_outputs": False,
                                  "teacher_cache_gb": 0, "prediction": {"batch_size": 4, "max_steps": 2}},
                     "distilbert": {"optim": {"batch_size": 4, "max_steps": 2}, "cache_teacher_outputs": False},
                     "mobilebert": {"optim": {"batch_size": 4, "max_steps": 2}},
                     "minilm": {"optim": {"batch_size": 4, "max_steps": 2}, "cache_teacher_outputs": False}},
}
TASK = Task("toy", "single_label", ("neg", "neu", "pos"), "accuracy", False, ("accuracy", "macro_f1"))


def toy_rows(tok, n=12):
    rows = Dataset.from_dict({"sentence1": (SENTENCES * 2)[:n], "label": [i % 3 for i in range(n)]})
    return tokenize_task(rows, tok, 24)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Per family: a pre-trained-style teacher with an MLM head and its fine-tuned (here: random) classifier."""
    out = {}
    for fam in FAMILIES:
        root = tmp_path_factory.mktemp(fam)
        save_teacher(fam, root / "mlm", "mlm")
        AutoModelForSequenceClassification.from_pretrained(root / "mlm", **TASK.model_config()).save_pretrained(root / "seq")
        tokenizer_dir = root / "mlm"
        out[fam] = (root / "mlm", root / "seq", tokenizer_dir)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("recipe", list(recipes.RECIPES))
def test_every_recipe_distils_a_teacher_of_every_family(teachers, family, recipe, tmp_path):
    from transformers import AutoTokenizer

    mlm_dir, seq_dir, tok_dir = teachers[family]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    p = parse_params({**SHAPES, "base": {"seed": 0}})
    ctx = GeneralContext(p, str(mlm_dir), mlm_dir, tok, lambda s: "fp32")
    general = recipes.get(recipe).general(ctx)
    corpus = Dataset.from_dict({"input_ids": tokenize_task(Dataset.from_dict(
        {"sentence1": SENTENCES, "label": [0] * len(SENTENCES)}), tok, 24)["input_ids"]})
    res = run_phases(general.phases, corpus, tmp_path / "g", general.student)
    values = [v for r in res.histories for h in r for k, v in h.items() if k != "step"]
    assert res.steps > 0 and values and all(torch.isfinite(torch.tensor(float(v))) for v in values)
    # the student is of the teacher's family (MobileBERT-style: its own architecture, the teacher's vocabulary)
    want = "mobilebert" if recipe == "mobilebert" else AutoConfig.from_pretrained(mlm_dir).model_type
    assert general.student.config.model_type == want and general.student.config.vocab_size == len(tok)
    general.student.save_pretrained(tmp_path / "general")
    tok.save_pretrained(tmp_path / "general")
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "general", **TASK.model_config())
    teacher = AutoModelForSequenceClassification.from_pretrained(seq_dir).eval()
    train = toy_rows(tok)
    tctx = TaskContext(p, student, teacher, tmp_path / "general", lambda s: "fp32", lambda prec: None)
    res = run_phases(recipes.get(recipe).task(tctx), train, tmp_path / "t", student)
    assert res.steps > 0
    assert set(score(student, train, TASK)) == {"accuracy", "macro_f1"}
    assert student.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_hidden_and_attention_losses_of_a_roberta_pair_match_a_hand_computation(teachers):
    """TinyBERT's terms on RoBERTa: the student's states are projected onto the teacher's width and compared by MSE
    (padding excluded), and the pre-softmax scores Q.K^T/sqrt(d) of each mapped layer by MSE."""
    from transformers import AutoModel, AutoTokenizer

    from kdistill.models import tinybert_config

    mlm_dir, _, _ = teachers["roberta"]
    tok = AutoTokenizer.from_pretrained(mlm_dir)
    teacher = AutoModel.from_pretrained(mlm_dir, attn_implementation="eager").eval()
    torch.manual_seed(0)
    student = AutoModel.from_config(tinybert_config(teacher.config, 2, 16, 4, 32)).eval()
    assert student.config.model_type == "roberta" and student.config.pad_token_id == tok.pad_token_id
    obj = Intermediate(student, teacher, {"emb": 1.0, "hidn": 1.0, "attn": 1.0}, "uniform", "scores", False, True).eval()
    batch = pad_collate([dict(r) for r in toy_rows(tok, 3)], tok.pad_token_id)
    got = obj(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad(), AttentionScores(teacher) as tcap:
        t_out = teacher(**inputs, output_hidden_states=True)
    with torch.no_grad(), AttentionScores(student) as scap:
        s_out = student(**inputs, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    # hand: projections are Linear layers; hidden terms over the real tokens only
    want_hidn = 0.0
    for i, t_layer in enumerate(obj.layer_map):
        proj = obj.projections(i + 1, s_out.hidden_states[i + 1])
        diff = (proj - t_out.hidden_states[t_layer])[mask]
        want_hidn += (diff**2).mean() / len(obj.layer_map)
    assert got["hidn"].item() == pytest.approx(want_hidn.item(), rel=1e-4)
    want_attn = 0.0
    for i, t_layer in enumerate(obj.layer_map):
        s_sc, t_sc = scap.scores[i], tcap.scores[t_layer - 1]
        keep = mask[:, None, :, None] & mask[:, None, None, :]
        want_attn += ((s_sc - t_sc) ** 2)[keep.expand_as(s_sc)].mean() / len(obj.layer_map)
    assert got["attn"].item() == pytest.approx(want_attn.item(), rel=1e-4)
    # and the scores are Q.K^T/sqrt(d) of the RoBERTa layer, by hand
    layer = teacher.encoder.layer[0].attention.self
    h0 = t_out.hidden_states[0]
    q = layer.query(h0).view(3, -1, 4, 8).transpose(1, 2)
    k = layer.key(h0).view(3, -1, 4, 8).transpose(1, 2)
    assert torch.allclose(tcap.scores[0], q @ k.transpose(-1, -2) / 8**0.5, atol=1e-5)


def test_a_model_of_no_encoder_family_is_refused_with_the_families_that_run_before_any_work(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError) as err:
        teacher_config(str(tmp_path))
    msg = str(err.value)
    assert "is a 'gpt2' model: no recipe runs on it because it is not one of the encoder families" in msg
    assert ("recipes run on BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/v3, ModernBERT, MPNet "
            "teachers") in msg


def test_a_fine_tuned_teacher_is_used_as_it_is_or_refused_when_its_labels_differ(teachers):
    mlm_dir, seq_dir, _ = teachers["roberta"]
    seq = AutoConfig.from_pretrained(seq_dir)
    assert plan(seq, TASK, "auto", "t") == "use"
    assert plan(seq, TASK, "train", "t") == "train"
    assert plan(AutoConfig.from_pretrained(mlm_dir), TASK, "auto", "t") == "train"  # no classification head
    with pytest.raises(TeacherHeadError, match=r"no classification head with label names"):
        plan(AutoConfig.from_pretrained(mlm_dir), TASK, "use", "t")
    reordered = Task("toy", "single_label", ("pos", "neu", "neg"), "accuracy", False, ("accuracy",))
    with pytest.raises(TeacherHeadError, match=r"same labels in another order: teacher \['neg', 'neu', 'pos'\], data "
                                               r"\['pos', 'neu', 'neg'\].*set data.labels: \['neg', 'neu', 'pos'\]"):
        plan(seq, reordered, "auto", "t")
    other = Task("toy", "single_label", ("sports", "tech", "world"), "accuracy", False, ("accuracy",))
    with pytest.raises(TeacherHeadError, match=r"fine-tuned for other labels.*teacher_finetune.mode: train"):
        plan(seq, other, "auto", "t")


def test_near_chance_is_the_majority_rate_within_two_standard_errors():
    gold = [0] * 60 + [1] * 30 + [2] * 10
    assert TASK.chance(gold) == 0.6
    assert near_chance(TASK, 0.65, gold)[0] and not near_chance(TASK, 0.75, gold)[0]  # SE = sqrt(.24/100) = 0.049


def test_the_documented_family_table_is_what_the_tests_run():
    """Every family the engine reads has a row, and every "runs" cell is a family these tests distil with that
    recipe (test_every_recipe_distils_a_teacher_of_every_family)."""
    from kdistill.families import FAMILIES as ENGINE

    from .conftest import ROOT

    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("<!-- families:start -->"):text.index("<!-- families:end -->")].splitlines()[1:]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[1:] == list(recipes.RECIPES)
    names = {f.name: kind for kind, f in ENGINE.items()}
    seen = set()
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        family, verdicts = cells[0], cells[1:]
        assert all(v == "runs" for v in verdicts), f"{family}: {verdicts}"
        assert names[family] in FAMILIES  # parametrizes test_every_recipe_distils_a_teacher_of_every_family
        seen.add(family)
    assert set(names) == seen


@pytest.mark.parametrize("kind", ["multi_label", "regression"])
def test_task_distillation_of_multi_label_and_regression_tasks(teachers, kind, tmp_path):
    """Soft targets by kind: the teacher's sigmoids (multi-label, binary KL per label) or its score (regression)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    mlm_dir, _, _ = teachers["roberta"]
    tok = AutoTokenizer.from_pretrained(mlm_dir)
    labels = ("price", "speed") if kind == "multi_label" else None
    task = Task("toy", kind, labels, "micro_f1" if labels else "pearson", False,
                ("micro_f1", "macro_f1", "subset_accuracy") if labels else ("pearson", "spearman"))
    y = [[float(i % 2), float(i % 3 == 0)] for i in range(12)] if labels else [i / 11 for i in range(12)]
    rows = tokenize_task(Dataset.from_dict({"sentence1": (SENTENCES * 2)[:12], "label": y}), tok, 24)
    AutoModelForMaskedLM.from_pretrained(mlm_dir).save_pretrained(tmp_path / "general")
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "general", **task.model_config()).eval()
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "general", **task.model_config())
    p = parse_params({**SHAPES, "base": {"seed": 0}})
    ctx = TaskContext(p, student, teacher, tmp_path / "general", lambda s: "fp32", lambda prec: None)
    res = run_phases(recipes.get("distilbert").task(ctx), rows, tmp_path / "t", student)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(h["ce"])) for h in res.histories[0])
    got = score(student, rows, task)
    assert set(got) == set(task.reported)
    assert student.config.problem_type == task.model_config()["problem_type"]


def _pair(teachers, family):
    """A tiny teacher of `family`, a narrower student of its family, their tokenizer and a padded batch."""
    from transformers import AutoModel, AutoTokenizer

    from kdistill.models import tinybert_config

    mlm_dir, _, _ = teachers[family]
    tok = AutoTokenizer.from_pretrained(mlm_dir)
    teacher = AutoModel.from_pretrained(mlm_dir).eval()
    torch.manual_seed(0)
    student = AutoModel.from_config(tinybert_config(teacher.config, 2, 16, 4, 32)).eval()
    batch = pad_collate([dict(r) for r in toy_rows(tok, 3)], tok.pad_token_id)
    assert batch["attention_mask"].min() == 0  # the batch pads: the masking is exercised
    return teacher, student, tok, batch


def _attention_term_is_the_hand_mse(teacher, student, batch):
    """TinyBERT's attention term: the mean over mapped layers of the squared differences of the captured scores,
    over real query and key tokens."""
    obj = Intermediate(student, teacher, {"emb": 1.0, "hidn": 1.0, "attn": 1.0}, "uniform", "scores", False, True).eval()
    got = obj(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), AttentionScores(teacher) as tcap, AttentionScores(student) as scap:
        teacher(**inputs)
        student(**inputs)
    mask = batch["attention_mask"].bool()
    want = 0.0
    for i, t in enumerate(obj.layer_map):
        keep = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(scap.scores[i])
        want += ((scap.scores[i] - tcap.scores[t - 1]) ** 2)[keep].mean() / len(obj.layer_map)
    assert got["attn"].item() == pytest.approx(want.item(), rel=1e-4)


def test_deberta_scores_are_its_softmax_input_relative_terms_included_and_the_loss_compares_them(teachers):
    """DeBERTa-v2/v3: the captured scores are what its disentangled attention feeds its softmax (Q.K^T plus the
    content-to-position and position-to-content terms): softmax of them is the model's own attention; with the
    relative terms off they are Q.K^T/sqrt(d) by hand. TinyBERT's attention term is their MSE over real tokens."""
    from transformers import AutoModel, DebertaV2Config

    teacher, student, tok, batch = _pair(teachers, "deberta-v2")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = batch["attention_mask"].bool()
    with torch.no_grad(), AttentionScores(teacher) as cap:
        out = teacher(**inputs, output_attentions=True)
    for sc, probs in zip(cap.scores, out.attentions):
        own = torch.softmax(sc.masked_fill(~mask[:, None, None, :], float("-inf")), -1)
        torch.testing.assert_close(own[mask[:, None, :, None].expand_as(own)],
                                   probs[mask[:, None, :, None].expand_as(probs)], atol=1e-6, rtol=1e-5)
        assert torch.isfinite(sc).all() and (sc[~mask[:, None, None, :].expand_as(sc)] == 0).all()
    # no relative terms: the plain scaled product, by hand from the projections
    plain = AutoModel.from_config(DebertaV2Config(**{**teacher.config.to_dict(), "relative_attention": False,
                                                     "pos_att_type": []})).eval()
    with torch.no_grad(), AttentionScores(plain) as cap:
        hs = plain(**inputs, output_hidden_states=True).hidden_states
    attn = plain.encoder.layer[0].attention.self
    q = attn.query_proj(hs[0]).view(3, -1, 4, 8).transpose(1, 2)
    k = attn.key_proj(hs[0]).view(3, -1, 4, 8).transpose(1, 2)
    want = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask[:, None, None, :], 0.0)
    torch.testing.assert_close(cap.scores[0], want, atol=1e-5, rtol=1e-5)
    _attention_term_is_the_hand_mse(teacher, student, batch)


def test_modernbert_scores_are_the_rotary_product_and_the_relations_split_its_fused_projection(teachers):
    """ModernBERT: the captured scores of a layer are Q.K^T/sqrt(d) of its fused Wqkv projection after rotary
    positions, rotated here by hand; MiniLM's query/key/value are the three thirds of Wqkv's output; TinyBERT's
    attention term is the MSE of the captured scores over real tokens."""
    from kdistill.distill.features import layer_qkv

    teacher, student, tok, batch = _pair(teachers, "modernbert")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = batch["attention_mask"].bool()
    with torch.no_grad(), AttentionScores(teacher) as cap:
        hs = teacher(**inputs, output_hidden_states=True).hidden_states
    layer = teacher.layers[0]  # its attention norm is the identity: it reads the embedding output
    b, n = inputs["input_ids"].shape
    q, k, _ = layer.attn.Wqkv(hs[0]).view(b, n, 3, 4, 8).unbind(2)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    theta = teacher.config.rope_parameters[teacher.config.layer_types[0]]["rope_theta"]
    freqs = torch.arange(n)[:, None].float() / theta ** (torch.arange(0, 8, 2).float() / 8)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rotate(x):
        return x * cos + torch.cat([-x[..., 4:], x[..., :4]], -1) * sin

    want = rotate(q) @ rotate(k).transpose(-1, -2) / 8**0.5
    torch.testing.assert_close(cap.scores[0], want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        qkv = layer_qkv(teacher, batch, 1)
    fused = layer.attn.Wqkv(hs[0])
    for i, name in enumerate(("query", "key", "value")):
        torch.testing.assert_close(qkv[name], fused[..., i * 32:(i + 1) * 32])
    _attention_term_is_the_hand_mse(teacher, student, batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_without_a_masked_lm_head_is_told_apart_from_one_with(family, teachers, tmp_path):
    """A sentence encoder saved without its MLM head (as all-mpnet-base-v2 is) loads through AutoModelForMaskedLM
    with a random head and no error; the teacher_mlm stage must fit a head then, never distil the random one."""
    from transformers import AutoModel, AutoModelForMaskedLM

    from kdistill.models import checkpoint_has_mlm_head

    mlm_dir, _, _ = teachers[family]
    with_head = AutoModelForMaskedLM.from_pretrained(mlm_dir)
    assert checkpoint_has_mlm_head(mlm_dir, with_head)
    bare = AutoModel.from_pretrained(mlm_dir)
    bare.config.architectures = [type(with_head).__name__]  # what such a checkpoint's config says
    bare.save_pretrained(tmp_path / "bare")
    loaded, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "bare", output_loading_info=True)
    assert not checkpoint_has_mlm_head(tmp_path / "bare", loaded)
    # a hub id (no local file): what from_pretrained reported missing decides
    assert not checkpoint_has_mlm_head("org/bare-encoder", loaded, info["missing_keys"])
    _, full = AutoModelForMaskedLM.from_pretrained(mlm_dir, output_loading_info=True)
    assert checkpoint_has_mlm_head("org/encoder-with-head", with_head, full["missing_keys"])


SPAN_TASKS = {
    "token_classification": Task("toy-ner", "token_classification", ("O", "B-thing", "I-thing"), "entity_f1", False,
                                 ("entity_f1", "entity_precision", "entity_recall"), "IOB2"),
    "extractive_qa": Task("toy-qa", "extractive_qa", None, "f1", True, ("f1", "exact_match"), None, 2, 5),
}


def span_rows(kind: str, tok):
    """A few tagged sentences (the first word an entity) or questions whose answer is a word of their context."""
    if kind == "token_classification":
        words = [s.split() for s in SENTENCES]
        return tokenize_task(Dataset.from_dict({"words": words, "tags": [[1] + [0] * (len(w) - 1) for w in words]}),
                             tok, 24)
    contexts = [f"{SENTENCES[i]} and {SENTENCES[(i + 1) % len(SENTENCES)]}" for i in range(len(SENTENCES))]
    answers = [c.split()[-1] for c in contexts]
    rows = Dataset.from_dict({"idx": list(range(len(contexts))), "id": [f"q{i}" for i in range(len(contexts))],
                              "question": ["what is it"] * len(contexts), "context": contexts,
                              "answer_texts": [[a] for a in answers],
                              "answer_starts": [[c.rindex(a)] for c, a in zip(contexts, answers)]})
    return tokenize_task(rows, tok, 16, doc_stride=4)  # short windows: some questions span two


@pytest.mark.parametrize("kind", list(SPAN_TASKS))
@pytest.mark.parametrize("recipe", list(recipes.RECIPES))
def test_every_recipe_distils_entities_and_answers(teachers, recipe, kind, tmp_path):
    """The task phases of each recipe on a token classifier (soft targets on the labelled sub-tokens) and on a QA
    model (start and end distributions per window), with its intermediate-layer losses on the same masks: the end
    to end runs of tests/test_ner_pipeline.py and tests/test_qa_pipeline.py distil only some recipes."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoTokenizer

    mlm_dir, _, tok_dir = teachers["bert"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    task = SPAN_TASKS[kind]
    cls = AutoModelForTokenClassification if kind == "token_classification" else AutoModelForQuestionAnswering
    p = parse_params({**SHAPES, "base": {"seed": 0}})
    general = recipes.get(recipe).general(GeneralContext(p, str(mlm_dir), mlm_dir, tok, lambda s: "fp32"))
    general.student.save_pretrained(tmp_path / "general")  # its start: the task phases are what differ by kind
    tok.save_pretrained(tmp_path / "general")
    student = cls.from_pretrained(tmp_path / "general", **task.model_config())
    torch.manual_seed(1)
    teacher = cls.from_pretrained(mlm_dir, **task.model_config()).eval()
    train = span_rows(kind, tok)
    assert kind == "token_classification" or len(train) > len(SENTENCES)  # windows
    # the kind's own head (per-token classifier, start/end projection): the recipe's phases must train it
    head = {k: v.clone() for k, v in student.state_dict().items() if k.startswith(("classifier.", "qa_outputs."))}
    assert head
    tctx = TaskContext(p, student, teacher, tmp_path / "general", lambda s: "fp32", lambda prec: None)
    res = run_phases(recipes.get(recipe).task(tctx), train, tmp_path / "t", student)
    values = [v for r in res.histories for h in r for k, v in h.items() if k != "step"]
    assert res.steps > 0 and values and all(torch.isfinite(torch.tensor(float(v))) for v in values)
    after = student.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in head.items())
    assert set(score(student, train, task)) >= set(task.reported)
