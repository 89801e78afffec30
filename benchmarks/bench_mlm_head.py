"""How well can a masked-LM head read masked tokens off the offline teacher's layers?

`python -m benchmarks.bench_mlm_head [--sequences 4000] [--heldout 300] [--epochs 6] [--layers 0 2 4 6]`

The offline teacher (all-MiniLM-L6-v2) ships no MLM head; teacher_mlm fits BERT's head (transform + LayerNorm, the
decoder tied to the frozen word embeddings) on its frozen encoder. This probe runs the encoder once over corpus
paragraphs masked as in training (15%, 80/10/10, fixed seed), keeps the hidden states of each layer at the masked
positions, fits one head per layer to convergence on them (AdamW, batches of 256 positions) and prints held-out
top-1 and top-5 accuracy: what limits the teacher's MLM predictions (the head's steps, or what the layer encodes).
Layer 0 is the embedding output (no context): the floor any contextual layer should beat.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from kdistill.distill import losses as L
from kdistill.families import mlm_head_prefixes, mlm_logits
from kdistill.models import encoder_of, resolve_teacher
from kdistill.paths import ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="offline:all-MiniLM-L6-v2")
    ap.add_argument("--sequences", type=int, default=4000)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4, 6])
    args = ap.parse_args()
    torch.manual_seed(0)
    src = resolve_teacher(args.teacher)
    tok = AutoTokenizer.from_pretrained(src)
    base = AutoModelForMaskedLM.from_pretrained(src).eval()
    text = (ROOT / "data" / "corpus" / "enwiki_sample.txt").read_text(encoding="utf-8").split("\n")
    paragraphs = [t for t in text if len(t) > 200][: args.sequences + args.heldout]
    enc = tok(paragraphs, truncation=True, max_length=64, padding="max_length", return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids)) | (am == 0)
    masked, labels = L.mask_tokens(ids, special, tok.mask_token_id, base.config.vocab_size, 0.15,
                                   generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    feats: dict[int, list[torch.Tensor]] = {k: [] for k in args.layers}
    with torch.no_grad():
        for s in range(0, len(paragraphs), 64):
            hs = encoder_of(base)(input_ids=masked[s:s + 64], attention_mask=am[s:s + 64],
                                  output_hidden_states=True).hidden_states
            sel = labels[s:s + 64] != -100
            for k in args.layers:
                feats[k].append(hs[k][sel])
    y = labels[labels != -100]
    n_held = int((labels[len(paragraphs) - args.heldout:] != -100).sum())
    print(f"{len(paragraphs)} paragraphs, {len(y) - n_held} training and {n_held} held-out masked positions; "
          f"encoder pass {time.perf_counter() - t0:.0f} s; CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for k in args.layers:
        m = copy.deepcopy(base)
        x = torch.cat(feats[k])
        x_tr, y_tr, x_ho, y_ho = x[:-n_held], y[:-n_held], x[-n_held:], y[-n_held:]
        emb = m.get_input_embeddings().weight
        for p in m.parameters():
            p.requires_grad_(False)
        params = [p for n, p in m.named_parameters() if n.startswith(mlm_head_prefixes(m)) and p is not emb]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        for _ in range(args.epochs):
            for idx in torch.randperm(len(y_tr)).split(256):
                loss = torch.nn.functional.cross_entropy(mlm_logits(m, x_tr[idx]), y_tr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            logits = mlm_logits(m, x_ho)
            top1 = (logits.argmax(-1) == y_ho).float().mean().item()
            top5 = (logits.topk(5, -1).indices == y_ho[:, None]).any(-1).float().mean().item()
        print(f"layer {k}: held-out masked-token accuracy {top1:.3f}, top-5 {top5:.3f}", flush=True)


if __name__ == "__main__":
    main()
