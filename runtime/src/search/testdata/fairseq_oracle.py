"""Runs fairseq 0.12.2's SequenceGenerator on pseudo-random scripted models and writes what it
generates to fairseq_oracle.json, which `search::tests::oracle` compares our search against.

The scripted model is the Python twin of `tests/scripted.rs::random_script` (same hash, same
xorshift, same float operations): the next-token distribution is a function of (source sentence,
prefix generated so far). `<s>` gets no probability, since fairseq (unlike us) does not forbid it.

Each sentence is generated in a batch of its own, so fairseq's batch-dependent rules (maximum
length from the padded batch width, prefix padding) do not apply; our generator must give the
same result whatever the batch.

fairseq 0.12.2's CPU no-repeat-ngram fallback compares against the padded end of its token
buffer (fairseq issue #4709) and blocks nothing; the generator is given the first `step + 1`
columns instead, which is what its CUDA kernel sees.

Usage (needs torch and fairseq==0.12.2): python fairseq_oracle.py > fairseq_oracle.json
"""

import json
import sys

import numpy as np
import torch

from fairseq import search
from fairseq.data.dictionary import Dictionary
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
)
from fairseq.models.fairseq_encoder import EncoderOut
from fairseq.ngram_repeat_block import NGramRepeatBlock
from fairseq.sequence_generator import SequenceGenerator

MASK = (1 << 64) - 1
VOCAB = 16
BOS, PAD, EOS, UNK = 0, 1, 2, 3


def script(vocab, seed, source, prefix):
    h = 0xCBF29CE484222325 ^ ((seed * 0x9E3779B97F4A7C15) & MASK)
    for t in list(source) + [0xFFFFFFFF] + list(prefix):
        h ^= t
        h = (h * 0x100000001B3) & MASK
    weights = []
    for _ in range(vocab):
        h ^= (h << 13) & MASK
        h ^= h >> 7
        h ^= (h << 17) & MASK
        x = float(h >> 11) / float(1 << 53)
        weights.append(x * x * x)
    weights[EOS] *= (float(len(prefix)) + 1.0) ** 2 * 0.02
    weights[BOS] = 0.0
    total = 0.0
    for w in weights:
        total += w
    return [np.float32(w / total) for w in weights]


class Encoder(FairseqEncoder):
    def forward(self, src_tokens, src_lengths=None, **kwargs):
        return EncoderOut(src_tokens, None, None, None, None, None)

    def reorder_encoder_out(self, encoder_out, new_order):
        return EncoderOut(
            encoder_out.encoder_out.index_select(0, new_order), None, None, None, None, None
        )


class Decoder(FairseqIncrementalDecoder):
    def __init__(self, dictionary, seed, max_positions):
        super().__init__(dictionary)
        self.seed = seed
        self.positions = max_positions

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None):
        # the generator passes the whole prefix; the state is not needed
        rows = []
        for source, prev in zip(encoder_out.encoder_out.tolist(), prev_output_tokens.tolist()):
            source = [t for t in source if t != PAD]
            rows.append(script(len(self.dictionary), self.seed, source, prev[1:]))
        probs = torch.tensor(np.array(rows, dtype=np.float32)).unsqueeze(1)
        return probs, {"attn": [None]}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return net_output[0].log() if log_probs else net_output[0]

    def max_positions(self):
        return self.positions


class Model(FairseqEncoderDecoderModel):
    pass


