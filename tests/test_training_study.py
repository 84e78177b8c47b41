"""Tests of the training study (analyses/training_study.py): the rate chosen on validation data only and its
grid extended until interior, the doubling of lengths, the budget runs, the store, the seed statistics against
plain Python, the affine classification against the cells' states, the causes and the CSV."""

from __future__ import annotations

import csv
import io
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from analyses import training_study as ts

BASE = {
    **ts.CONFIG,
    **ts.QUICK,
    "cells": ["tanh"],
    "tasks": [["adding", [4]]],
    "learning_rates": [0.001, 0.01],
    "rate_limits": [0.0001, 0.1],
    "seeds": [0, 1, 2, 3, 4],
    "budget": {},
    "cell_tasks": {},
}


def _record(val, test, diverged=False, **kw):
    return {
        "steps_done": 3.0,
        "diverged": float(diverged),
        "init_rate": -0.2,
        "val_loss": val,
        "val_acc": 0.5,
        "test_loss": test,
        "test_acc": 0.4,
        "lyap_init": -0.1,
        "lyap_final": -0.05,
        "capacity": 2.0,
        "wall_s": 0.01,
        **kw,
    }


@pytest.fixture
def fake(monkeypatch):
    """Replace training by ``fake.fn(task, lr, seed, cell, steps) -> record``; ``fake.calls`` lists runs."""

    class Fake:
        calls: list = []
        fn = None

    f = Fake()
    f.calls = []

    def one_run(c, task, lr, seed, cell, extra, steps):
        f.calls.append((task.name, task.seq_len, lr, seed, steps))
        rec = f.fn(task, lr, seed, cell, steps)
        if cell.spec.has_bn:
            rec = {
                "val_loss_train": rec["val_loss"],
                "val_acc_train": 0.5,
                "test_loss_train": rec["test_loss"],
                "test_acc_train": 0.5,
                **rec,
            }
        return rec

    monkeypatch.setattr(ts, "one_run", one_run)
    return f


def test_rate_chosen_on_validation_only(fake):
    # at lr 0.01 the validation loss is best but the test loss is worst; at 0.001 the reverse; the grid
    # limits are the grid itself, so nothing is added
    fake.fn = lambda task, lr, seed, cell, steps: (
        _record(0.01 + 0.001 * seed, 0.15 + 0.001 * seed)
        if lr == 0.01
        else _record(0.12, 0.0001 * (seed + 1))
    )
    data = ts.run({**BASE, "rate_limits": [0.001, 0.01]})
    (s,) = ts.summarize(data)
    assert s["learning_rate"] == 0.01 and s["edge"] == "high (limit)"
    assert s["median"] == pytest.approx(0.152 * 6) and s["solved"] == 0


def test_rate_grid_extends_until_the_choice_is_interior(fake):
    best = 0.0003  # validation loss is smallest here, below the starting grid
    fake.fn = lambda task, lr, seed, cell, steps: _record(abs(math.log(lr / best)) + 0.01 * seed, 0.1)
    data = ts.run(BASE)
    (s,) = ts.summarize(data)
    assert s["learning_rate"] == best and s["edge"] == "interior"
    assert s["rates"] == [0.0001, 0.0003, 0.001, 0.01]
    # the optimum beyond the limit: the grid stops at the limit and says so
    fake.calls.clear()
    data = ts.run({**BASE, "rate_limits": [0.0003, 0.1]})
    (s,) = ts.summarize({**data, "rate_limits": [0.0003, 0.1]})
    assert s["rates"] == [0.0003, 0.001, 0.01] and s["learning_rate"] == 0.0003 and s["edge"] == "low (limit)"
    # a rate where every seed diverges ends the climb
    fake.fn = lambda task, lr, seed, cell, steps: (
        _record(math.inf, math.inf, diverged=True) if lr > 0.01 else _record(1.0 / lr, 0.1)
    )
    (s,) = ts.summarize(ts.run(BASE))
    assert s["rates"] == [0.001, 0.01, 0.03] and s["learning_rate"] == 0.01 and s["edge"] == "interior"


