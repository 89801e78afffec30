"""make loadtest [URL=http://127.0.0.1:5001] [REQUESTS=400] [CLIENTS=4] [BATCH=1]: a bounded load on a served model.

CLIENTS threads on loopback each send requests back to back (a closed loop) until REQUESTS have been sent; every
request carries BATCH dev sentences. Prints p50/p95/p99 latency, requests/s and sentences/s, and the CPU
capability (latency depends on it). Errors are counted, never hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés from start to finish .",
             "an utterly charming and hilarious film that reminded me why i love movies .",
             "it 's a lousy one at that .", "the acting , costumes , music , cinematography and sound are all astounding ."]


def dev_sentences(n: int = 200) -> list[str]:
    f = ROOT / "data" / "glue" / "SST-2" / "dev.tsv"
    if f.is_file():
        rows = [line.split("\t")[0] for line in f.read_text(encoding="utf-8").splitlines()[1:]]
        return rows[:n] or SENTENCES
    return SENTENCES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:5001")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    try:
        urllib.request.urlopen(f"{a.url}/ping", timeout=5).read()
    except OSError as exc:
        print(f"error: no model server answers at {a.url}/ping ({exc}); start one with `make serve MODEL=sst2-tinybert`",
              file=sys.stderr)
        return 2
    texts = dev_sentences()
    lock, sent, lat, errors = threading.Lock(), [0], [], []

    def client() -> None:
        while True:
            with lock:
                if sent[0] >= a.requests:
                    return
                i = sent[0]
                sent[0] += 1
            batch = [texts[(i * a.batch + j) % len(texts)] for j in range(a.batch)]
            req = urllib.request.Request(f"{a.url}/invocations", data=json.dumps({"inputs": batch}).encode(),
                                         headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            try:
                body = json.loads(urllib.request.urlopen(req, timeout=a.timeout).read())
                ok = len(body.get("predictions", [])) == len(batch)
            except (OSError, ValueError) as exc:
                ok, body = False, str(exc)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                (lat.append(dt) if ok else errors.append(str(body)[:200]))

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        cap = "?"
    t = np.array(lat) if lat else np.array([float("nan")])
    print(f"loadtest {a.url}: {len(lat)} ok, {len(errors)} errors, {a.clients} clients, batch {a.batch}, "
          f"{wall:.1f} s, CPU capability {cap}")
    print(f"latency ms: p50 {np.percentile(t, 50):.2f}  p95 {np.percentile(t, 95):.2f}  p99 {np.percentile(t, 99):.2f}")
    print(f"throughput: {len(lat) / wall:.1f} requests/s, {len(lat) * a.batch / wall:.1f} sentences/s")
    if errors:
        print(f"first error: {errors[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
