"""Makes fairseq_parity_*.safetensors: tiny fairseq 0.12.2 Transformers, their inputs and outputs.

Run with a Python that has fairseq 0.12.2 and torch (no GPU needed):
    python make_fixture.py
Each file holds the model's state dict under fairseq's names (tied weights once, under their
first name), the inputs `__src_tokens` (left-padded), `__src_lengths`, `__prev_output_tokens`
(right-padded), the outputs `__logits` (eval-mode forward) and `__step_lprobs` (fairseq's own
incremental decoding of the same prefixes, [batch, len, vocab]), and in the header metadata
the `TransformerConfig` JSON the Rust model is built from.
"""
import argparse
import os
import sys
import json

import torch
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import transformer_legacy as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fairseq_fixture import Task, dictionary, write_safetensors  # noqa: E402


def make(name, overrides, src_vocab, tgt_vocab, seed):
    torch.manual_seed(seed)
    args = argparse.Namespace(**overrides)
    tl.tiny_architecture(args)
    src = dictionary(src_vocab)
    tgt = src if args.share_all_embeddings else dictionary(tgt_vocab)
    model = TransformerModel.build_model(args, Task(src, tgt))
    # Move every parameter away from its (symmetric) initial value.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    pad, eos = src.pad(), src.eos()
    g = torch.Generator().manual_seed(seed)
    src_lens, tgt_lens = [7, 3, 5], [6, 9, 2]
    s_len, t_len = max(src_lens), max(tgt_lens)
    src_tokens = torch.full((3, s_len), pad, dtype=torch.long)
    prev = torch.full((3, t_len), pad, dtype=torch.long)
    for i, (sl, tl_) in enumerate(zip(src_lens, tgt_lens)):
        src_tokens[i, s_len - sl:-1] = torch.randint(4, src_vocab, (sl - 1,), generator=g)
        src_tokens[i, -1] = eos
        prev[i, 0] = eos
        prev[i, 1:tl_] = torch.randint(4, len(tgt), (tl_ - 1,), generator=g)
    src_lengths = torch.tensor(src_lens, dtype=torch.long)
    with torch.no_grad():
        logits, _ = model(src_tokens, src_lengths, prev)
        # fairseq's incremental decoding of the same prefixes (positions past a row's length
        # decode pad tokens and are not compared).
        enc = model.encoder(src_tokens, src_lengths)
        state = {}
        steps = []
        for t in range(t_len):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(model.get_normalized_probs((out, None), log_probs=True)[:, -1])
        step_lprobs = torch.stack(steps, dim=1)
    tensors, seen = {}, {}
    for k, v in model.state_dict().items():
        if k.endswith(".version") or k.endswith("._float_tensor"):
            continue
        if ".layers." in k and k.split(".")[3] in {
            "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
            "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
        }:
            continue
        if v.data_ptr() in seen:
            continue
        seen[v.data_ptr()] = k
        tensors[k] = v
    tensors["__src_tokens"] = src_tokens
    tensors["__src_lengths"] = src_lengths
    tensors["__prev_output_tokens"] = prev
    tensors["__logits"] = logits
    tensors["__step_lprobs"] = step_lprobs
    a = args
    config = {
        "encoder_embed_dim": a.encoder_embed_dim, "encoder_ffn_embed_dim": a.encoder_ffn_embed_dim,
        "encoder_layers": a.encoder_layers, "encoder_attention_heads": a.encoder_attention_heads,
        "encoder_normalize_before": a.encoder_normalize_before, "encoder_learned_pos": a.encoder_learned_pos,
        "decoder_embed_dim": a.decoder_embed_dim, "decoder_ffn_embed_dim": a.decoder_ffn_embed_dim,
        "decoder_layers": a.decoder_layers, "decoder_attention_heads": a.decoder_attention_heads,
        "decoder_normalize_before": a.decoder_normalize_before, "decoder_learned_pos": a.decoder_learned_pos,
        "share_decoder_input_output_embed": a.share_decoder_input_output_embed,
        "share_all_embeddings": a.share_all_embeddings,
        "dropout": a.dropout, "attention_dropout": a.attention_dropout,
        "activation_dropout": a.activation_dropout, "activation_fn": a.activation_fn,
        "max_source_positions": a.max_source_positions, "max_target_positions": a.max_target_positions,
        "no_scale_embedding": a.no_scale_embedding, "layernorm_embedding": a.layernorm_embedding,
        "src_vocab_size": len(src), "tgt_vocab_size": len(tgt), "pad_index": pad,
    }
    write_safetensors(f"fairseq_parity_{name}.safetensors", tensors,
                      {"config": json.dumps(config), "fairseq": "0.12.2", "torch": torch.__version__})
    print(name, len(tensors), "tensors", logits.shape)


common = dict(encoder_embed_dim=16, encoder_ffn_embed_dim=24, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_layers=2, decoder_layers=2,
              max_source_positions=64, max_target_positions=64)
make("postnorm", dict(common), 20, 24, 1)
make("prenorm_shared", dict(common, encoder_normalize_before=True, decoder_normalize_before=True,
                            encoder_learned_pos=True, decoder_learned_pos=True,
                            layernorm_embedding=True, share_all_embeddings=True,
                            activation_fn="gelu"), 24, 24, 2)
make("mixed", dict(common, decoder_normalize_before=True, decoder_learned_pos=True,
                   share_decoder_input_output_embed=True, no_scale_embedding=True,
                   activation_fn="gelu_accurate", decoder_embed_dim=8, decoder_ffn_embed_dim=12,
                   decoder_attention_heads=2), 20, 28, 3)
