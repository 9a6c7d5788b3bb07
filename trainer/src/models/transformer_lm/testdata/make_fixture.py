"""Makes fairseq_parity_*.safetensors: tiny fairseq 0.12.2 Transformer language models
(`transformer_lm`, with and without adaptive input / adaptive softmax), their inputs and outputs.

Run with a Python that has fairseq 0.12.2 and torch (no GPU needed):
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python make_fixture.py
Each file holds the model's state dict under fairseq's names (tied weights once, under their
first name; buffers included), and:
- `__prev_output_tokens` [batch, len]: the LM input, EOS first, right-padded (as fairseq's
  language_modeling task batches it), and `__target` (the next tokens, padded alike);
- `__features`: `model(prev)[0]` in eval mode (logits, or the decoder features when the model
  ends in an adaptive softmax) and `__lprobs`: `get_normalized_probs(…, log_probs=True)`, the
  full-vocabulary log-probabilities [batch, len, vocab];
- `__loss`: fairseq's criterion on that batch, eval mode, summed (`adaptive_loss` with an adaptive
  softmax, `cross_entropy` otherwise), `__ntokens`, and `__grad.{name}`: its gradient with
  respect to every parameter (under the parameter's first name);
- `__step_tokens` [batch, len] (no padding, EOS first) and `__step_lprobs` [batch, len, vocab]:
  fairseq's own incremental decoding, fed column t at step t; before step `__reorder_step` the
  state is reordered with `__reorder`, as beam search does.
The header metadata holds the `TransformerLmConfig` JSON the Rust model is built from and the
state-dict keys in fairseq's order.
"""
import argparse
import dataclasses
import json
import os
import sys

import torch
from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.models import transformer_lm
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fairseq_fixture import Task, dictionary, incremental_lprobs, unique_state_dict, write_safetensors  # noqa: E402

CONFIG_FIELDS = [
    "activation_fn", "dropout", "attention_dropout", "activation_dropout", "relu_dropout",
    "decoder_embed_dim", "decoder_output_dim", "decoder_input_dim", "decoder_ffn_embed_dim",
    "decoder_layers", "decoder_attention_heads", "decoder_normalize_before", "no_decoder_final_norm",
    "adaptive_softmax_cutoff", "adaptive_softmax_dropout", "adaptive_softmax_factor",
    "no_token_positional_embeddings", "share_decoder_input_output_embed", "character_embeddings",
    "adaptive_input", "adaptive_input_factor", "adaptive_input_cutoff", "tie_adaptive_weights",
    "tie_adaptive_proj", "decoder_learned_pos", "layernorm_embedding", "no_scale_embedding",
    "tokens_per_sample", "max_target_positions",
]


def lm_args(overrides, base_lm):
    """fairseq's args for `--arch transformer_lm` (dataclass defaults as they are) or, with
    `base_lm`, for an architecture that runs `base_lm_architecture`."""
    args = argparse.Namespace(**overrides)
    if base_lm:
        transformer_lm.base_lm_architecture(args)
    defaults = TransformerLanguageModelConfig()
    for f in dataclasses.fields(defaults):
        if not hasattr(args, f.name):
            setattr(args, f.name, getattr(defaults, f.name))
    args.add_bos_token, args.tpu = False, False
    args.tokens_per_sample, args.max_target_positions = 64, 64
    return args


