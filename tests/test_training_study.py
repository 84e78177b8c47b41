"""Tests of the training study (analyses/training_study.py): rate selection on validation data only, seed
statistics against plain Python, resumption from the run store, the CSV, the validation split of the tasks."""

from __future__ import annotations

import csv
import io
import math
import statistics

import jax
import numpy as np
import pytest

from analyses import training_study as ts
from gradflow import tasks

KEYS = ("seq_len", "length", "learning_rate", "seed", "baseline", "val_loss", "val_acc", "test_loss",
        "test_acc", "solved", "diverged", "steps_done", "wall_s", "init_rate")


def _data(rows: list[dict], presets: list[str]) -> dict:
    """A study data dict (as ``run`` returns) from plain run dicts."""
    base = {"seq_len": 50, "length": 50, "baseline": 1 / 6, "val_acc": 0.0, "test_acc": 0.0, "diverged": 0,
            "steps_done": 10, "wall_s": 1.0, "init_rate": -0.1}
    full = [{**base, **r} for r in rows]
    for r in full:
        if "solved" not in r:
            r["solved"] = int(r["test_loss"] < 0.01 / 6) if r["task"] == "adding" else -1
    d = {k: np.asarray([r[k] for r in full]) for k in KEYS}
    for k in ts.MASKED:
        d[k + "_valid"] = np.isfinite(d[k])
    d.update({"run_preset": [r["preset"] for r in full], "run_task": [r["task"] for r in full],
              "presets": presets, "steps": 10, "hidden": 4, "batch": 8, "seeds": [0, 1, 2], "notes": "",
              "total_wall_s": float(len(full))})
    return d


def test_rate_chosen_on_validation_only():
    # at lr 0.01 the validation loss is best but the test loss is worst; at 0.001 the reverse
    rows = []
    for seed in range(3):
        rows.append({"preset": "tanh", "task": "adding", "learning_rate": 0.01, "seed": seed,
                     "val_loss": 0.01 + 0.001 * seed, "test_loss": 0.15 + 0.001 * seed})
        rows.append({"preset": "tanh", "task": "adding", "learning_rate": 0.001, "seed": seed,
                     "val_loss": 0.12 + 0.001 * seed, "test_loss": 0.0001 * (seed + 1)})
    (s,) = ts.summarize(_data(rows, ["tanh"]))
    assert s["learning_rate"] == 0.01
    assert s["median"] == pytest.approx(0.151)
    assert s["solved"] == 0
    # accuracy tasks: the higher validation accuracy wins
    acc = [{"preset": "gru", "task": "mnist1d", "learning_rate": lr, "seed": 0, "val_loss": 1.0,
            "test_loss": 1.0, "val_acc": va, "test_acc": ta, "length": -1, "seq_len": 40}
           for lr, va, ta in ((0.1, 0.2, 0.9), (0.01, 0.7, 0.3))]
    (s,) = ts.summarize(_data(acc, ["gru"]))
    assert s["learning_rate"] == 0.01 and s["median"] == pytest.approx(0.3) and s["solved"] is None


def test_diverged_runs_count_as_worst_in_the_choice():
    runs = [{"metric_name": "loss", "learning_rate": 0.1, "val_metric": v}
            for v in (0.001, math.nan, math.inf)]
    runs += [{"metric_name": "loss", "learning_rate": 0.01, "val_metric": v} for v in (0.1, 0.1, 0.1)]
    assert ts.choose_rate(runs) == 0.01  # median of (0.001, inf, inf) is inf


def test_seed_statistics_against_plain_python():
    rng = np.random.default_rng(0)
    rows = []
    for preset in ("tanh", "lstm"):
        for lr in (0.001, 0.01):
            for seed in range(5):
                rows.append({"preset": preset, "task": "adding", "learning_rate": lr, "seed": seed,
                             "val_loss": float(rng.uniform(0, 0.2)),
                             "test_loss": float(rng.choice([rng.uniform(0, 0.001), rng.uniform(0.01, 0.2)]))})
    summ = ts.summarize(_data(rows, ["tanh", "lstm"]))
    for s in summ:
        mine = [r for r in rows if r["preset"] == s["preset"]]
        by_lr = {lr: statistics.median(r["val_loss"] for r in mine if r["learning_rate"] == lr)
                 for lr in (0.001, 0.01)}
        best = min(by_lr, key=by_lr.get)
        test = [r["test_loss"] for r in mine if r["learning_rate"] == best]
        assert s["learning_rate"] == best
        assert s["median"] == pytest.approx(statistics.median(test))
        assert s["min"] == pytest.approx(min(test)) and s["max"] == pytest.approx(max(test))
        assert s["solved"] == sum(1 for v in test if v < 0.01 / 6) and s["n"] == 5


def test_init_rate_is_minus_the_log_slope():
    t = np.arange(1, 41)
    assert ts.init_rate(np.exp(0.25 * t)) == pytest.approx(-0.25)  # gradient shrinking backwards in time
    g = np.exp(0.5 * t)
    g[:5] = 0.0  # underflowed entries are left out
    assert ts.init_rate(g) == pytest.approx(-0.5)
    assert math.isnan(ts.init_rate([0.0, 0.0, 1.0]))


