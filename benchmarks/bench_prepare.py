"""Corpus packing at scale: tokens/s and peak memory (the whole process tree) for the shipped corpus and for it
repeated N times. Peak RSS should not grow with the corpus: `make bench-prepare` (REPEAT=20 NUM_PROC=2)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys, time
from kdistill.data.corpus import pack_corpus
from kdistill.data.batches import row_lengths
from kdistill.models import load_tokenizer
tok = load_tokenizer(sys.argv[1])
t = time.perf_counter()
ds = pack_corpus(sys.argv[2], tok, int(sys.argv[3]), num_proc=int(sys.argv[4]), work_dir=sys.argv[5])
ds.save_to_disk(sys.argv[5] + "/saved")
secs = time.perf_counter() - t
print(json.dumps({"sequences": len(ds), "tokens": int(row_lengths(ds).sum()), "seconds": secs}))
"""


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over the process tree. RSS also counts pages of memory-mapped Arrow files that
    were read (page cache the kernel can drop); anonymous RSS is the heap, what a corpus held in Python would fill."""
    rss = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss += p.memory_info().rss
            with open(f"/proc/{p.pid}/status") as f:
                anon += next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
        except (psutil.NoSuchProcess, FileNotFoundError, StopIteration):
            pass
    return rss, anon


def measure(corpus: Path, teacher: str, seq_len: int, num_proc: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="kdistill-bench-prepare-") as work:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, teacher, str(corpus), str(seq_len), str(num_proc), work],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ps, peak, stop = psutil.Process(proc.pid), [0, 0], threading.Event()

        def sample():
            while not stop.is_set():
                rss, anon = tree_memory(ps)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
                time.sleep(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        out, _ = proc.communicate()
        stop.set()
        th.join()
        if proc.returncode:
            raise SystemExit(f"packing {corpus} failed (exit {proc.returncode})")
        res = json.loads(out.strip().splitlines()[-1])
    return {**res, "peak_rss_mib": peak[0] / 2**20, "peak_anon_mib": peak[1] / 2**20, "tokens_per_s": res["tokens"] / res["seconds"],
            "corpus_mib": corpus.stat().st_size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default=str(ROOT / "data/corpus/enwiki_sample.txt"))
    ap.add_argument("--teacher", default="offline:all-MiniLM-L6-v2")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--num-proc", type=int, default=2)
    args = ap.parse_args()
    import torch

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {psutil.cpu_count()} CPUs, num_proc {args.num_proc}")
    src = Path(args.corpus)
    with tempfile.TemporaryDirectory(prefix="kdistill-bench-corpus-") as tmp:
        big = Path(tmp) / f"corpus_x{args.repeat}.txt"
        text = src.read_bytes().rstrip(b"\n") + b"\n\n"
        with open(big, "wb") as f:
            for _ in range(args.repeat):
                f.write(text)
        for name, path in (("shipped corpus (x1)", src), (f"repeated x{args.repeat}", big)):
            r = measure(path, args.teacher, args.seq_len, args.num_proc)
            print(f"{name:>22}: {r['corpus_mib']:7.1f} MiB text, {r['sequences']:>8} sequences, {r['tokens']:>10} tokens, "
                  f"{r['seconds']:7.1f} s, {r['tokens_per_s']:>9.0f} tokens/s, peak over the process tree: "
                  f"anonymous RSS {r['peak_anon_mib']:.0f} MiB, RSS incl. mapped files {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
