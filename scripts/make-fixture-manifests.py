#!/usr/bin/env python3
"""Writes the manifests of the real fixture models, with smoke-test goldens computed by onnxruntime.

Run once by hand (needs `pip install onnxruntime numpy`); the outputs are committed so tests need neither
Python nor the network. tract must reproduce onnxruntime's outputs within the tolerance written here.
"""
import hashlib
import math
import pathlib
import subprocess
import tempfile

import onnx

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "models"


def fmt(values):
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def run(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(HERE / model), so, providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}



def parity(outputs):
    """An honest evaluation card for a fixture: parity with onnxruntime on the smoke input, nothing more."""
    blob = b"".join(outputs[k].astype(np.float32).tobytes() for k in sorted(outputs))
    return f'''suite = {{ name = "onnxruntime-parity", digest = "{hashlib.sha256(blob).hexdigest()}" }}
metrics = {{ reference_outputs = {len(outputs)}.0, tolerance = 1e-4 }}
baseline = {{ name = "onnxruntime {ort.__version__} CPU, one thread" }}
decision = {{ outcome = "accepted", by = "fixture-maintainer", reason = "upstream weights; outputs match onnxruntime within tolerance" }}'''


COMMON = """
[runtime]
min_agent_version = "0.1.0"
memory_budget_bytes = {mem}
"""

# Silero VAD: two 36 ms frames of a 440 Hz tone at 16 kHz, zero LSTM state.
frames = np.array([[0.5 * math.sin(2 * math.pi * 440 * (f * 576 + i) / 16000) for i in range(576)] for f in range(2)],
                  dtype=np.float32)
h0 = np.zeros((1, 1, 128), dtype=np.float32)
out = run("silero_vad_16k_sequence.onnx", {"input": frames, "h": h0, "c": h0})
silero = f'''# Silero VAD 6.2.3 (16 kHz sequence export), from the `silero-vad` PyPI package, MIT licence.
name = "silero-vad"
version = "6.2.3"
capability = "audio.vad"
risk_tier = "low"
data_classification = "confidential"
license = "MIT"
description = "Voice activity detection on 16 kHz audio, a batch of 576-sample frames"
{COMMON.format(mem=64 * 1024 * 1024)}
[[contract.inputs]]
name = "input"
dtype = "f32"
shape = ["sequence_length", 576]

[[contract.inputs]]
name = "h"
dtype = "f32"
shape = [1, 1, 128]

[[contract.inputs]]
name = "c"
dtype = "f32"
shape = [1, 1, 128]

[[contract.outputs]]
name = "speech_probs"
dtype = "f32"
shape = ["sequence_length"]

[[contract.outputs]]
name = "hn"
dtype = "f32"
shape = [1, "layers", 128]

[[contract.outputs]]
name = "cn"
dtype = "f32"
shape = [1, "layers", 128]

[lineage]
operator = "none"

[evaluation]
{parity(out)}

[provenance]
built_by = "scripts/make-fixture-manifests.py"
source = "https://pypi.org/project/silero-vad/6.2.3/"
revision = "silero_vad-6.2.3-py3-none-any.whl sha256:7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"
built_at = "2026-11-28T16:00:00Z"

[smoke_test]
tolerance = 1e-4
inputs = [
  {{ name = "h", shape = [1, 1, 128], fill = 0.0 }},
  {{ name = "c", shape = [1, 1, 128], fill = 0.0 }},
  {{ name = "input", shape = [2, 576], values = {fmt(frames.ravel())} }},
]

[[smoke_test.expected]]
name = "speech_probs"
shape = [2]
values = {fmt(out["speech_probs"].ravel())}

[[smoke_test.expected]]
name = "hn"
shape = [1, 1, 128]
values = {fmt(out["hn"].ravel())}
'''
(HERE / "silero-vad.toml").write_text(silero)

# PP-OCR text-direction classifier: a mid-grey 48x192 crop.
x = np.full((1, 3, 48, 192), 0.5, dtype=np.float32)
out = run("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": x})
name = "save_infer_model/scale_0.tmp_1"
ocr = f'''# PP-OCR mobile v2.0 text-direction classifier, from the `rapidocr_onnxruntime` 1.4.4 PyPI package, Apache-2.0.
name = "ppocr-direction"
version = "2.0.0"
capability = "ocr.text-direction"
risk_tier = "low"
data_classification = "internal"
license = "Apache-2.0"
description = "Classifies a text-line crop as upright or rotated 180 degrees"
{COMMON.format(mem=32 * 1024 * 1024)}
[[contract.inputs]]
name = "x"
dtype = "f32"
shape = ["N", 3, "H", "W"]

[[contract.outputs]]
name = "{name}"
dtype = "f32"
shape = ["N", 2]

[lineage]
operator = "none"

[evaluation]
{parity(out)}

[provenance]
built_by = "scripts/make-fixture-manifests.py"
source = "https://pypi.org/project/rapidocr-onnxruntime/1.4.4/"
revision = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl sha256:971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
built_at = "2026-11-28T16:00:00Z"

[smoke_test]
tolerance = 1e-4
inputs = [{{ name = "x", shape = [1, 3, 48, 192], fill = 0.5 }}]
expected = [{{ name = "{name}", shape = [1, 2], values = {fmt(out[name].ravel())} }}]
'''
(HERE / "ppocr-direction.toml").write_text(ocr)

# A real derived model: the same classifier with its crop size fixed to 48x192 (what PP-OCR always feeds it), which
# lets runtimes plan memory ahead. Lineage: `convert` of the package above, whose digest the hub computes.
derived = onnx.load(str(HERE / "ch_ppocr_mobile_v2.0_cls_infer.onnx"))
dims = derived.graph.input[0].type.tensor_type.shape.dim
dims[0].dim_param = "N"
dims[2].dim_value = 48
dims[3].dim_value = 192
derived.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
onnx.checker.check_model(derived)
onnx.save(derived, str(HERE / "ppocr_direction_fixed48x192.onnx"))
with tempfile.TemporaryDirectory() as hub:
    run_hub = ["cargo", "run", "-q", "-p", "outpost-hub", "--", "--data-dir", hub]
    subprocess.run(run_hub + ["init"], check=True)
    parent = subprocess.run(run_hub + ["package", "add", str(HERE / "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                                       "--manifest", str(HERE / "ppocr-direction.toml")],
                            check=True, capture_output=True, text=True).stdout.strip()
child = ocr.replace('version = "2.0.0"', 'version = "2.0.1"')
child = child.replace('shape = ["N", 3, "H", "W"]', 'shape = ["N", 3, 48, 192]')
child = child.replace('operator = "none"', f'operator = "convert"\nparents = ["{parent}"]')
child = child.replace("# PP-OCR mobile v2.0 text-direction classifier,",
                      "# PP-OCR mobile v2.0 text-direction classifier with a fixed 48x192 crop (converted),")
child = child.replace('built_by = "scripts/make-fixture-manifests.py"',
                      'built_by = "scripts/make-fixture-manifests.py (onnx shape edit of the parent)"')
(HERE / "ppocr-direction-fixed.toml").write_text(child)
print("wrote the manifests in", HERE)
