"""Group statistics for explanation maps: voxel-wise one-sample t, a regional OLS group
test with covariates, and Benjamini-Hochberg false-discovery-rate adjustment.

NumPy/SciPy, float64, no JAX: these run once per analysis on a few hundred numbers or maps
and must agree with textbook formulas (the tests compare them with `numpy.linalg.lstsq`
and `scipy.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.stats

__all__ = ["benjamini_hochberg", "ols_group_test", "one_sample_t"]


def one_sample_t(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and one-sample t statistic from running sums.

    Args:
      total: sum of the ``n`` maps.
      total_sq: sum of their squares.
      n: number of maps.

    Returns:
      ``(mean, t)`` with ``t = mean / (s / sqrt(n))``, ``s`` the sample standard deviation
      (ddof 1). ``t`` is 0 where ``s`` is 0 (e.g. outside the brain) and NaN everywhere
      when ``n < 2``.
    """
    total = np.asarray(total, np.float64)
    mean = total / max(n, 1)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    var = np.maximum(np.asarray(total_sq, np.float64) - n * mean**2, 0.0) / (n - 1)
    sd = np.sqrt(var)
    # Relative floor: a std that is rounding noise of the sums counts as 0.
    tiny = sd <= 1e-7 * np.maximum(np.abs(mean), 1e-30)
    t = np.where(tiny | (sd == 0), 0.0, mean / np.where(sd > 0, sd, 1.0) * math.sqrt(n))
    return mean, t


def ols_group_test(
    values: Sequence[float] | np.ndarray,
    group: Sequence[float] | np.ndarray,
    covariates: np.ndarray | None = None,
) -> dict[str, float]:
    """Ordinary least squares ``value ~ 1 + group + covariates``; the group term's test.

    Rows where the value or any regressor is not finite are dropped. The fit uses a QR
    decomposition of the design matrix; the coefficient's standard error is
    ``sqrt(sigma^2 [(X'X)^-1]_gg)`` with ``sigma^2 = RSS / (n - p)``, and the p-value is
    two-sided from Student's t with ``n - p`` degrees of freedom.

    Args:
      values: ``(n,)`` the response (e.g. one region's mean log volume change per scan).
      group: ``(n,)`` 0 = control, 1 = patient.
      covariates: ``(n, k)`` extra regressors (already dummy-coded), or None.

    Returns:
      ``{"n", "df", "beta", "se", "t", "p"}``: ``beta`` is the group coefficient (patients
      minus controls, adjusted). All NaN (and ``df`` 0) when the design is rank deficient
      or ``n <= p``.
    """
    y = np.asarray(values, np.float64).reshape(-1)
    g = np.asarray(group, np.float64).reshape(-1)
    if g.shape != y.shape:
        raise ValueError(f"values {y.shape} and group {g.shape} differ in length")
    columns = [np.ones_like(g), g]
    if covariates is not None:
        cov = np.asarray(covariates, np.float64)
        cov = cov.reshape(y.size, -1)
        columns.extend(cov.T)
    x = np.column_stack(columns)
    keep = np.isfinite(y) & np.isfinite(x).all(axis=1)
    x, y = x[keep], y[keep]
    n, p = x.shape
    nan = {"n": int(n), "df": 0, "beta": math.nan, "se": math.nan, "t": math.nan, "p": math.nan}
    if n <= p or np.linalg.matrix_rank(x) < p:
        return nan
    q, r = np.linalg.qr(x)
    beta = scipy.linalg.solve_triangular(r, q.T @ y)
    resid = y - x @ beta
    df = n - p
    sigma2 = float(resid @ resid) / df
    r_inv = scipy.linalg.solve_triangular(r, np.eye(p))
    se = math.sqrt(sigma2 * float(r_inv[1] @ r_inv[1]))
    if not se > 0:
        return {**nan, "df": int(df), "beta": float(beta[1]), "se": se}
    t = float(beta[1]) / se
    return {
        "n": int(n),
        "df": int(df),
        "beta": float(beta[1]),
        "se": se,
        "t": t,
        "p": float(2.0 * scipy.stats.t.sf(abs(t), df)),
    }


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN stays NaN."""
    p = np.asarray(p_values, np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok])]
        ranked = p[order] * ok.size / np.arange(1, ok.size + 1)
        out[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return out
