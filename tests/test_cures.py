"""The cures analysis: its numbers against independent references (the LRU's eigenvalues, the critical γ_x's
closed form) and its table against the data."""

import math

import numpy as np
import pytest

from analyses import common, cures
from gradflow.summary import verdict_of


@pytest.fixture(scope="module")
def small():
    config = {**cures.CONFIG, **cures.QUICK, "baselines": [], "critical": ["ln_notanh", "bn_notanh"],
              "floss_presets": []}
    return config, cures.run(config)


def test_lru_rate_is_log_of_largest_eigenvalue_modulus(small):
    config, data = small
    i = data["labels"].index("lru [0.9, 0.999]")
    for k, seed in enumerate(data["seeds"]):
        _, v, _, _, _ = common.setup("lru", config["hidden"], config["input_size"], config["batch"], 2,
                                     int(seed), r_min=0.9, r_max=0.999, dtype=config["dtype"])
        p = v["params"]
        nu, theta = (np.asarray(p[k], np.float64) for k in ("nu_log", "theta_log"))
        lam = np.exp(-np.exp(nu) + 1j * np.exp(theta))
        ref = math.log(np.abs(lam).max())
        assert 0.9 <= np.abs(lam).min() and np.abs(lam).max() <= 0.999  # the ring
        # ‖diag(λ)^k‖₂ = max|λ|^k at every lag: the fitted slope is exact up to float32 rounding
        assert data["rate"][i, k] == pytest.approx(ref, abs=2e-4)
        assert data["prediction"][i, k] == pytest.approx(ref, abs=1e-6)
        np.testing.assert_allclose(np.log(data["spectral"][i, k]), data["lags"] * ref, atol=2e-3)


def test_critical_input_gamma_rows(small):
    config, data = small
    d, B = config["hidden"], config["batch"]
    for name, n in (("ln_notanh", d), ("bn_notanh", B)):
        i = data["labels"].index(f"{name} γx*")
        assert data["gamma_x"][i] == pytest.approx(1.0 / math.sqrt(n - 3), rel=1e-12)
        assert data["input_share"][i] == pytest.approx(1.0 / (n - 2), rel=1e-12)
        assert np.all(np.abs(data["prediction"][i]) < 1e-9)  # the mean-field rate is 0 there
        assert data["prediction_kind"][i] == "mean field"
        assert np.all(data["floss_seconds"][i] == 0)


def test_table_follows_the_data(small):
    _, data = small
    md = cures.write_extra(data)["cures.md"]
    assert "### What keeps the gradients alive" in md
    for i, label in enumerate(data["labels"]):
        line = next(row for row in md.splitlines() if row.startswith(f"| {label} |"))
        rate = float(data["rate"][i].mean())
        assert f"{rate:+.3f}" in line
        assert verdict_of(rate, threshold=data["threshold"]) in line
    alive = [lab for i, lab in enumerate(data["labels"]) if abs(data["rate"][i].mean()) <= data["threshold"]]
    assert ("holds for: " + (", ".join(alive) if alive else "none")) in md


def test_one_seed_prints_no_spread_and_mean_field_names_the_wide_layer(small):
    config, data = small
    assert len(data["seeds"]) == 1
    md = cures.write_extra(data)["cures.md"]
    table = [row for row in md.splitlines() if row.startswith("| ")]
    assert len(table) == len(data["labels"]) + 2  # header, rule, rows
    assert not any("±" in row for row in table)  # no "± 0.000" that reads like a measured spread
    assert "mean ± sd" not in md
    assert "one seed (no spread)" in md and "train mode, 1 seed)" in md
    assert f"wide layer (d → ∞; here d = {config['hidden']})" in md  # the γx* rows' mean-field prediction
    for i, label in enumerate(data["labels"]):
        line = next(row for row in md.splitlines() if row.startswith(f"| {label} |"))
        assert f"| {data['rate'][i, 0]:+.3f} | {data['lam'][i, 0]:+.3f} |" in line
    # two seeds (the same numbers, and 0.01 more): mean ± sd over 2 seeds
    R = len(data["labels"])
    two = {k: (np.concatenate([v, v + 0.01], axis=1) if isinstance(v, np.ndarray) and v.shape[:2] == (R, 1)
               else v) for k, v in data.items()}
    two["seeds"] = np.asarray([0, 1])
    md2 = cures.write_extra(two)["cures.md"]
    assert "one seed" not in md2 and "mean ± sd over 2 seeds" in md2 and "2 seeds)" in md2
    for i, label in enumerate(data["labels"]):
        line = next(row for row in md2.splitlines() if row.startswith(f"| {label} |"))
        assert f"{data['rate'][i, 0] + 0.005:+.3f} ± 0.005" in line
    # no mean-field prediction among the rows: no note
    kinds = ["exact" if k == "mean field" else k for k in data["prediction_kind"]]
    other = {**data, "prediction_kind": kinds}
    assert "wide layer" not in cures.write_extra(other)["cures.md"]