def make(name, overrides, base_lm, vocab, seed, lens, reorder, reorder_step, step_len=8):
    torch.manual_seed(seed)
    args = lm_args(overrides, base_lm)
    d = dictionary(vocab)
    task = Task(d, d)
    model = TransformerLanguageModel.build_model(args, task)
    # Move every parameter away from its initial value (padding rows included).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    pad, eos = d.pad(), d.eos()
    g = torch.Generator().manual_seed(seed)
    bsz, t_len = len(lens), max(lens)
    prev = torch.full((bsz, t_len), pad, dtype=torch.long)
    target = torch.full((bsz, t_len), pad, dtype=torch.long)
    for i, n in enumerate(lens):
        words = torch.randint(4, vocab, (n - 1,), generator=g)
        prev[i, 0] = eos
        prev[i, 1:n] = words
        target[i, : n - 1] = words
        target[i, n - 1] = eos

    features, _ = model(prev)
    lprobs = model.get_normalized_probs((features, None), log_probs=True).detach()
    sample = {"net_input": {"src_tokens": prev, "src_lengths": torch.tensor(lens)}, "target": target,
              "ntokens": int(target.ne(pad).sum())}
    adaptive = args.adaptive_softmax_cutoff is not None
    criterion = AdaptiveLoss(task, False) if adaptive else CrossEntropyCriterion(task, False)
    model.zero_grad()
    loss, sample_size, logging = criterion(model, sample)
    loss.backward()
    grads = {f"__grad.{k}": p.grad.detach().clone() for k, p in model.named_parameters()}

    step_tokens = torch.randint(4, vocab, (bsz, step_len), generator=g)
    step_tokens[:, 0] = eos
    order = torch.tensor(reorder, dtype=torch.long)
    with torch.no_grad():
        step_lprobs = incremental_lprobs(model, None, step_tokens, order, reorder_step)

    tensors = unique_state_dict(model)
    tensors["__prev_output_tokens"] = prev
    tensors["__target"] = target
    tensors["__features"] = features.detach()
    tensors["__lprobs"] = lprobs
    tensors["__loss"] = loss.detach().reshape(1).float()
    tensors["__ntokens"] = torch.tensor([logging["ntokens"]], dtype=torch.long)
    tensors.update(grads)
    tensors["__step_tokens"] = step_tokens
    tensors["__step_lprobs"] = step_lprobs
    tensors["__reorder"] = order
    tensors["__reorder_step"] = torch.tensor([reorder_step], dtype=torch.long)
    config = {k: getattr(args, k) for k in CONFIG_FIELDS}
    for k in ["adaptive_softmax_cutoff", "adaptive_input_cutoff"]:
        config[k] = [int(c) for c in config[k].split(",")] if config[k] else None
    config["vocab_size"], config["pad_index"] = len(d), pad
    keys = list(model.state_dict().keys())
    write_safetensors(f"fairseq_parity_{name}.safetensors", tensors,
                      {"config": json.dumps(config), "state_dict_keys": json.dumps(keys),
                       "fairseq": "0.12.2", "torch": torch.__version__})
    print(name, len(tensors), "tensors", float(loss), keys)


small = dict(decoder_embed_dim=16, decoder_ffn_embed_dim=24, decoder_layers=2, decoder_attention_heads=4)
# (a) `--arch transformer_lm` as fairseq builds it (post-norm: its arch function is a no-op),
# shared input/output embedding, learned positions, embedding layer norm, gelu.
make("shared", dict(small, decoder_input_dim=16, decoder_output_dim=16, share_decoder_input_output_embed=True,
                    decoder_learned_pos=True, layernorm_embedding=True, activation_fn="gelu"),
     False, 40, 1, lens=[6, 9, 3], reorder=[2, 0, 0], reorder_step=5)
# (b) wiki103-style: adaptive input and adaptive softmax with tied weights and projections,
# factor 4, pre-norm, learned positions (bands 0..8 at 16, 8..20 at 4, 20..40 at 1).
make("adaptive", dict(small, adaptive_input=True, adaptive_input_cutoff="8,20", adaptive_input_factor=4,
                      adaptive_softmax_cutoff="8,20", adaptive_softmax_factor=4, adaptive_softmax_dropout=0.1,
                      tie_adaptive_weights=True, tie_adaptive_proj=True, decoder_learned_pos=True),
     True, 40, 2, lens=[7, 4, 9], reorder=[1, 2, 0], reorder_step=4)
# (c) Tied adaptive weights but untied projections, factor 2, sinusoidal positions, no final
# norm, no embedding scale, relu_dropout standing in for activation_dropout.
make("adaptive_tied_noproj", dict(small, adaptive_input=True, adaptive_input_cutoff="10,25", adaptive_input_factor=2,
                                  adaptive_softmax_cutoff="10,25", adaptive_softmax_factor=2,
                                  tie_adaptive_weights=True, no_decoder_final_norm=True,
                                  no_scale_embedding=True, relu_dropout=0.1),
     True, 40, 3, lens=[5, 8, 2], reorder=[0, 0, 1], reorder_step=3)
# (d) Sinusoidal positions, untied adaptive softmax over a plain embedding, decoder_input_dim
# and decoder_output_dim 12 (project_in_dim, project_out_dim), cutoff ending at the vocabulary.
make("sinusoidal", dict(small, decoder_input_dim=12, decoder_output_dim=12, adaptive_softmax_cutoff="10,40",
                        adaptive_softmax_factor=2),
     True, 40, 4, lens=[9, 2, 6], reorder=[2, 1, 1], reorder_step=6)
