#!/usr/bin/env python3
"""Latency of an ONNX model with onnxruntime's Python API, measured the way `edgemlops model bench` does.

Used by `cargo xtask bench runtime` to put the Rust tool next to the reference API on the same file,
same thread settings, same number of runs. Prints nothing but the JSON file it writes.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    a = p.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3

    rng = np.random.default_rng(a.seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else a.batch for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape, dtype=np.float32)
    for _ in range(a.warmup):
        sess.run(None, feeds)
    samples = []
    for _ in range(a.runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t) * 1e3)
    result = {
        "tool": f"onnxruntime-python {ort.__version__}",
        "model": a.model,
        "threads": a.threads,
        "load_ms": load_ms,
        "median_ms": statistics.median(samples),
        "mean_ms": statistics.fmean(samples),
        "samples": samples,
    }
    with open(a.json, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