class PatchedBlock(NGramRepeatBlock):
    def forward(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        return self._no_repeat_ngram(tokens[:, : step + 1], lprobs, bsz, beam_size, step)


def dictionary():
    d = Dictionary()
    for i in range(VOCAB - 4):
        d.add_symbol("w%d" % i)
    d.finalize(padding_factor=1)
    assert len(d) == VOCAB and d.eos() == EOS and d.pad() == PAD and d.unk() == UNK
    return d


SOURCES = [
    [4, 5, 6, EOS],
    [7, EOS],
    [8, 9, 10, 11, 12, 13, EOS],
    [5, 5, EOS],
    [14, 15, 4, 6, 8, EOS],
]

PREFIXES = [[6, 7], [9], [10, 11, 12], [], [4]]

# name, our GenerationOptions (JSON), SequenceGenerator kwargs, strategy factory, max positions,
# uses prefixes
CASES = [
    ("beam 4", {"beam": 4, "nbest": 4}, {}, None, 100, False),
    (
        "beam 5, lenpen 0.6, min_len 3, unkpen 0.5",
        {"beam": 5, "nbest": 5, "lenpen": 0.6, "min_len": 3, "unkpen": 0.5},
        {"len_penalty": 0.6, "min_len": 3, "unk_penalty": 0.5},
        None,
        100,
        False,
    ),
    (
        "beam 3, unnormalized, max_len_b 4",
        {"beam": 3, "nbest": 3, "normalize_scores": False, "max_len_b": 4},
        {"normalize_scores": False, "max_len_b": 4},
        None,
        100,
        False,
    ),
    (
        "beam 4, lenpen 1.5, max_len 1.0 x + 2",
        {"beam": 4, "nbest": 4, "lenpen": 1.5, "max_len_a": 1.0, "max_len_b": 2},
        {"len_penalty": 1.5, "max_len_a": 1.0, "max_len_b": 2},
        None,
        100,
        False,
    ),
    (
        "beam 4, no repeat bigrams",
        {"beam": 4, "nbest": 4, "no_repeat_ngram_size": 2},
        {"no_repeat_ngram_size": 2},
        None,
        100,
        False,
    ),
    (
        "beam 3, no repeat trigrams, min_len 6",
        {"beam": 3, "nbest": 3, "no_repeat_ngram_size": 3, "min_len": 6},
        {"no_repeat_ngram_size": 3, "min_len": 6},
        None,
        100,
        False,
    ),
    ("beam 1", {"beam": 1, "nbest": 1}, {}, None, 100, False),
    ("beam 8", {"beam": 8, "nbest": 8}, {}, None, 100, False),
    (
        "beam 4, max target positions 5",
        {"beam": 4, "nbest": 4},
        {},
        None,
        5,
        False,
    ),
    (
        "beam 3, match source len",
        {"beam": 3, "nbest": 3, "match_source_len": True},
        {"match_source_len": True},
        None,
        100,
        False,
    ),
    ("beam 3, prefixes", {"beam": 3, "nbest": 3}, {}, None, 100, True),
    (
        "diverse beam 2 groups, strength 0.5",
        {"beam": 4, "nbest": 4, "strategy": {"kind": "diverse_beam", "groups": 2, "strength": 0.5}},
        {},
        lambda d: search.DiverseBeamSearch(d, 2, 0.5),
        100,
        False,
    ),
    (
        "diverse beam 3 groups, strength 1.5, lenpen 0.8",
        {
            "beam": 6,
            "nbest": 6,
            "lenpen": 0.8,
            "strategy": {"kind": "diverse_beam", "groups": 3, "strength": 1.5},
        },
        {"len_penalty": 0.8},
        lambda d: search.DiverseBeamSearch(d, 3, 1.5),
        100,
        False,
    ),
    (
        "diverse siblings rate 0.5",
        {"beam": 4, "nbest": 4, "strategy": {"kind": "diverse_siblings", "rate": 0.5}},
        {},
        lambda d: search.DiverseSiblingsSearch(d, 0.5),
        100,
        False,
    ),
    (
        "diverse siblings rate 2, min_len 2",
        {
            "beam": 3,
            "nbest": 3,
            "min_len": 2,
            "strategy": {"kind": "diverse_siblings", "rate": 2.0},
        },
        {"min_len": 2},
        lambda d: search.DiverseSiblingsSearch(d, 2.0),
        100,
        False,
    ),
]


def f32(x):
    """9 significant digits: enough to give back the exact float32."""
    return float("%.9g" % x)


def run_case(d, seed, options, kwargs, strategy, max_positions, use_prefixes):
    model = Model(Encoder(d), Decoder(d, seed, max_positions))
    gen = SequenceGenerator(
        [model],
        d,
        beam_size=options["beam"],
        search_strategy=strategy(d) if strategy else None,
        **kwargs,
    )
    if gen.repeat_ngram_blocker is not None:
        gen.repeat_ngram_blocker = PatchedBlock(options["no_repeat_ngram_size"], False)
    out = []
    for source, prefix in zip(SOURCES, PREFIXES):
        sample = {
            "net_input": {
                "src_tokens": torch.LongTensor([source]),
                "src_lengths": torch.LongTensor([len(source)]),
            }
        }
        prefix_tokens = torch.LongTensor([prefix]) if use_prefixes and prefix else None
        hypos = gen.forward(sample, prefix_tokens=prefix_tokens)[0]
        out.append(
            [
                {
                    "tokens": h["tokens"].tolist(),
                    "score": f32(float(h["score"])),
                    "positional_scores": [f32(x) for x in h["positional_scores"].tolist()],
                }
                for h in hypos
            ]
        )
    return out


def main():
    d = dictionary()
    cases = []
    for seed in (1, 2):
        for name, options, kwargs, strategy, max_positions, use_prefixes in CASES:
            cases.append(
                {
                    "name": name,
                    "seed": seed,
                    "max_positions": max_positions,
                    "options": options,
                    "sources": SOURCES,
                    "prefixes": PREFIXES if use_prefixes else None,
                    "expected": run_case(
                        d, seed, options, kwargs, strategy, max_positions, use_prefixes
                    ),
                }
            )
    # one case per line
    out = sys.stdout
    out.write('{"fairseq": "0.12.2", "torch": %s, "cases": [\n' % json.dumps(torch.__version__))
    out.write(",\n".join(json.dumps(case, separators=(",", ":")) for case in cases))
    out.write("\n]}\n")


if __name__ == "__main__":
    main()
