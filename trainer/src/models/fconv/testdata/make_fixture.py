"""Makes fairseq_parity_*.safetensors: tiny fairseq 0.12.2 ConvS2S (fconv) models, their inputs and outputs.

Run with a Python that has fairseq 0.12.2 and torch (no GPU needed):
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python make_fixture.py
Each file holds the model's state dict under fairseq's names (tied weights once, under their
first name; the decoder's `version` buffer included), the inputs `__src_tokens` (left-padded,
sorted by decreasing length as fairseq's batches are), `__src_lengths`, `__prev_output_tokens`
(right-padded), and the outputs: `__encoder_a` / `__encoder_b` (fairseq's two encoder outputs,
batch-first), `__logits` (eval-mode forward), `__grad.{name}` (the gradient of
`(logits * __grad_weights).sum()` with respect to every parameter, eval mode: weight
normalisation's and GradMultiply's backward) and `__step_lprobs` ([batch, len, vocab]:
fairseq's own incremental decoding through LinearizedConvolution, fed
`__prev_output_tokens[:, t]` at step t; before step `__reorder_step` the decoder state and
encoder output are reordered with `__reorder`, as beam search does, so from then on row i
continues the history of row `__reorder[i]`). The header metadata holds the `FConvConfig` JSON
the Rust model is built from.
"""
import argparse
import os
import sys
import json
import warnings

import torch
from fairseq.models import fconv

warnings.filterwarnings("ignore", category=FutureWarning)  # torch's weight_norm deprecation

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fairseq_fixture import (  # noqa: E402
    Task, dictionary, incremental_lprobs, unique_state_dict, write_safetensors)


def make(name, overrides, src_vocab, tgt_vocab, seed, src_lens, tgt_lens, reorder, reorder_step):
    torch.manual_seed(seed)
    args = argparse.Namespace(max_source_positions=64, max_target_positions=64, **overrides)
    fconv.base_architecture(args)
    src, tgt = dictionary(src_vocab), dictionary(tgt_vocab)
    model = fconv.FConvModel.build_model(args, Task(src, tgt))
    # Move every parameter away from its initial value (embedding padding rows included:
    # fairseq never trains them, but the maths must not depend on them being zero).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    pad, eos = src.pad(), src.eos()
    g = torch.Generator().manual_seed(seed)
    bsz = len(src_lens)
    assert list(src_lens) == sorted(src_lens, reverse=True), "fairseq packs sorted batches"
    s_len, t_len = max(src_lens), max(tgt_lens)
    src_tokens = torch.full((bsz, s_len), pad, dtype=torch.long)
    prev = torch.full((bsz, t_len), pad, dtype=torch.long)
    for i, (sl, tl_) in enumerate(zip(src_lens, tgt_lens)):
        src_tokens[i, s_len - sl:-1] = torch.randint(4, len(src), (sl - 1,), generator=g)
        src_tokens[i, -1] = eos
        prev[i, 0] = eos
        prev[i, 1:tl_] = torch.randint(4, len(tgt), (tl_ - 1,), generator=g)
    src_lengths = torch.tensor(src_lens, dtype=torch.long)

    logits, _ = model(src_tokens, src_lengths, prev)
    grad_weights = torch.randn(logits.shape, generator=g)
    model.zero_grad()
    (logits * grad_weights).sum().backward()
    grads = {}
    for k, p in model.named_parameters():
        grads[f"__grad.{k}"] = p.grad.detach().clone()
    logits = logits.detach()

    with torch.no_grad():
        enc = model.encoder(src_tokens, src_lengths)
        encoder_a, encoder_b = enc["encoder_out"]
        # fairseq's incremental decoding, with one beam-search reordering in the middle.
        order = torch.tensor(reorder, dtype=torch.long)
        step_lprobs = incremental_lprobs(model, enc, prev, order, reorder_step)
    tensors = unique_state_dict(model)
    tensors["__src_tokens"] = src_tokens
    tensors["__src_lengths"] = src_lengths
    tensors["__prev_output_tokens"] = prev
    tensors["__encoder_a"] = encoder_a
    tensors["__encoder_b"] = encoder_b
    tensors["__logits"] = logits
    tensors["__grad_weights"] = grad_weights
    tensors.update(grads)
    tensors["__reorder"] = order
    tensors["__reorder_step"] = torch.tensor([reorder_step], dtype=torch.long)
    tensors["__step_lprobs"] = step_lprobs
    a = args
    config = {
        "dropout": a.dropout,
        "encoder_embed_dim": a.encoder_embed_dim, "encoder_layers": a.encoder_layers,
        "decoder_embed_dim": a.decoder_embed_dim, "decoder_layers": a.decoder_layers,
        "decoder_out_embed_dim": a.decoder_out_embed_dim, "decoder_attention": a.decoder_attention,
        "share_input_output_embed": a.share_input_output_embed,
        "max_source_positions": a.max_source_positions, "max_target_positions": a.max_target_positions,
        "src_vocab_size": len(src), "tgt_vocab_size": len(tgt), "pad_index": pad,
    }
    keys = [k for k in model.state_dict()]
    write_safetensors(f"fairseq_parity_{name}.safetensors", tensors,
                      {"config": json.dumps(config), "state_dict_keys": json.dumps(keys),
                       "fairseq": "0.12.2", "torch": torch.__version__})
    print(name, len(tensors), "tensors", tuple(logits.shape), keys)


# (a) Every kind of layer: an even encoder kernel (asymmetric padding), residual projections
# (12 → 16), a layer without residual (0), a residual two layers back, a 1×1 decoder layer (no
# window), attention in some layers only, fc2 narrower than the convolutions.
make("mixed",
     dict(dropout=0.2, encoder_embed_dim=10, encoder_layers="[(12, 3)] * 2 + [(16, 2)] + [(16, 1, 0)]",
          decoder_embed_dim=10, decoder_layers="[(12, 3), (12, 2)] + [(16, 3, 2)] + [(16, 1)]",
          decoder_out_embed_dim=8, decoder_attention="[True, False, True, True]"),
     20, 24, 1, src_lens=[7, 5, 3], tgt_lens=[6, 9, 2], reorder=[2, 0, 0], reorder_step=4)
# (b) The decoder's input and output embeddings shared (fc3 keeps its own bias), wide kernels,
# attention everywhere.
make("shared",
     dict(dropout=0.1, encoder_embed_dim=12, encoder_layers="[(14, 5)]",
          decoder_embed_dim=12, decoder_layers="[(12, 4)] * 2", decoder_out_embed_dim=12,
          decoder_attention="True", share_input_output_embed=True),
     20, 28, 2, src_lens=[6, 4, 2], tgt_lens=[5, 7, 3], reorder=[1, 2, 0], reorder_step=3)
# (c) fconv_iwslt_de_en's layout at width 16 on a batch without source padding (fairseq then
# drops the mask and scales attention by the full length).
make("iwslt_unpadded",
     dict(dropout=0.2, encoder_embed_dim=16, encoder_layers="[(16, 3)] * 4",
          decoder_embed_dim=16, decoder_layers="[(16, 3)] * 3", decoder_out_embed_dim=16),
     24, 24, 3, src_lens=[6, 6, 6, 6], tgt_lens=[4, 8, 5, 6], reorder=[3, 3, 1, 0], reorder_step=2)
