"""Do a training run's bytes depend on the thread count? Five AdamW steps of a 3 x 384 BERT on random batches,
then the md5 of every weight: run it with 1 and with 2 threads and compare.

    .venv/bin/python benchmarks/threads_determinism.py 1
    .venv/bin/python benchmarks/threads_determinism.py 2

Why the flow fixes each stage's thread count (pipelines.flow.stage_threads) instead of sharing the CPUs among the
stages that happen to be ready."""

import hashlib
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536, num_labels=2)
m = BertForSequenceClassification(cfg)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(1)
for step in range(5):
    ids = torch.randint(1000, 30000, (32, 64), generator=g)
    y = torch.randint(0, 2, (32,), generator=g)
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y)
    out.loss.backward(); opt.step(); opt.zero_grad()
h = hashlib.md5()
for k, v in sorted(m.state_dict().items()): h.update(v.detach().numpy().tobytes())
print(sys.argv[1], h.hexdigest(), float(out.loss))
