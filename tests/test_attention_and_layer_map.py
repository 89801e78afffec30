import pytest
import torch

from kdistill.distill.attention import AttentionCaptureError, AttentionScores
from kdistill.distill.layer_map import LayerMapError, check_heads, resolve_layer_map


def scores_to_probs(scores, attention_mask):
    """The reference: softmax over keys with padded keys excluded, as the model itself computes it."""
    key_mask = attention_mask[:, None, None, :].to(torch.bool)
    return torch.softmax(scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min), dim=-1)


def reference_scores(model, input_ids, token_type_ids=None, attention_mask=None):
    """Q.K^T/sqrt(d) per layer, computed from the query/key weights directly (eager forward, own arithmetic)."""
    enc = model.bert if hasattr(model, "bert") else model
    hidden = enc(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    out = []
    for i, layer in enumerate(enc.encoder.layer):
        att = layer.attention.self
        h, d = att.num_attention_heads, att.attention_head_size
        x = hidden[i]
        q = x @ att.query.weight.T + att.query.bias
        k = x @ att.key.weight.T + att.key.bias
        b, n, _ = x.shape
        q = q.view(b, n, h, d).permute(0, 2, 1, 3)
        k = k.view(b, n, h, d).permute(0, 2, 1, 3)
        out.append(torch.einsum("bhqd,bhkd->bhqk", q, k) / d**0.5)
    return out


def test_captured_scores_equal_reference_and_softmax_to_eager_attentions(make_bert):
    model = make_bert("seq", layers=3)
    ids = torch.randint(5, 30, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad(), AttentionScores(model.bert) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(cap.scores) == 3
    with torch.no_grad():
        ref = reference_scores(model, ids)
    for got, want in zip(cap.scores[:1], ref[:1]):  # layer 1 input does not depend on the mask
        assert torch.allclose(got[0], want[0], atol=1e-5)
    # every layer: softmax of our scores with padded keys masked = eager's post-softmax probabilities
    for got, probs in zip(cap.scores, out.attentions):
        assert torch.allclose(scores_to_probs(got, mask), probs, atol=1e-5)


def test_capture_matches_reference_without_padding_every_layer(make_bert):
    model = make_bert("base", layers=2)
    ids = torch.randint(5, 30, (3, 6))
    with torch.no_grad(), AttentionScores(model) as cap:
        model(input_ids=ids)
        ref = reference_scores(model, ids)
    for got, want in zip(cap.scores, ref):
        assert torch.allclose(got, want, atol=1e-5)


def test_capture_leaves_outputs_unchanged_and_restores_the_models_attention(make_bert):
    model = make_bert("seq", layers=2)
    model.set_attn_implementation("sdpa")
    ids = torch.randint(5, 30, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with AttentionScores(model) as cap:
            captured = model(input_ids=ids, attention_mask=mask).logits
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(plain, captured, atol=1e-5) and torch.equal(plain, after)
    assert model.config._attn_implementation == "sdpa"  # the fastest implementation is back outside a capture
    kept = list(cap.scores)
    with torch.no_grad():
        model(input_ids=ids)
    assert len(kept) == 2 and all(a is b for a, b in zip(kept, cap.scores))  # nothing recorded after the capture
    # scores are formed once, inside attention: no hooks on the projections recompute Q.K^T beside it
    for layer in model.bert.encoder.layer:
        assert not layer.attention.self.query._forward_hooks and not layer.attention.self.key._forward_hooks


def test_captured_scores_carry_gradients_to_the_projections(make_bert):
    model = make_bert("base", layers=1)
    ids = torch.randint(5, 30, (2, 5))
    with AttentionScores(model) as cap:
        model(input_ids=ids)
    cap.scores[0].pow(2).mean().backward()
    q = model.encoder.layer[0].attention.self.query.weight
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_capture_refuses_models_it_cannot_read(make_bert):
    model = make_bert("base", position_embedding_type="relative_key")
    with pytest.raises(AttentionCaptureError, match="relative"):
        AttentionScores(model)
    with pytest.raises(AttentionCaptureError, match="no self-attention modules of a family the engine reads"):
        AttentionScores(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "spec,s,t,want",
    [
        ("uniform", 3, 6, [2, 4, 6]),
        ("uniform", 4, 12, [3, 6, 9, 12]),
        ("top", 2, 6, [5, 6]),
        ("bottom", 2, 6, [1, 2]),
        ([1, 3, 6], 3, 6, [1, 3, 6]),
        ("uniform", 6, 6, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_layer_maps(spec, s, t, want):
    assert resolve_layer_map(spec, s, t) == want


@pytest.mark.parametrize(
    "spec,s,t,msg",
    [
        ("uniform", 4, 6, "multiple of the student depth"),
        ("uniform", 8, 6, "cannot map onto a 6-layer teacher"),
        ([1, 2], 3, 6, "has 2 entries but the student has 3"),
        ([1, 2, 7], 3, 6, r"outside the teacher's layers 1..6"),
        ([3, 2, 4], 3, 6, "strictly increasing"),
        ("middle", 2, 6, "unknown layer_map"),
    ],
)
def test_layer_map_errors(spec, s, t, msg):
    with pytest.raises(LayerMapError, match=msg):
        resolve_layer_map(spec, s, t)


def test_head_count_mismatch_is_refused_with_reason():
    check_heads(12, 12)
    check_heads(4, 12)  # each student head against the mean of 3 teacher heads
    with pytest.raises(LayerMapError, match="student has 5 heads, the teacher 12"):
        check_heads(5, 12)


@pytest.mark.parametrize("attention", ["scores", "probs"])
def test_fewer_student_heads_fit_the_mean_of_their_teacher_head_group(make_bert, attention):
    """Student of 2 heads, teacher of 4: student head 0 against the mean of teacher heads 0-1, head 1 of heads 2-3,
    padded keys and queries left out, computed by hand from reference scores."""
    from transformers import BertModel

    from kdistill.distill.objectives import Intermediate
    from kdistill.models import tinybert_config

    teacher = make_bert("base", layers=4, heads=4, initializer_range=0.5)  # scores far from 0: a real difference
    torch.manual_seed(1)
    student = BertModel(tinybert_config(teacher.config, 2, 16, 2, 32)).eval()
    obj = Intermediate(student, teacher, {"attn": 1.0}, "uniform", attention).eval()
    ids = torch.randint(5, 30, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        got = obj({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})["attn"]
        t_maps, s_maps = reference_scores(teacher, ids, attention_mask=mask), reference_scores(student, ids, attention_mask=mask)
    if attention == "probs":
        t_maps = [scores_to_probs(a, mask) for a in t_maps]
        s_maps = [scores_to_probs(a, mask) for a in s_maps]
    w = (mask[:, None, :, None] * mask[:, None, None, :]).float()  # real query x real key
    want = 0.0
    for s_layer, t_layer in [(0, 1), (1, 3)]:  # uniform map: student layers 1, 2 <- teacher layers 2, 4
        t = t_maps[t_layer]
        target = torch.stack([t[:, 0:2].mean(1), t[:, 2:4].mean(1)], dim=1)
        d = (s_maps[s_layer] - target) * w
        want += float((d * d).sum() / (w.sum() * 2)) / 2
    assert abs(float(got) - want) < 1e-6 * max(1.0, want)
    assert want > 1e-4  # the maps differ: the comparison can fail


def test_captured_probabilities_are_the_softmax_of_the_captured_scores(make_bert):
    model = make_bert("base", layers=2)
    ids = torch.randint(5, 30, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    with torch.no_grad(), AttentionScores(model, probs=True) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert len(cap.probs) == len(cap.scores) == 2
    for scores, probs in zip(cap.scores, cap.probs):
        assert torch.allclose(scores_to_probs(scores, mask), probs, atol=1e-6)


def test_capture_of_chosen_layers_leaves_the_others_on_the_fused_kernel(make_bert):
    model = make_bert("base", layers=3)
    ids = torch.randint(5, 30, (2, 6))
    with torch.no_grad():
        with AttentionScores(model) as every:
            full = model(input_ids=ids).last_hidden_state
        with AttentionScores(model, layers=[2]) as some:
            part = model(input_ids=ids).last_hidden_state
    assert some.scores[0] is None and some.scores[2] is None
    assert torch.allclose(some.scores[1], every.scores[1], atol=1e-6)
    assert torch.allclose(part, full, atol=1e-5)
