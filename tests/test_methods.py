"""Aggregation methods and metrics against hand-computed values (confagg.methods, answer
grouping in confagg.grouping, a benchmark x seed's metrics in confagg.evaluate, and the seeds'
summary of confagg.report)."""

import copy
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from confagg import methods as mt
from confagg.confidence import METRICS
from confagg.grouping import normalise_answer
from confagg.scoring import Online, evaluate_benchmark, in_memory_spend, method_names
from confagg.summaries import flatten, seed_summary

# ---------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize("k", [1, 2, 5])
def test_pass_at_k_no_correct_is_zero(k):
    assert mt.pass_at_k(5, 0, k) == 0.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pass_at_k_all_correct_is_one(k):
    assert mt.pass_at_k(5, 5, k) == 1.0


def test_pass_at_k_with_k_equal_n():
    # the one k-subset is the whole sample: right iff any sample is
    assert mt.pass_at_k(5, 1, 5) == 1.0
    assert mt.pass_at_k(5, 0, 5) == 0.0
    # n - c < k: every k-subset holds a correct sample
    assert mt.pass_at_k(5, 3, 3) == 1.0


def test_pass_at_k_hand_values():
    assert mt.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert mt.pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert mt.pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_pass_at_k_vectorised_and_undefined_beyond_n():
    got = mt.pass_at_k([4, 2, 6], [1, 1, 0], 3)
    np.testing.assert_allclose(got[[0, 2]], [1 - 1 / 4, 0.0])
    assert np.isnan(got[1])  # k > n
    assert isinstance(mt.pass_at_k(4, 1, 2), float)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k >= 1"):
        mt.pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        mt.pass_at_k(4, 5, 2)


