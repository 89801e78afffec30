import pytest
import torch

from kdistill.attention import AttentionCaptureError, AttentionScores, scores_to_probs
from kdistill.layer_map import LayerMapError, check_heads, resolve_layer_map


def reference_scores(model, input_ids, token_type_ids=None):
    """Q.K^T/sqrt(d) per layer, computed from the query/key weights directly (eager forward, own arithmetic)."""
    enc = model.bert if hasattr(model, "bert") else model
    hidden = enc(input_ids, output_hidden_states=True).hidden_states
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


def test_capture_works_under_sdpa_and_hooks_are_removed(make_bert):
    model = make_bert("base", layers=2)
    ids = torch.randint(5, 30, (2, 5))
    with torch.no_grad(), AttentionScores(model) as cap:
        model(input_ids=ids)
    eager = [s.clone() for s in cap.scores]
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), AttentionScores(model) as cap2:
        model(input_ids=ids)
    for a, b in zip(eager, cap2.scores):
        assert torch.allclose(a, b, atol=1e-5)
    cap2.clear()
    with torch.no_grad():
        model(input_ids=ids)
    assert cap2.scores == []  # no hooks left behind


def test_capture_refuses_models_it_cannot_read(make_bert):
    model = make_bert("base", position_embedding_type="relative_key")
    with pytest.raises(AttentionCaptureError, match="relative"):
        AttentionScores(model)
    with pytest.raises(AttentionCaptureError, match="no BERT self-attention"):
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
    with pytest.raises(LayerMapError, match="student has 4 heads, the teacher 12"):
        check_heads(4, 12)
