import numpy as np
import pytest

from confagg.confidence import METRICS, token_confidence, trace_metrics


def test_token_confidence_skips_sampled_entry():
    # k = 3: each position has [sampled, rank1, rank2, rank3]
    flat = [
        -0.1,
        -0.1,
        -1.0,
        -2.0,  # sampled token is rank 1: counted once
        -5.0,
        -0.5,
        -1.5,
        -2.5,
    ]  # sampled token outside the top 3: ignored
    conf = token_confidence(flat, k=3)
    np.testing.assert_allclose(conf, [(0.1 + 1.0 + 2.0) / 3, (0.5 + 1.5 + 2.5) / 3], rtol=1e-6)


def test_token_confidence_rejects_wrong_k():
    with pytest.raises(ValueError, match="multiple of k"):
        token_confidence([-1.0] * 7, k=3)


def _naive(c, window, tail):
    c = np.asarray(c, dtype=np.float64)
    if len(c) == 0:
        return {m: np.nan for m in METRICS}
    w = min(window, len(c))
    groups = np.array([c[i : i + w].mean() for i in range(len(c) - w + 1)])
    k = max(1, int(0.1 * len(groups)))
    return {
        "mean": c.mean(),
        "bottom_10_percent": np.sort(groups)[:k].mean(),
        "lowest_group": groups.min(),
        "tail": c[-tail:].mean(),
    }


def test_metrics_hand_computed():
    # one trace of 6 tokens, window 2, tail 3
    c = np.array([1.0, 3.0, 2.0, 4.0, 0.0, 6.0])
    m = trace_metrics(c, [0, 6], window=2, tail_tokens=3)
    # groups: 2, 2.5, 3, 2, 3 -> lowest 2; bottom 10% of 5 groups = max(1, 0) = 1 group -> 2
    assert m["mean"][0] == pytest.approx(16 / 6)
    assert m["lowest_group"][0] == pytest.approx(2.0)
    assert m["bottom_10_percent"][0] == pytest.approx(2.0)
    assert m["tail"][0] == pytest.approx((4 + 0 + 6) / 3)


def test_short_trace_is_one_group_and_empty_is_nan():
    m = trace_metrics(np.array([1.0, 2.0, 4.0]), [0, 3, 3], window=10, tail_tokens=10)
    for name in METRICS:
        assert m[name][0] == pytest.approx(7 / 3)
        assert np.isnan(m[name][1])


def test_bottom_ten_percent_of_many_groups():
    # 25 tokens, window 5 -> 21 groups -> floor(2.1) = 2 lowest groups averaged
    c = np.arange(25, dtype=np.float64)[::-1]  # decreasing: the last groups are the lowest
    m = trace_metrics(c, [0, 25], window=5, tail_tokens=4)
    assert m["lowest_group"][0] == pytest.approx(np.mean([4, 3, 2, 1, 0]))
    assert m["bottom_10_percent"][0] == pytest.approx((2.0 + 3.0) / 2)
    assert m["tail"][0] == pytest.approx(1.5)


def test_matches_naive_on_random_ragged_traces():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 300, size=60)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    conf = rng.random(offsets[-1]).astype(np.float16) * 10
    got = trace_metrics(conf, offsets, window=50, tail_tokens=40)
    for t in range(len(lengths)):
        want = _naive(conf[offsets[t] : offsets[t + 1]], 50, 40)
        for name in METRICS:
            np.testing.assert_allclose(
                got[name][t],
                want[name],
                rtol=1e-5,
                equal_nan=True,
                err_msg=f"{name} of trace {t} (length {lengths[t]})",
            )


def test_batches_do_not_change_results(monkeypatch):
    import confagg.confidence as confidence

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 500, size=40)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    conf = rng.random(offsets[-1]) * 5
    whole = trace_metrics(conf, offsets, window=64, tail_tokens=64)
    monkeypatch.setattr(confidence, "_BATCH_TOKENS", 700)  # forces many small batches
    small = trace_metrics(conf, offsets, window=64, tail_tokens=64)
    for name in METRICS:
        np.testing.assert_allclose(small[name], whole[name], rtol=1e-6)
