#!/usr/bin/env python3
"""Loads an ONNX model of the PP-OCR direction classifier's contract with onnxruntime (one thread) and prints, as a
JSON list, its first output for one crop filled with 0.5: the cross-check the challenger tests run on the models
the hub's operators write (hub/tests/challenger.rs). Graph optimisations are off: onnxruntime's fusions compute some
int8 patterns in lower precision (~3e-4 apart on the per-tensor model), and this checks the ONNX semantics. Needs `pip install onnxruntime numpy`."""
import json
import sys

import numpy as np
import onnxruntime as ort

options = ort.SessionOptions()
options.intra_op_num_threads = 1
if "--optimised" not in sys.argv:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.full((1, 3, 48, 192), 0.5, dtype=np.float32)
print(json.dumps([float(v) for v in session.run(None, {"x": x})[0].ravel()]))