def test_pass_at_k_matches_exact_binomials():
    for n in (1, 7, 64, 128):
        c = np.arange(n + 1)
        for k in {k for k in (1, 2, 8, n // 2 or 1, n) if k <= n}:
            exact = [1 - math.comb(n - ci, k) / math.comb(n, k) for ci in c]
            np.testing.assert_allclose(mt.pass_at_k(n, c, k), exact, rtol=0, atol=1e-12)


def test_pass_at_1_is_mean_correctness():
    assert mt.pass_at_1([True, False, False, True]) == 0.5


# ---------------------------------------------------------------------------------------------
# Answers


def test_normalise_answer_groups_aime_integers():
    assert normalise_answer("025") == normalise_answer("$25$") == "25"
    assert normalise_answer(" 25. ") == normalise_answer("25.0") == "25"
    assert normalise_answer("1,000") == "1000"
    assert normalise_answer("\\dfrac{1}{2}") == normalise_answer("\\frac{1}{2}")
    assert normalise_answer("\\text{(A)}") == "(A)"
    assert normalise_answer(None) is None
    assert normalise_answer("  ") is None


def test_answer_codes_none_is_no_answer():
    np.testing.assert_array_equal(mt.answer_codes(["x", None, "x", "y"]), [0, -1, 0, 1])
    np.testing.assert_array_equal(mt.answer_codes([[3, -1], [3, 2]]), [[3, -1], [3, 2]])


# ---------------------------------------------------------------------------------------------
# Voting and the tie rule


def test_majority_vote_ties_go_to_the_answer_seen_first():
    assert mt.majority_vote(["b", "a", "a", "b"]) == 0
    assert mt.majority_vote(["c", "a", "b", "a", "b"]) == 1  # a and b tie; a appears first
    assert mt.majority_vote(["a", "b", "b"]) == 1  # no tie: the majority


def test_none_answers_never_win():
    assert mt.majority_vote([None, None, None, "a", "b"]) == 3
    assert mt.majority_vote([None, None]) == -1
    assert mt.weighted_vote([None, "a"], [0.9, 0.1]) == 1
    w = mt.majority_vote([[None, None], ["a", None]])
    np.testing.assert_array_equal(w, [-1, 0])
    # a set that picks nothing is wrong even when some candidate is marked correct
    np.testing.assert_array_equal(mt.picked_correct(w, [[True, True], [True, False]]), [0, 1])


def test_majority_top_lists_the_tied_answers_in_set_order():
    assert mt.majority_top(["b", "a", "a", "b", "c"]) == [0, 1]  # b and a tie at 2
    assert mt.majority_top([None, "a", "b", "b"]) == [2]
    assert mt.majority_top([None, None]) == []
    for keys in (["c", "a", "b", "a", "b"], ["a", None, "a"], ["x"]):
        assert mt.majority_top(keys)[0] == mt.majority_vote(keys)  # the same pick


def test_weighted_vote_flips_the_majority():
    keys = ["a", "a", "a", "b", "b"]
    conf = [0.1, 0.1, 0.1, 0.9, 0.9]  # a: 0.3, b: 1.8
    correct = [False, False, False, True, True]
    assert mt.majority_vote(keys) == 0
    assert mt.weighted_vote(keys, conf) == 3
    assert not mt.picked_correct(mt.majority_vote(keys), correct)[0]
    assert mt.picked_correct(mt.weighted_vote(keys, conf), correct)[0]


def test_weighted_vote_ties_and_weights():
    # exact tie (1.0 vs 0.5 + 0.5): the answer seen first
    assert mt.weighted_vote(["a", "b", "b"], [1.0, 0.5, 0.5]) == 0
    assert mt.weighted_vote(["b", "b", "a"], [0.5, 0.5, 1.0]) == 0
    assert mt.weighted_vote(["a", "b"], [np.nan, 0.1]) == 1  # NaN weighs 0
    with pytest.raises(ValueError, match=">= 0"):
        mt.weighted_vote(["a", "b"], [-1.0, 0.1])


def test_batched_votes_equal_one_set_at_a_time():
    keys = [["b", "a", "a", "b"], ["a", "b", "b", None], [None, None, None, None]]
    conf = [[0.1, 0.2, 0.3, 0.9], [0.9, 0.1, 0.2, 0.5], [0.1, 0.2, 0.3, 0.4]]
    codes = mt.answer_codes(keys)
    for fn in (
        mt.majority_vote,
        mt.weighted_vote,
        lambda k, c: mt.filtered_vote(k, c, 10),
        mt.best_of,
    ):
        args = (codes,) if fn is mt.majority_vote else (codes, conf)
        batch = fn(*args)
        single = [fn(*(a[i] for a in args)) for i in range(3)]
        np.testing.assert_array_equal(batch, single)


# ---------------------------------------------------------------------------------------------
# DeepConf filtering and best-of-k


def test_keep_count_rounding():
    n = [0, 1, 2, 3, 4, 8, 11, 16, 128]
    np.testing.assert_array_equal(mt.keep_count(n, 10), [0, 1, 1, 1, 1, 1, 2, 2, 13])
    np.testing.assert_array_equal(mt.keep_count(n, 90), [0, 1, 1, 2, 3, 7, 10, 14, 115])
    assert mt.keep_count(5, 100) == 5
    with pytest.raises(ValueError, match="eta"):
        mt.keep_count(5, 0)


def test_filter_with_fewer_traces_than_the_percentage_keeps_one():
    # 3 answered traces, eta = 10 %: 0.3 of a trace -> keep 1, the most confident
    keys, conf = ["a", "b", "b"], [0.9, 0.5, 0.6]
    assert mt.weighted_vote(keys, conf) == 1  # b: 1.1 beats a: 0.9
    assert mt.filtered_vote(keys, conf, 10) == 0  # only a survives
    assert mt.filtered_vote(["a"], [0.2], 10) == 0
    assert mt.filtered_vote([None, None], [0.2, 0.3], 10) == -1


def test_filter_drops_the_least_confident_then_tie_rule():
    keys, conf = ["b", "a", "a"], [0.5, 0.5, 0.05]
    assert mt.weighted_vote(keys, conf) == 1  # a: 0.55 beats b: 0.5
    # eta = 90 of 3 keeps 1 + floor(1.8) = 2: a@0.05 goes; b 0.5 ties a 0.5; b comes first
    assert mt.filtered_vote(keys, conf, 90) == 0


def test_filter_ties_at_the_cut_keep_set_order():
    assert mt.filtered_vote(["a", "b", "c"], [0.5, 0.5, 0.5], 10) == 0
    assert mt.filtered_vote(["b", "a", "a"], [0.7, 0.7, 0.1], 10) == 0


def test_filter_counts_and_keeps_only_answered_traces():
    # 2 answered -> eta 90 keeps 1 + floor(0.9) = 1; the confident unanswered ones are ignored
    keys = [None, None, None, "a", "b"]
    conf = [9.0, 9.0, 9.0, 0.2, 0.3]
    assert mt.filtered_vote(keys, conf, 90) == 4
    np.testing.assert_array_equal(mt.confidence_rank(keys, conf), [2, 3, 4, 1, 0])


def test_best_of_k():
    assert mt.best_of(["a", "b", "c"], [0.2, 0.9, 0.5]) == 1
    assert mt.best_of([None, "a", "b"], [0.99, 0.1, 0.2]) == 2  # no answer is never picked
    assert mt.best_of(["b", "a"], [0.7, 0.7]) == 0  # tie: set order
    assert mt.best_of(["a", "b"], [np.nan, 0.1]) == 1  # NaN ranks last
    assert mt.best_of([None, None], [0.1, 0.2]) == -1


def _naive_pick(keys, weights, voters):
    """The documented rule, written plainly: highest total, ties to the first-seen answer."""
    totals, first = {}, {}
    for pos, (key, w, v) in enumerate(zip(keys, weights, voters, strict=True)):
        if v and key >= 0:
            totals[key] = totals.get(key, 0.0) + (0.0 if np.isnan(w) else w)
            first.setdefault(key, pos)
    if not totals:
        return -1
    return first[min(totals, key=lambda a: (-totals[a], first[a]))]


def test_vectorised_methods_match_the_plain_rule():
    rng = np.random.default_rng(0)
    for k in (1, 2, 5, 16):
        keys = rng.integers(-1, 3, size=(300, k))
        conf = rng.choice([0.1, 0.25, 0.5, 1.0, np.nan], size=(300, k))  # many exact ties
        got = {
            "majority": mt.majority_vote(keys),
            "weighted": mt.weighted_vote(keys, conf),
            "best": mt.best_of(keys, conf),
            **{eta: mt.filtered_vote(keys, conf, eta) for eta in (10, 50, 90)},
        }
        for s, (ks, cs) in enumerate(zip(keys, conf, strict=True)):
            answered = ks >= 0
            assert got["majority"][s] == _naive_pick(ks, np.ones(k), answered)
            assert got["weighted"][s] == _naive_pick(ks, cs, answered)
            score = np.where(np.isnan(cs), -np.inf, cs)
            order = sorted(np.flatnonzero(answered), key=lambda i: (-score[i], i))
            assert got["best"][s] == (order[0] if order else -1)
            for eta in (10, 50, 90):
                keep = set(order[: mt.keep_count(answered.sum(), eta)])
                kept = [i in keep for i in range(k)]
                assert got[eta][s] == _naive_pick(ks, cs, kept)


# ---------------------------------------------------------------------------------------------
# Disjoint sets and maj@k


def test_disjoint_sets():
    np.testing.assert_array_equal(
        mt.disjoint_sets(10, 3), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    )  # sample 9 is left over
    assert mt.disjoint_sets(3, 4).shape == (0, 4)
    a = mt.disjoint_sets(16, 4, np.random.default_rng(1))
    b = mt.disjoint_sets(16, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert sorted(a.ravel()) == list(range(16))
    assert (np.diff(a, axis=1) > 0).all()  # each set in sample order
    assert not np.array_equal(a, mt.disjoint_sets(16, 4))


def test_maj_at_k_over_disjoint_sets():
    keys = ["a", "a", "b", "b", "b", "a"]
    correct = [k == "a" for k in keys]
    # k=2: [a a] right, [b b] wrong, [b a] tie -> b (first) wrong
    assert mt.maj_at_k(keys, correct, 2) == pytest.approx(1 / 3)
    assert mt.maj_at_k(keys, correct, 3) == 0.5  # [a a b] right, [b b a] wrong
    assert mt.maj_at_k(keys, correct, 4) == 1.0  # [a a b b] tie -> a; 2 left over
    assert mt.maj_at_k(keys, correct, 6) == 1.0  # 3 - 3 tie -> a
    assert mt.maj_at_k(keys, correct, 1) == mt.pass_at_1(correct)
    assert np.isnan(mt.maj_at_k(keys, correct, 7))


def test_maj_at_k_all_none_set_is_wrong():
    keys = [None, None, "x", "x"]
    assert mt.maj_at_k(keys, [False, False, True, True], 2) == 0.5


# ---------------------------------------------------------------------------------------------
# AUROC


def test_auroc_hand_example():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ordered -> 0.75
    assert mt.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert mt.auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert mt.auroc([3, 2, 1], [0, 1, 1]) == 0.0


def test_auroc_ties_count_one_half():
    # pairs (pos, neg): (1,1) tie 0.5, (1,2) 0, (3,1) 1, (3,2) 1 -> 2.5 / 4
    assert mt.auroc([1, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.625)
    assert mt.auroc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    np.testing.assert_array_equal(mt.average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])


def test_auroc_one_class_or_nan_scores():
    assert np.isnan(mt.auroc([0.1, 0.2], [True, True]))
    assert np.isnan(mt.auroc([0.1, 0.2], [False, False]))
    assert mt.auroc([0.1, np.nan, 0.9], [0, 0, 1]) == 1.0  # NaN dropped
    assert np.isnan(mt.auroc([np.nan, 0.9], [0, 1]))  # one class left


def test_auroc_equals_pair_counting():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, 60).astype(float)
    y = rng.random(60) < 0.4
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s[y], s[~y])]
    assert mt.auroc(s, y) == pytest.approx(np.mean(pairs))


