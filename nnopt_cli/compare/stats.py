"""The statistics behind `nnopt compare --stats/--target/--baseline`: pure functions on arrays.

Each function takes numbers (one value per run, or per evaluation) and returns numbers; reading
run folders and choosing what to compare is compare/decide.py's job. The definitions follow the
benchmarks that introduced them, cited per function:

- rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice", NeurIPS;
  github.com/google-research/rliable, rliable/metrics.py and library.py): interquartile mean,
  percentile bootstrap CIs resampling runs within each stratum, probability of improvement.
- AlgoPerf (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"; Kasimbeg et al.
  2025, ICLR; github.com/mlcommons/algorithmic-efficiency, docs/DOCUMENTATION.md "Scoring" and
  scoring/performance_profile.py): time to target, performance ratios, profiles and the score.

numpy and scipy only; this module is imported only when a statistic is asked for (scipy costs
a noticeable fraction of a second to import, and plain `nnopt compare` must stay fast).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

# AlgoPerf integrates the performance profile over tau in [1, TAU_MAX]
TAU_MAX = 4.0
# two-sided permutation tests enumerate every split up to this many, else sample this many
EXACT_PERMUTATIONS = 100_000


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed from each end).

    rliable metrics.aggregate_iqm: scipy.stats.trim_mean(scores, proportiontocut=0.25). With
    n values, int(0.25 n) are cut from each end (n = 4 -> the middle 2; n < 4 -> plain mean)."""
    return float(scipy.stats.trim_mean(np.asarray(x, dtype=float), 0.25))


def _iqm_rows(a: np.ndarray) -> np.ndarray:
    return scipy.stats.trim_mean(a, 0.25, axis=1)


STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda a: a.mean(axis=1),
    "median": lambda a: np.median(a, axis=1),
    "iqm": _iqm_rows,
}


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of the bootstrap statistics (percentile method).

    A statistic can be inf (a median time-to-target where most runs never reached the target):
    interpolating between two infs gives nan, which here means inf."""
    with np.errstate(invalid="ignore"):
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return (math.inf if math.isnan(lo) else float(lo)), (math.inf if math.isnan(hi) else float(hi))


def bootstrap_ci(x: Sequence[float], statistic: str = "mean", reps: int = 10_000, seed: int = 0,
                 level: float = 0.95, strata: Sequence[int] | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for mean, median or IQM of x.

    rliable library.get_interval_estimates(method='percentile') with StratifiedBootstrap: each of
    `reps` resamples draws len(x) values with replacement *within each stratum* (strata[i] labels
    x[i], e.g. its workload; None = one stratum) and the CI is the quantiles of the statistic over
    the resamples. Seeded: the same (x, reps, seed) always gives the same interval."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    labels = np.zeros(a.size, dtype=int) if strata is None else np.asarray(strata)
    parts = []
    for s in np.unique(labels):
        members = np.flatnonzero(labels == s)
        parts.append(members[rng.integers(0, members.size, size=(reps, members.size))])
    idx = np.concatenate(parts, axis=1)
    return _percentile_interval(STATISTICS[statistic](a[idx]), level)


def prob_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y): the chance that a run of X scores higher than a run of Y, ties counted 1/2.

    rliable metrics.probability_of_improvement: the Mann-Whitney U statistic of X over Y divided by
    n * m (scipy.stats.mannwhitneyu(x, y).statistic / (n m)); higher-is-better scores. For a
    lower-is-better metric pass the negated values."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(_pairs(a[None, :], b[None, :])[0])


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise U / (n m) for resamples a (reps x n) and b (reps x m)."""
    d = a[:, :, None] - b[:, None, :]
    return ((d > 0).sum(axis=(1, 2)) + 0.5 * (d == 0).sum(axis=(1, 2))) / (a.shape[1] * b.shape[1])


