"""Tests of the analyses runner (caching, resumption, storage, output checks) and of the committed figures.

Every analysis' quick mode runs end to end in CI (`make figures-quick FIGARGS="--check-verdicts figures"`,
which also checks every output with ``runner.output_problems``), not here: it takes minutes."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from analyses import runner
from gradflow import measure


# ------------------------------------------------------------------------------------------ fake analyses
def _fake(name, calls, fail_at=None, depends=()):
    """A tiny analysis module counting its run calls; ``fail_at`` raises inside run (an interruption)."""
    src_globals = {}

    def run(config, progress=None, inputs=None):
        calls[name] = calls.get(name, 0) + 1
        parts = []
        for i in range(3):
            if fail_at is not None and fail_at[0] == i:
                raise KeyboardInterrupt("simulated kill")
            parts.append(runner.memo(progress, f"part{i}",
                                      lambda i=i: {"v": np.full(2, i * config["scale"], float)})["v"])
            runner.say(progress, f"part {i}")
        out = {"x": np.stack(parts), "s": "hello", "n": 3, "f": 0.5, "names": ["a", "b"]}
        if inputs:
            out["dep_sum"] = float(sum(float(np.sum(d["x"])) for d in inputs.values()))
        return out

    def plot(data):
        from analyses import style

        fig, ax = style.figure()
        ax.plot(np.ravel(data["x"]))
        return {f"{name}_fig": fig}

    m = types.ModuleType(f"analyses.{name}")
    m.NAME, m.CONFIG, m.QUICK, m.FULL = name, {"scale": 1.0}, {"scale": 2.0}, {}
    m.run, m.plot, m.DEPENDS = run, plot, tuple(depends)
    m.__dict__.update(src_globals)
    return m


def test_storage_roundtrip_types(tmp_path):
    data = {"a": np.arange(6.0).reshape(2, 3), "i": 3, "f": 1.5, "s": "x", "l": [1.0, 2.0], "ls": ["p", "q"],
            "b": True}
    runner.save_data(tmp_path / "d", data, {"k": 1})
    back = runner.load_data(tmp_path / "d")
    np.testing.assert_array_equal(back["a"], data["a"])
    assert back["i"] == 3 and isinstance(back["i"], int)
    assert back["f"] == 1.5 and back["s"] == "x" and back["b"] is True
    assert back["l"] == [1.0, 2.0] and back["ls"] == ["p", "q"]
    assert json.loads((tmp_path / "d.json").read_text())["k"] == 1
    with pytest.raises(ValueError, match="ragged"):
        runner.save_data(tmp_path / "e", {"r": [[1, 2], [3]]})
    with pytest.raises(ValueError, match="unsupported type"):
        runner.save_data(tmp_path / "e", {"o": object()})


def test_runner_cache_force_config_and_resume(tmp_path):
    calls = {}
    mods = {"a1": _fake("a1", calls), "a2": _fake("a2", calls),
            "a3": _fake("a3", calls, depends=("a1", "a2"))}
    out = tmp_path / "figs"
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert st == {"a1": "computed", "a2": "computed", "a3": "computed"}
    for n in mods:
        assert (out / f"{n}_fig.png").stat().st_size > 1000
        assert (out / "data" / f"{n}.npz").exists()
    d3 = runner.load_data(out / "data" / "a3")
    assert d3["dep_sum"] == pytest.approx(2 * (0 + 2 + 4) * 2)  # quick scale 2, two deps, x summed
    # Nothing changed: nothing recomputed, nothing redrawn.
    mtime = (out / "a1_fig.png").stat().st_mtime_ns
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert set(st.values()) == {"cached"} and calls == {"a1": 1, "a2": 1, "a3": 1}
    assert (out / "a1_fig.png").stat().st_mtime_ns == mtime
    # A deleted figure is redrawn from the saved data, not recomputed.
    (out / "a2_fig.png").unlink()
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert st["a2"] == "redrawn" and calls["a2"] == 1 and (out / "a2_fig.png").exists()
    # --force recomputes the named analysis only.
    st = runner.run_all(["a1"], mode="quick", out=out, modules=mods, force=True, quiet=True)
    assert st == {"a1": "computed"} and calls["a1"] == 2
    # A changed configuration recomputes it and what depends on it.
    mods["a2"].QUICK = {"scale": 3.0}
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert st == {"a1": "cached", "a2": "computed", "a3": "computed"}
    # Interruption inside a3 after two finished parts: the rerun reuses a1, a2 and a3's finished parts.
    mods["a3"] = _fake("a3", calls, fail_at=(2,), depends=("a1", "a2"))
    mods["a3"].QUICK = {"scale": 5.0}
    with pytest.raises(KeyboardInterrupt):
        runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    partial = list((out / ".cache" / "partial" / "a3").rglob("*.npz"))
    assert len(partial) == 2
    mods["a3"] = _fake("a3", calls, depends=("a1", "a2"))
    mods["a3"].QUICK = {"scale": 5.0}
    counted = {}
    orig_memo = runner.Progress.memo

    def spy(self, label, fn):
        out_ = orig_memo(self, label, fn)
        counted[label] = (self.memo_hits, self.memo_misses)
        return out_

    runner.Progress.memo = spy
    try:
        st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    finally:
        runner.Progress.memo = orig_memo
    assert st == {"a1": "cached", "a2": "cached", "a3": "computed"}
    assert counted["part2"] == (2, 1)  # parts 0 and 1 came from the interrupted run's partial results
    assert not (out / ".cache" / "partial" / "a3").exists()
    with pytest.raises(ValueError, match="unknown analysis"):
        runner.run_all(["nope"], out=out, modules=mods)
    with pytest.raises(ValueError, match="unknown mode"):
        runner.run_all(mode="fast", out=out, modules=mods)


def test_killed_write_leaves_previous_result(tmp_path, monkeypatch):
    """An interruption while saving leaves no half-written file: the old result stays readable."""
    runner.save_data(tmp_path / "d", {"x": np.ones(3)})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        runner.save_data(tmp_path / "d", {"x": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(runner.load_data(tmp_path / "d")["x"], np.ones(3))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


# ------------------------------------------------------------------------------------------ real analyses
# ------------------------------------------------------------------------------------------ shared helpers
def test_setup_scaled_init_equals_init_cell_of_the_option():
    """Gain / γ options are applied by scaling one gain-free init: identical to init_cell of the option."""
    import jax

    import gradflow
    from analyses import common

    for preset, opts in [("bn_tanh", {"gain": 0.7, "bn_gamma_init": 0.3}),
                         ("ln_lstm", {"gain": 1.5, "ln_gamma_init": 0.5})]:
        _, v, _, _, _ = common.setup(preset, 5, 3, 4, 2, seed=0, **opts)
        k_init = jax.random.split(jax.random.key(0), 4)[0]
        ref = gradflow.init_cell(gradflow.make_cell(preset, 5, 3, **opts), k_init, batch_size=4)
        diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), v, ref)
        assert max(jax.tree.leaves(diff)) < 1e-6, (preset, diff)


def test_forward_lognorms_and_lag_norms_match_explicit_products(x64):
    """ln‖∂h_T/∂h_0‖ of every prefix (forward, renormalized) and the all-lag norms equal plain NumPy
    products of the per-step Jacobians (``gradflow.step_jacobians``, one jacfwd per step)."""
    import gradflow
    from analyses import common

    for preset in ("bn_notanh", "lstm"):
        cell, v, c0, xs, key = common.setup(preset, 4, 3, 3, 12, seed=1, dtype="float64")
        step = gradflow.as_step(cell, v, train=True)
        J = np.asarray(gradflow.step_jacobians(step, c0, xs))  # (T, n, n), J[t-1] = ∂h_t/∂h_{t-1}
        M, ref_fro, ref_spec = np.eye(J.shape[1]), [], {}
        for t in range(J.shape[0]):
            M = J[t] @ M
            ref_fro.append(np.log(np.linalg.norm(M)))
            ref_spec[t + 1] = np.log(np.linalg.norm(M, 2))
        f = measure.forward_lognorms(cell, v, c0, xs, key, train=True, checkpoints=(3, 12))
        np.testing.assert_allclose(f["log_fro"], ref_fro, rtol=0, atol=1e-9)
        np.testing.assert_allclose(f["log_spec"], [ref_spec[3], ref_spec[12]], rtol=0, atol=1e-9)
        hs = np.asarray(gradflow.unroll(step, c0, xs)["h"])
        np.testing.assert_allclose(f["log_state"], np.log(np.sqrt(np.mean(np.sum(hs**2, -1), -1))), atol=1e-9)
        # all lags at T = 12: ∂h_T/∂h_t = J_T ⋯ J_{t+1}
        r = measure.lag_singular_values(cell, v, c0, xs, key, train=True, lags=(1, 5, 12))
        for k, lag in enumerate((1, 5, 12)):
            P = np.eye(J.shape[1])
            for t in range(12 - lag, 12):
                P = J[t] @ P
            np.testing.assert_allclose(r["sv"][k], np.linalg.svd(P, compute_uv=False), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(r["frobenius"][lag - 1], np.linalg.norm(P), rtol=1e-9)


def test_fit_rate_and_verdict():
    from analyses import common
    from gradflow.summary import verdict_of

    lags = np.arange(1, 51)
    rate, se = common.fit_rate(lags, -0.2 * lags + 3.0, lag_min=5)
    assert rate == pytest.approx(-0.2, abs=1e-12) and se < 1e-10
    noisy = -0.05 * lags + np.random.default_rng(0).normal(0, 0.1, lags.size)
    rate, se = common.fit_rate(lags, noisy)
    assert abs(rate + 0.05) < 4 * se and se > 0
    assert [verdict_of(r) for r in (0.02, -0.02, 0.005)] == ["explodes", "vanishes", "neutral"]
    with pytest.raises(ValueError, match="at least 3"):
        common.fit_rate([1, 2], [0.0, 1.0])


def test_findings_numbers_come_from_the_data():
    out = _committed()
    js = json.loads((out / "findings.json").read_text())
    dec = runner.load_data(out / "data" / "decay")
    j = int(np.argmin(np.abs(np.asarray(dec["gains"]) - js["reference_gain"])))
    for row in js["rows"]:
        i = list(dec["presets"]).index(row["preset"])
        assert row["rate"] == pytest.approx(float(np.mean(dec["rate"][i, j])), abs=1e-12)
        md = (out / "findings.md").read_text()
        assert f"{row['rate']:+.3f}" in md


def test_output_problems_and_resume_after_a_lost_sidecar(tmp_path):
    """``output_problems`` passes a sound run and names a missing figure, a non-finite number and a lost
    sidecar; a run killed before writing a sidecar (here: deleted) recomputes that analysis only."""
    calls = {}
    mods = {n: _fake(n, calls) for n in ("a1", "a2")}
    mods["a3"] = _fake("a3", calls, depends=("a1", "a2"))
    out = tmp_path / "figs"
    runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert runner.output_problems(out, list(mods)) == []
    (out / "data" / "a2.json").unlink()
    assert runner.output_problems(out, ["a2"]) == [f"a2: no readable sidecar {out / 'data' / 'a2.json'}"]
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    assert st == {"a1": "cached", "a2": "computed", "a3": "cached"} and calls == {"a1": 1, "a2": 2, "a3": 1}
    (out / "a1_fig.png").unlink()
    data = runner.load_data(out / "data" / "a3")
    runner.save_data(out / "data" / "a3", {**data, "x": np.full(3, np.nan)},
                     json.loads((out / "data" / "a3.json").read_text()))
    problems = runner.output_problems(out, list(mods))
    assert problems == [f"a1: figure {out / 'a1_fig.png'} is missing or under 2 kB",
                        "a3: non-finite entries ['x']"], problems


def test_findings_check_names_printed_nan_or_inf_but_not_words_containing_inf(tmp_path):
    """The findings check looked for the letters "inf" after deleting "info": any "infinite" or "inference"
    in the text failed CI. Now a printed nan or inf (a token) fails and such words pass."""
    (tmp_path / "findings.json").write_text(json.dumps({"rows": [{"rate": -0.2}]}))
    for text, bad in (("| cell | rate |\n| tanh | -0.2 |\nan infinite horizon, by inference", False),
                      ("| cell | rate |\n| tanh | nan |", True), ("| cell | rate |\n| tanh | -inf |", True)):
        (tmp_path / "findings.md").write_text(text)
        problems = runner._findings_problems(tmp_path)
        assert problems == (["findings: findings.md has no table or holds nan/inf"] if bad else []), text


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    out = _committed()
    readme, doc = tmp_path / "README.md", tmp_path / "findings_doc.md"
    readme.write_text(f"# t\n\nbefore\n\n{runner.BEGIN}\nold numbers\n{runner.END}\n\nafter\n")
    assert runner.update_readme(readme, out, doc) is True
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# t\n\nbefore\n") and text.endswith("after\n")
    block = text[text.index(runner.BEGIN) + len(runner.BEGIN):text.index(runner.END)]
    assert (out / "findings.md").read_text().splitlines()[2] in block  # the answer line
    assert "### Per-preset rates" not in block and "docs/findings.md" in block  # the tables live in the doc
    full = doc.read_text()
    assert full.startswith("# Findings\n") and "### Per-preset rates" in full and "\n# " not in full[2:]
    assert runner.update_readme(readme, out, doc) is False  # idempotent
    doc.write_text("stale\n")
    assert runner.update_readme(readme, out, doc) is True and doc.read_text() == full
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="findings markers"):
        runner.update_readme(readme, out, doc)


def _committed() -> Path:
    """The committed default figures (the outputs every analysis' checks read), or skip."""
    if not (runner.FIGURES / "findings.md").exists():
        pytest.skip("no committed figures")
    return runner.FIGURES


def test_committed_readme_and_figure_data_agree():
    """The README's answer and docs/findings.md are what the committed figures/ produce, and their data are
    finite."""
    if not (runner.FIGURES / "findings.md").exists():
        pytest.skip("no committed figures")
    text = runner.README.read_text()
    block = text[text.index(runner.BEGIN) + len(runner.BEGIN):text.index(runner.END)].strip()
    assert block == runner.answer_block(runner.FIGURES), "README answer is stale: run `make figures`"
    assert runner.FINDINGS_DOC.read_text() == runner.findings_document(runner.FIGURES), \
        "docs/findings.md is stale: run `make figures`"
    for out in (runner.FIGURES, runner.FIGURES / "full"):
        names = sorted(p.stem for p in out.glob("data/*.json"))
        assert runner.output_problems(out, names) == []


def test_theory_analysis_pairs_each_measurement_with_its_prediction():
    out = _committed()
    from analyses import theory as theory_analysis
    from gradflow import theory as th

    data = runner.load_data(out / "data" / "theory")
    fams = list(data["families"])
    for f in fams:  # the reported worst disagreement is recomputed from the stored pairs
        diff = np.abs(data[f"{f}_measured"].mean(-1) - data[f"{f}_predicted"].mean(-1)).max()
        assert data["max_abs_diff"][fams.index(f)] == pytest.approx(diff, abs=1e-12)
    pred = data["bn_feedforward_predicted"]  # (activation, B, seed): the closed form for each B
    for a, act in enumerate(data["bn_feedforward_curves"]):
        for b, B in enumerate(data["bn_feedforward_x"]):
            assert np.allclose(pred[a, b], th.bn_feedforward_rate(int(B), act), atol=1e-12)
    with pytest.raises(ValueError, match="unknown families"):
        theory_analysis.run({**theory_analysis.CONFIG, **theory_analysis.QUICK, "families": ["gru"]})


def test_verdict_flips_name_each_contradiction(tmp_path):
    """CI's check of the quick figures: a flipped, missing or unreadable verdict of the question's cells is
    reported; agreeing verdicts (and other cells' flips) are not."""
    def write(folder, verdicts):
        folder.mkdir()
        rows = [{"preset": p, "verdict": v} for p, v in verdicts.items()]
        (folder / "findings.json").write_text(json.dumps({"rows": rows}))
        return folder

    ref = write(tmp_path / "ref", {"tanh": "vanishes", "bn_notanh": "vanishes", "ln_notanh": "vanishes",
                                   "gru": "vanishes"})
    same = write(tmp_path / "same", {"tanh": "vanishes", "bn_notanh": "vanishes", "ln_notanh": "vanishes",
                                     "gru": "explodes"})
    assert runner.verdict_flips(same, ref) == []
    flipped = write(tmp_path / "flip", {"tanh": "vanishes", "bn_notanh": "neutral"})
    lines = runner.verdict_flips(flipped, ref)
    assert len(lines) == 2
    assert lines[0].startswith("bn_notanh: neutral") and lines[1].startswith("ln_notanh: missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "findings.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the verdicts"):
        runner.verdict_flips(tmp_path / "bad", ref)


def test_memory_curve_flags_exact_zeros_and_refuses_nan():
    """ln of an exactly-zero contribution (−inf) is stored as ZERO_LN and flagged; NaN or +inf is an error."""
    from analyses import memory

    vals, zero = memory.exact_zeros(np.array([[-np.inf, -2.0, 0.5]]))
    assert zero.tolist() == [[True, False, False]]
    assert vals.tolist() == [[memory.ZERO_LN, -2.0, 0.5]] and np.exp(memory.ZERO_LN) > 0
    for bad in (np.nan, np.inf):
        with pytest.raises(FloatingPointError, match="NaN or \\+inf"):
            memory.exact_zeros(np.array([bad, 1.0]))


def test_data_key_hashes_code_not_docstrings_or_comments(tmp_path, monkeypatch):
    """A docstring or comment edit in gradflow leaves the data keys as they were; a code edit does not."""
    import gradflow

    src = 'def f(x):\n    """Doc."""\n    return x + 1  # note\n'
    pkg = tmp_path / "gradflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(src)
    monkeypatch.setattr(gradflow, "__file__", str(pkg / "__init__.py"))
    keys = []
    for text in (src, src.replace("Doc.", "Other words.").replace("# note", "# changed"),
                 src.replace("x + 1", "x + 2")):
        (pkg / "__init__.py").write_text(text)
        keys.append(runner.gradflow_code_hash())
    assert keys[0] == keys[1] != keys[2]
    assert runner.code_only(src) == runner.code_only(src.replace('"""Doc."""', "'''Doc.'''")) \
        == "def f(x):\n    return x + 1"