# ---------------------------------------------------------------------------------------------
# evaluate_benchmark on a hand-computed table


def _table():
    # p1: gold 7; "6/2" is 3 for the verifier (same answer group). p2: all right.
    conf1 = {"mean": [0.9, 0.3, 0.3, 0.1], "tail": [0.1, 0.5, 0.5, 0.9]}
    conf2 = {"mean": [0.8] * 4, "tail": [0.2] * 4}
    rows = []
    for pid, answers, keys, correct, tokens, conf in [
        ("p1", ["7", "3", "6/2", None], [0, 1, 1, -1], [1, 0, 0, 0], [10, 20, 30, 40], conf1),
        ("p2", ["5"] * 4, [0] * 4, [1] * 4, [1] * 4, conf2),
    ]:  # fmt: skip
        for i in range(4):
            rows.append(
                {
                    "problem_id": pid,
                    "sample_idx": i,
                    "answer": answers[i],
                    "answer_group": keys[i],
                    "correct": bool(correct[i]),
                    "num_tokens": tokens[i],
                    "mean": conf["mean"][i],
                    "bottom_10_percent": conf["mean"][i],
                    "lowest_group": conf["mean"][i],
                    "tail": conf["tail"][i],
                }
            )
    # shuffled rows: the evaluation orders samples itself
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)


