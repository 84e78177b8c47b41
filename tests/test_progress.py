"""Progress lines: periodic lines at chunk boundaries from inside the compiled scans, off or silenced."""

import jax.numpy as jnp
import pytest

import gradflow as gf


def test_streaming_and_lyapunov_report_every_tenth_of_the_steps():
    step, h0, xs = (lambda h, x: jnp.tanh(0.9 * h + x)), jnp.zeros((1, 2)), jnp.ones((200, 1, 2))
    lines = []
    gf.streaming_log_norms(step, h0, xs, progress=lines.append)
    assert len(lines) == 10 and lines[0].startswith("gradflow streaming_log_norms")
    assert "20/200 steps" in lines[0] and "200/200 steps (100 %)" in lines[-1]
    lines.clear()
    gf.lyapunov_spectrum(step, h0, xs, k=2, progress=lines.append)
    assert len(lines) == 10 and "lyapunov_spectrum (k=2, n=2)" in lines[0]


def test_summary_reports_its_stages():
    step, h0, xs = (lambda h, x: jnp.tanh(0.9 * h + x)), jnp.zeros((1, 2)), jnp.ones((100, 1, 2))
    lines = []
    gf.summary(step, h0, xs, k=2, progress=lines.append)
    text = "\n".join(lines)
    assert "summary: T = 100" in text and "Lyapunov exponents" in text and "spectra" in text
    assert "streaming_log_norms" in text  # the inner long call reports too when asked explicitly


def test_off_and_auto(capsys, monkeypatch):
    step, h0 = (lambda h, x: 0.5 * h + x), jnp.zeros((1, 1))
    gf.streaming_log_norms(step, h0, jnp.ones((300, 1, 1)), progress=False)
    gf.streaming_log_norms(step, h0, jnp.ones((300, 1, 1)), progress=True)
    err = capsys.readouterr().err
    assert err.count("gradflow streaming_log_norms") == 10
    # auto: on for T >= 10^4 unless GRADFLOW_PROGRESS=0 (set for the test suite)
    gf.streaming_log_norms(step, h0, jnp.ones((10_000, 1, 1)))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("GRADFLOW_PROGRESS", "1")
    gf.streaming_log_norms(step, h0, jnp.ones((10_000, 1, 1)))
    assert capsys.readouterr().err.count("/10000 steps") == 10
    gf.streaming_log_norms(step, h0, jnp.ones((9_999, 1, 1)))  # short: auto stays quiet
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="progress"):
        gf.streaming_log_norms(step, h0, jnp.ones((5, 1, 1)), progress="loud")
