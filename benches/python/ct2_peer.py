"""CTranslate2 as the peer of `cargo xtask bench-peers` (benches/src/bin/vs_ctranslate2.rs).

Two commands, both needing only `ctranslate2` and `numpy`:

  ct2_peer.py convert --checkpoint CKPT_DIR --out CT2_DIR
      Converts a seqforge Transformer checkpoint (model.safetensors with fairseq's parameter
      names + config.json, dictionaries from the checkpoint's data folder given with --data)
      into a CTranslate2 model directory through CTranslate2's Python spec API, exactly as
      CTranslate2's own fairseq converter maps a fairseq Transformer (fused QKV, sinusoidal
      table rows from padding_idx + 1, `<pad>` renamed `<blank>`, decoder start `</s>`, source
      EOS added by CTranslate2). Written as float32; int8 is chosen at load time
      (`compute_type`), as CTranslate2 users do.

  ct2_peer.py serve --model CT2_DIR
      Reads one JSON request per line on stdin and answers one JSON line on stdout:
        {"cmd": "load", "compute_type": "float32"|"int8", "intra_threads": N, "inter_threads": M}
        {"cmd": "translate", "batches": [[[id, ...], ...], ...], "beam": 5, "min_len": 1,
         "max_len": 200, "warmup": [[id, ...], ...]}
      Source ids are the binarized ids without the final EOS. Every batch is submitted
      asynchronously (so that `inter_threads` workers run batches side by side, as
      `translate_batch` does when it splits a list) and the answer gives the wall time from
      the first submission to the last result (warm-up excluded), and per batch the best
      hypothesis' target ids (EOS excluded) and score.
"""

import argparse
import json
import math
import struct
import sys
import time

import numpy as np


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (float32/float16 only)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in dtypes:
            raise SystemExit(f"{path}: tensor {name} has dtype {meta['dtype']}, expected F32/F16")
        start, end = meta["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]])
        out[name] = array.reshape(meta["shape"]).astype(np.float32)
    return out


def read_dictionary(path, size):
    """fairseq's Dictionary symbols: the four specials, then one symbol per line."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>"]
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.endswith(" #fairseq:overwrite"):
                line = line[: -len(" #fairseq:overwrite")]
            symbol, _count = line.rsplit(" ", 1)
            symbols.append(symbol)
    if len(symbols) != size:
        raise SystemExit(f"{path}: {len(symbols)} symbols, the embeddings have {size} rows")
    return ["<blank>" if s == "<pad>" else s for s in symbols]


def sinusoidal(num_embeddings, dim, padding_idx):
    """fairseq's SinusoidalPositionalEmbedding.get_embedding."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale)
    angles = np.arange(num_embeddings, dtype=np.float32)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2 == 1:
        table = np.concatenate([table, np.zeros((num_embeddings, 1), np.float32)], axis=1)
    table[padding_idx, :] = 0
    return table.astype(np.float32)


def convert(args):
    import ctranslate2
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters.utils import fuse_linear
    from ctranslate2.specs import common_spec, transformer_spec

    with open(f"{args.checkpoint}/config.json", encoding="utf-8") as f:
        config = json.load(f)
    if config.get("arch") != "transformer" and not str(config.get("arch", "")).startswith(
        "transformer"
    ):
        raise SystemExit(f"{args.checkpoint}/config.json: arch {config.get('arch')!r} is not a Transformer")
    m = config["model"]
    for flag in ("encoder_learned_pos", "decoder_learned_pos", "no_token_positional_embeddings"):
        if m.get(flag):
            raise SystemExit(f"{args.checkpoint}/config.json: model.{flag} is not supported here")
    if m["encoder_normalize_before"] != m["decoder_normalize_before"]:
        raise SystemExit("encoder and decoder normalize_before differ: CTranslate2 needs one value")
    if m["encoder_attention_heads"] != m["decoder_attention_heads"]:
        raise SystemExit("encoder and decoder attention heads differ: CTranslate2 needs one value")
    activations = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}
    w = read_safetensors(f"{args.checkpoint}/model.safetensors")
    pad = m.get("pad_index", 1)
    src_lang = config["task"]["config"]["source_lang"]
    tgt_lang = config["task"]["config"]["target_lang"]

    spec = transformer_spec.TransformerSpec.from_config(
        (m["encoder_layers"], m["decoder_layers"]),
        m["encoder_attention_heads"],
        pre_norm=m["encoder_normalize_before"],
        activation=activations[m.get("activation_fn", "relu")],
        layernorm_embedding=m.get("layernorm_embedding", False),
    )

    def linear(s, prefix):
        s.weight = w[f"{prefix}.weight"]
        if f"{prefix}.bias" in w:
            s.bias = w[f"{prefix}.bias"]

    def norm(s, prefix):
        s.gamma = w[f"{prefix}.weight"]
        s.beta = w[f"{prefix}.bias"]

    def attention(s, prefix, self_attention):
        parts = [common_spec.LinearSpec() for _ in range(3 if self_attention else 2)]
        names = ["q_proj", "k_proj", "v_proj"] if self_attention else ["k_proj", "v_proj"]
        for part, name in zip(parts, names):
            linear(part, f"{prefix}.{name}")
        if self_attention:
            fuse_linear(s.linear[0], parts)
        else:
            linear(s.linear[0], f"{prefix}.q_proj")
            fuse_linear(s.linear[1], parts)
        linear(s.linear[-1], f"{prefix}.out_proj")

    def inputs(s, side, max_positions):
        embed = w[f"{side}.embed_tokens.weight"]
        (s.embeddings[0] if isinstance(s.embeddings, list) else s.embeddings).weight = embed
        dim = embed.shape[1]
        table = sinusoidal(max_positions + pad + 1, dim, pad)
        s.position_encodings.encodings = table[pad + 1 :]
        s.scale_embeddings = 1.0 if m.get("no_scale_embedding") else math.sqrt(dim)
        if m.get("layernorm_embedding"):
            norm(s.layernorm_embedding, f"{side}.layernorm_embedding")
        if f"{side}.layer_norm.weight" in w:
            norm(s.layer_norm, f"{side}.layer_norm")
        return embed.shape[0]

    src_size = inputs(spec.encoder, "encoder", m["max_source_positions"])
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.layers.{i}"
        attention(layer.self_attention, f"{p}.self_attn", True)
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_layer_norm")
        linear(layer.ffn.linear_0, f"{p}.fc1")
        linear(layer.ffn.linear_1, f"{p}.fc2")
        norm(layer.ffn.layer_norm, f"{p}.final_layer_norm")
    tgt_size = inputs(spec.decoder, "decoder", m["max_target_positions"])
    projection = "decoder.output_projection.weight"
    spec.decoder.projection.weight = w.get(projection, w["decoder.embed_tokens.weight"])
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.layers.{i}"
        attention(layer.self_attention, f"{p}.self_attn", True)
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_layer_norm")
        attention(layer.attention, f"{p}.encoder_attn", False)
        norm(layer.attention.layer_norm, f"{p}.encoder_attn_layer_norm")
        linear(layer.ffn.linear_0, f"{p}.fc1")
        linear(layer.ffn.linear_1, f"{p}.fc2")
        norm(layer.ffn.layer_norm, f"{p}.final_layer_norm")

    spec.register_source_vocabulary(read_dictionary(f"{args.data}/dict.{src_lang}.txt", src_size))
    spec.register_target_vocabulary(read_dictionary(f"{args.data}/dict.{tgt_lang}.txt", tgt_size))
    spec.config.decoder_start_token = spec.config.eos_token
    spec.config.add_source_eos = True

    class SpecConverter(Converter):
        def _load(self):
            return spec

    SpecConverter().convert(args.out, force=True)
    print(json.dumps({"converted": args.out, "ctranslate2": ctranslate2.__version__}))