def _acc(result, method, k):
    return result["methods"][method]["by_k"][str(k)]["accuracy"]


def _tok(result, method, k):
    return result["methods"][method]["by_k"][str(k)]["tokens_per_problem"]


def test_evaluate_benchmark_hand_computed():
    r = evaluate_benchmark(_table(), ks=[8, 1, 2, 4], seed=0)
    json.dumps(r, allow_nan=False)
    assert r["ks"] == [1, 2, 4] and r["ks_skipped"] == [8]
    assert r["n_problems"] == 2 and r["n_samples"] == 8
    assert r["pass@1"] == pytest.approx((0.25 + 1) / 2)
    assert r["answered"] == pytest.approx(7 / 8)
    assert r["inconsistent_keys"] == 0
    assert list(r["methods"]) == method_names()
    # pass@k: p1 has n=4, c=1
    assert _acc(r, "pass", 1) == pytest.approx(0.625)
    assert _acc(r, "pass", 2) == pytest.approx((0.5 + 1) / 2)
    assert _acc(r, "pass", 4) == 1.0
    # maj@2: p1 sets [7 3] tie -> 7 right, [3 None] -> 3 wrong; maj@4: 3 (with 6/2) wins
    assert _acc(r, "majority", 1) == pytest.approx(0.625)
    assert _acc(r, "majority", 2) == pytest.approx((0.5 + 1) / 2)
    assert _acc(r, "majority", 4) == pytest.approx((0 + 1) / 2)
    # mean confidence: 7 has 0.9 vs 3's 0.6 -> the weighted vote flips maj@4
    assert _acc(r, "weighted:mean", 4) == 1.0
    assert _acc(r, "top10:mean", 4) == 1.0 and _acc(r, "top90:mean", 4) == 1.0
    assert _acc(r, "best:mean", 4) == 1.0
    # tail confidence points the other way; the confident unanswered trace is ignored
    assert _acc(r, "weighted:tail", 4) == 0.5
    assert _acc(r, "best:tail", 4) == 0.5
    # tokens: p1 sets of 2 read 30 and 70, p2 sets read 2
    assert _tok(r, "majority", 2) == pytest.approx((50 + 2) / 2)
    assert _tok(r, "best:tail", 4) == pytest.approx((100 + 4) / 2)
    assert _tok(r, "pass", 2) == pytest.approx((2 * 25 + 2 * 1) / 2)
    assert r["methods"]["majority"]["by_k"]["2"]["n_sets"] == 4
    # AUROC: mean separates perfectly, tail inverts; only p1 has both classes
    assert r["auroc"]["mean"] == {"pooled": 1.0, "per_problem_mean": 1.0, "n_problems": 1}
    assert r["auroc"]["tail"]["pooled"] == 0.0


