"""Bootstrap intervals, paired tests and the headline (confagg.stats) on cases with known
answers."""

from __future__ import annotations

import numpy as np
import pytest

from confagg import stats


def test_identical_methods_differ_by_nothing_with_p_one():
    a = np.random.default_rng(0).integers(0, 2, 40).astype(float)
    t = stats.paired_test(a, a.copy())
    assert t["difference"] == 0 and t["low"] == 0 and t["high"] == 0
    assert t["p_value"] == 1.0 and not t["significant"]


@pytest.mark.parametrize("n", [10, 30])  # exact enumeration (2^10 patterns), random flips
def test_a_method_right_where_the_other_is_wrong_is_significant(n):
    right = np.ones(n)
    wrong = np.zeros(n)
    t = stats.paired_test(right, wrong)
    assert t["difference"] == 1.0 and t["low"] == pytest.approx(1.0) and t["significant"]
    # exact: 2 of 2^10 sign patterns are as extreme; random: only the observed one counts
    expected = 2 / 2**10 if n == 10 else 1 / (1 + stats.RESAMPLES)
    assert t["p_value"] == pytest.approx(expected)
    back = stats.paired_test(wrong, right)
    assert back["difference"] == -1.0 and back["high"] == pytest.approx(-1.0)
    assert back["p_value"] == t["p_value"]


def test_sign_flip_p_by_hand():
    # differences (1, 1, -1): sums over the 8 sign patterns are +-1 (6 times) and +-3 (twice)
    assert stats.sign_flip_p([1.0, 1.0, -1.0, 0.0]) == 1.0
    assert stats.sign_flip_p([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_problems():
    rng = np.random.default_rng(1)
    small = stats.bootstrap_mean(rng.integers(0, 2, 30).astype(float))
    large = stats.bootstrap_mean(rng.integers(0, 2, 500).astype(float))
    for ci in (small, large):
        assert ci["low"] < ci["mean"] < ci["high"]
    assert large["high"] - large["low"] < small["high"] - small["low"]
    with pytest.raises(ValueError, match="one finite number per problem"):
        stats.bootstrap_mean([0.5, np.nan])


def _vote(curve: dict[int, float], n: int = 20):
    """A vote whose accuracy at k is exactly ``curve[k]`` on n problems, k x 10 tokens each."""
    out = {}
    for k, acc in curve.items():
        right = np.zeros(n)
        right[: round(acc * n)] = 1
        out[k] = (right, np.full(n, 10.0 * k))
    return out


def test_headline_the_smallest_k_reached():
    vote = _vote({1: 0.3, 2: 0.5, 4: 0.6, 8: 0.7})
    acc = np.r_[np.ones(11), np.zeros(9)]  # 55 %: maj@4 (60 %) is the first to reach it
    h = stats.headline(acc, np.full(20, 25.0), vote)
    assert h["k"] == 4 and h["accuracy"]["mean"] == pytest.approx(0.55)
    assert h["token_ratio"] == pytest.approx(40 / 25)
    assert h["k_low"] is not None and h["k_low"] <= 4
    assert h["ratio_at_max_k"] == pytest.approx(80 / 25)


def test_headline_a_tie_counts_as_reached():
    vote = _vote({1: 0.3, 2: 0.5, 4: 0.6})
    h = stats.headline(np.r_[np.ones(10), np.zeros(10)], np.full(20, 10.0), vote)
    assert h["k"] == 2  # maj@2 = 50 % equals the aggregator's 50 %
    assert stats.reached_k(0.5 + 1e-12, {1: 0.3, 2: 0.5}) == 2  # float noise of a mean
    assert stats.reached_k(0.5 + 1e-6, {1: 0.3, 2: 0.5}) is None


def test_headline_not_reached_within_the_sampled_k():
    vote = _vote({1: 0.3, 2: 0.5, 4: 0.6})
    h = stats.headline(np.ones(20), np.full(20, 10.0), vote)
    assert h["k"] is None and h["token_ratio"] is None
    # every resample: the aggregator is right everywhere, the vote is not
    assert h["k_low"] is None and h["k_high"] is None and h["reached_share"] == 0.0
    assert h["ratio_at_max_k"] == pytest.approx(40 / 10)


def test_variant_pairs_from_the_config_entries():
    variants = [
        {"name": "prompted", "trained": None, "confidence": False},
        {"name": "prompted conf", "trained": None, "confidence": True},
        {"name": "AggLM", "trained": "plain", "confidence": False},
        {"name": "Conf-AggLM", "trained": "confidence", "confidence": True},
        {"name": "Conf-AggLM permuted", "trained": "confidence", "confidence": True,
         "confidences": "permuted"},
        {"name": "Conf-AggLM equal", "trained": "confidence", "confidence": True,
         "confidences": "equal"},
    ]  # fmt: skip
    pairs = stats.variant_pairs(variants)
    assert ("confidences shown vs not", "Conf-AggLM", "AggLM") in pairs
    assert ("confidences shown vs not", "prompted conf", "prompted") in pairs
    assert ("trained vs prompted", "Conf-AggLM", "prompted conf") in pairs
    assert ("trained vs prompted", "AggLM", "prompted") in pairs
    assert ("real confidences vs permuted", "Conf-AggLM", "Conf-AggLM permuted") in pairs
    assert ("real confidences vs equal", "Conf-AggLM", "Conf-AggLM equal") in pairs
    assert len(pairs) == 6  # the controls have no prompted self to compare with
