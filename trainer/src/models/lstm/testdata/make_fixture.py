"""Makes fairseq_parity_*.safetensors: tiny fairseq 0.12.2 LSTM models, their inputs and outputs.

Run with a Python that has fairseq 0.12.2 and torch (no GPU needed):
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python make_fixture.py
Each file holds the model's state dict under fairseq's names (tied weights once, under their
first name), the inputs `__src_tokens` (left-padded, sorted by decreasing length as fairseq's
batches are), `__src_lengths`, `__prev_output_tokens` (right-padded), and the outputs:
`__encoder_out` (the encoder's right-padded outputs, batch-first), `__logits` (eval-mode
forward) and `__step_lprobs` ([batch, len, vocab]: fairseq's own incremental decoding, fed
`__prev_output_tokens[:, t]` at step t; before step `__reorder_step` the decoder state and
encoder output are reordered with `__reorder`, as beam search does, so from then on row i
continues the history of row `__reorder[i]`). The header metadata holds the `LstmConfig` JSON the Rust model is built from.
"""
import argparse
import os
import sys
import json

import torch
from fairseq.models import lstm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fairseq_fixture import (  # noqa: E402
    Task, dictionary, incremental_lprobs, unique_state_dict, write_safetensors)


def make(name, overrides, src_vocab, tgt_vocab, seed, src_lens, tgt_lens, reorder, reorder_step):
    torch.manual_seed(seed)
    args = argparse.Namespace(criterion="cross_entropy", max_source_positions=64,
                              max_target_positions=64, **overrides)
    lstm.base_architecture(args)
    src = dictionary(src_vocab)
    tgt = src if args.share_all_embeddings else dictionary(tgt_vocab)
    model = lstm.LSTMModel.build_model(args, Task(src, tgt))
    # Move every parameter away from its initial value.
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
    with torch.no_grad():
        logits, _ = model(src_tokens, src_lengths, prev)
        enc = model.encoder(src_tokens, src_lengths)
        encoder_out = enc[0].transpose(0, 1)
        # fairseq's incremental decoding, with one beam-search reordering in the middle.
        order = torch.tensor(reorder, dtype=torch.long)
        step_lprobs = incremental_lprobs(model, enc, prev, order, reorder_step)
    tensors = unique_state_dict(model)
    tensors["__src_tokens"] = src_tokens
    tensors["__src_lengths"] = src_lengths
    tensors["__prev_output_tokens"] = prev
    tensors["__encoder_out"] = encoder_out
    tensors["__logits"] = logits
    tensors["__reorder"] = order
    tensors["__reorder_step"] = torch.tensor([reorder_step], dtype=torch.long)
    tensors["__step_lprobs"] = step_lprobs
    a = args
    config = {
        "dropout": a.dropout,
        "encoder_embed_dim": a.encoder_embed_dim, "encoder_hidden_size": a.encoder_hidden_size,
        "encoder_layers": a.encoder_layers, "encoder_bidirectional": a.encoder_bidirectional,
        "encoder_dropout_in": a.encoder_dropout_in, "encoder_dropout_out": a.encoder_dropout_out,
        "decoder_embed_dim": a.decoder_embed_dim, "decoder_hidden_size": a.decoder_hidden_size,
        "decoder_layers": a.decoder_layers, "decoder_out_embed_dim": a.decoder_out_embed_dim,
        "decoder_attention": a.decoder_attention == "1",
        "decoder_dropout_in": a.decoder_dropout_in, "decoder_dropout_out": a.decoder_dropout_out,
        "share_decoder_input_output_embed": a.share_decoder_input_output_embed,
        "share_all_embeddings": a.share_all_embeddings,
        "max_source_positions": a.max_source_positions, "max_target_positions": a.max_target_positions,
        "src_vocab_size": len(src), "tgt_vocab_size": len(tgt), "pad_index": pad,
    }
    keys = [k for k in model.state_dict()]
    write_safetensors(f"fairseq_parity_{name}.safetensors", tensors,
                      {"config": json.dumps(config), "state_dict_keys": json.dumps(keys),
                       "fairseq": "0.12.2", "torch": torch.__version__})
    print(name, len(tensors), "tensors", tuple(logits.shape), keys)


# (a) bidirectional 2-layer encoder (hidden 10 → 20 output units) into a 2-layer decoder of
# hidden 16 (encoder_{hidden,cell}_proj), attention, out_embed_dim 8 != 16 (additional_fc).
make("bidir_attn",
     dict(encoder_embed_dim=12, encoder_hidden_size=10, encoder_layers=2, encoder_bidirectional=True,
          decoder_embed_dim=14, decoder_hidden_size=16, decoder_layers=2, decoder_out_embed_dim=8,
          decoder_attention="1"),
     20, 24, 1, src_lens=[7, 5, 3], tgt_lens=[6, 9, 2], reorder=[2, 0, 0], reorder_step=4)
# (b) unidirectional, no attention, the decoder's input and output embeddings shared
# (out_embed_dim 12 = embed_dim, hidden 16: additional_fc), encoder width = decoder width.
make("uni_noattn_shared",
     dict(encoder_embed_dim=16, encoder_layers=1, decoder_embed_dim=12, decoder_hidden_size=16,
          decoder_layers=1, decoder_out_embed_dim=12, decoder_attention="0",
          share_decoder_input_output_embed=True),
     20, 28, 2, src_lens=[6, 6, 2], tgt_lens=[5, 7, 3], reorder=[1, 2, 0], reorder_step=3)
# (c) one embedding matrix for everything, 2 layers, attention, no projections; unequal
# left-padded sources.
make("shared_all",
     dict(encoder_embed_dim=16, encoder_layers=2, decoder_embed_dim=16, decoder_layers=2,
          decoder_out_embed_dim=16, decoder_attention="1", share_all_embeddings=True),
     24, 24, 3, src_lens=[9, 6, 4, 1], tgt_lens=[4, 8, 5, 6], reorder=[3, 3, 1, 0], reorder_step=2)
