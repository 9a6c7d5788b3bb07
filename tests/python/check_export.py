#!/usr/bin/env python3
"""Checks a seqforge model directory with the reference ONNX tools.

    PYTHONPATH=.deps/python python3 tests/python/check_export.py MODEL_DIR

1. `onnx.checker.check_model(path, full_check=True)` on encoder.onnx and decoder.onnx (with
   shape inference: every node's types and shapes must be consistent);
2. the manifest's contract equals both graphs' `seqforge.*` metadata_props, and the manifest's
   SHA-256 hashes match the files;
3. in an fp16 export, ONNX shape inference must type the input of every LayerNormalization,
   Softmax, LogSoftmax and Erf node as float32 (the numerically fragile ops run in fp32 on any
   execution provider, not only where ONNX Runtime happens to promote fp16 to fp32);
4. Python onnxruntime runs the encoder on a left-padded batch of 3 sources, then decoder step 0
   with an empty past (P = 0) and step 1 with the presents as past, each step's reorder duplicating
   a row (also on the empty past); shapes are asserted and every log_probs row must be normalized (logsumexp = 0).
   In-place tensors (policy `in_place`) get buffers of capacity 4, are reordered here on the host
   as the contract says, and must come back with positions before `position` unchanged.

Exits non-zero with a message naming the file and the check on any failure.
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def fail(msg):
    print(f"check_export: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def metadata_matches(model_path, graph, contract):
    model = onnx.load(model_path, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    check(props.get("seqforge.graph") == graph, f"{model_path}: seqforge.graph = {props.get('seqforge.graph')!r}")
    for key, value in contract.items():
        if key == "state":
            check(json.loads(props.get("seqforge.state", "null")) == value, f"{model_path}: seqforge.state differs from the manifest")
        elif key == "special":
            for k, v in value.items():
                check(props.get(f"seqforge.{k}") == str(v), f"{model_path}: seqforge.{k} = {props.get(f'seqforge.{k}')!r}, manifest {v}")
        else:
            check(props.get(f"seqforge.{key}") == str(value), f"{model_path}: seqforge.{key} = {props.get(f'seqforge.{key}')!r}, manifest {value!r}")
    check(model.ir_version <= 10, f"{model_path}: IR version {model.ir_version} > 10")
    opsets = {o.domain: o.version for o in model.opset_import}
    check(opsets.get("", opsets.get("ai.onnx")) == 17, f"{model_path}: opset {opsets}")


def fragile_ops_read_fp32(model_path):
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path), strict_mode=True)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    checked = 0
    for node in g.node:
        if node.op_type in ("LayerNormalization", "Softmax", "LogSoftmax", "Erf", "LSTM", "Sigmoid", "Conv"):
            elem = types.get(node.input[0])
            check(elem == onnx.TensorProto.FLOAT, f"{model_path}: {node.op_type} node {node.name} reads {onnx.TensorProto.DataType.Name(elem) if elem else 'an untyped value'}, not float32")
            checked += 1
    check(checked > 0, f"{model_path}: no LayerNormalization/Softmax/LogSoftmax/LSTM node found")
    return checked


def main():
    if len(sys.argv) != 2:
        fail("usage: check_export.py MODEL_DIR")
    model_dir = sys.argv[1]
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    contract = manifest["contract"]
    for entry in manifest["files"].values():
        if entry is None:
            continue
        path = os.path.join(model_dir, entry["name"])
        check(sha256(path) == entry["sha256"], f"{path}: SHA-256 differs from the manifest")

    enc_path = os.path.join(model_dir, "encoder.onnx")
    dec_path = os.path.join(model_dir, "decoder.onnx")
    for path, graph in [(enc_path, "encoder"), (dec_path, "decoder")]:
        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as e:  # the checker raises several exception types
            fail(f"{path}: onnx.checker: {e}")
        metadata_matches(path, graph, contract)
        if contract["dtype"] == "fp16":
            fragile_ops_read_fp32(path)

    fp16 = contract["dtype"] == "fp16"
    state = contract["state"]
    dims = state["dims"]
    tensors = state["tensors"]
    np_types = {"model": np.float16 if fp16 else np.float32, "float32": np.float32, "bool": np.bool_, "int64": np.int64}
    vocab = contract["tgt_vocab_size"]
    pad, eos = contract["special"]["pad"], contract["special"]["eos"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    enc = ort.InferenceSession(enc_path, opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(dec_path, opts, providers=["CPUExecutionProvider"])

    def shape_of(t, rows, source, grown):
        """The declared shape of state tensor t (an independent reading of the contract)."""
        axis = t["policy"].get("axis")
        out = []
        for i, d in enumerate(t["shape"]):
            if d == "rows":
                check(i == 0, f"{t['name']}: rows not on axis 0")
                out.append(rows)
            elif d == "source":
                out.append(source)
            elif d == axis:
                out.append(grown)
            else:
                check(d in dims, f"{t['name']}: unknown dimension {d}")
                out.append(dims[d])
        return tuple(out)

    def follows_row(t):
        return t["policy"]["kind"] != "per_sentence"

    def in_place(t):
        return t["policy"]["kind"] == "in_place"

    capacity = 4

    first_word = 4
    srcs = [[first_word + 1, first_word + 5, first_word + 3, eos], [first_word + 2, eos],
            [first_word, first_word + 4, first_word + 4, first_word + 1, first_word + 6, eos]]
    srcs = [[t % contract["src_vocab_size"] if t != eos else eos for t in s] for s in srcs]
    S = max(len(s) for s in srcs)
    # Right padding, as the runtime pads.
    tokens = np.array([s + [pad] * (S - len(s)) for s in srcs], dtype=np.int64)
    B = len(srcs)
    enc_names = [o.name for o in enc.get_outputs()]
    enc_out = dict(zip(enc_names, enc.run(None, {"src_tokens": tokens})))
    needed = {}
    for t in tensors:
        if t["policy"]["kind"] == "per_sentence":
            needed[t["name"]] = t
        init = t["policy"].get("init")
        if isinstance(init, dict):
            needed[init["encoder"]] = t
    for name, t in needed.items():
        check(name in enc_out, f"encoder output {name} missing (has {enc_names})")
        v = enc_out[name]
        check(v.shape == shape_of(t, B, S, 0), f"encoder output {name} shape {v.shape}, declared {shape_of(t, B, S, 0)}")
        check(v.dtype == np_types[t["dtype"]], f"encoder output {name} dtype {v.dtype}")
        if v.dtype != np.bool_:
            check(np.isfinite(v.astype(np.float64)).all(), f"encoder output {name} has non-finite values")
    if "encoder_padding_mask" in enc_out:
        check((enc_out["encoder_padding_mask"] == (tokens == pad)).all(), "encoder_padding_mask is not tokens == pad")

    dec_names = [o.name for o in dec.get_outputs()]
    rows = list(range(B))
    past = {}
    for t in tensors:
        if not follows_row(t):
            continue
        init = t["policy"].get("init")
        if isinstance(init, dict):
            past[f"past.{t['name']}"] = enc_out[init["encoder"]][rows]
        else:
            grown = capacity if in_place(t) else 0
            past[f"past.{t['name']}"] = np.zeros(shape_of(t, B, S, grown), dtype=np_types[t["dtype"]])
    prev = np.full((B, 1), eos, dtype=np.int64)
    # Step 0 expands 3 rows to 4 (a beam's first step), step 1 to 5.
    for step, reorder in enumerate([[0, 0, 1, 2], [0, 1, 1, 2, 3]]):
        # Rows of this step continue rows `reorder` of the past; per-sentence inputs are in row order.
        rows = [rows[r] for r in reorder]
        feeds = {"prev_tokens": prev[reorder], "reorder": np.array(reorder, dtype=np.int64)}
        for t in tensors:
            if not follows_row(t):
                feeds[t["name"]] = enc_out[t["name"]][rows]
        # In-place tensors come in this step's row order: the host applies the reorder.
        for t in tensors:
            if in_place(t):
                past[f"past.{t['name']}"] = past[f"past.{t['name']}"][reorder]
        feeds.update(past)
        if any(i.name == "position" for i in dec.get_inputs()):
            feeds["position"] = np.array([step], dtype=np.int64)
        check(any(i.name == "position" for i in dec.get_inputs()) or not any(in_place(t) for t in tensors),
              "the state has in-place tensors but the step graph takes no `position`")
        # Optional: each row's best log-probabilities (`top_k` → top_log_probs, top_ids).
        has_top = any(i.name == "top_k" for i in dec.get_inputs())
        if has_top:
            feeds["top_k"] = np.array([7], dtype=np.int64)
        check(set(feeds) == {i.name for i in dec.get_inputs()}, f"step {step}: inputs {sorted(feeds)} vs graph {[i.name for i in dec.get_inputs()]}")
        out = dict(zip(dec_names, dec.run(None, feeds)))
        R = len(reorder)
        lp = out["log_probs"]
        check(lp.dtype == np.float32, f"step {step}: log_probs dtype {lp.dtype}")
        check(lp.shape == (R, vocab), f"step {step}: log_probs shape {lp.shape}")
        check(np.isfinite(lp).all(), f"step {step}: log_probs has non-finite values")
        lse = np.log(np.exp(lp.astype(np.float64)).sum(axis=1))
        check(np.abs(lse).max() < 1e-4, f"step {step}: log_probs rows not normalized (logsumexp {lse})")
        if has_top:
            top, ids = out["top_log_probs"], out["top_ids"]
            check(top.shape == (R, 7) and ids.shape == (R, 7), f"step {step}: top shapes {top.shape} {ids.shape}")
            check(np.array_equal(np.take_along_axis(lp, ids, 1), top), f"step {step}: top_ids do not index top_log_probs")
            check(np.allclose(np.sort(lp, 1)[:, ::-1][:, :7], top), f"step {step}: top_log_probs are not the best 7")
        old_past, past = past, {}
        for t in tensors:
            if follows_row(t):
                v = out[f"present.{t['name']}"]
                want = shape_of(t, R, S, capacity if in_place(t) else step + 1)
                if in_place(t):
                    axis = t["shape"].index(t["policy"]["axis"])
                    before = old_past[f"past.{t['name']}"]
                    kept = [slice(None)] * len(t["shape"])
                    kept[axis] = slice(0, step)
                    check(np.array_equal(v[tuple(kept)], before[tuple(kept)]),
                          f"step {step}: present.{t['name']} changed positions before {step}")
                check(v.shape == want, f"step {step}: present.{t['name']} shape {v.shape}, declared {want}")
                check(v.dtype == np_types[t["dtype"]], f"step {step}: present.{t['name']} dtype {v.dtype}")
                past[f"past.{t['name']}"] = v
        prev = lp.argmax(axis=1).astype(np.int64).reshape(R, 1)
    if len(reorder) == 5:
        # Rows 1 and 2 of step 1 continue the same row with the same token: identical outputs.
        check(np.allclose(lp[1], lp[2]), "duplicated rows disagree after the reorder")
    print(f"check_export: OK {model_dir} ({contract['dtype']}, onnx {onnx.__version__}, onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
