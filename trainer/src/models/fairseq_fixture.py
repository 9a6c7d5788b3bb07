"""Helpers the families' fairseq fixture scripts share (`{family}/testdata/make_fixture.py`):
a task stub with the two dictionaries, numbered dictionaries, and a dependency-free
safetensors writer (fp32 and int64 tensors, metadata in the header)."""
import json
import struct

import torch
from fairseq.data import Dictionary


class Task:
    def __init__(self, src, tgt):
        self.source_dictionary = src
        self.target_dictionary = tgt


def dictionary(n):
    d = Dictionary()
    for i in range(n - 4):
        d.add_symbol(f"w{i}")
    assert len(d) == n
    return d


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def unique_state_dict(model):
    """The model's state dict with each tied tensor once, under its first name."""
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        tensors[k] = v
    return tensors


def incremental_lprobs(model, enc, prev, order, reorder_step):
    """fairseq's own incremental decoding of `prev` ([batch, len], fed column t at step t; `enc`
    None for a language model):
    log-probs [batch, len, vocab]; before step `reorder_step` the encoder output and decoder
    state are reordered with `order`, as beam search does."""
    state, steps = {}, []
    for t in range(prev.shape[1]):
        if t == reorder_step:
            if enc is not None:  # decoder-only models (language models) have no encoder
                enc = model.encoder.reorder_encoder_out(enc, order)
            model.decoder.reorder_incremental_state_scripting(state, order)
        # Incremental decoding reads only the last column of the prefix.
        out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
        steps.append(model.get_normalized_probs((out, None), log_probs=True)[:, -1])
    return torch.stack(steps, dim=1)