def test_edge_words():
    assert ts.edge_words("interior") == ""
    assert ts.edge_words("high") == "high edge" and ts.edge_words("low") == "low edge"
    assert ts.edge_words("high (limit)") == "high edge, at the grid limit"
    assert ts.edge_words("low (limit)") == "low edge, at the grid limit"
    with pytest.raises(ValueError, match="not an edge"):
        ts.edge_words("middle")


def test_edge_at_the_limit_agrees_with_the_grid_extension(fake):
    # the next rate below 0.0004 is 0.0001 (one significant digit), below the limit 0.00013: the grid is not
    # extended, so the edge is the limit's (0.0004 / 3 alone would pass the limit)
    fake.fn = lambda task, lr, seed, cell, steps: _record(lr + 0.0001 * seed, 0.1)
    data = ts.run({**BASE, "learning_rates": [0.0004, 0.001], "rate_limits": [0.00013, 0.01]})
    (s,) = ts.summarize(data)
    assert s["rates"] == [0.0004, 0.001] and s["learning_rate"] == 0.0004 and s["edge"] == "low (limit)"


def test_findings_open_with_the_legend_and_say_where_a_rate_is_at_its_grid_limit(fake):
    # validation is best at the highest rate and the limits are the grid itself: the high edge, at the limit
    fake.fn = lambda task, lr, seed, cell, steps: _record(1.0 / lr + 0.001 * seed, 0.05)
    data = ts.run({**BASE, "rate_limits": [0.001, 0.01]})
    md = ts.findings_markdown(data)
    first = md.splitlines()[0]
    assert first == ts.LEGEND
    assert first.startswith("Losses are test loss as % of the memoryless baseline (the loss of predicting")
    assert "100 % = nothing learned, < 50 % = learned" in first
    assert "tanh adding T=4 lr 0.01 (high edge, at the grid limit)" in md
    assert "rate_limits [0.001, 0.01]" in md
    assert "lr 0.01 (high edge, at the grid limit)" in ts.table_markdown(data)
    # the same runs read against wider limits: an edge, but not the limit's
    wide = ts.findings_markdown({**data, "rate_limits": [0.0001, 1.0]})
    assert "tanh adding T=4 lr 0.01 (high edge)" in wide and "(high edge, at the grid limit)" not in wide
    # best at the lowest rate: the low edge
    fake.fn = lambda task, lr, seed, cell, steps: _record(lr + 0.0001 * seed, 0.05)
    md = ts.findings_markdown(ts.run({**BASE, "rate_limits": [0.001, 0.01]}))
    assert "tanh adding T=4 lr 0.001 (low edge, at the grid limit)" in md
    # an interior choice: no edge sentence, the legend still first
    fake.fn = lambda task, lr, seed, cell, steps: _record(abs(math.log(lr / 0.003)) + 0.01 * seed, 0.05)
    md = ts.findings_markdown(ts.run({**BASE, "learning_rates": [0.001, 0.003, 0.01]}))
    assert md.splitlines()[0] == ts.LEGEND and "edge" not in md


def test_seed_statistics_against_plain_python(fake):
    rng = np.random.default_rng(0)
    table = {
        (lr, s): (
            float(rng.uniform(0, 0.2)),
            float(rng.choice([rng.uniform(0, 1e-3), rng.uniform(0.01, 0.2)])),
        )
        for lr in (0.001, 0.01)
        for s in range(5)
    }
    fake.fn = lambda task, lr, seed, cell, steps: _record(*table[(lr, seed)])
    (s,) = ts.summarize(ts.run({**BASE, "rate_limits": [0.001, 0.01]}))
    by_lr = {lr: statistics.median(table[(lr, k)][0] for k in range(5)) for lr in (0.001, 0.01)}
    best = min(by_lr, key=by_lr.get)
    test = [table[(best, k)][1] * 6 for k in range(5)]
    assert s["learning_rate"] == best and s["n"] == 5
    assert s["median"] == pytest.approx(statistics.median(test))
    assert (s["min"], s["max"]) == (pytest.approx(min(test)), pytest.approx(max(test)))
    assert s["solved"] == sum(v < 0.01 for v in test)