def prob_improvement_ci(x: Sequence[float], y: Sequence[float], reps: int = 10_000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of P(X > Y), resampling X and Y independently.

    rliable library.StratifiedIndependentBootstrap, as used for probability of improvement."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(reps, a.size))
    ib = rng.integers(0, b.size, size=(reps, b.size))
    chunk = max(1, 2_000_000 // (a.size * b.size))  # bounds the reps x n x m comparison array
    out = np.concatenate([_pairs(a[ia[i:i + chunk]], b[ib[i:i + chunk]]) for i in range(0, reps, chunk)])
    return _percentile_interval(out, level)


def mannwhitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U test p-value (scipy.stats.mannwhitneyu, method 'auto': exact for
    small samples without ties, normal approximation with tie correction otherwise).

    All values equal: no evidence either way, p = 1 (scipy would divide by a zero variance)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan
    if np.unique(np.concatenate([a, b])).size == 1:
        return 1.0
    return float(scipy.stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def permutation_p(x: Sequence[float], y: Sequence[float], reps: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation test on the difference of means: the share of relabellings of the
    pooled values whose |mean(X') - mean(Y')| is at least the observed one.

    Exact (every one of C(n + m, n) splits) up to EXACT_PERMUTATIONS splits; beyond, `reps` random
    relabellings with p = (1 + hits) / (1 + reps), which is never 0 (Phipson & Smyth 2010)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return math.nan
    pooled = np.concatenate([a, b])
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))  # the observed split must count itself
    if math.comb(n + m, n) <= EXACT_PERMUTATIONS:
        idx = np.array(list(itertools.combinations(range(n + m), n)))
        sums = pooled[idx].sum(axis=1)
        diffs = np.abs(sums / n - (total - sums) / m)
        return float(np.mean(diffs >= observed - tol))
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(pooled, (reps, 1)), axis=1)
    sums = perms[:, :n].sum(axis=1)
    hits = int(np.sum(np.abs(sums / n - (total - sums) / m) >= observed - tol))
    return (1 + hits) / (1 + reps)


def time_to_target(values: Sequence[float], times: Sequence[float], target: float,
                   mode: str = "max") -> float:
    """The time of the first evaluation whose value reaches the target; inf if none does.

    AlgoPerf (docs/DOCUMENTATION.md "Scoring"; scoring/performance_profile.py
    get_index_that_reaches_target): reached means value >= target for a higher-is-better metric
    (mode 'max': accuracy) and value <= target for a lower-is-better one (mode 'min': loss). A
    nan value (a diverged evaluation) never reaches it. `times` is in any unit: steps, samples,
    seconds."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = v >= target if mode == "max" else v <= target
    i = np.flatnonzero(hit)
    return float(times[i[0]]) if i.size else math.inf


def performance_ratios(times: np.ndarray) -> np.ndarray:
    """r[s, w] = t[s, w] / min over s of t[s, w], for times (submissions x workloads).

    AlgoPerf "Computing performance ratios". inf where the submission never reached the target,
    and on a workload no submission reached (there is no best time to compare with)."""
    t = np.asarray(times, dtype=float)
    best = t.min(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = t / best
    r[~np.isfinite(r)] = math.inf
    r[(t == 0) & (best == 0)] = 1.0  # reached at the very first evaluation, as did the best
    return r


def performance_profile(ratios: np.ndarray, taus: Sequence[float]) -> np.ndarray:
    """rho[s, k] = the share of workloads with r[s, w] <= taus[k] (AlgoPerf "Building performance
    profiles", after Dolan & More 2002)."""
    r = np.asarray(ratios, dtype=float)
    return (r[:, :, None] <= np.asarray(taus, dtype=float)[None, None, :]).mean(axis=1)


def profile_score(ratios: np.ndarray, tau_max: float = TAU_MAX) -> np.ndarray:
    """B[s] = 1 / (tau_max - 1) * integral from 1 to tau_max of rho_s(tau) d tau, in [0, 1].

    AlgoPerf "Integrating performance profiles for the benchmark score" (tau_max = 4). rho is a
    step function, so the integral is exact: each workload with r <= tau_max adds
    (tau_max - r) / n. (AlgoPerf's scoring code integrates the profile with the trapezoid rule on a
    grid of taus, which converges to this value as the grid gets finer.)"""
    r = np.maximum(np.asarray(ratios, dtype=float), 1.0)
    credit = np.where(r <= tau_max, tau_max - r, 0.0)
    return credit.mean(axis=1) / (tau_max - 1.0)


# the seeds per group the power estimate tries, and the power it asks for
SEED_COUNTS = (3, 5, 8, 10, 15, 20, 30)
POWER = 0.8


def mannwhitney_p_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mannwhitney_p for each row of a (reps x n) against the same row of b (reps x m): exact for
    rows without ties when a group has at most 8 values, normal approximation with tie correction
    otherwise, as scipy's method 'auto' chooses for one pair (it would choose once for all rows)."""
    pooled = np.sort(np.concatenate([a, b], axis=1), axis=1)
    ties = (np.diff(pooled, axis=1) == 0).any(axis=1)
    constant = pooled[:, 0] == pooled[:, -1]
    p = np.ones(a.shape[0])  # all values equal: no evidence either way
    small = a.shape[1] <= 8 or b.shape[1] <= 8
    for rows, method in ((~ties, "exact" if small else "asymptotic"), (ties & ~constant, "asymptotic")):
        if rows.any():
            p[rows] = scipy.stats.mannwhitneyu(a[rows], b[rows], axis=1, method=method,
                                               alternative="two-sided").pvalue
    return p


def resolving_power(x: Sequence[float], y: Sequence[float], n: int, reps: int = 2_000, seed: int = 0,
                    alpha: float = 0.05) -> float:
    """The share of resamples with n runs per group, drawn with replacement from each group's
    observed runs (bootstrap within each group), where the two-sided Mann-Whitney test rejects at
    alpha: the power to tell the groups apart with n seeds each, at the observed difference and spread."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng([seed, n])
    ra = a[rng.integers(0, a.size, size=(reps, n))]
    rb = b[rng.integers(0, b.size, size=(reps, n))]
    return float(np.mean(mannwhitney_p_rows(ra, rb) < alpha))


def seeds_to_resolve(x: Sequence[float], y: Sequence[float], reps: int = 2_000, seed: int = 0,
                     alpha: float = 0.05, power: float = POWER,
                     counts: Sequence[int] = SEED_COUNTS) -> tuple[int | None, dict[int, float]]:
    """The smallest n in `counts` whose resolving_power reaches `power` (None: none does), and the
    power at each n tried. Seeded: the same runs always give the same answer."""
    tried: dict[int, float] = {}
    for n in counts:
        tried[n] = resolving_power(x, y, n, reps, seed, alpha)
        if tried[n] >= power:
            return n, tried
    return None, tried
