"""The PyTorch eager side of `train_vs_pytorch`: fairseq's Transformer in plain PyTorch.

Usage: python train_eager.py WORK_DIR

WORK_DIR holds `batches.json` (the model config, optimizer settings and batch shapes) and
`batches.bin` (the batches' int64 tokens: src_tokens, prev_output_tokens, target per batch), both
written by the seqforge side, so both sides train on exactly the same batches.

The model follows fairseq 0.12.2 (`TransformerEncoder/Decoder`, `MultiheadAttention`):
token embeddings scaled by sqrt(d), sinusoidal positions from padding_idx + 1 (fairseq's
`SinusoidalPositionalEmbedding`), post-norm (or pre-norm) layers with separate q/k/v
projections, q scaled by head_dim^-0.5, padding masked with -inf, softmax in fp32, ReLU/GELU
feed-forward, an output projection (tied when configured). Criterion: label-smoothed
cross-entropy summed over tokens, gradients normalised by the number of target tokens and
their norm taken every update (as fairseq does). Optimizer: torch.optim.Adam with fairseq's betas/eps and the inverse_sqrt
schedule. Prints one JSON line: words, seconds, words/s over the timed updates, peak RSS.
"""

import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_table(num, dim, pad):
    half = dim // 2
    emb = math.log(10000) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=torch.float) * -emb)
    emb = torch.arange(num, dtype=torch.float).unsqueeze(1) * emb.unsqueeze(0)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).view(num, -1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros(num, 1)], dim=1)
    emb[pad, :] = 0
    return emb


def make_positions(tokens, pad):
    mask = tokens.ne(pad).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + pad


