import time

import numpy as np
import pytest
from scipy.optimize import minimize

from napari_atomnet.core.metrics import (
    detection_scores,
    dice,
    gaussian_crlb,
    gaussian_crlb_many,
    iou,
    localization_error,
    match_points,
    mean_iou,
    pixel_accuracy,
)

# ------------------------------------------------------------------------------------------
# matching
# ------------------------------------------------------------------------------------------


def _greedy(found, truth, radius):
    """Nearest-pair-first greedy matching (the wrong answer the tests guard against)."""
    d = np.linalg.norm(np.asarray(found)[:, None] - np.asarray(truth)[None], axis=-1)
    pairs, used_f, used_t = [], set(), set()
    for k in np.argsort(d, axis=None):
        i, j = np.unravel_index(k, d.shape)
        if d[i, j] <= radius and i not in used_f and j not in used_t:
            pairs.append((i, j))
            used_f.add(i)
            used_t.add(j)
    return sorted(pairs)


def test_match_more_pairs_than_greedy():
    # greedy takes F0-T0 (0.9) first and leaves F1 without a partner
    found = [[0.0, 0.9], [0.0, -1.0]]
    truth = [[0.0, 0.0], [0.0, 2.0]]
    assert len(_greedy(found, truth, 1.3)) == 1
    pairs, un_f, un_t = match_points(found, truth, 1.3)
    assert pairs.tolist() == [[0, 1], [1, 0]]
    assert un_f.size == 0 and un_t.size == 0


def test_match_smaller_total_distance_than_greedy():
    # 1D: F0=0, F1=2.1, T0=1, T1=-1.1; greedy F0-T0 (1.0) + F1-T1 (3.2) = 4.2,
    # optimal F0-T1 (1.1) + F1-T0 (1.1) = 2.2
    found = [[0.0, 0.0], [0.0, 2.1]]
    truth = [[0.0, 1.0], [0.0, -1.1]]
    assert _greedy(found, truth, 5.0) == [(0, 0), (1, 1)]
    pairs, _, _ = match_points(found, truth, 5.0)
    assert pairs.tolist() == [[0, 1], [1, 0]]
    total = np.linalg.norm(np.subtract(found, truth[::-1]), axis=1).sum()
    assert total == pytest.approx(2.2)


