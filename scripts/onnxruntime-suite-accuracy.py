#!/usr/bin/env python3
"""Top-1 accuracy of an ONNX model of the PP-OCR direction classifier's contract on a suite directory's
`crops.npy` and `labels.npy` (fixtures/suites/ocr-direction, written by scripts/make-ocr-suite.py), with
onnxruntime on one thread and its default graph optimisations: the reference figure beside `outpost-hub eval run`'s
tract one (BENCHMARKS.md). Prints per-sample scores, then the accuracy. Needs `pip install onnxruntime numpy`.

    scripts/onnxruntime-suite-accuracy.py MODEL.onnx [SUITE_DIR]
"""
import sys

import numpy as np
import onnxruntime as ort

model = sys.argv[1]
suite = sys.argv[2] if len(sys.argv) > 2 else "fixtures/suites/ocr-direction"
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
crops, labels = np.load(f"{suite}/crops.npy"), np.load(f"{suite}/labels.npy")
right = 0
for i, (crop, label) in enumerate(zip(crops, labels)):
    scores = session.run(None, {"x": crop})[0][0]
    right += int(np.argmax(scores) == label)
    print(f"{i:2} label {label} scores {scores[0]:.4f} {scores[1]:.4f}{'' if np.argmax(scores) == label else '  WRONG'}")
print(f"onnxruntime {ort.__version__} top1_accuracy {right / len(labels):.4f} ({right}/{len(labels)})")
