"""Derive WordNet 3.0's index.sense from the data.* / index.* / cntlist.rev files (Debian's wordnet-base lacks it).

Line format (senseidx(5WN)): `lemma%ss_type:lex_filenum:lex_id:head_word:head_id synset_offset sense_number tag_cnt`,
sorted by sense key. NLTK's reader needs the file to exist; lemma_from_key() reads it.
Usage: python wordnet_index_sense.py <wordnet dir>  (writes <dir>/index.sense)
"""

import os
import re
import sys

root = sys.argv[1]
SS_NUM = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}

synsets = {}  # (file pos, offset) -> (ss_type, lex_filenum, [(word, lex_id)], head pointer offset)
for name, pos in FILES.items():
    with open(os.path.join(root, f"data.{name}"), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split(" | ")[0].split()
            offset, lex_filenum, ss_type, w_cnt = parts[0], int(parts[1]), parts[2], int(parts[3], 16)
            words = [(re.sub(r"\(.*\)$", "", parts[4 + 2 * i]).lower(), int(parts[5 + 2 * i], 16)) for i in range(w_cnt)]
            k = 4 + 2 * w_cnt
            head = None
            for j in range(int(parts[k])):
                sym, tgt = parts[k + 1 + 4 * j], parts[k + 2 + 4 * j]
                if ss_type == "s" and sym == "&":
                    head = tgt
                    break
            synsets[(pos, offset)] = (ss_type, lex_filenum, words, head)

sense_no = {}  # (lemma, file pos, offset) -> sense number
for name, pos in FILES.items():
    with open(os.path.join(root, f"index.{name}"), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            p = line.split()
            synset_cnt = int(p[2])
            for n, off in enumerate(p[-synset_cnt:], 1):
                sense_no[(p[0].lower(), pos, off)] = n

tag_cnt = {}
with open(os.path.join(root, "cntlist.rev"), encoding="latin-1") as f:
    for line in f:
        key, _, cnt = line.split()
        tag_cnt[key] = cnt

rows = []
for (pos, offset), (ss_type, lex_filenum, words, head) in synsets.items():
    head_word, head_id = "", ""
    if ss_type == "s" and head is not None:
        hw, hid = synsets[("a", head)][2][0]
        head_word, head_id = hw, f"{hid:02d}"
    for word, lex_id in words:
        key = f"{word}%{SS_NUM[ss_type]}:{lex_filenum:02d}:{lex_id:02d}:{head_word}:{head_id}"
        rows.append(f"{key} {offset} {sense_no.get((word, pos, offset), 1)} {tag_cnt.get(key, 0)}\n")
rows.sort()
with open(os.path.join(root, "index.sense"), "w", encoding="latin-1") as f:
    f.writelines(rows)
print(f"index.sense: {len(rows)} sense keys")