def test_quick_config_has_the_baselines():
    assert cures.QUICK["baselines"] == ["tanh", "bn_notanh"]
    rows = cures.candidates({**cures.CONFIG, **cures.QUICK})
    assert [r["label"] for r in rows if r["kind"] == "baseline"] == ["tanh", "bn_notanh"]


def test_flossed_row_and_plot():
    config = {**cures.CONFIG, **cures.QUICK, "baselines": [], "lru_rings": [], "critical": [],
              "floss_presets": ["tanh"], "floss_steps": 2}
    data = cures.run(config)
    assert data["labels"] == ["tanh flossed"]
    assert data["floss_seconds"][0, 0] > 0
    assert not data["prediction_valid"][0, 0] and data["prediction"][0, 0] == 0  # no prediction: masked
    assert np.isnan(cures.nan_view(data)["prediction"][0, 0])
    assert set(cures.plot(data)) == {"cures"}


def test_registry_family_rows():
    """Registry families enter as rows by name; lru_stack's prediction is ln max|λ| over its layers' λ (its
    asymptotic rate). (A family without a rate gets none: tests/test_families.py.)"""
    config = {**cures.CONFIG, **cures.QUICK, "hidden": 8, "baselines": [], "lru_rings": [], "critical": [],
              "floss_presets": [], "families": ["lru_stack"]}
    data = cures.run(config)
    assert data["labels"] == ["lru_stack"] and data["kinds"] == ["candidate"]
    assert data["prediction_kind"] == ["asymptotic"]
    _, v, _, _, _ = common.setup("lru_stack", 8, config["input_size"], config["batch"], 2,
                                 int(data["seeds"][0]), dtype=config["dtype"])
    nu = np.concatenate([np.asarray(v["params"][f"lru_{k}"]["nu_log"], np.float64) for k in range(2)])
    lam = np.exp(-np.exp(nu))  # |λ| of both layers
    assert data["prediction"][0, 0] == pytest.approx(math.log(lam.max()), abs=1e-6)
    assert np.all(np.isfinite(data["rate"])) and np.all(np.isfinite(data["lam"]))


def test_user_cells_are_measured_like_the_named_rows():
    """A cell object passed as ``cells`` gets the named row's numbers when it is that preset (same seeds, same
    inputs); a user's flax.linen cell runs through the same path (no prediction); bad labels and objects
    are refused."""
    import flax.linen as nn

    import gradflow

    config = {**cures.CONFIG, **cures.QUICK, "baselines": ["tanh"], "lru_rings": [], "critical": [],
              "floss_presets": []}
    ours = gradflow.make_cell("tanh", config["hidden"], config["input_size"], dtype=config["dtype"])
    data = cures.run(config, cells={"mine": ours, "linen gru": nn.GRUCell(features=5)})
    assert data["labels"] == ["tanh", "mine", "linen gru"] and data["kinds"] == ["baseline", "user", "user"]
    np.testing.assert_array_equal(data["spectral"][1], data["spectral"][0])
    np.testing.assert_array_equal(data["lam"][1], data["lam"][0])
    assert not data["prediction_valid"][1:].any()
    assert np.all(np.isfinite(data["rate"][2])) and data["rate"][2, 0] < 0  # a GRU at init: vanishing
    with pytest.raises(ValueError, match="already a row"):
        cures.candidates(config, {"tanh": ours})
    with pytest.raises(ValueError, match="flax.linen cell"):
        common.as_cell(object(), 4, 2)
    with pytest.raises(ValueError, match="inputs of size"):
        common.as_cell(ours, 4, config["input_size"] + 1)
