"""nnopt_cli.compare.stats against hand computations, brute-force enumeration and scipy on fixed numbers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from nnopt_cli.compare import stats


def test_iqm_is_the_mean_of_the_middle_half_by_hand():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx((3 + 4 + 5 + 6) / 4)  # 2 cut each end
    assert stats.iqm([10, 1, 3, 2, 50]) == pytest.approx((2 + 3 + 10) / 3)  # int(1.25) = 1 cut each end
    assert stats.iqm([1, 2, 30]) == pytest.approx(11.0)  # n < 4: nothing cut, the plain mean
    x = [0.97, 0.96, 0.981, 0.5, 0.975, 0.972]
    assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def test_bootstrap_ci_is_seeded_and_matches_scipy_percentile_bootstrap():
    x = [0.9613, 0.9721, 0.9684, 0.9552, 0.9797, 0.9702, 0.9641, 0.9753]
    a = stats.bootstrap_ci(x, "mean", reps=1000, seed=1)
    assert a == stats.bootstrap_ci(x, "mean", reps=1000, seed=1)
    assert a != stats.bootstrap_ci(x, "mean", reps=1000, seed=2)
    assert a[0] < np.mean(x) < a[1]
    mine = stats.bootstrap_ci(x, "mean", reps=50_000, seed=0)
    ref = scipy.stats.bootstrap((np.array(x),), np.mean, n_resamples=50_000, method="percentile",
                                random_state=np.random.default_rng(7)).confidence_interval
    spread = max(x) - min(x)
    assert mine[0] == pytest.approx(ref.low, abs=0.01 * spread)
    assert mine[1] == pytest.approx(ref.high, abs=0.01 * spread)


def test_bootstrap_iqm_ci_matches_the_exact_bootstrap_distribution():
    """n = 4: all 4^4 resamples are equally likely; their IQM quantiles are the exact percentile CI."""
    x = np.array([1.0, 2.0, 4.0, 8.0])
    exact = [stats.iqm(x[list(i)]) for i in itertools.product(range(4), repeat=4)]
    lo, hi = np.quantile(exact, [0.025, 0.975])
    mine = stats.bootstrap_ci(x, "iqm", reps=200_000, seed=0)
    assert mine[0] == pytest.approx(lo, abs=0.05) and mine[1] == pytest.approx(hi, abs=0.05)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 400
    for i in range(trials):
        lo, hi = stats.bootstrap_ci(rng.normal(0.0, 1.0, 30), "mean", reps=2000, seed=i)
        covered += lo <= 0.0 <= hi
    assert 0.89 <= covered / trials <= 0.99  # the percentile bootstrap undercovers a little at n = 30


def test_stratified_bootstrap_resamples_within_each_stratum():
    x = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert stats.bootstrap_ci(x, "mean", reps=2000, strata=[0, 0, 0, 1, 1, 1]) == (0.5, 0.5)
    lo, hi = stats.bootstrap_ci(x, "mean", reps=2000)  # one stratum: the mix varies
    assert lo < 0.5 < hi


def test_median_ci_with_runs_that_never_reached_the_target_is_inf_not_nan():
    lo, hi = stats.bootstrap_ci([100.0, 120.0, math.inf, math.inf, math.inf], "median", reps=2000)
    assert lo == 100.0 or lo == 120.0 or lo == math.inf
    assert hi == math.inf and not math.isnan(lo)


def brute_pairs(x, y) -> float:
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    return wins / (len(x) * len(y))


def test_probability_of_improvement_is_the_pair_count_with_ties_half():
    x, y = [0.97, 0.96, 0.98, 0.96], [0.96, 0.95, 0.97]
    assert stats.prob_improvement(x, y) == pytest.approx(brute_pairs(x, y))
    assert brute_pairs(x, y) == pytest.approx((2.5 + 1.5 + 3 + 1.5) / 12)  # by hand, row by row of x
    u = scipy.stats.mannwhitneyu(x, y, alternative="greater").statistic
    assert stats.prob_improvement(x, y) == pytest.approx(u / 12)
    assert stats.prob_improvement(y, x) == pytest.approx(1 - stats.prob_improvement(x, y))
    assert stats.prob_improvement([1, 2], [2, 1]) == 0.5  # rliable: identical scores -> 0.5


def test_probability_of_improvement_ci():
    x, y = [0.97, 0.96, 0.98, 0.96, 0.975], [0.96, 0.95, 0.97, 0.955]
    lo, hi = stats.prob_improvement_ci(x, y, reps=4000, seed=3)
    assert (lo, hi) == stats.prob_improvement_ci(x, y, reps=4000, seed=3)
    assert 0.0 <= lo <= stats.prob_improvement(x, y) <= hi <= 1.0
    assert stats.prob_improvement_ci([5, 6, 7], [1, 2, 3], reps=500) == (1.0, 1.0)  # every resample: X wins


def exact_mannwhitney_p(x, y) -> float:
    """Every split of the pooled values into n and m: P(|U - nm/2| >= |U_obs - nm/2|) (no ties)."""
    pooled, n = list(x) + list(y), len(x)
    center = len(x) * len(y) / 2
    observed = abs(brute_pairs(x, y) * len(x) * len(y) - center)
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += abs(brute_pairs(a, b) * len(a) * len(b) - center) >= observed - 1e-9
        total += 1
    return hits / total


def test_mannwhitney_p_against_scipy_and_a_full_enumeration():
    x, y = [0.971, 0.968, 0.975, 0.980], [0.962, 0.969, 0.958, 0.966, 0.960]
    p = stats.mannwhitney_p(x, y)
    assert p == pytest.approx(scipy.stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    assert p == pytest.approx(exact_mannwhitney_p(x, y))  # 4 + 5 runs, no ties: scipy's exact method
    assert p == pytest.approx(2 * 2 / 126)  # U = 19 of 20: 2 splits as extreme on each side of C(9, 4)
    assert stats.mannwhitney_p([1, 1, 1], [1, 1]) == 1.0


def brute_permutation_p(x, y) -> float:
    pooled, n = list(x) + list(y), len(x)
    observed = abs(sum(x) / len(x) - sum(y) / len(y))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += abs(sum(a) / len(a) - sum(b) / len(b)) >= observed - 1e-12
        total += 1
    return hits / total


def test_permutation_p_exact_against_enumeration_and_scipy():
    x, y = [0.971, 0.968, 0.975, 0.980], [0.962, 0.969, 0.958, 0.966]
    p = stats.permutation_p(x, y)
    assert p == pytest.approx(brute_permutation_p(x, y))
    # as extreme: the observed split, the one swapping 0.968 and 0.969 (further apart), and their mirrors
    assert p == pytest.approx(4 / 70)
    ref = scipy.stats.permutation_test((x, y), lambda a, b: np.mean(a) - np.mean(b), n_resamples=math.inf,
                                       alternative="two-sided", permutation_type="independent")
    assert p == pytest.approx(ref.pvalue)  # n = m: the null distribution is symmetric, both definitions agree
    x3, y2 = [1.0, 2.0, 4.0], [3.0, 7.0]
    assert stats.permutation_p(x3, y2) == pytest.approx(brute_permutation_p(x3, y2))


def test_permutation_p_monte_carlo_for_large_samples():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.3, 1, 12), rng.normal(0, 1, 12)  # C(24, 12) = 2.7 million splits: sampled
    p = stats.permutation_p(x, y, reps=20_000, seed=1)
    assert p == stats.permutation_p(x, y, reps=20_000, seed=1)
    ref = scipy.stats.permutation_test((x, y), lambda a, b: np.mean(a) - np.mean(b), n_resamples=20_000,
                                       alternative="two-sided", permutation_type="independent",
                                       rng=np.random.default_rng(5)).pvalue
    assert p == pytest.approx(ref, abs=0.03)
    assert stats.permutation_p(np.arange(12) + 100.0, np.arange(12), reps=999) == pytest.approx(1 / 1000)


def test_time_to_target_first_evaluation_reaching_it():
    acc = [0.80, 0.95, 0.971, 0.969, 0.98]
    steps = [100, 200, 300, 400, 500]
    assert stats.time_to_target(acc, steps, 0.97, "max") == 300
    assert stats.time_to_target(acc, steps, 0.99, "max") == math.inf
    loss = [0.9, math.nan, 0.2, 0.1]
    assert stats.time_to_target(loss, [1, 2, 3, 4], 0.25, "min") == 3  # nan never reaches
    assert stats.time_to_target([], [], 0.5) == math.inf
    with pytest.raises(ValueError):
        stats.time_to_target(acc, steps, 0.97, "up")


def test_performance_profile_and_score_on_a_hand_made_table():
    # 3 submissions x 2 workloads: times to target (inf = never)
    t = np.array([[10.0, 100.0], [20.0, 50.0], [50.0, math.inf]])
    r = stats.performance_ratios(t)
    assert r.tolist() == [[1.0, 2.0], [2.0, 1.0], [5.0, math.inf]]
    rho = stats.performance_profile(r, [1.0, 1.99, 2.0, 4.0, 5.0])
    assert rho.tolist() == [[0.5, 0.5, 1, 1, 1], [0.5, 0.5, 1, 1, 1], [0, 0, 0, 0, 0.5]]
    # by hand: rho_A = 1/2 on [1, 2), 1 on [2, 4] -> integral 0.5 + 2 = 2.5, over 3; C is never within 4x
    score = stats.profile_score(r)
    assert score.tolist() == pytest.approx([2.5 / 3, 2.5 / 3, 0.0])
    taus = np.linspace(1, 4, 30_001)  # AlgoPerf's scoring code: trapezoid over a grid of taus
    trapz = np.trapezoid(stats.performance_profile(r, taus), taus, axis=1) / 3
    assert score.tolist() == pytest.approx(trapz.tolist(), abs=1e-3)


def test_performance_ratios_edge_cases():
    r = stats.performance_ratios(np.array([[math.inf, 0.0], [math.inf, 3.0]]))
    assert r.tolist() == [[math.inf, 1.0], [math.inf, math.inf]]  # nobody reached w0; best time 0 on w1
    assert stats.profile_score(r).tolist() == pytest.approx([(4 - 1) / 2 / 3, 0.0])