def test_doubling_stops_after_the_first_length_not_learned_and_budget_runs_only_where_it_fails(fake):
    # solves recall up to T = 8, fails at 16 but learns it (10 % of the baseline), has not learned 32 (90 %):
    # the lengths stop after 32; adding never: one budget run (seed 0) at 3x the steps where it fails
    ratio = {4: 1e-5, 8: 1e-5, 16: 0.1, 32: 0.9, 64: 1e-5}
    fake.fn = lambda task, lr, seed, cell, steps: _record(
        0.1, ratio[task.seq_len] * task.baseline if task.name == "recall" else 0.5
    )
    cfg = {
        **BASE,
        "tasks": [["adding", [4]], ["recall", [4, 8, 16, 32, 64]]],
        "doubling": ["recall"],
        "rate_limits": [0.001, 0.01],
        "budget": {"factor": 3, "tasks": ["adding", "recall"]},
    }
    data = ts.run(cfg)
    lengths = sorted({n for name, n, *_ in fake.calls if name == "recall"})
    assert lengths == [4, 8, 16, 32]
    budget = [c for c in fake.calls if c[4] == 3 * cfg["steps"]]
    expected = [("adding", 4, 0), ("recall", 16, 0), ("recall", 32, 0)]
    assert sorted((c[0], c[1], c[3]) for c in budget) == expected
    summ = ts.summarize(data)
    assert ts.longest_solved(summ, "tanh", "recall") == (8, 16)
    assert ts.cause(summ, "tanh", ["recall"])["kind"] == "product"  # it learns recall at 8 > 4


def test_store_resumes_without_recomputing(tmp_path, fake):
    fake.fn = lambda task, lr, seed, cell, steps: _record(0.1, lr * seed)
    cfg = {**BASE, "rate_limits": [0.001, 0.01], "store": str(tmp_path / "store")}
    d1 = ts.run(cfg)
    assert len(fake.calls) == 10 == len(d1["cell"])
    d2 = ts.run(cfg)
    assert len(fake.calls) == 10
    np.testing.assert_array_equal(d1["test_loss"], d2["test_loss"])
    ts.run({**cfg, "seeds": [0, 1, 2, 3, 4, 5]})
    assert len(fake.calls) == 12 and all(c[3] == 5 for c in fake.calls[10:])
    assert ts.RunStore(tmp_path / "store").get({"something": "else"}) is None
    assert not list((tmp_path / "store").glob(".*"))  # no temporary files left


def test_bn_cells_report_both_modes(fake):
    fake.fn = lambda task, lr, seed, cell, steps: _record(0.1, 0.2)
    data = ts.run({**BASE, "cells": ["bn_notanh"], "rate_limits": [0.001, 0.01]})
    summ = ts.summarize(data)
    assert [s["label"] for s in summ] == ["bn_notanh", "bn_notanh [train mode]"]
    assert [s["affine"] for s in summ] == [True, False]
    rows = list(csv.DictReader(io.StringIO(ts.csv_text(data))))
    assert set(rows[0]) == set(ts.CSV_COLUMNS)
    assert len(rows) == 10 * 2 * 2  # runs × splits × modes
    assert {r["mode"] for r in rows} == {"eval", "train"}


def _final_state(cell, variables, xs, train):
    step = gf.as_step(cell, variables, train=train)
    carry = gf.unroll(step, cell.initialize_carry(xs.shape[1]), xs)
    return np.asarray(carry["h"][-1], np.float64)