class Attention(nn.Module):
    def __init__(self, dim, heads, kdim, dropout):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kdim, dim)
        self.v_proj = nn.Linear(kdim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for p in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(p.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key, key_padding_mask=None, causal=False):
        # query: [T, B, C], key: [S, B, C] (fairseq's time-first layout)
        tgt_len, bsz, dim = query.shape
        src_len = key.shape[0]
        q = self.q_proj(query) * self.scaling
        k = self.k_proj(key)
        v = self.v_proj(key)
        q = q.contiguous().view(tgt_len, bsz * self.heads, self.head_dim).transpose(0, 1)
        k = k.contiguous().view(src_len, bsz * self.heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(src_len, bsz * self.heads, self.head_dim).transpose(0, 1)
        w = torch.bmm(q, k.transpose(1, 2))
        if causal:
            mask = torch.triu(torch.full((tgt_len, src_len), float("-inf")), 1)
            w = w + mask.unsqueeze(0)
        if key_padding_mask is not None:
            w = w.view(bsz, self.heads, tgt_len, src_len)
            w = w.masked_fill(key_padding_mask.unsqueeze(1).unsqueeze(2), float("-inf"))
            w = w.view(bsz * self.heads, tgt_len, src_len)
        w = F.softmax(w.float(), dim=-1).type_as(w)
        w = F.dropout(w, p=self.dropout, training=self.training)
        a = torch.bmm(w, v).transpose(0, 1).contiguous().view(tgt_len, bsz, dim)
        return self.out_proj(a)


def activation(name):
    if name == "gelu":
        return lambda x: F.gelu(x.float()).type_as(x)
    if name in ("gelu_accurate", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "tanh":
        return torch.tanh
    if name == "linear":
        return lambda x: x
    return F.relu


class Layer(nn.Module):
    def __init__(self, c, side, cross_dim=None):
        super().__init__()
        dim = c[f"{side}_embed_dim"]
        heads = c[f"{side}_attention_heads"]
        self.pre = c[f"{side}_normalize_before"]
        self.dropout, self.act_dropout = c["dropout"], c["activation_dropout"]
        self.act = activation(c["activation_fn"])
        self.self_attn = Attention(dim, heads, dim, c["attention_dropout"])
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = None
        if cross_dim is not None:
            self.encoder_attn = Attention(dim, heads, cross_dim, c["attention_dropout"])
            self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, c[f"{side}_ffn_embed_dim"])
        self.fc2 = nn.Linear(c[f"{side}_ffn_embed_dim"], dim)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.constant_(fc.bias, 0.0)
        self.final_layer_norm = nn.LayerNorm(dim)

    def block(self, x, norm, fn):
        residual = x
        if self.pre:
            x = norm(x)
        x = F.dropout(fn(x), p=self.dropout, training=self.training) + residual
        if not self.pre:
            x = norm(x)
        return x

    def forward(self, x, pad_mask, enc=None, enc_mask=None):
        causal = self.encoder_attn is not None
        x = self.block(x, self.self_attn_layer_norm,
                       lambda h: self.self_attn(h, h, pad_mask, causal))
        if self.encoder_attn is not None:
            x = self.block(x, self.encoder_attn_layer_norm,
                           lambda h: self.encoder_attn(h, enc, enc_mask))
        ffn = lambda h: self.fc2(F.dropout(self.act(self.fc1(h)), p=self.act_dropout,
                                           training=self.training))
        return self.block(x, self.final_layer_norm, ffn)


class Side(nn.Module):
    def __init__(self, c, side, vocab, pad, embed=None, cross_dim=None):
        super().__init__()
        dim = c[f"{side}_embed_dim"]
        self.pad, self.dropout = pad, c["dropout"]
        self.scale = 1.0 if c["no_scale_embedding"] else math.sqrt(dim)
        if embed is None:
            embed = nn.Embedding(vocab, dim, padding_idx=pad)
            nn.init.normal_(embed.weight, mean=0, std=dim ** -0.5)
            nn.init.constant_(embed.weight[pad], 0)
        self.embed_tokens = embed
        max_pos = c[f"max_{'source' if side == 'encoder' else 'target'}_positions"]
        self.register_buffer("positions", sinusoidal_table(max_pos + pad + 1, dim, pad))
        self.layernorm_embedding = nn.LayerNorm(dim) if c["layernorm_embedding"] else None
        self.layers = nn.ModuleList(
            [Layer(c, side, cross_dim) for _ in range(c[f"{side}_layers"])])
        final = c[f"{side}_normalize_before"] and not (
            side == "decoder" and c["no_decoder_final_norm"])
        self.layer_norm = nn.LayerNorm(dim) if final else None

    def embed(self, tokens):
        x = self.scale * self.embed_tokens(tokens)
        x = x + F.embedding(make_positions(tokens, self.pad), self.positions)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return F.dropout(x, p=self.dropout, training=self.training).transpose(0, 1)


class Transformer(nn.Module):
    def __init__(self, c, pad):
        super().__init__()
        self.encoder = Side(c, "encoder", c["src_vocab_size"], pad)
        shared = self.encoder.embed_tokens if c["share_all_embeddings"] else None
        self.decoder = Side(c, "decoder", c["tgt_vocab_size"], pad, shared,
                            cross_dim=c["encoder_embed_dim"])
        dim = c["decoder_embed_dim"]
        if c["share_decoder_input_output_embed"] or c["share_all_embeddings"]:
            self.output_projection = None
        else:
            self.output_projection = nn.Linear(dim, c["tgt_vocab_size"], bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim ** -0.5)
        self.pad = pad

    def forward(self, src, prev):
        enc_mask = src.eq(self.pad)
        x = self.encoder.embed(src)
        for layer in self.encoder.layers:
            x = layer(x, enc_mask)
        if self.encoder.layer_norm is not None:
            x = self.encoder.layer_norm(x)
        y = self.decoder.embed(prev)
        # fairseq masks the decoder's own padding too (`self_attn_padding_mask`).
        dec_mask = prev.eq(self.pad) if prev.eq(self.pad).any() else None
        for layer in self.decoder.layers:
            y = layer(y, dec_mask, x, enc_mask)
        if self.decoder.layer_norm is not None:
            y = self.decoder.layer_norm(y)
        y = y.transpose(0, 1)
        w = (self.decoder.embed_tokens.weight if self.output_projection is None
             else self.output_projection.weight)
        return F.linear(y, w)


def label_smoothed_nll_loss(logits, target, eps, pad):
    lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.view(-1, 1)
    nll = -lprobs.gather(dim=-1, index=target)
    smooth = -lprobs.sum(dim=-1, keepdim=True)
    mask = target.eq(pad)
    nll = nll.masked_fill(mask, 0.0).sum()
    smooth = smooth.masked_fill(mask, 0.0).sum()
    eps_i = eps / (lprobs.size(-1) - 1)
    return (1.0 - eps - eps_i) * nll + eps_i * smooth


def main():
    work = sys.argv[1]
    meta = json.load(open(os.path.join(work, "batches.json")))
    torch.set_num_threads(meta["threads"])
    torch.manual_seed(1)
    c, pad = meta["model"], meta["pad"]
    raw = np.fromfile(os.path.join(work, "batches.bin"), dtype="<i8")
    batches, off = [], 0
    for b in meta["batches"]:
        parts = []
        for cols in (b["src_len"], b["tgt_len"], b["tgt_len"]):
            n = b["rows"] * cols
            parts.append(torch.from_numpy(raw[off:off + n].reshape(b["rows"], cols).copy()))
            off += n
        batches.append((*parts, b["ntokens"]))

    model = Transformer(c, pad)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=meta["lr"], betas=tuple(meta["betas"]), eps=meta["eps"])
    warm, init_lr, peak = meta["warmup_updates"], meta["warmup_init_lr"], meta["lr"]
    lr_step = (peak - init_lr) / warm
    decay = peak * warm ** 0.5

    def lr_at(n):
        return init_lr + n * lr_step if n < warm else decay * n ** -0.5

    words, secs, first, last = 0, 0.0, None, 0.0
    for i, (src, prev, target, ntokens) in enumerate(batches):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        opt.zero_grad(set_to_none=True)
        logits = model(src, prev)
        loss = label_smoothed_nll_loss(logits, target, meta["label_smoothing"], pad)
        (loss / ntokens).backward()
        # fairseq (and seqforge) take the gradient norm every update, for clipping and the log.
        gnorm = torch.nn.utils.clip_grad_norm_(params, float("inf")).item()
        opt.step()
        value = loss.item() / ntokens / math.log(2)
        dt = time.perf_counter() - t0
        first = value if first is None else first
        last = value
        if i >= meta["warmup"]:
            words += ntokens
            secs += dt
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "side": "pytorch", "torch": torch.__version__, "words": words, "seconds": secs,
        "wps": words / secs, "peak_rss_mib": peak_mib, "first_loss": first, "last_loss": last,
        "params": sum(p.numel() for p in params),
    }))


if __name__ == "__main__":
    main()
