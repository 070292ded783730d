#!/usr/bin/python3
"""Writes fixtures/suites/vad/: a labelled evaluation suite for silero-vad (capability audio.vad). Short phrases
are synthesised with espeak-ng in five languages, placed at a known offset in a 1.536 s clip of 48 frames of 512
samples at 16 kHz, and mixed with white noise at several SNRs; clips of silence, noise and mains hum carry no
speech. Labels hold by construction: a frame is speech (1) when it lies between the first and the last frame whose
clean-speech energy is within 35 dB of the phrase's loudest frame, else 0 (short pauses inside a phrase are speech,
as a VAD's hangover treats them). Each frame reaches the model as silero's 16 kHz export expects it: the 64
samples before it (zeros before the clip), then its 512 samples.

Needs Debian's espeak-ng and python3-numpy (bookworm: `apt-get install -y espeak-ng python3-numpy`), run with
/usr/bin/python3. Deterministic for one espeak-ng and numpy version (noise from a seeded PCG64); another version
may move samples, so regenerating means a new suite: bump `name` in suite.toml.

    scripts/make-vad-suite.py [OUT_DIR]   # default fixtures/suites/vad
"""
import io
import os
import subprocess
import sys
import wave

import numpy as np

RATE, FRAME, CONTEXT, FRAMES = 16000, 512, 64, 48
LEAD = int(0.3 * RATE)  # silence (or noise) before the phrase starts
TAIL = int(0.1 * RATE)  # at least this much after it ends
PEAK = 0.5  # clean phrases are scaled to this peak amplitude
ON_DB = -35.0  # a frame within this many dB of the loudest frame is inside the phrase
# (text, espeak-ng voice, words per minute)
PHRASES = [
    ("all clear", "en-gb", 160),
    ("stop line three", "en-us", 175),
    ("bitte warten", "de", 165),
    ("merci beaucoup", "fr", 165),
    ("hola buenos dias", "es", 180),
    ("seven twelve", "en-us+f3", 170),
]
SNRS_DB = [None, 10.0, 0.0]  # None: clean


def speak(text, voice, speed):
    """The phrase as float64 samples at 16 kHz (espeak-ng writes 22.05 kHz; resampled by FFT, band-limited)."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    # Trim espeak's leading and trailing digital silence so the offset below is the phrase's.
    loud = np.nonzero(np.abs(x) > 1e-4)[0]
    x = x[loud[0]:loud[-1] + 1]
    n = int(round(len(x) * RATE / rate))
    spectrum = np.fft.rfft(x)
    resampled = np.zeros(n // 2 + 1, dtype=complex)
    k = min(len(spectrum), len(resampled))
    resampled[:k] = spectrum[:k]
    y = np.fft.irfft(resampled, n) * n / len(x)
    return y * PEAK / np.max(np.abs(y))


def frames_of(clip):
    """[FRAMES, CONTEXT + FRAME]: each frame with the CONTEXT samples before it."""
    padded = np.concatenate([np.zeros(CONTEXT), clip])
    return np.stack([padded[i * FRAME:i * FRAME + CONTEXT + FRAME] for i in range(FRAMES)])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "fixtures/suites/vad"
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(20261207))
    length = FRAMES * FRAME
    clips, labels = [], []
    for text, voice, speed in PHRASES:
        speech = speak(text, voice, speed)
        if LEAD + len(speech) + TAIL > length:
            sys.exit(f"`{text}` lasts {len(speech) / RATE:.2f} s: too long for a {length / RATE:.3f} s clip")
        clean = np.zeros(length)
        clean[LEAD:LEAD + len(speech)] = speech
        energy = np.sqrt((clean.reshape(FRAMES, FRAME) ** 2).mean(axis=1))
        on = np.nonzero(energy > energy.max() * 10 ** (ON_DB / 20))[0]
        label = np.zeros(FRAMES, dtype=np.int64)
        label[on[0]:on[-1] + 1] = 1
        power = (speech ** 2).mean()
        for snr in SNRS_DB:
            noise = 0.0 if snr is None else rng.standard_normal(length) * np.sqrt(power / 10 ** (snr / 10))
            clips.append(frames_of(clean + noise))
            labels.append(label)
    t = np.arange(length) / RATE
    white = rng.standard_normal(length) * 10 ** (-30 / 20)
    brown = np.cumsum(rng.standard_normal(length))
    brown = (brown - np.convolve(brown, np.ones(401) / 401, mode="same")) * 0.02
    hum = 0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t)
    for quiet in [np.zeros(length), white, brown, hum]:
        clips.append(frames_of(quiet))
        labels.append(np.zeros(FRAMES, dtype=np.int64))
    inputs = np.stack(clips).astype(np.float32)
    np.save(os.path.join(out_dir, "audio.npy"), inputs)
    np.save(os.path.join(out_dir, "labels.npy"), np.stack(labels))
    np.save(os.path.join(out_dir, "state.npy"), np.zeros((1, 1, 128), dtype=np.float32))
    speech_frames = int(np.stack(labels).sum())
    print(f"{out_dir}: {len(clips)} clips of {FRAMES} frames, {speech_frames} of {len(clips) * FRAMES} frames speech")


if __name__ == "__main__":
    main()