def _fake_record(**kw):
    return {"steps_done": 3, "diverged": False, "init_rate": -0.2, "val_loss": 0.1, "val_acc": 0.5,
            "test_loss": 0.2, "test_acc": 0.4, "wall_s": 0.5, **kw}


def test_store_resumes_without_recomputing(tmp_path, monkeypatch):
    calls = []

    def fake(c, name, task, lr, seed, cell, extra, progress=None):
        calls.append((name, lr, seed))
        return _fake_record(test_loss=lr * seed)

    monkeypatch.setattr(ts, "one_run", fake)
    cfg = {**ts.CONFIG, **ts.QUICK, "store": str(tmp_path / "store")}
    d1 = ts.run(cfg)
    n = len(ts.plan(cfg))
    assert len(calls) == n == 8 and len(d1["run_preset"]) == n
    assert list(d1["run_steps"]) == [cfg["steps"]] * n
    # a second run reads every record back
    d2 = ts.run(cfg)
    assert len(calls) == n
    np.testing.assert_array_equal(d1["test_loss"], d2["test_loss"])
    # one more seed: only its runs are computed
    cfg3 = {**cfg, "seeds": [0, 1, 2]}
    ts.run(cfg3)
    assert len(calls) == n + 4 and all(s == 2 for _, _, s in calls[n:])
    # a record stored under another configuration is not mistaken for this one
    store = ts.RunStore(tmp_path / "store")
    assert store.get({"something": "else"}) is None


def test_unavailable_variant_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(ts.VARIANTS, "tanh_future", {"base": "tanh", "train": {"no_such_option": 1}})
    monkeypatch.setattr(ts, "one_run", lambda *a, **k: _fake_record())
    cfg = {**ts.CONFIG, **ts.QUICK, "presets": ["tanh", "tanh_future"], "seeds": [0]}
    data = ts.run(cfg)
    assert data["presets"] == ["tanh"] and set(data["run_preset"]) == {"tanh"}
    assert "tanh_future" in data["notes"] and "no_such_option" in data["notes"]
    assert "Not run: skipped tanh_future" in ts.findings_markdown(data)


def test_csv_has_the_columns_and_a_row_per_split():
    rows = [{"preset": "tanh", "task": "adding", "learning_rate": 0.01, "seed": s, "val_loss": 0.1,
             "test_loss": 0.001 * s} for s in range(3)]
    text = ts.csv_text(_data(rows, ["tanh"]))
    table = list(csv.DictReader(io.StringIO(text)))
    assert tuple(table[0]) == ts.CSV_COLUMNS
    assert [r["split"] for r in table] == ["val", "test"] * 3
    test = [r for r in table if r["split"] == "test"]
    assert [float(r["metric"]) for r in test] == pytest.approx([0.0, 0.001, 0.002])
    assert [r["solved"] for r in test] == ["1", "1", "0"]  # below 1% of 1/6 = 0.00167
    assert {r["solved"] for r in table if r["split"] == "val"} == {"0"}
    for key in ("training_study.csv", "training_study_table.md", "training_study_findings.md"):
        assert key in ts.write_extra(_data(rows, ["tanh"]))


def test_findings_compare_only_non_overlapping_spreads():
    rows = []
    for s in range(3):
        rows.append({"preset": "tanh", "task": "adding", "learning_rate": 0.01, "seed": s, "val_loss": 0.1,
                     "test_loss": 0.10 + 0.01 * s})
        rows.append({"preset": "bn_notanh", "task": "adding", "learning_rate": 0.01, "seed": s,
                     "val_loss": 0.1, "test_loss": 0.115 + 0.01 * s})
        rows.append({"preset": "ln_notanh", "task": "adding", "learning_rate": 0.01, "seed": s,
                     "val_loss": 0.1, "test_loss": 0.2 + 0.01 * s})
    text = ts.findings_markdown(_data(rows, ["tanh", "bn_notanh", "ln_notanh"]))
    assert "bn_notanh vs tanh on adding T=50: indistinguishable" in text
    assert "ln_notanh vs tanh on adding T=50: worse over every seed" in text
    assert ("In all, 2 comparisons: 1 indistinguishable within the seed spread, 1 worse over every seed."
            in text)


