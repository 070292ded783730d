#!/usr/bin/env python3
"""The quality metric of `outpost-hub eval run`, computed with onnxruntime (one thread, default graph
optimisations) on a suite directory: the reference figure beside tract's in BENCHMARKS.md. Reads the suite's
`suite.toml` as the hub does: each input's array holds samples along its first axis (an array of the input's own
rank is one sample, used for every sample); `top1_accuracy` compares the first output's argmax with one label per
sample, `frame_accuracy` thresholds each element of the first output at 0.5 against a 0/1 label per element.
Needs Python 3.11+ and `pip install onnxruntime numpy`.

    scripts/onnxruntime-suite-accuracy.py MODEL.onnx SUITE_DIR   # e.g. fixtures/suites/ocr-direction
"""
import sys
import tomllib

import numpy as np
import onnxruntime as ort

model, suite = sys.argv[1], sys.argv[2]
with open(f"{suite}/suite.toml", "rb") as f:
    spec = tomllib.load(f)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
ranks = {i.name: len(i.shape) for i in session.get_inputs()}
arrays = {name: np.load(f"{suite}/{file}") for name, file in spec["inputs"].items()}
n = max(len(a) for name, a in arrays.items() if a.ndim == ranks[name] + 1)
labels = np.load(f"{suite}/{spec['labels']}")
metric = next(m for m in ("top1_accuracy", "frame_accuracy") if m in spec["metrics"])
right = total = 0
for i in range(n):
    feed = {name: (a[i] if a.ndim == ranks[name] + 1 else a) for name, a in arrays.items()}
    first = session.run(None, feed)[0]
    if metric == "top1_accuracy":
        hit = int(np.argmax(first.ravel()) == labels[i])
        right, total = right + hit, total + 1
        print(f"{i:2} label {labels[i]} scores {np.round(first.ravel(), 4)}{'' if hit else '  WRONG'}")
    else:
        hits = (first.ravel() >= 0.5) == (labels[i].ravel() != 0)
        right, total = right + int(hits.sum()), total + hits.size
        print(f"{i:2} {int(hits.sum())}/{hits.size} frames right")
print(f"onnxruntime {ort.__version__} {metric} {right / total:.4f} ({right}/{total})")
