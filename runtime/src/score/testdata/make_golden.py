#!/usr/bin/env python3
"""Writes the golden files of seqforge's scorer with the real sacreBLEU 2.6.0.

Run through make_golden.sh, which prepares the venv and sacreBLEU's source distribution.
Usage: make_golden.py SACREBLEU_SDIST_DIR SACREBLEU_CLI

- wmt17.*.de: the first 500 lines of the WMT17 en-de reference and of three systems, taken from
  sacreBLEU's own test/wmt17_en_de_systems.pkl.bz2; wmt17.ref2.de (system online-B) serves as a
  second reference stream.
- cli_golden.txt: for every case x option combination (corpus and --sentence-level), `=== ` + the seqforge score arguments,
  then the exact stdout of the sacreBLEU CLI run with the same options.
- api_golden.jsonl: sentence- and corpus-level scores from the Python API (str(score),
  signature, score).
"""
import bz2
import itertools
import json
import os
import pickle
import subprocess
import sys

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__
HERE = os.path.dirname(os.path.abspath(__file__))
SDIST, CLI = sys.argv[1], sys.argv[2]
N = 500


def write(name, lines):
    for line in lines:
        assert "\n" not in line and "\r" not in line, (name, line)
    with open(os.path.join(HERE, name), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f]


with bz2.BZ2File(os.path.join(SDIST, "test", "wmt17_en_de_systems.pkl.bz2"), "rb") as f:
    systems = dict(pickle.load(f))
write("wmt17.ref.de", systems["reference"][0][:N])
write("wmt17.ref2.de", systems["newstest2017.online-B.0.en-de"][:N])
for name in ["LIUM-NMT.4900", "online-A.0", "uedin-nmt.4722"]:
    write(f"wmt17.{name.split('.')[0]}.de", systems[f"newstest2017.{name}.en-de"][:N])

CASES = [
    ("wmt17.LIUM-NMT.de", ["wmt17.ref.de"]),
    ("wmt17.online-A.de", ["wmt17.ref.de"]),
    ("wmt17.uedin-nmt.de", ["wmt17.ref.de"]),
    ("wmt17.LIUM-NMT.de", ["wmt17.ref.de", "wmt17.ref2.de"]),
    ("edge.hyp", ["edge.ref"]),
    ("edge.hyp", ["edge.ref", "edge.ref2"]),
    ("zh.hyp", ["zh.ref"]),
    ("zero.hyp", ["zero.ref"]),
    ("single.hyp", ["single.ref"]),
]
TOKENIZERS = ["13a", "intl", "none", "zh", "char"]
SMOOTHING = [("exp", None), ("floor", None), ("floor", "0.05"), ("add-k", None), ("add-k", "0.5"), ("none", None)]


def run(hyp, refs, opts):
    """opts: seqforge score options (list). Returns (header, sacrebleu stdout)."""
    ours = ["-i", hyp] + [x for r in refs for x in ("--ref", r)] + opts
    theirs = [CLI] + refs + ["-i", hyp]
    o = list(opts)
    fmt = "text"
    while o:
        k = o.pop(0)
        if k == "--metrics":
            ms = o.pop(0).split(",")
            theirs += ["-m"] + ["chrf" if m.startswith("chrf") else m for m in ms]
            if "chrf++" in ms:
                theirs += ["--chrf-word-order", "2"]
        elif k == "--tokenize":
            theirs += ["--tokenize", o.pop(0)]
        elif k == "--lowercase":
            theirs += ["-lc"]
        elif k == "--smooth-method":
            theirs += ["-s", o.pop(0)]
        elif k == "--smooth-value":
            theirs += ["-sv", o.pop(0)]
        elif k in ("--chrf-lowercase", "--chrf-whitespace", "--chrf-eps-smoothing"):
            theirs += [k]
        elif k == "--json":
            fmt = "json"
        elif k == "--width":
            theirs += ["-w", o.pop(0)]
        elif k == "--score-only":
            theirs += ["-b"]
        elif k == "--sentence-level":
            theirs += ["-sl"]
        else:
            raise ValueError(k)
    theirs += ["-f", fmt]
    env = dict(os.environ, NO_COLOR="1")
    out = subprocess.run(theirs, cwd=HERE, env=env, check=True, capture_output=True).stdout.decode("utf-8")
    return "=== " + " ".join(ours), out


