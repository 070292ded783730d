#!/usr/bin/python3
"""Writes fixtures/suites/ocr-direction/: a labelled evaluation suite for the PP-OCR text-direction classifier
(capability ocr.text-direction). Each text line is rendered from a real font, once upright (label 0) and once
rotated 180 degrees (label 1), so the labels hold by construction; every crop is then preprocessed exactly as
PaddleOCR's classifier (and rapidocr's TextClassifier) does: resize to height 48 keeping the aspect ratio (width
ceil(48 * w / h), at most 192, bilinear), x / 255, (x - 0.5) / 0.5, HWC -> CHW, zero-padded on the right to 192.
The rotation is applied to the crop before preprocessing, as a rotated line reaches the classifier in the pipeline.

Needs Debian's python3-pil, python3-numpy, fonts-dejavu-core and fonts-liberation (bookworm:
`apt-get install -y python3-pil python3-numpy fonts-dejavu-core fonts-liberation`), run with /usr/bin/python3.
Deterministic: a fixed word list, fixed font files, no randomness; the same packages give the same bytes (another
FreeType or Pillow version may move a few pixels, so regenerating means a new suite: bump `name` in suite.toml).

    scripts/make-ocr-suite.py [OUT_DIR]   # default fixtures/suites/ocr-direction
"""
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEJAVU = "/usr/share/fonts/truetype/dejavu/"
LIBERATION = "/usr/share/fonts/truetype/liberation/"
# (text, font file, background grey, ink grey): lengths from 2 to 22 characters, six families, varied contrast.
LINES = [
    ("OK", DEJAVU + "DejaVuSans-Bold.ttf", 255, 0),
    ("Outpost", LIBERATION + "LiberationSerif-Regular.ttf", 250, 20),
    ("warehouse 7", DEJAVU + "DejaVuSans.ttf", 240, 30),
    ("Lot A-1147", LIBERATION + "LiberationMono-Regular.ttf", 255, 40),
    ("Total: 41.90 EUR", LIBERATION + "LiberationSans-Regular.ttf", 235, 10),
    ("invoice 2026-12-07", DEJAVU + "DejaVuSerif.ttf", 255, 0),
    ("shipping label", LIBERATION + "LiberationSans-Bold.ttf", 245, 50),
    ("batch 7 / line 3", DEJAVU + "DejaVuSansMono.ttf", 230, 15),
    ("The quick brown fox jumps", DEJAVU + "DejaVuSansCondensed.ttf", 255, 25),
]
IMG_C, IMG_H, IMG_W = 3, 48, 192
FONT_PX = 32
MARGIN = 4


def render(text, font_file, bg, ink):
    """One text-line crop, RGB, text tight inside a small margin (what a detector's box gives the classifier)."""
    font = ImageFont.truetype(font_file, FONT_PX)
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 2 * MARGIN, bottom - top + 2 * MARGIN
    img = Image.new("RGB", (w, h), (bg, bg, bg))
    ImageDraw.Draw(img).text((MARGIN - left, MARGIN - top), text, font=font, fill=(ink, ink, ink))
    return img


def preprocess(img):
    """PaddleOCR's ClsResizeImg / rapidocr's resize_norm_img for cls_image_shape [3, 48, 192]."""
    w, h = img.size
    resized_w = min(IMG_W, int(math.ceil(IMG_H * w / float(h))))
    resized = np.asarray(img.resize((resized_w, IMG_H), Image.BILINEAR), dtype=np.float32)
    resized = resized.transpose((2, 0, 1)) / 255.0
    resized = (resized - 0.5) / 0.5
    out = np.zeros((IMG_C, IMG_H, IMG_W), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "fixtures", "suites", "ocr-direction")
    os.makedirs(out_dir, exist_ok=True)
    crops, labels = [], []
    for text, font_file, bg, ink in LINES:
        img = render(text, font_file, bg, ink)
        for label, crop in ((0, img), (1, img.rotate(180))):
            crops.append(preprocess(crop)[np.newaxis])  # one sample of x[N, 3, 48, 192]: [1, 3, 48, 192]
            labels.append(label)
    np.save(os.path.join(out_dir, "crops.npy"), np.stack(crops).astype("<f4"))
    np.save(os.path.join(out_dir, "labels.npy"), np.asarray(labels, dtype="<i8"))
    print(f"{len(crops)} crops ({labels.count(0)} upright, {labels.count(1)} rotated) in {out_dir}")


if __name__ == "__main__":
    main()