@pytest.mark.parametrize(
    "name,mode",
    [
        ("linear", "eval"),
        ("bn_notanh", "eval"),
        ("lru", "eval"),
        ("tanh", "eval"),
        ("ln_notanh", "eval"),
        ("irnn", "eval"),
        ("gru", "eval"),
    ],
)
def test_affine_classification_matches_the_states(name, mode, x64):
    # h_T(a x1 + (1 - a) x2) = a h_T(x1) + (1 - a) h_T(x2) exactly for an affine map (per example)
    cell = gf.make_cell(name, 8, 2, t_max=6, dtype="float64")
    variables = gf.init_cell(cell, jax.random.key(0))
    if "batch_stats" in variables:  # non-trivial running statistics
        variables = {
            **variables,
            "batch_stats": jax.tree.map(
                lambda v: v + 0.3 * jax.random.uniform(jax.random.key(1), v.shape, v.dtype),
                variables["batch_stats"],
            ),
        }
    k1, k2 = jax.random.split(jax.random.key(2))
    x1, x2 = (jax.random.normal(k, (6, 3, 2), jnp.float64) * 2 for k in (k1, k2))
    a = 0.3
    mixed = _final_state(cell, variables, a * x1 + (1 - a) * x2, mode == "train")
    line = a * _final_state(cell, variables, x1, mode == "train") + (1 - a) * _final_state(
        cell, variables, x2, mode == "train"
    )
    gap = np.max(np.abs(mixed - line)) / max(np.max(np.abs(line)), 1e-12)
    if ts.is_affine(cell, mode):
        assert gap < 1e-10
    else:
        assert gap > 1e-3


def test_causes_from_summaries():
    def s(label, task, length, median, solved, affine=False, floor=math.nan, budget=math.nan):
        return {
            "label": label,
            "task": task,
            "length": length,
            "median": median,
            "solved": solved,
            "n": 5,
            "affine": affine,
            "floor": floor,
            "budget": budget,
            "budget_steps": 100,
        }

    summ = [
        s("lin", "adding", 10, 0.82, 0, affine=True, floor=0.8),
        s("lin", "recall", 10, 0.001, 5),
        s("gru", "adding", 10, 0.001, 5),
        s("gru", "recall", 10, 0.001, 5),
        s("ln", "adding", 10, 0.9, 0, budget=0.6),
        s("slow", "adding", 10, 0.12, 0, budget=0.02),
        s("slow", "recall", 10, 0.02, 0),
        s("ln", "recall", 10, 0.001, 5),
        s("ln", "recall", 20, 0.001, 4),
        s("rnn", "adding", 10, 0.001, 5),
        s("rnn", "adding", 40, 0.9, 1),
        s("rnn", "recall", 10, 0.0, 5),
        s("rnn", "recall", 20, 0.5, 0),
        s("bad", "adding", 10, 0.9, 0),
        s("bad", "recall", 10, 0.9, 0),
    ]
    labs = ("lin", "gru", "ln", "rnn", "bad", "slow")
    kinds = {lab: ts.cause(summ, lab, ["recall"])["kind"] for lab in labs}
    assert kinds == {
        "lin": "expressivity",
        "gru": "learns",
        "ln": "product",  # the longer run (60 % of 90 %) does not halve the loss
        "rnn": "length",
        "bad": "training",
        "slow": "budget",  # 12 % -> 2 % with more steps
    }
    assert "recall 50 % at T = 10, 20" not in ts.cause(summ, "rnn", ["recall"])["text"]
    assert "recall 0 %, 50 % at T = 10, 20" in ts.cause(summ, "rnn", ["recall"])["text"]
    assert (
        "82 %" in ts.cause(summ, "lin", ["recall"])["text"]
        and "80 %" in ts.cause(summ, "lin", ["recall"])["text"]
    )
    assert "60 %" in ts.cause(summ, "ln", ["recall"])["text"]  # the budget run is quoted