def test_evaluate_benchmark_answer_groups_decide_equivalence():
    table = _table()
    grouped = evaluate_benchmark(table, ks=[4], seed=0)
    # "3" and "6/2" in one group outvote 7; split, 7, 3, 6/2 tie and 7 comes first
    split = table.assign(answer_group=table["answer_group"].mask(table["answer"] == "6/2", 2))
    assert _acc(grouped, "majority", 4) == 0.5
    assert _acc(evaluate_benchmark(split, ks=[4], seed=0), "majority", 4) == 1.0
    # a sample whose group is -1 abstains, whatever its answer string
    abstain = table.assign(answer_group=table["answer_group"].mask(table["answer"] == "7", -1))
    assert _acc(evaluate_benchmark(abstain, ks=[4], seed=0), "best:mean", 4) == 0.5


def test_evaluate_benchmark_flags_mixed_verdicts_and_bad_tables():
    table = _table()
    mixed = table.assign(correct=table["correct"] | (table["answer"] == "6/2"))
    assert evaluate_benchmark(mixed, ks=[1], seed=0)["inconsistent_keys"] == 1
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate_benchmark(table.drop(columns="tail"), ks=[1], seed=0)
    with pytest.raises(ValueError, match="repeats"):
        evaluate_benchmark(pd.concat([table, table.iloc[:1]]), ks=[1], seed=0)


def test_evaluate_benchmark_shuffle_is_seeded():
    table = _table()
    a = evaluate_benchmark(table, ks=[1, 2, 4], seed=5, shuffle=True)
    assert a == evaluate_benchmark(table, ks=[1, 2, 4], seed=5, shuffle=True)
    plain = evaluate_benchmark(table, ks=[1, 2, 4], seed=5)
    for name in method_names():  # one set of all samples, or single samples: no order effect
        for k in (1, 4):
            assert _acc(a, name, k) == _acc(plain, name, k)


def test_evaluate_benchmark_aggregator_rows():
    agg = pd.DataFrame(
        [
            # method, problem, set, k, correct, tokens (r = 2 calls per set)
            ("agg", "p1", 0, 2, True, 100),
            ("agg", "p1", 0, 2, False, 200),
            ("agg", "p1", 1, 2, True, 50),
            ("agg", "p1", 1, 2, True, 50),
            ("agg", "p2", 0, 2, True, 10),
            ("agg", "p2", 1, 2, True, 10),
        ],
        columns=["method", "problem_id", "set_idx", "k", "correct", "num_tokens"],
    )
    r = evaluate_benchmark(_table(), ks=[2], seed=0, aggregator=agg)
    cell = r["methods"]["agg"]["by_k"]["2"]
    assert r["methods"]["agg"]["family"] == "aggregator"
    assert cell["accuracy"] == pytest.approx(((0.5 + 1.0) / 2 + 1.0) / 2)
    # p1: set 0 reads 30 sample tokens + 150 per call, set 1 70 + 50; p2: 2 + 10
    assert cell["tokens_per_problem"] == pytest.approx(((180 + 120) / 2 + 12) / 2)
    assert cell["n_sets"] == 4
    with pytest.raises(ValueError, match="set_idx"):
        evaluate_benchmark(_table(), ks=[2], seed=0, aggregator=agg.assign(set_idx=2))
    with pytest.raises(ValueError, match="no aggregator output"):
        evaluate_benchmark(_table(), ks=[2], seed=0, aggregator=agg[agg.problem_id == "p1"])


