#!/usr/bin/env python3
"""onnxruntime baseline for `bench-agent`: times one model on one thread and prints one JSON line.

Usage: bench-agent-ort.py [--profile] MODEL.onnx REQUEST.json
REQUEST.json (written by the bench): {"iterations": N, "warmup": W,
  "inputs": [{"name", "shape", "dtype", "data"}]}.
Prints {"onnxruntime", "median_us", "p99_us", "runs", "load_ms", "outputs": {name: [first values]}}.
One intra-op and one inter-op thread, sequential execution, default graph optimisations (ORT_ENABLE_ALL).
Each sample is one `InferenceSession.run` call timed with `time.perf_counter_ns` (Python call overhead included,
a few microseconds).
With --profile: onnxruntime's own profiler over the same runs; prints {"operators": [{"operator", "nodes",
"us_per_run"}]}, the kernel time of each ONNX operator type summed over its nodes, most expensive first.
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
    args = sys.argv[1:]
    profile = args[:1] == ["--profile"]
    model_path, request_path = args[-2], args[-1]
    with open(request_path) as f:
        request = json.load(f)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = request_path + "-profile"
    start = time.perf_counter_ns()
    session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - start) / 1e6
    feeds = {
        t["name"]: np.asarray(t["data"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"]) for t in request["inputs"]
    }
    if profile:
        return print_profile(session, feeds, request["iterations"])
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


def print_profile(session, feeds, runs, warmup=5) -> int:
    for _ in range(warmup + runs):
        session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    # The warm-up runs (allocation, caching) are not counted: node events before the end of the last of them.
    model_runs = sorted((e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    if len(model_runs) != warmup + runs:
        print(f"expected {warmup + runs} profiled runs, found {len(model_runs)}", file=sys.stderr)
        return 1
    counted_from = model_runs[warmup - 1]
    totals, nodes = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < counted_from:
            continue
        op = e.get("args", {}).get("op_name", "?")
        totals[op] = totals.get(op, 0) + e["dur"]
        nodes.setdefault(op, set()).add(e["name"])
    operators = [
        {"operator": op, "nodes": len(nodes[op]), "us_per_run": us / runs}
        for op, us in sorted(totals.items(), key=lambda kv: -kv[1])
    ]
    print(json.dumps({"onnxruntime": ort.__version__, "operators": operators}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
