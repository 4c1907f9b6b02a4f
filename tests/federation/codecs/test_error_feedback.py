"""Error feedback: the EF identity, a bounded residual, and beating plain rounding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bitswarm.federation import codecs
from bitswarm.federation.codecs import RAW_CODEC, ErrorFeedback


def test_error_feedback_sum_tracks_true_sum(shapes):
    rng = np.random.default_rng(2)
    ef, plain_err = ErrorFeedback(), []
    true_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    ef_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    plain_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    residual_norms, ef_errs = [], []
    # A persistent small bias per coordinate: plain int8 rounds it away the same way every
    # round, so its error grows linearly; error feedback carries it forward.
    bias = {k: rng.standard_normal(s) * 1e-4 for k, s in shapes.items()}
    for _ in range(200):
        delta = {k: (bias[k] + rng.standard_normal(s) * 1e-4 * (k.endswith("B") * 30 + 1))
                 .astype(np.float32) for k, s in shapes.items()}
        _, dec = ef.compress(delta)
        _, plain = codecs.encode_update(delta)
        for k in delta:
            true_sum[k] += delta[k]
            ef_sum[k] += dec[k]
            plain_sum[k] += plain[k]
        # Invariant of EF: sum(decoded) = sum(true) - residual (up to float rounding).
        ef_errs.append(max(np.abs(true_sum[k] - ef_sum[k] - ef.residual[k]).max() for k in delta))
        residual_norms.append(math.sqrt(sum(float((e.astype(np.float64) ** 2).sum())
                                            for e in ef.residual.values())))
        plain_err.append(math.sqrt(sum(float(((true_sum[k] - plain_sum[k]) ** 2).sum())
                                       for k in delta)))
    ef_err = math.sqrt(sum(float(((true_sum[k] - ef_sum[k]) ** 2).sum()) for k in shapes))
    print(f"\nafter 200 rounds: |sum true - sum decoded| EF {ef_err:.3e}, plain int8 "
          f"{plain_err[-1]:.3e}; residual norm first/last {residual_norms[0]:.3e}/"
          f"{residual_norms[-1]:.3e}")
    assert max(ef_errs) < 1e-6                                  # the EF identity holds
    assert max(residual_norms[100:]) < 3 * max(residual_norms[:20])  # bounded, not growing
    assert ef_err < plain_err[-1] / 5                           # and it beats plain rounding


def test_error_feedback_rejects_key_change():
    ef = ErrorFeedback()
    ef.compress({"a": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="residual"):
        ef.compress({"b": np.ones((2, 2), np.float32)})
    ef.reset()
    ef.compress({"b": np.ones((2, 2), np.float32)})


def test_error_feedback_wraps_any_codec(shapes, random_delta):
    # Around a lossless codec the residual stays exactly zero.
    ef = ErrorFeedback(RAW_CODEC)
    assert isinstance(ef.codec, codecs.RawCodec)
    for seed in range(3):
        delta = random_delta(shapes, np.random.default_rng(seed))
        _, decoded = ef.compress(delta)
        assert all(decoded[k].tobytes() == delta[k].tobytes() for k in delta)
        assert all(not ef.residual[k].any() for k in delta)
    with pytest.raises(ValueError, match="codec"):
        ErrorFeedback("gzip")
