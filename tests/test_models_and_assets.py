import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from kdistill.data.corpus import pack_corpus
from kdistill.data.glue import DataError
from kdistill.distill.objectives import (
    DistilBertGeneral,
    Intermediate,
    MlmHeadFit,
    masked_token_accuracy,
)
from kdistill.models import (
    ModelSpecError,
    distilbert_student,
    every_other_layer,
    resolve_teacher,
    save_model_atomic,
    tinybert_config,
)
from kdistill.train.trainer import Trainer, TrainerConfig, pad_collate


def test_distilbert_student_copies_every_other_layer_and_round_trips(make_bert, tiny_tokenizer, tmp_path):
    teacher = make_bert("seq", layers=4)
    assert every_other_layer(4) == [0, 2]
    student = distilbert_student(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == teacher.config.hidden_size
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.encoder.layer.1.attention.self.query.weight"], t["bert.encoder.layer.2.attention.self.query.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    save_model_atomic(student, tiny_tokenizer, tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    enc = tok(["the movie was good"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**enc).logits, student.eval()(**enc).logits, atol=1e-6)
    with pytest.raises(ModelSpecError, match=r"0..3"):
        distilbert_student(teacher, [0, 7])


def test_distilbert_student_of_an_mlm_teacher_keeps_tied_head(make_bert):
    teacher = make_bert("mlm", layers=4)
    student = distilbert_student(teacher, [1, 3])
    assert student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()


def test_tinybert_student_any_shape_and_head_check(make_bert):
    teacher = make_bert("base")
    cfg = tinybert_config(teacher.config, layers=3, hidden=16, heads=4, ffn=32)
    m = BertModel(cfg)
    assert (m.config.num_hidden_layers, m.config.hidden_size, m.config.intermediate_size) == (3, 16, 32)
    with pytest.raises(ModelSpecError, match="must divide"):
        tinybert_config(teacher.config, 3, 18, 4, 32)
    # the FFN activation is the teacher's unless the student's shape names another; the module really changes
    assert cfg.hidden_act == teacher.config.hidden_act == "gelu"
    relu = BertModel(tinybert_config(teacher.config, 3, 16, 4, 32, activation="relu"))
    x = torch.linspace(-2, 2, 9)
    assert torch.equal(relu.encoder.layer[0].intermediate.intermediate_act_fn(x), torch.relu(x))
    from kdistill.distill.layer_map import LayerMapError

    Intermediate(BertModel(tinybert_config(teacher.config, 2, 16, 2, 32)), teacher, {"attn": 1.0})  # 2 divides 4
    with pytest.raises(LayerMapError, match="student has 3 heads, the teacher 4"):
        Intermediate(BertModel(tinybert_config(teacher.config, 2, 12, 3, 32)), teacher, {"attn": 1.0})


def test_general_objectives_train_and_mlm_head_fits(make_bert, tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    from datasets import Dataset

    # a corpus with structure: token = position-dependent, so a head can learn it from the frozen encoder
    rows = [[2] + [5 + (j + int(torch.randint(0, 3, (1,), generator=g))) % 20 for j in range(10)] + [3] for _ in range(64)]
    ds = Dataset.from_dict({"input_ids": rows})
    mlm = make_bert("mlm", layers=2)
    before = masked_token_accuracy(mlm, ds, pad_collate, mask_token_id=4, special_ids=(0, 2, 3))
    fit = MlmHeadFit(mlm, special_ids=(0, 2, 3), mask_token_id=4)
    enc_before = {k: v.clone() for k, v in mlm.bert.state_dict().items()}
    Trainer(fit, ds, TrainerConfig(lr=1e-2, batch_size=16, epochs=15, warmup_ratio=0), tmp_path / "h",
            device=torch.device("cpu")).train()
    after = masked_token_accuracy(mlm, ds, pad_collate, mask_token_id=4, special_ids=(0, 2, 3))
    assert after > before + 0.1
    assert all(torch.equal(v, mlm.bert.state_dict()[k]) for k, v in enc_before.items())  # encoder frozen
    student = distilbert_student(mlm, [1])
    obj = DistilBertGeneral(student, mlm, {"mlm": 2.0, "ce": 5.0, "cos": 1.0}, special_ids=(0, 2, 3), mask_token_id=4)
    comps = obj(pad_collate([{"input_ids": r} for r in rows[:8]]))
    assert set(comps) == {"mlm", "ce", "cos"} and all(torch.isfinite(v) for v in comps.values())


def test_offline_teacher_gives_hidden_states_and_attentions():
    path = resolve_teacher("offline:all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(["a very good film", "bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 7 and out.hidden_states[-1].shape[-1] == 384
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12
    assert tok.convert_ids_to_tokens(enc["input_ids"][0])[:3] == ["[CLS]", "a", "very"]
    with pytest.raises(ModelSpecError, match="unknown offline teacher"):
        resolve_teacher("offline:nope")


def test_wordnet_augmenter_offline_changes_sentence_deterministically():
    from kdistill.data.augment import WordNetAugmenter

    aug = WordNetAugmenter(aug_p=0.5, seed=1)
    src = ["the movie was a great and funny ride", "a dull , boring story"]
    out = aug.augment(src, [0, 1], copy=0)
    assert out[0] != src[0]
    assert out == WordNetAugmenter(aug_p=0.5, seed=1).augment(src, [0, 1], copy=0)
    assert aug.augment(src[:1], [0], copy=1) != out[:1] or aug.augment(src[:1], [0], copy=2) != out[:1]


def test_tinybert_augmenter_uses_the_masked_lm_for_single_pieces_and_glove_for_the_rest(tmp_path, tiny_tokenizer,
                                                                                          make_bert):
    """Single-piece words take one of the MLM's top-K tokens, multi-piece words (here `zebra`: not in the tiny
    vocabulary, so several pieces) a GloVe neighbour; the same (seed, example, copy) gives the same sentence."""
    from kdistill.data.augment import TinyBertAugmenter

    mlm = make_bert("mlm")
    mlm.save_pretrained(tmp_path / "mlm")
    tiny_tokenizer.save_pretrained(tmp_path / "mlm")

    class Glove:
        asked: list = []

        def neighbours(self, word, k):
            self.asked.append(word)
            return ["horse"]

    glove = Glove()
    aug = TinyBertAugmenter(str(tmp_path / "mlm"), aug_p=1.0, top_k=3, glove_k=5, seed=7, batch_size=2, glove=glove)
    src = ["the movie was fun", "a zebra plot"]
    out = aug.augment(src, [0, 1], copy=1)
    assert [len(o.split()) for o in out] == [4, 3]
    assert glove.asked == ["zebra"] and out[1].split()[1] == "horse"
    vocab = set(tiny_tokenizer.get_vocab())
    for o, s in zip(out, src):  # every single-piece word replaced by a different whole word of the vocabulary
        for new, old in zip(o.split(), s.split()):
            if old != "zebra":
                assert new in vocab and new != old and new.isalpha()
    again = TinyBertAugmenter(str(tmp_path / "mlm"), aug_p=1.0, top_k=3, glove_k=5, seed=7, batch_size=8, glove=glove)
    assert again.augment(src, [0, 1], copy=1) == out  # batching does not change the result
    assert again.augment(src[:1], [0], copy=1) == out[:1]
    half = TinyBertAugmenter(str(tmp_path / "mlm"), aug_p=0.5, top_k=3, glove_k=5, seed=7, glove=glove)
    kept = sum(a == b for s in [half.augment([" ".join(["movie"] * 40)], [3], copy=1)[0]]
               for a, b in zip(s.split(), ["movie"] * 40))
    assert 5 < kept < 35  # about half the words replaced


def test_glove_neighbours():
    from kdistill.data.augment import GloveNeighbours

    nb = GloveNeighbours().neighbours("movie", 5)
    assert "film" in nb or "movies" in nb


def test_corpus_packing_is_document_aware(tiny_tokenizer, tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("the movie was good and the actor was great\nthe plot was fun\n\nbad film , dull story , awful scene\n")
    ds = pack_corpus(f, tiny_tokenizer, max_seq_len=10, min_tokens=2)
    assert all(len(x) <= 10 and x[0] == tiny_tokenizer.cls_token_id and x[-1] == tiny_tokenizer.sep_token_id for x in ds["input_ids"])
    docs = ds["doc"]
    assert docs == sorted(docs) and set(docs) == {0, 1}
    first_doc_tokens = sum(len(x) - 2 for x, d in zip(ds["input_ids"], docs) if d == 0)
    assert first_doc_tokens == 13  # 9 + 4 words, packed across paragraphs of one document
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="corpus file is empty"):
        pack_corpus(empty, tiny_tokenizer)
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"good line\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=rf"{bad}:2: not valid UTF-8"):
        pack_corpus(bad, tiny_tokenizer)
    short = tmp_path / "s.txt"  # text, but no document long enough to learn from: refused here, with the reason
    short.write_text("good film\n\nbad plot\n")
    with pytest.raises(DataError, match=rf"{short}: the corpus packs to 0 sequences: none of its first 2 document\(s\) "
                                        r"gives 8 or more tokens"):
        pack_corpus(short, tiny_tokenizer)