def test_in_short_quotes_the_cause_and_names_each_better_or_worse_with_its_p():
    def s(label, task, length, values, affine=False, floor=math.nan):
        return {"label": label, "cell": label.split(" ")[0], "task": task, "length": length,
                "col": f"{task} T={length}", "values": values, "median": float(np.median(values)),
                "solved": sum(v < 0.01 for v in values), "n": len(values), "affine": affine, "floor": floor,
                "budget": math.nan, "budget_steps": 100}

    low, high = [0.001, 0.002, 0.003, 0.004, 0.005], [0.5, 0.6, 0.7, 0.8, 0.9]
    summ = [
        s("bn_notanh", "adding", 10, [0.9] * 5, affine=True, floor=0.8),
        s("bn_notanh", "recall", 10, high),
        s("bn_notanh", "recall", 20, low),
        s("tanh", "adding", 10, low),
        s("tanh", "recall", 10, low),
        s("tanh", "recall", 20, low),
    ]
    (line,) = ts.in_short(summ, ["recall"])
    assert line.startswith("**bn_notanh**: expressivity on adding (affine in its inputs")
    assert "90 %" in line and "80 %" in line  # the loss beside the affine floor
    p = 2 / math.comb(10, 5)
    assert f"worse 1 (recall T=10 p {p:.2g})" in line
    assert "better 0, " in line and "no difference detected 1" in line


def test_comparison_uses_the_rank_test():
    a = {"values": [0.1, 0.2, 0.15, 0.12, 0.11]}
    b = {"values": [0.9, 0.95, 0.85, 0.99, 0.91]}
    k = ts.compare(a, b)
    assert k["verdict"] == "better" and k["p"] == pytest.approx(2 / 252)
    assert ts.compare(b, a)["verdict"] == "worse"
    mixed = {"values": [0.1, 0.95, 0.15, 0.9, 0.11]}
    assert ts.compare(mixed, b)["verdict"] == "no difference detected"


def test_flossing_variants_ask_for_flossing():
    # the old tanh_floss set floss_k=1 (the default) and no weight: TrainConfig now refuses such a request,
    # and every flossing variant builds a configuration that flosses
    from gradflow import train

    for name, v in ts.VARIANTS.items():
        opts = v.get("train")
        if opts:
            cfg = train.TrainConfig(**opts)
            assert cfg.floss and (cfg.floss_weight > 0 or cfg.floss_pre_steps > 0), name


def test_user_cells_join_the_study(fake):
    """A user's flax.linen cell is studied beside ours under its label; whether it is affine is measured on
    its states (a linear cell: yes, a GRU: no); labels that name our cells are refused."""
    import flax.linen as nn

    class Linear(nn.Module):
        features: int = 4

        @nn.compact
        def __call__(self, carry, x):
            h = nn.Dense(self.features, use_bias=False)(carry) + nn.Dense(self.features)(x)
            return h, h

        def initialize_carry(self, key, shape):
            return jnp.zeros((shape[0], self.features))

    fake.fn = lambda task, lr, seed, cell, steps: _record(0.1, 0.01)
    cfg = {**BASE, "rate_limits": [0.001, 0.01]}
    data = ts.run(cfg, cells={"my gru": nn.GRUCell(features=4), "my linear": Linear()})
    assert list(dict.fromkeys(data["cell"])) == ["tanh", "my gru", "my linear"]
    affine = {r["cell"]: r["affine_eval"] for r in ts.records(data)}
    assert affine == {"tanh": False, "my gru": False, "my linear": True}
    with pytest.raises(ValueError, match="name our cells"):
        ts.run(cfg, cells={"gru": nn.GRUCell(features=4)})


def test_holm_against_its_definition():
    ps = [0.01, 0.04, 0.03, 0.005]  # sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: two rejected
    assert ts.holm(ps) == 2
    assert ts.holm([0.2, 0.3]) == 0 and ts.holm([0.001, 0.02]) == 2 and ts.holm([]) == 0
