"""Storage that never lies: truncated, corrupt and repeated writes are detected, named and recomputed.

References: the result of the first (uncorrupted) run, compared exactly; the files' own contents.
"""

from __future__ import annotations

import io
import json
import os
import types

import jax
import numpy as np
import pytest

import gradflow
from analyses import runner
from gradflow import tasks, train
from gradflow.sweep import Grid, load_table, run_sweep


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _fake(name, calls):
    """A tiny analysis with three memo parts, counting its run calls."""

    def run(config, progress=None, inputs=None):
        calls[name] = calls.get(name, 0) + 1
        parts = [runner.memo(progress, f"part{i}", lambda i=i: {"v": np.full(2, i * config["scale"])})["v"]
                 for i in range(3)]
        return {"x": np.stack(parts)}

    def plot(data):
        from analyses import style

        fig, ax = style.figure()
        ax.plot(np.ravel(data["x"]))
        return {f"{name}_fig": fig}

    m = types.ModuleType(f"analyses.{name}")
    m.NAME, m.CONFIG, m.QUICK, m.FULL, m.DEPENDS = name, {"scale": 1.0}, {"scale": 2.0}, {}, ()
    m.run, m.plot = run, plot
    return m


# ------------------------------------------------------------------------------------------ analyses runner


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_truncated_cached_data_is_named_and_recomputed(tmp_path, suffix):
    calls = {}
    mods = {"s1": _fake("s1", calls)}
    out = tmp_path / "figs"
    runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    before = runner.load_data(out / "data" / "s1")
    target = out / "data" / f"s1{suffix}"
    _truncate(target)
    log = io.StringIO()
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True, stream=log)
    assert st == {"s1": "computed"} and calls == {"s1": 2}
    assert str(target) in log.getvalue() and "warning" in log.getvalue()
    after = runner.load_data(out / "data" / "s1")
    np.testing.assert_array_equal(after["x"], before["x"])
    # and the repaired result is cached again
    assert runner.run_all(mode="quick", out=out, modules=mods, quiet=True) == {"s1": "cached"}


def test_load_data_names_unreadable_file(tmp_path):
    runner.save_data(tmp_path / "d", {"x": np.arange(1000.0)})
    _truncate(tmp_path / "d.npz", 0.7)
    with pytest.raises(ValueError, match=str(tmp_path / "d.npz")):
        runner.load_data(tmp_path / "d")
    (tmp_path / "d.json").unlink()
    with pytest.raises(ValueError, match=str(tmp_path / "d.json")):
        runner.load_data(tmp_path / "d")


@pytest.mark.parametrize("force", [False, True])
def test_truncated_saved_part_is_named_and_recomputed(tmp_path, force):
    calls = {}
    mods = {"s2": _fake("s2", calls)}
    out = tmp_path / "figs"
    ref = runner.run_all(mode="quick", out=out / "ref", modules=mods, quiet=True)
    assert ref == {"s2": "computed"}
    expect = runner.load_data(out / "ref" / "data" / "s2")
    # an interrupted run leaves its parts; one of them is then truncated
    pdir = out / "run" / ".cache" / "partial" / "s2"
    orig_run = mods["s2"].run

    def killed(config, progress=None, inputs=None):
        runner.memo(progress, "part0", lambda: {"v": np.full(2, 0.0)})
        runner.memo(progress, "part1", lambda: {"v": np.full(2, config["scale"])})
        raise KeyboardInterrupt

    mods["s2"].run = killed
    with pytest.raises(KeyboardInterrupt):
        runner.run_all(mode="quick", out=out / "run", modules=mods, quiet=True)
    mods["s2"].run = orig_run
    (part,) = [p for p in pdir.rglob("part1.npz")]
    _truncate(part)
    log = io.StringIO()
    st = runner.run_all(mode="quick", out=out / "run", modules=mods, quiet=True, force=force, stream=log)
    assert st == {"s2": "computed"}
    assert str(part) in log.getvalue() and "warning" in log.getvalue()
    np.testing.assert_array_equal(runner.load_data(out / "run" / "data" / "s2")["x"], expect["x"])


def test_data_key_covers_imported_analyses_modules(monkeypatch):
    """dropout imports decay.select_lags: editing decay's code changes dropout's key; its plot does not."""
    from analyses import decay, dropout

    assert "analyses.decay" in runner.imported_analyses(dropout)
    assert "analyses.common" in runner.imported_analyses(dropout)
    assert "analyses.runner" not in runner.imported_analyses(dropout)
    cfg = runner.resolve_config(dropout, "quick")
    key0 = runner.data_key(dropout, cfg, code_hash="c")
    src = runner._module_source(decay)
    monkeypatch.setitem(runner._SOURCES, decay, src.replace("def select_lags(", "def select_lags(*_x, "))
    key1 = runner.data_key(dropout, cfg, code_hash="c")
    assert key1 != key0
    monkeypatch.setitem(runner._SOURCES, decay, src + "\n\ndef _plot_extra():\n    return 1\n")
    assert runner.data_key(dropout, cfg, code_hash="c") == key0  # a plotting helper only redraws
    monkeypatch.setitem(runner._SOURCES, decay, src)
    assert runner.data_key(dropout, cfg, code_hash="c") == key0


def test_source_cache_does_not_outlive_its_module():
    """The source cache is keyed by the module, not ``id(module)``: a collected module's entry goes with it,
    so a new module that reuses the id cannot read the old source (this made CI keys misreport)."""
    import gc

    m = types.ModuleType("analyses.throwaway")
    runner._SOURCES[m] = "def f():\n    return 1\n"
    assert runner._module_source(m) == "def f():\n    return 1\n"
    n_before = len(runner._SOURCES)
    del m
    gc.collect()
    assert len(runner._SOURCES) == n_before - 1