records = []
for hyp, refs in CASES:
    for tok, lc, (sm, sv) in itertools.product(TOKENIZERS, [False, True], SMOOTHING):
        opts = ["--metrics", "bleu", "--tokenize", tok] + (["--lowercase"] if lc else [])
        opts += ["--smooth-method", sm] + (["--smooth-value", sv] if sv else [])
        records.append(run(hyp, refs, opts))
        if sm == "exp":
            records.append(run(hyp, refs, opts + ["--json"]))
    for metric, lc, ws, eps in itertools.product(["chrf", "chrf++"], [False, True], [False, True], [False, True]):
        opts = ["--metrics", metric]
        opts += (["--chrf-lowercase"] if lc else []) + (["--chrf-whitespace"] if ws else [])
        opts += ["--chrf-eps-smoothing"] if eps else []
        records.append(run(hyp, refs, opts))
        if not (lc or ws or eps):
            records.append(run(hyp, refs, opts + ["--json"]))
    for metrics in ["bleu,chrf", "bleu,chrf++"]:
        for extra in [[], ["--json"], ["--width", "3"], ["--width", "0"], ["--score-only"], ["--json", "--score-only"]]:
            records.append(run(hyp, refs, ["--metrics", metrics] + extra))
    for extra in [["--width", "2"], ["--width", "4", "--json"], ["--score-only"], ["--score-only", "--json"]]:
        records.append(run(hyp, refs, ["--metrics", "bleu"] + extra))
    sentence_opts = [["--metrics", "bleu"], ["--metrics", "bleu", "--tokenize", "intl", "--smooth-method", "floor"],
                     ["--metrics", "bleu", "--lowercase", "--smooth-method", "add-k", "--width", "3"],
                     ["--metrics", "chrf"], ["--metrics", "chrf++", "--score-only"]]
    if hyp.startswith("wmt17."):
        # 500 lines a record: keep the file small with two records on the two-reference case.
        sentence_opts = [sentence_opts[0], sentence_opts[4]] if len(refs) == 2 else []
    for opts in sentence_opts:
        records.append(run(hyp, refs, opts + ["--sentence-level"]))

with open(os.path.join(HERE, "cli_golden.txt"), "w", encoding="utf-8", newline="\n") as f:
    for header, out in records:
        assert not any(line.startswith("=== ") for line in out.split("\n")), out
        f.write(header + "\n" + out)


def bleu_record(kind, cfg, hyp, refs, case=None):
    metric = BLEU(**cfg)
    if kind == "sentence":
        score = metric.sentence_score(hyp, refs)
    else:
        score = metric.corpus_score(hyp, refs)
    rec = {"metric": "bleu", "kind": kind, "config": cfg, "str": str(score),
           "signature": str(metric.get_signature()), "score": repr(score.score)}
    if case:
        rec["case"] = case
    else:
        rec.update(hyp=hyp, refs=refs)
    return rec


def chrf_record(kind, cfg, hyp, refs, case=None):
    metric = CHRF(**cfg)
    score = metric.sentence_score(hyp, refs) if kind == "sentence" else metric.corpus_score(hyp, refs)
    rec = {"metric": "chrf", "kind": kind, "config": cfg, "str": str(score),
           "signature": str(metric.get_signature()), "score": repr(score.score)}
    if case:
        rec["case"] = case
    else:
        rec.update(hyp=hyp, refs=refs)
    return rec


api = []
lium, ref, ref2 = read("wmt17.LIUM-NMT.de"), read("wmt17.ref.de"), read("wmt17.ref2.de")
edge_h, edge_r, edge_r2 = read("edge.hyp"), read("edge.ref"), read("edge.ref2")
sentences = [(lium[i], [ref[i]] + ([ref2[i]] if i % 3 == 0 else [])) for i in range(12)]
sentences += [(edge_h[i], [edge_r[i]] + ([edge_r2[i]] if i % 2 else [])) for i in range(0, 23, 3)]
for hyp, refs in sentences:
    # sentence_bleu's defaults: effective order on.
    for cfg in [dict(effective_order=True), dict(effective_order=True, smooth_method="floor"),
                dict(effective_order=True, smooth_method="add-k", smooth_value=2.0),
                dict(effective_order=True, smooth_method="none"), dict(effective_order=False),
                dict(effective_order=True, tokenize="intl", lowercase=True),
                dict(effective_order=True, tokenize="char")]:
        api.append(bleu_record("sentence", cfg, hyp, refs))
    for cfg in [dict(), dict(word_order=2), dict(word_order=2, eps_smoothing=True, lowercase=True)]:
        api.append(chrf_record("sentence", cfg, hyp, refs))
for hyp_file, ref_files in CASES:
    hyps, refs = read(hyp_file), [read(r) for r in ref_files]
    case = [hyp_file] + ref_files
    for cfg in [dict(), dict(effective_order=True), dict(tokenize="intl", smooth_method="floor", smooth_value=0.2)]:
        api.append(bleu_record("corpus", cfg, hyps, refs, case))
    for cfg in [dict(), dict(word_order=2, whitespace=True)]:
        api.append(chrf_record("corpus", cfg, hyps, refs, case))
with open(os.path.join(HERE, "api_golden.jsonl"), "w", encoding="utf-8", newline="\n") as f:
    for rec in api:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
print(f"{len(records)} CLI records, {len(api)} API records")
