#!/usr/bin/env python3
"""onnxruntime baseline for `bench-agent`: times one model on one thread and prints one JSON line.

Usage: bench-agent-ort.py MODEL.onnx REQUEST.json
REQUEST.json (written by the bench): {"iterations": N, "warmup": W,
  "inputs": [{"name", "shape", "dtype", "data"}]}.
Prints {"onnxruntime", "median_us", "p99_us", "runs", "load_ms", "outputs": {name: [first values]}}.
One intra-op and one inter-op thread, sequential execution, default graph optimisations (ORT_ENABLE_ALL).
Each sample is one `InferenceSession.run` call timed with `time.perf_counter_ns` (Python call overhead included,
a few microseconds).
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

DTYPES = {
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "u8": np.uint8,
    "i32": np.int32,
    "i64": np.int64,
    "bool": np.bool_,
}


def main() -> int:
    model_path, request_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        request = json.load(f)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter_ns()
    session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - start) / 1e6
    feeds = {
        t["name"]: np.asarray(t["data"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"]) for t in request["inputs"]
    }
    for _ in range(request["warmup"]):
        session.run(None, feeds)
    samples = []
    for _ in range(request["iterations"]):
        start = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    outputs = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "median_us": samples[len(samples) // 2] / 1e3,
                "p99_us": samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e3,
                "runs": len(samples),
                "load_ms": load_ms,
                "outputs": {n: np.asarray(v, dtype=np.float64).ravel()[:8].tolist() for n, v in zip(names, outputs)},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