def test_transitive_imports(monkeypatch):
    """a imports b inside a function, b imports c: a's key changes when c's code does."""
    import sys

    srcs = {"a": "def run():\n    from analyses.b import f\n    return f()\n",
            "b": "from analyses import c\n\ndef f():\n    return c.g()\n",
            "c": "def g():\n    return 1\n"}
    mods = {}
    for n, s in srcs.items():
        m = types.ModuleType(f"analyses.{n}")
        m.NAME = n
        mods[n] = m
        monkeypatch.setitem(runner._SOURCES, m, s)
        monkeypatch.setitem(sys.modules, f"analyses.{n}", m)
    assert sorted(runner.imported_analyses(mods["a"])) == ["analyses.b", "analyses.c"]
    k0 = runner.data_key(mods["a"], {}, code_hash="c")
    monkeypatch.setitem(runner._SOURCES, mods["c"], "def g():\n    return 2\n")
    assert runner.data_key(mods["a"], {}, code_hash="c") != k0


# ------------------------------------------------------------------------------------------ training

TASK = tasks.adding(6)
CELL = gradflow.make_cell("bn_tanh", 8, 2, t_max=6)
# 7 steps: evaluations at 0, 3, 6 and the end-of-run 7; gradient flow at 0, 4 and the end-of-run 6
CFG = train.TrainConfig(steps=7, batch_size=8, learning_rate=1e-2, seed=3, eval_every=3, eval_size=16,
                        record_every=4)


def _same_history(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_finished_checkpoint_rerun_returns_the_same_result(tmp_path):
    path = tmp_path / "run.npz"
    first = train.train(CELL, TASK, CFG, checkpoint=path)
    assert first.history["eval_step"].tolist() == [0, 3, 6, 7]
    assert first.history["flow_step"].tolist() == [0, 4, 6]
    saved = path.read_bytes()
    again = train.train(CELL, TASK, CFG, checkpoint=path)
    assert again.final_eval == first.final_eval
    assert again.steps_done == first.steps_done == 7 and not again.diverged
    _same_history(again.history, first.history)
    for x, y in zip(jax.tree_util.tree_leaves(again.variables), jax.tree_util.tree_leaves(first.variables),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the rewritten checkpoint still holds every record
    _, step, hist, _ = train.load_checkpoint(os.fspath(path), {"params": first.params,
                                                               "batch_stats": first.batch_stats,
                                                               "opt_state": first.opt_state})
    assert step == 7
    _same_history({k: hist[k] for k in first.history}, first.history)
    assert len(path.read_bytes()) == len(saved)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_corrupt_checkpoint_raises_naming_the_file(tmp_path, keep):
    path = tmp_path / "run.npz"
    cfg = train.TrainConfig(**{**CFG.__dict__, "steps": 3})
    train.train(CELL, TASK, cfg, checkpoint=path)
    _truncate(path, keep)
    with pytest.raises(ValueError, match=f"checkpoint {path}.*unreadable"):
        train.train(CELL, TASK, cfg, checkpoint=path)


def test_non_checkpoint_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.ones(3))
    with pytest.raises(ValueError, match=f"checkpoint {path} is not a gradflow checkpoint"):
        train.train(CELL, TASK, CFG, checkpoint=path)


# ------------------------------------------------------------------------------------------ sweeps


def _fn(static):
    return lambda c: {"y": 2.0 * c["a"]}


def test_load_table_refuses_several_tags(tmp_path):
    g = Grid(traced={"a": [1.0, 2.0]})
    t1 = run_sweep(_fn, g, store=tmp_path, tag="first")
    run_sweep(lambda s: (lambda c: {"y": 3.0 * c["a"]}), g, store=tmp_path, tag="second")
    with pytest.raises(ValueError, match=r"several tags \['first', 'second'\]"):
        load_table(tmp_path)
    back = load_table(tmp_path, tag="first")
    np.testing.assert_array_equal(back["y"], t1["y"])
    np.testing.assert_array_equal(load_table(tmp_path, tag="second")["y"], [3.0, 6.0])


def test_full_results_enter_the_readme_with_their_command_and_time(tmp_path):
    """figures/full/ results, when present, are quoted after the default parts, in FULL_PARTS order, each
    heading naming its regenerating command and the sidecar's run time; absent ones are left out."""
    full = tmp_path / "full"
    (full / "data").mkdir(parents=True)
    (tmp_path / "findings.md").write_text("# Findings\n\nanswer\n")
    (full / "training_study_table.md").write_text("| study |\n")
    (full / "training_study_findings.md").write_text("**tanh.** text\n")
    (full / "data" / "training_study.json").write_text(json.dumps({"elapsed_s": 5400.0}))
    block = runner.readme_block(tmp_path)
    head = ('### Training study, full design (`make figures-full FIGARGS="--only training_study"`, '
            "written to `figures/full/`; it took 90 min on the machine that ran it)")
    assert block.index("answer") < block.index(head) < block.index("| study |") < block.index("**tanh.**")
    assert "larger setting" not in block  # no full/training_table.md
    # a resumable analysis' data reports its compute time summed over every invocation; a later invocation
    # that only read its stored runs (elapsed 3 s) must not be quoted as the study's time
    runner.save_data(full / "data" / "training_study", {"total_wall_s": 3720.0}, meta={"elapsed_s": 3.0})
    assert "it took 62 min" in runner.readme_block(tmp_path)