def test_validation_split_keeps_the_test_split_and_is_never_sampled():
    t = tasks.digits()
    v = tasks.with_validation(t, 0.25, seed=3)
    np.testing.assert_array_equal(np.asarray(v.eval_set(None)[0]), np.asarray(t.eval_set(None)[0]))
    xv, yv = v.validation_set(None)
    assert xv.shape == (64, 360, 1) and v.train_size == 1438 - 360
    xs, _ = v.sample(jax.random.key(0), 4096)
    drawn = {tuple(x) for x in np.asarray(xs)[:, :, 0].T}
    kept = {tuple(x) for x in np.asarray(v._train[0])}
    assert drawn <= kept and len(drawn) > 900  # the sampler draws only the kept training images
    # kept + validation images are exactly the original training images (as a multiset)
    both = np.concatenate([np.asarray(v._train[0]), np.asarray(xv)[:, :, 0].T])
    orig = np.asarray(t._train[0])
    np.testing.assert_array_equal(np.sort(both.view([("", both.dtype)] * 64), axis=0),
                                  np.sort(orig.view([("", orig.dtype)] * 64), axis=0))
    with pytest.raises(ValueError, match="validation split"):
        t.validation_set(None)
    with pytest.raises(ValueError, match="fraction"):
        tasks.with_validation(t, 1.5)
    a = tasks.adding(10)
    assert tasks.with_validation(a) is a


def test_rate_category_from_the_reach_of_the_gradient():
    s = {"init_rate": -0.25, "length": 50, "solved": 0, "n": 3}
    assert ts.reach(s) == pytest.approx(math.exp(-0.25 * 49))
    assert ts.rate_category(s) == "vanished-failed"
    assert ts.rate_category({**s, "solved": 2}) == "vanished-learned"
    assert ts.rate_category({**s, "init_rate": -0.1}) == "alive-failed"  # e^-4.9 = 0.0074 > 1e-3
    assert ts.rate_category({**s, "init_rate": math.nan}) is None
    rows = [{"preset": "tanh", "task": "adding", "learning_rate": 0.01, "seed": k, "val_loss": 0.1,
             "test_loss": 0.2, "init_rate": -0.3} for k in range(3)]
    text = ts.preset_paragraph("tanh", ts.summarize(_data(rows, ["tanh"])))
    assert "vanished at init and not learned" in text and "predicted what it learned" in text


def test_vmapped_path_stores_the_same_runs(tmp_path):
    cfg = {**ts.CONFIG, **ts.QUICK, "presets": ["tanh"], "seeds": [0, 1], "steps": 5,
           "store": str(tmp_path / "seq")}
    seq = ts.run(cfg)
    vm = ts.run({**cfg, "vmap": True, "store": str(tmp_path / "vm")})
    np.testing.assert_allclose(vm["test_loss"], seq["test_loss"], rtol=1e-4)
    np.testing.assert_allclose(vm["val_loss"], seq["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(vm["init_rate"], seq["init_rate"], rtol=1e-4)
    cell = ts.build("tanh", cfg, ts.study_task("adding", 5, cfg["val_fraction"]))[0]
    store = ts.RunStore(tmp_path / "vm")
    paths = {store.get(ts.run_config(cfg, "tanh", "adding", 5, lr, s, cell, {}))["path"]
             for lr in cfg["learning_rates"] for s in (0, 1)}
    assert paths == {"vmap"}


def test_missing_values_are_saved_finite_and_read_back_as_nan(monkeypatch):
    def fake(c, name, task, lr, seed, cell, extra, progress=None):
        bad = lr == 0.03 and seed == 1
        return _fake_record(test_loss=math.inf if bad else 0.1, init_rate=math.nan if bad else -0.1,
                            diverged=bad)

    monkeypatch.setattr(ts, "one_run", fake)
    data = ts.run({**ts.CONFIG, **ts.QUICK, "presets": ["tanh"]})
    assert all(np.all(np.isfinite(data[k])) for k in ts.MASKED)
    assert int(np.sum(~data["test_loss_valid"])) == 1 and int(np.sum(~data["init_rate_valid"])) == 1
    bad = [r for r in ts.records(data) if r["diverged"]]
    assert len(bad) == 1 and math.isnan(bad[0]["test_loss"]) and math.isnan(bad[0]["init_rate"])
    assert "nan" in ts.csv_text(data).lower()


def test_tables_regenerate_from_the_csv_alone():
    rng = np.random.default_rng(1)
    rows = []
    for preset in ("tanh", "bn_notanh", "lstm"):
        for task, length, seq in (("adding", 50, 50), ("mnist1d", -1, 40), ("copy", 10, 30)):
            for lr in (0.001, 0.01):
                for seed in range(3):
                    rows.append({"preset": preset, "task": task, "length": length, "seq_len": seq,
                                 "learning_rate": lr, "seed": seed, "val_loss": float(rng.uniform(0, 0.2)),
                                 "test_loss": float(rng.uniform(0, 0.01)), "val_acc": float(rng.uniform()),
                                 "test_acc": float(rng.uniform()), "init_rate": float(rng.normal()),
                                 "baseline": tasks.copy_memory(10).baseline if task == "copy" else 1 / 6})
                    r = rows[-1]
                    r["solved"] = (-1 if task == "mnist1d" else
                                   int(r["test_loss"] < (0.01 if task == "adding" else 0.1) * r["baseline"]))
    data = _data(rows, ["tanh", "bn_notanh", "lstm"])
    back = ts.data_from_csv(ts.csv_text(data))
    assert ts.table_markdown(back) == ts.table_markdown(data)
    assert ts.findings_markdown(back) == ts.findings_markdown(data)
