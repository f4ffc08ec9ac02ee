#!/usr/bin/env python3
"""Quantize an ONNX model with onnxruntime's Python tool, as a user of that tool would.

Used by `cargo xtask bench quantization` to put `edgemlops model quantize` next to onnxruntime's
`quant_pre_process` + `quantize_static` / `quantize_dynamic` on the same model, the same
calibration data (an .npy of [samples, ...input dims], fed in the same batch size) and the same
settings. Writes a JSON file with the time of each stage (imports excluded; the caller measures the
whole process too).
"""
import argparse
import json
import os
import tempfile
import time

t_import = time.perf_counter()
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

import_s = time.perf_counter() - t_import


class NpyReader(CalibrationDataReader):
    """Feeds the samples of an .npy array in batches."""

    def __init__(self, path: str, input_name: str, batch: int):
        self.data = np.load(path)
        self.name = input_name
        self.batch = batch
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.data):
            return None
        x = self.data[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.name: np.ascontiguousarray(x)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["static", "dynamic"], default="static")
    p.add_argument("--activations", choices=["s8", "u8"], default="u8")
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--reduce-range", action="store_true")
    p.add_argument("--calibration-npy")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    p.add_argument("--json", required=True)
    a = p.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(a.out))) as tmp:
        pre = os.path.join(tmp, "preprocessed.onnx")
        quant_pre_process(a.model, pre)
        t1 = time.perf_counter()
        if a.mode == "static":
            sess = onnxruntime.InferenceSession(pre, providers=["CPUExecutionProvider"])
            input_name = sess.get_inputs()[0].name
            del sess
            method = {
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[a.method]
            quantize_static(
                pre,
                a.out,
                NpyReader(a.calibration_npy, input_name, a.batch),
                quant_format=QuantFormat.QDQ,
                per_channel=a.per_channel,
                reduce_range=a.reduce_range,
                activation_type=QuantType.QUInt8 if a.activations == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
        else:
            quantize_dynamic(
                pre, a.out, per_channel=a.per_channel, reduce_range=a.reduce_range, weight_type=QuantType.QInt8
            )
        t2 = time.perf_counter()
    result = {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "import_s": import_s,
        "pre_process_s": t1 - t0,
        "quantize_s": t2 - t1,
        "total_s": t2 - t0,
        "size_bytes": os.path.getsize(a.out),
    }
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
