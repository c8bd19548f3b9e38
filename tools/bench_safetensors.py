"""Our safetensors reader against the ``safetensors`` package: speed and strictness.

Writes a random gpt2-small-shaped fp16 checkpoint (124 M weights, ~250 MB) to a
temporary folder, times reading every tensor into numpy with both readers
(median of --repeat runs, page cache warm), then feeds both the same
malformed files and prints what each does with them. Deletes the file after.

    python tools/bench_safetensors.py [--repeat 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from xladecode import safetensors_file


def gpt2_small_tensors(rng) -> dict[str, np.ndarray]:
    c = 768
    names = {"transformer.wte.weight": (50257, 768), "transformer.wpe.weight": (1024, 768),
                     "transformer.ln_f.weight": (c,), "transformer.ln_f.bias": (c,)}
    for i in range(12):
        p = f"transformer.h.{i}."
        names.update({p + "ln_1.weight": (c,), p + "ln_1.bias": (c,), p + "ln_2.weight": (c,),
                      p + "ln_2.bias": (c,), p + "attn.c_attn.weight": (c, 3 * c),
                      p + "attn.c_attn.bias": (3 * c,), p + "attn.c_proj.weight": (c, c),
                      p + "attn.c_proj.bias": (c,), p + "mlp.c_fc.weight": (c, 4 * c),
                      p + "mlp.c_fc.bias": (4 * c,), p + "mlp.c_proj.weight": (4 * c, c),
                      p + "mlp.c_proj.bias": (c,)})
    return {n: rng.standard_normal(s, dtype=np.float32).astype(np.float16) for n, s in names.items()}


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def malformed(folder: Path) -> dict[str, bytes]:
    """Small hostile files: (case -> file bytes)."""
    def build(header, data=b"", raw=None):
        raw = raw if raw is not None else json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    ok = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    eight = b"\0" * 8
    return {
        "valid": build({"a": ok}, eight),
        "duplicate name, same entry": build(None, eight, raw=(
            b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')),
        "duplicate name, other shape": build(None, eight, raw=(
            b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')),
        "__metadata__ null": build({"__metadata__": None, "a": ok}, eight),
        "header starts with a space": build(None, eight, raw=b" " + json.dumps({"a": ok}).encode()),
        "F8_E4M3 tensor": build({"a": {**ok, "dtype": "F8_E4M3"}}, eight),
        "metadata value not a string": build({"__metadata__": {"n": 1}, "a": ok}, eight),
        "overlapping offsets": build({"a": ok, "b": ok}, eight),
        "gap between tensors": build({"a": ok, "b": {**ok, "data_offsets": [12, 20]}}, eight * 3),
        "trailing bytes": build({"a": ok}, eight + b"\0"),
        "shape/bytes mismatch": build({"a": {**ok, "shape": [3]}}, eight),
        "negative dim": build({"a": {**ok, "shape": [-2]}}, eight),
        "unknown dtype": build({"a": {**ok, "dtype": "Q7"}}, eight),
        "header longer than file": struct.pack("<Q", 10**6) + b"{}",
        "header length 2**64-1": struct.pack("<Q", 2**64 - 1),
        "NaN in JSON": build(None, eight, raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"x":NaN}'),
        "extra key in tensor": build({"a": {**ok, "crc": 1}}, eight),
        "5 bytes": b"\0" * 5,
        "BF16 (valid)": build({"a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, eight),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the temporary file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(gpt2_small_tensors(np.random.default_rng(0)), str(path), metadata={"format": "pt"})
        size = path.stat().st_size
        ours = lambda: safetensors_file.read_file(path)  # noqa: E731
        theirs = lambda: load_file(str(path))  # noqa: E731
        ours(), theirs()  # warm the page cache
        print(f"file: {size / 1e6:.0f} MB, {len(safetensors_file.read_header(path))} tensors")
        print(f"header only (ours): {timed(lambda: safetensors_file.read_header(path), args.repeat) * 1e3:.2f} ms")
        print(f"all tensors, ours:                     {timed(ours, args.repeat):.3f} s")
        print(f"all tensors, safetensors.numpy.load_file: {timed(theirs, args.repeat):.3f} s")
        a, b = ours(), theirs()
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
        del a, b
        print(f"\n{'case':30s} {'ours':45s} safetensors package")
        for case, content in malformed(Path(tmp)).items():
            bad = Path(tmp) / "case.safetensors"
            bad.write_bytes(content)
            row = []
            for reader in (safetensors_file.read_file, lambda p: load_file(str(p))):
                try:
                    reader(bad)
                    row.append("accepted")
                except Exception as error:  # noqa: BLE001 -- we want to see every type
                    row.append(f"{type(error).__name__}: {str(error)[:60]}".replace(str(bad), "F"))
            print(f"{case:30s} {row[0][:45]:45s} {row[1][:70]}")


if __name__ == "__main__":
    main()