def serve(args):
    import ctranslate2

    import os

    shared = f"{args.model}/shared_vocabulary.json"
    source = shared if os.path.exists(shared) else f"{args.model}/source_vocabulary.json"
    target = shared if os.path.exists(shared) else f"{args.model}/target_vocabulary.json"
    with open(source, encoding="utf-8") as f:
        src_vocab = json.load(f)
    with open(target, encoding="utf-8") as f:
        tgt_index = {s: i for i, s in enumerate(json.load(f))}
    translator = None

    def run(translator, batches, req):
        pending = [
            translator.translate_batch(
                [[src_vocab[i] for i in sentence] for sentence in batch],
                beam_size=req["beam"],
                num_hypotheses=1,
                length_penalty=1.0,
                min_decoding_length=req["min_len"],
                max_decoding_length=req["max_len"],
                return_scores=True,
                asynchronous=True,
            )
            for batch in batches
        ]
        return [[r.result() for r in batch] for batch in pending]

    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "load":
            translator = None
            start = time.perf_counter()
            translator = ctranslate2.Translator(
                args.model,
                device="cpu",
                compute_type=req["compute_type"],
                intra_threads=req["intra_threads"],
                inter_threads=req["inter_threads"],
            )
            reply = {"load_s": time.perf_counter() - start}
        elif req["cmd"] == "translate":
            if req.get("warmup"):
                run(translator, [req["warmup"]], req)
            start = time.perf_counter()
            results = run(translator, req["batches"], req)
            secs = time.perf_counter() - start
            hyps = [
                [
                    {
                        "tokens": [tgt_index[t] for t in r.hypotheses[0]],
                        "score": r.scores[0],
                    }
                    for r in batch
                ]
                for batch in results
            ]
            reply = {"secs": secs, "hypotheses": hyps}
        else:
            reply = {"error": f"unknown command {req['cmd']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="seqforge checkpoint -> CTranslate2 model")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--data", required=True, help="binarized data folder with the dictionaries")
    c.add_argument("--out", required=True)
    s = sub.add_parser("serve", help="answer load/translate requests on stdin")
    s.add_argument("--model", required=True)
    args = parser.parse_args()
    convert(args) if args.command == "convert" else serve(args)


if __name__ == "__main__":
    main()