def test_match_radius_is_hard():
    found = [[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]
    truth = [[0.0, 1.5], [10.0, 11.001], [20.0, 20.0]]
    pairs, un_f, un_t = match_points(found, truth, 1.0)
    assert pairs.tolist() == [[2, 2]]  # exact coincidence (distance 0) matches
    assert un_f.tolist() == [0, 1]
    assert un_t.tolist() == [0, 1]
    # the distance equal to the radius is allowed
    pairs, _, _ = match_points([[0.0, 0.0]], [[0.0, 1.0]], 1.0)
    assert pairs.tolist() == [[0, 0]]


def test_match_empty_inputs():
    pts = np.array([[1.0, 2.0], [3.0, 4.0]])
    pairs, un_f, un_t = match_points(np.zeros((0, 2)), pts, 1.0)
    assert pairs.shape == (0, 2) and un_f.size == 0 and un_t.tolist() == [0, 1]
    pairs, un_f, un_t = match_points(pts, [], 1.0)
    assert pairs.shape == (0, 2) and un_f.tolist() == [0, 1] and un_t.size == 0
    pairs, un_f, un_t = match_points([], [], 1.0)
    assert pairs.shape == (0, 2) and un_f.size == 0 and un_t.size == 0


def test_match_random_against_brute_force():
    """Clusters of points, checked against the exhaustive optimum of every component."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 200, (40, 2))
    truth = np.concatenate([c + rng.normal(0, 1.0, (rng.integers(1, 4), 2)) for c in centres])
    found = np.concatenate([c + rng.normal(0, 1.0, (rng.integers(1, 4), 2)) for c in centres])
    radius = 1.5
    pairs, un_f, un_t = match_points(found, truth, radius)
    # one-to-one, within the radius, complete bookkeeping
    assert len(set(pairs[:, 0])) == len(pairs) and len(set(pairs[:, 1])) == len(pairs)
    assert np.all(np.linalg.norm(found[pairs[:, 0]] - truth[pairs[:, 1]], axis=1) <= radius)
    assert len(pairs) + len(un_f) == len(found) and len(pairs) + len(un_t) == len(truth)
    # no unmatched found/truth pair is within the radius of each other (maximality)
    if len(un_f) and len(un_t):
        d = np.linalg.norm(found[un_f][:, None] - truth[un_t][None], axis=-1)
        assert np.all(d > radius)
    # the optimum: brute force over all cardinality-maximal matchings of the whole set is too
    # big, so compare with an independent dense Hungarian on the full problem
    from scipy.optimize import linear_sum_assignment

    d = np.linalg.norm(found[:, None] - truth[None], axis=-1)
    big = 1e6
    cost = np.where(d <= radius, d, big)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    assert ok.sum() == len(pairs)
    ours = np.linalg.norm(found[pairs[:, 0]] - truth[pairs[:, 1]], axis=1).sum()
    assert ours == pytest.approx(cost[r[ok], c[ok]].sum(), rel=1e-9)
    greedy = _greedy(found, truth, radius)
    assert len(pairs) >= len(greedy)
    if len(pairs) == len(greedy):
        assert ours <= np.sum([d[i, j] for i, j in greedy]) + 1e-9


def test_match_sparse_path_agrees_with_dense(monkeypatch):
    """Huge components are solved on a sparse graph; it must give the same optimum."""
    import napari_atomnet.core.metrics as metrics

    rng = np.random.default_rng(1)
    for _ in range(3):
        truth = rng.uniform(0, 30, (60, 2))
        found = np.concatenate(
            [truth[:50] + rng.normal(0, 1.5, (50, 2)), rng.uniform(0, 30, (15, 2))]
        )
        dense = match_points(found, truth, 3.0)
        monkeypatch.setattr(metrics, "_DENSE_LIMIT", 0)
        sparse = match_points(found, truth, 3.0)
        monkeypatch.undo()
        assert len(sparse[0]) == len(dense[0])

        def total(p, found=found, truth=truth):
            return np.linalg.norm(found[p[:, 0]] - truth[p[:, 1]], axis=1).sum()

        assert total(sparse[0]) == pytest.approx(total(dense[0]), rel=1e-9)
        assert len(sparse[1]) + len(sparse[0]) == len(found)
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", 0)
    pairs, _, _ = match_points([[0.0, 0.9], [0.0, -1.0]], [[0.0, 0.0], [0.0, 2.0]], 1.3)
    assert pairs.tolist() == [[0, 1], [1, 0]]


def test_match_100k_points_fast():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 3000, (100_000, 2))
    found = truth + rng.normal(0, 0.5, truth.shape)
    t0 = time.perf_counter()
    pairs, un_f, un_t = match_points(found, truth, 3.0)
    elapsed = time.perf_counter() - t0
    assert len(pairs) == 100_000 and un_f.size == 0 and un_t.size == 0
    assert np.mean(pairs[:, 0] == pairs[:, 1]) > 0.98
    assert elapsed < 5.0


# ------------------------------------------------------------------------------------------
# detection and localization scores
# ------------------------------------------------------------------------------------------


def test_detection_scores_values():
    truth = [[0, 0], [10, 10], [20, 20], [30, 30]]
    found = [[0.5, 0], [10, 10.4], [50, 50]]
    s = detection_scores(found, truth, 1.0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_detection_scores_empty():
    pts = [[1.0, 1.0]]
    both = detection_scores([], [], 1.0)
    assert (both["precision"], both["recall"], both["f1"]) == (1.0, 1.0, 1.0)
    miss = detection_scores([], pts, 1.0)
    assert (miss["tp"], miss["fn"], miss["f1"], miss["recall"]) == (0, 1, 0.0, 0.0)
    extra = detection_scores(pts, [], 1.0)
    assert (extra["fp"], extra["precision"], extra["f1"]) == (1, 0.0, 0.0)


def test_localization_error_values():
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [40.0, 40.0]])
    d = np.array([[0.3, -0.4], [0.1, 0.2], [-0.2, 0.0]])
    found = np.concatenate([truth[:3] + d, [[60.0, 60.0]]])
    e = localization_error(found, truth, 1.0)
    assert e["n"] == 3
    assert e["rmse"] == pytest.approx(np.sqrt(np.mean((d**2).sum(axis=1))))
    assert e["rmse_y"] == pytest.approx(np.sqrt(np.mean(d[:, 0] ** 2)))
    assert e["rmse_x"] == pytest.approx(np.sqrt(np.mean(d[:, 1] ** 2)))
    assert e["rmse"] ** 2 == pytest.approx(e["rmse_y"] ** 2 + e["rmse_x"] ** 2)
    assert e["bias_y"] == pytest.approx(d[:, 0].mean())
    assert e["bias_x"] == pytest.approx(d[:, 1].mean())
    assert e["max_distance"] == pytest.approx(0.5)
    none = localization_error([[0.0, 0.0]], [[5.0, 5.0]], 1.0)
    assert none["n"] == 0 and np.isnan(none["rmse"])


# ------------------------------------------------------------------------------------------
# Cramér–Rao bound
# ------------------------------------------------------------------------------------------


def _model(theta, ry, rx):
    """Counts of a round Gaussian + background at pixel offsets (ry, rx); theta (T, 5)."""
    y0, x0, a, s, b = (theta[:, k, None, None] for k in range(5))
    return b + a * np.exp(-((ry - y0) ** 2 + (rx - x0) ** 2) / (2 * s**2))


def _mle_fit(counts, ry, rx, theta0, n_iter=25):
    """Poisson maximum likelihood by Fisher scoring, vectorized over trials (test-only code).

    The Jacobian is a central finite difference of the model, independent of the analytic
    derivatives inside ``gaussian_crlb``; the fixed point is where the Poisson score vanishes.
    """
    theta = np.array(theta0, dtype=float)
    h = np.array([1e-5, 1e-5, 1e-4, 1e-6, 1e-4])
    for _ in range(n_iter):
        mu = _model(theta, ry, rx)
        jac = np.empty((theta.shape[0], 5, *mu.shape[1:]))
        for k in range(5):
            tp, tm = theta.copy(), theta.copy()
            tp[:, k] += h[k]
            tm[:, k] -= h[k]
            jac[:, k] = (_model(tp, ry, rx) - _model(tm, ry, rx)) / (2 * h[k])
        score = np.einsum("tpyx,tyx->tp", jac, counts / mu - 1.0)
        fisher = np.einsum("tpyx,tqyx->tpq", jac, jac / mu[:, None])
        step = np.linalg.solve(fisher, score[..., None])[..., 0]
        theta += step
        theta[:, 3] = np.abs(theta[:, 3])
        theta[:, 4] = np.maximum(theta[:, 4], 1e-3)
    return theta, np.abs(score).max(axis=1)


def test_crlb_monte_carlo_mle():
    amp, sigma, bg, w, off = 150.0, 1.4, 8.0, 11, (0.23, -0.31)
    bound = gaussian_crlb(amp, sigma, background=bg, window=w, offset=off)
    assert bound["params"] == ("y", "x", "amplitude", "sigma", "background")
    c = np.arange(w) - (w - 1) / 2
    ry, rx = c[:, None], c[None, :]
    truth = np.array([[off[0], off[1], amp, sigma, bg]])
    mu = _model(truth, ry, rx)[0]
    rng = np.random.default_rng(11)
    n_trials = 3000
    counts = rng.poisson(mu, size=(n_trials, w, w)).astype(float)
    est, score = _mle_fit(counts, ry, rx, np.repeat(truth, n_trials, axis=0))
    ok = np.all(np.isfinite(est), axis=1) & (score < 1e-4)
    assert ok.mean() > 0.99
    # a few trials refitted with scipy from a shifted start land on the same maximum
    for t in range(3):

        def nll(th, t=t):
            m = _model(th[None], ry, rx)[0]
            return float(np.sum(m - counts[t] * np.log(m)))

        start = truth[0] + np.array([0.3, -0.3, 10.0, 0.1, 1.0])
        res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10})
        np.testing.assert_allclose(res.x[:2], est[t, :2], atol=2e-3)
    std_y = est[ok, 0].std()
    std_x = est[ok, 1].std()
    assert std_y == pytest.approx(bound["y"], rel=0.07)
    assert std_x == pytest.approx(bound["x"], rel=0.07)
    # the fitter is unbiased within its statistical error
    assert abs(est[ok, 0].mean() - off[0]) < 4 * bound["y"] / np.sqrt(ok.sum())
    # other estimated parameters follow the bound too
    assert est[ok, 2].std() == pytest.approx(bound["std"]["amplitude"], rel=0.08)


def test_crlb_dose_scaling_and_limits():
    kw = dict(background=5.0, window=13, offset=(0.1, 0.4))
    b1 = gaussian_crlb(50.0, 1.5, **kw)
    b4 = gaussian_crlb(50.0, 1.5, dose_scale=4.0, **kw)
    b100 = gaussian_crlb(50.0, 1.5, dose_scale=100.0, **kw)
    assert b4["y"] == pytest.approx(b1["y"] / 2, rel=1e-10)
    assert b100["x"] == pytest.approx(b1["x"] / 10, rel=1e-10)
    np.testing.assert_allclose(b4["fisher"], 4 * b1["fisher"], rtol=1e-12)
    # wide Gaussian, no background, known nuisance: sigma / sqrt(total counts)
    a, s = 500.0, 3.0
    lim = gaussian_crlb(a, s, window=61, estimate=("y", "x"))
    assert lim["y"] == pytest.approx(s / np.sqrt(2 * np.pi * a * s * s), rel=1e-6)
    # estimating nuisance parameters can only raise the bound
    known = gaussian_crlb(50.0, 1.5, estimate=("y", "x"), **kw)
    assert known["y"] <= b1["y"] and known["x"] <= b1["x"]
    # centred round column: y and x bounds are equal; elliptical: the wider axis is worse
    c = gaussian_crlb(80.0, 1.5, background=3.0, window=15)
    assert c["y"] == pytest.approx(c["x"], rel=1e-12)
    e = gaussian_crlb(80.0, 2.5, 1.2, background=3.0, window=21)
    assert e["params"] == ("y", "x", "amplitude", "sigma_y", "sigma_x", "background")
    assert e["y"] > e["x"]


def test_crlb_many_matches_single():
    amps = np.array([40.0, 90.0, 300.0])
    sig = np.array([1.2, 1.6, 2.0])
    offs = np.array([[0.0, 0.0], [0.3, -0.2], [-0.45, 0.1]])
    many = gaussian_crlb_many(amps, sig, background=4.0, window=15, offset=offs)
    for k in range(3):
        one = gaussian_crlb(amps[k], sig[k], background=4.0, window=15, offset=tuple(offs[k]))
        assert many["y"][k] == pytest.approx(one["y"], rel=1e-12)
        assert many["x"][k] == pytest.approx(one["x"], rel=1e-12)
    with pytest.raises(ValueError):
        gaussian_crlb(10.0, 1.0, estimate=("amplitude",))


# ------------------------------------------------------------------------------------------
# segmentation overlap
# ------------------------------------------------------------------------------------------


def test_dice_iou_hand_values():
    truth = np.zeros((4, 5), dtype=np.int32)
    truth[1:3, 1:4] = 1  # 6 px
    pred = np.zeros((4, 5), dtype=bool)
    pred[1:3, 2:5] = True  # 6 px, 4 shared
    # TP 4, FP 2, FN 2, TN 12
    assert dice(pred, truth) == pytest.approx(8 / 12)
    assert iou(pred, truth) == pytest.approx(4 / 8)
    # background: TP 12, FP 2, FN 2
    assert mean_iou(pred, truth) == pytest.approx(0.5 * (4 / 8 + 12 / 16))
    assert pixel_accuracy(pred, truth) == pytest.approx(16 / 20)
    # instance labels count as foreground
    assert dice(truth * 7, truth) == 1.0


def test_dice_iou_empty_and_shapes():
    z = np.zeros((3, 3))
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0
    assert mean_iou(z, z) == 1.0 and pixel_accuracy(z, z) == 1.0
    one = z.copy()
    one[1, 1] = 1
    assert dice(one, z) == 0.0 and iou(one, z) == 0.0
    with pytest.raises(ValueError):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_border_band_leaves_edge_points_out_of_both_sets():
    from napari_atomnet.core.metrics import detection_scores

    truth = np.array([[5.0, 5.0], [50.0, 50.0]])
    found = np.array([[5.2, 5.0], [50.0, 50.0], [0.2, 30.0]])  # an edge column truth lacks
    full = detection_scores(found, truth, 1.0)
    inner = detection_scores(found, truth, 1.0, shape=(60, 60), border=3.0)
    assert full["fp"] == 1 and inner["fp"] == 0 and inner["tp"] == 2
    with pytest.raises(ValueError, match="shape"):
        detection_scores(found, truth, 1.0, border=3.0)


def test_border_band_scores_a_column_found_just_across_its_line():
    from napari_atomnet.core.metrics import detection_scores

    # a column 0.01 px inside the band's line, detected 0.3 px across it: found, not missed
    truth = np.array([[4.01, 30.0], [30.0, 30.0], [2.0, 50.0]])
    found = np.array([[3.71, 30.0], [30.0, 30.2], [2.1, 50.0], [1.0, 10.0]])
    s = detection_scores(found, truth, 1.0, shape=(60, 60), border=4.0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert (s["n_found"], s["n_truth"]) == (1, 2)  # inside the line: 1 detection, 2 columns
    # a column inside that nothing found, and a detection inside with no column, still count
    s = detection_scores(found[1:], truth[:2], 1.0, shape=(60, 60), border=4.0)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    s = detection_scores([[20.0, 20.0]], truth, 1.0, shape=(60, 60), border=4.0)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 2)
