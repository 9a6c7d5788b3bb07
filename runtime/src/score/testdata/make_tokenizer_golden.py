#!/usr/bin/env python3
"""Writes tokenizer_golden.jsonl: random Unicode strings with what sacreBLEU 2.6.0's tokenizers
(13a, intl, zh, char), Python's str.lower() and str.split() make of them. Seeded: reruns give
the same file for the same Python, regex and sacreBLEU versions. Run through make_golden.sh."""
import json
import os
import random
import sys
import unicodedata

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_char import TokenizerChar
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20251125)
assigned = [cp for cp in range(0x30000) if not 0xD800 <= cp < 0xE000
            and unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
by_cat = {}
for cp in assigned:
    by_cat.setdefault(unicodedata.category(chr(cp)), []).append(cp)
# Characters whose handling differs between tokenizers or Unicode versions.
special = [chr(c) for c in [0x3A3, 0x130, 0x2D, 0x2E, 0x2C, 0x26, 0x3C, 0x3E, 0x22, 0x27, 0x2014,
                            0x2019, 0x201C, 0x3002, 0xFF0C, 0x3000, 0xA0, 0x85, 0x1C, 0x1F, 0x2028,
                            0x200B, 0xFEFF, 0x345, 0x307, 0x1E9E, 0xDF, 0x2001, 0x2A6D, 0x2A6E,
                            0x2F81, 0x2FA1, 0x20000, 0x4E00, 0x9FBB, 0x9FBC, 0x1F600, 0x1F469]]
special += ["&amp;", "&quot;", "&lt;", "&gt;", "<skipped>", "-\n", "\n", " ", "  ", "1,000", "3.5", "9-"]
pools = ["ascii"] * 5 + ["special"] * 3 + ["cat"] * 3 + ["any"]
cats = sorted(by_cat)


def piece():
    kind = rng.choice(pools)
    if kind == "ascii":
        return chr(rng.randrange(0x20, 0x7F))
    if kind == "special":
        return rng.choice(special)
    if kind == "cat":
        return chr(rng.choice(by_cat[rng.choice(cats)]))
    return chr(rng.choice(assigned))


t13a, tintl, tzh, tchar = Tokenizer13a(), TokenizerV14International(), TokenizerZh(), TokenizerChar()
with open(os.path.join(HERE, "tokenizer_golden.jsonl"), "w", encoding="utf-8", newline="\n") as f:
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 500):
        s = "".join(piece() for _ in range(rng.randrange(1, 25)))
        rec = {"s": s, "13a": t13a(s), "intl": tintl(s), "zh": tzh(s), "char": tchar(s),
               "lower": s.lower(), "split": s.split(), "rstrip": s.rstrip()}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