def test_flatten_and_seed_summary():
    r0 = evaluate_benchmark(_table(), ks=[1, 2], seed=0)
    r1 = copy.deepcopy(r0)
    r1["seed"] = 1
    r1["methods"]["majority"]["by_k"]["2"]["accuracy"] = 0.25
    flat = flatten(r0)
    assert len(flat) == len(method_names()) * 2
    assert set(flat.columns) >= {"method", "k", "accuracy", "tokens_per_problem", "label"}
    summary = seed_summary([r0, r1]).set_index(["method", "k"])
    row = summary.loc[("majority", 2)]
    assert row["n_seeds"] == 2
    assert row["accuracy_mean"] == pytest.approx((0.75 + 0.25) / 2)
    assert row["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert summary.loc[("pass", 1), "accuracy_std"] == 0.0
    assert summary.loc[("weighted:tail", 1), "metric"] == "tail"
    assert set(METRICS) == set(r0["auroc"])


# ---------------------------------------------------------------------------------------------
# DeepConf-online, simulated from stored traces


def test_online_stops_at_the_first_window_below_the_threshold():
    # window 3: group means 5, 14/3, 10/3, 2, 7/3, 11/3 (the groups end at tokens 2..7)
    conf = [5, 5, 5, 4, 1, 1, 5, 5]
    spent = mt.online_spent(conf, 3, [3.0, 4.0, 1.0, 10 / 3])
    # < 3: the group of tokens 3..5 (mean 2) is the first, so 6 tokens are generated; < 4: the
    # group 2..4 (10/3); < 1: none, the whole trace; < 10/3 exactly: 10/3 is not below it
    np.testing.assert_array_equal(spent, [6, 5, 8, 6])
    assert mt.online_spent([0.1, 0.1], 3, [5.0]).tolist() == [2]  # shorter than w: never stopped
    assert mt.online_spent([9, 9, 1], 3, [7.0]).tolist() == [3]  # stopped on its last token


def test_online_threshold_is_numpys_percentile():
    warm = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert mt.online_threshold(warm, 10) == pytest.approx(4.6)  # 90th percentile
    assert mt.online_threshold(warm, 90) == pytest.approx(1.4)
    assert np.isnan(mt.online_threshold([np.nan], 10))


def test_deepconf_online_one_set_by_hand():
    keys = [0, 1, 0, 1, 1, 0]
    lowest = [3.0, 1.0, 2.0, 2.5, 0.5, 4.0]
    tokens = np.array([10, 10, 10, 10, 10, 10])
    # warm-up: the first 2; threshold 2.0: trace 0 (3.0) votes, trace 1 (1.0) does not
    spent = np.array([10, 10, 10, 10, 4, 10])  # trace 4 is stopped after 4 tokens
    # after the warm-up answer 0 holds all the weight: consensus 1.0 >= 0.95, nothing drawn
    assert mt.deepconf_online(keys, lowest, tokens, spent, 2, 2.0, 0.95) == (0, 20, 2)
    # tau above 1 draws everything: votes 0: 3 + 2 + 4 = 9, 1: 2.5; trace 4 stopped, no vote
    assert mt.deepconf_online(keys, lowest, tokens, spent, 2, 2.0, 1.01) == (0, 54, 6)
    # two warm-up voters: 1: 1.0, 0: 3.0, so 0 leads with 0.75 of the weight
    keys, lowest = [1, 0, 1, 0], [1.0, 3.0, 2.5, 2.0]
    assert mt.deepconf_online(keys, lowest, tokens[:4], tokens[:4], 2, 1.0, 0.7) == (1, 20, 2)
    # tau 0.8: trace 2 (1: 3.5 of 6.5), trace 3 (0: 5.0 of 8.5), the budget is spent
    assert mt.deepconf_online(keys, lowest, tokens[:4], tokens[:4], 2, 1.0, 0.8) == (1, 40, 4)
    # nobody passes: no answer
    assert mt.deepconf_online([0, 0], [1.0, 1.0], [5, 5], [5, 5], 2, 2.0, 0.9) == (-1, 10, 2)


def _online_table(confs, keys, correct):
    """One problem, one row per trace: metrics from the hand-built token confidences."""
    from confagg.confidence import trace_metrics

    offsets = np.r_[0, np.cumsum([len(c) for c in confs])]
    metrics = trace_metrics(np.concatenate(confs).astype(np.float64), offsets, 3, 3)
    return pd.DataFrame(
        {
            "problem_id": "p",
            "sample_idx": range(len(confs)),
            "answer": [str(k) for k in keys],
            "answer_group": keys,
            "correct": correct,
            "num_tokens": [len(c) for c in confs],
            **metrics,
        }
    )


def test_evaluate_benchmark_online_rows_from_hand_built_traces():
    confs = [
        np.array([5.0, 5, 5, 5]),  # warm-up: lowest group 5
        np.array([1.0, 1, 1, 1]),  # warm-up: lowest 1
        np.array([5.0, 5, 1, 1, 1, 5]),  # stops after 4 tokens below the threshold
        np.array([4.0, 4, 4, 4]),  # finishes (lowest 4)
    ]
    # window 3, warm-up 2. eta 10: threshold = 90th percentile of (5, 1) = 4.6; the wrong
    # trace 1 does not vote; trace 2's first group (11/3) is below it: 3 tokens, no vote;
    # trace 3 (groups of 4) likewise. Only trace 0 votes: right, 4 + 4 + 3 + 3 tokens.
    table = _online_table(confs, keys=[0, 1, 1, 0], correct=[True, False, False, True])
    online = Online(warmup=2, etas=(10, 90), consensus=1.01)  # never stops drawing early
    r = evaluate_benchmark(table, ks=[4], seed=0, online=online, spend=in_memory_spend(confs, 3))
    cell = r["methods"]["online10"]["by_k"]["4"]
    assert r["methods"]["online10"]["family"] == "online"
    assert cell["accuracy"] == 1.0
    assert cell["tokens_per_problem"] == 14
    assert cell["tokens_saved_per_problem"] == 18 - 14
    assert cell["traces_per_problem"] == 4
    # eta 90: threshold 1.4; trace 2's group of tokens 2..4 (mean 1) is below it: 5 tokens;
    # trace 3 finishes and votes with trace 0
    cell = r["methods"]["online90"]["by_k"]["4"]
    assert cell["accuracy"] == 1.0 and cell["tokens_per_problem"] == 4 + 4 + 5 + 4
    # with consensus 0.95 the warm-up alone decides for eta 10 (only trace 0 votes)
    early = Online(warmup=2, etas=(10,), consensus=0.95)
    r = evaluate_benchmark(table, ks=[4], seed=0, online=early, spend=in_memory_spend(confs, 3))
    assert r["methods"]["online10"]["by_k"]["4"]["tokens_per_problem"] == 8
    # no k above the warm-up: no online rows
    r = evaluate_benchmark(table, ks=[2], seed=0, online=early, spend=in_memory_spend(confs, 3))
    assert "online10" not in r["methods"]


def test_online_both_definitions_from_hand_built_traces():
    """The paper's Algorithm 2 stops at consensus; the released code draws every trace: on
    these traces the paper answers wrong from the warm-up, the released code right, at twice
    the tokens."""
    confs = [
        np.array([5.0, 5, 5, 5]),  # warm-up, wrong answer 1: lowest group 5, votes
        np.array([1.0, 1, 1, 1]),  # warm-up, answer 0: lowest 1, below the threshold
        np.array([5.0, 5, 5, 5]),  # finishes, answer 0
        np.array([5.0, 5, 5, 5]),  # finishes, answer 0
    ]
    table = _online_table(confs, keys=[1, 0, 0, 0], correct=[False, True, True, True])
    online = Online(warmup=2, etas=(10,), consensus=0.95)
    r = evaluate_benchmark(table, ks=[4], seed=0, online=online, spend=in_memory_spend(confs, 3))
    assert r["method_order"][-2:] == ["online10", "online10:released"]
    paper = r["methods"]["online10"]
    released = r["methods"]["online10:released"]
    assert "Alg. 2" in paper["label"] and "released code" in released["label"]
    assert released["family"] == paper["family"] == "online"
    # threshold 4.6: only trace 0 votes after the warm-up, all the weight: the paper stops
    assert paper["by_k"]["4"]["accuracy"] == 0.0
    assert paper["by_k"]["4"]["tokens_per_problem"] == 8
    assert paper["by_k"]["4"]["traces_per_problem"] == 2
    # the released code draws traces 2 and 3 (weights 5 + 5 for answer 0 against 5)
    assert released["by_k"]["4"]["accuracy"] == 1.0
    assert released["by_k"]["4"]["tokens_per_problem"] == 16
    assert released["by_k"]["4"]["traces_per_problem"] == 4
    assert released["by_k"]["4"]["tokens_saved_per_problem"] == 0
    # one set by hand: stop=False ignores tau
    keys, lowest, tokens = [1, 0, 0, 0], [5.0, 1.0, 5.0, 5.0], np.array([4, 4, 4, 4])
    assert mt.deepconf_online(keys, lowest, tokens, tokens, 2, 4.6, 0.95) == (0, 8, 2)
    assert mt.deepconf_online(keys, lowest, tokens, tokens, 2, 4.6, 0.95, stop=False) == (2, 16, 4)


def test_identical_picks_are_marked():
    table = pd.DataFrame(
        {
            "problem_id": "p",
            "sample_idx": range(4),
            "answer_group": [0, 1, 1, 2],
            "correct": [True, False, False, False],
            "num_tokens": 1,
            **{m: [0.9, 0.5, 0.5, 0.1] for m in METRICS},
        }
    )
    r = evaluate_benchmark(table, ks=[1, 4], seed=0)
    by4 = {name: info["by_k"]["4"] for name, info in r["methods"].items()}
    # eta = 10 of 4 keeps one trace: DeepConf top 10% is best-of-4
    assert by4["top10:mean"]["same_as"] == "best:mean" and "same_as" not in by4["best:mean"]
    # the weighted vote (0.9 against 0.5 + 0.5) picks what the majority picks
    assert by4["weighted:mean"]["same_as"] == "majority"
    assert "same_as" not in by4["majority"] and by4["top90:mean"]["same_as"] == "majority"
    # at k = 1 every vote picks the one sample
    assert r["methods"]["best:tail"]["by_k"]["1"]["same_as"] == "majority"


def test_aggregator_cells_say_what_was_answered_per_training_run():
    """Two problems x 2 samples, sets of 2, two training runs of one variant, r = 2 calls per
    set: each number is the mean over the runs; the answered share and the accuracy among
    answered calls are over calls; per_problem gives the same means problem by problem."""
    table = pd.DataFrame(
        {
            "problem_id": ["a", "a", "b", "b"],
            "sample_idx": [0, 1, 0, 1],
            "answer_group": [0, 1, 0, 0],
            "correct": [True, False, False, False],
            "num_tokens": [10, 20, 30, 40],
            **{m: 1.0 for m in METRICS},
        }
    )
    rows = [
        # (train_seed, problem, output, answer, correct, generated, prompt)
        (0, "a", 0, "1", True, 5, 100),
        (0, "a", 1, None, False, 7, 100),
        (0, "b", 0, "2", False, 5, 200),
        (0, "b", 1, "2", False, 5, 200),
        (1, "a", 0, "1", True, 5, 100),
        (1, "a", 1, "1", True, 5, 100),
        (1, "b", 0, None, False, 9, 200),
        (1, "b", 1, "3", True, 9, 200),
    ]
    agg = pd.DataFrame(
        rows,
        columns=["train_seed", "problem_id", "output_idx", "answer", "correct", "num_tokens",
                 "prompt_tokens"],
    ).assign(method="Conf-AggLM", set_idx=0, k=2)  # fmt: skip
    r = evaluate_benchmark(table, ks=[1, 2], seed=0, aggregator=agg)
    cell = r["methods"]["Conf-AggLM"]["by_k"]["2"]
    # run 0: a 1/2, b 0 -> 0.25; run 1: a 1, b 1/2 -> 0.75
    assert cell["by_train_seed"]["0"]["accuracy"] == 0.25
    assert cell["by_train_seed"]["1"]["accuracy"] == 0.75
    assert cell["accuracy"] == 0.5 and cell["n_train_seeds"] == 2
    assert cell["calls"] == 8 and cell["no_answer"] == 2 and cell["no_answer_share"] == 0.25
    assert cell["accuracy_answered"] == 4 / 6
    assert cell["by_train_seed"]["1"]["accuracy_answered"] == 3 / 3
    # tokens: the candidates (a: 30, b: 70) + one completion (run 0: a 6, b 5; run 1: 5, 9)
    assert cell["tokens_per_problem"] == ((30 + 6 + 70 + 5) / 2 + (30 + 5 + 70 + 9) / 2) / 2
    assert cell["prompt_tokens_per_problem"] == 150
    from confagg.scoring import per_problem

    pp = per_problem(table, [1, 2], 0, aggregator=agg).set_index(["method", "k", "problem_id"])
    assert pp.loc[("Conf-AggLM", 2, "a"), "accuracy"] == 0.75
    assert pp.loc[("Conf-AggLM", 2, "b"), "accuracy"] == 0.25
    assert pp.loc[("majority", 2, "a"), "accuracy"] == 1.0  # tie: the first answer
    means = pp.groupby(level=["method", "k"])["accuracy"].mean()
    for name, info in r["methods"].items():
        for k, c in info["by_k"].items():
            if name in means.index.get_level_values(0):
                assert means[(name, int(k))] == pytest.approx(c["accuracy"]), (name, k)
    # a prompted variant (train_seed null) is one run
    cell = evaluate_benchmark(table, [2], 0, aggregator=agg.assign(train_seed=None))
    assert "by_train_seed" not in cell["methods"]["Conf-AggLM"]["by_k"]["2"]
