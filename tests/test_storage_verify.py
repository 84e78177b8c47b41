"""Storage that verifies what it reads (issue 22 item 5): figures checked like the data, sweep chunks that
carry their own identity, one store shared by two runs, no temporary file left by a killed write.

References: the first run's bytes and rows, compared exactly; the PNG decoder (a truncated file does not
decode); the chunk's own recorded index and key.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import matplotlib.image
import numpy as np
import pytest

from analyses import runner
from gradflow import checks
from gradflow.sweep import Grid, load_table, run_sweep
from tests.test_storage import _fake, _truncate


@pytest.mark.parametrize("legacy", [False, True], ids=["sha", "decode"])
def test_truncated_figure_is_redrawn_not_reported_cached(tmp_path, legacy):
    """A truncated PNG was reported "cached" and stayed unreadable."""
    calls = {}
    mods = {"f1": _fake("f1", calls)}
    out = tmp_path / "figs"
    runner.run_all(mode="quick", out=out, modules=mods, quiet=True)
    png = out / "f1_fig.png"
    good = png.read_bytes()
    if legacy:  # a sidecar written before figure hashes were recorded: the PNG must decode
        side_path = out / "data" / "f1.json"
        side = json.loads(side_path.read_text())
        side.pop("figure_sha256", None)
        side_path.write_text(json.dumps(side))
    _truncate(png)
    with pytest.raises(Exception):  # noqa: B017 (the decoder's own error type)
        matplotlib.image.imread(png)
    log = io.StringIO()
    st = runner.run_all(mode="quick", out=out, modules=mods, quiet=True, stream=log)
    assert st == {"f1": "redrawn"} and calls == {"f1": 1}  # from the cached data, no recomputation
    assert str(png) in log.getvalue()
    assert png.read_bytes() == good and matplotlib.image.imread(png).size > 0
    assert runner.run_all(mode="quick", out=out, modules=mods, quiet=True) == {"f1": "cached"}


# ------------------------------------------------------------------------------------------------ sweeps


def _sq(static):
    return lambda c: {"y": c["a"] * c["a"] + static["s"]}


GRID = Grid(static={"s": [0.0]}, traced={"a": [1.0, 2.0, 3.0, 4.0]})


def _chunks(store):
    return sorted(p for p in store.iterdir() if p.name.startswith("chunk-"))


def test_chunk_in_the_wrong_place_is_detected(tmp_path):
    """A chunk file overwritten by another valid chunk was trusted: wrong rows came back."""
    store = tmp_path / "s"
    ref = run_sweep(_sq, GRID, store=store, chunk=2)
    a, b = _chunks(store)
    meta = json.loads(str(np.load(a)["_meta"]))
    assert {"index", "key", "rows"} <= set(meta) and a.name == f"chunk-{meta['key']}.npz"
    shutil.copyfile(a, b)  # b's place now holds a's rows
    for call in (lambda: run_sweep(_sq, GRID, store=store, chunk=2), lambda: load_table(store)):
        with pytest.raises(ValueError, match=f"chunk file {b}.* holds another chunk"):
            call()
    b.unlink()  # the cure the message names: the chunk is recomputed
    again = run_sweep(_sq, GRID, store=store, chunk=2)
    np.testing.assert_array_equal(again["y"], ref["y"])


def test_a_chunk_claimed_by_a_live_run_is_not_computed_twice(tmp_path):
    """Two runs on one store both computed every chunk; a run now waits for a chunk another run claimed."""
    store, other = tmp_path / "s", tmp_path / "other"
    ref = run_sweep(_sq, GRID, store=other, chunk=2)  # what the other run will write
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = _chunks(other)[0]
        key = first.name[len("chunk-"):-len(".npz")]
        claim = store / f".chunk-{key}.claim"
        claim.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "time": time.time()}))

        def finish():  # the other run writes its chunk and releases its claim
            time.sleep(1.0)
            shutil.copyfile(first, store / ".tmp")
            os.replace(store / ".tmp", store / first.name)  # atomically, as run_sweep writes
            claim.unlink()

        threading.Thread(target=finish).start()
        seen = []
        table = run_sweep(_sq, GRID, store=store, chunk=2, progress=seen.append)
    finally:
        holder.kill()
        holder.wait()
    computed = {s["key"]: s["computed"] for s in seen}
    assert computed[key] is False and sum(computed.values()) == 1  # only the unclaimed chunk was computed
    np.testing.assert_array_equal(table["y"], ref["y"])
    assert not list(store.glob(".*"))  # no claim or temporary file left


def test_a_claim_of_a_dead_run_is_taken_over(tmp_path):
    store = tmp_path / "s"
    store.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ref = run_sweep(_sq, GRID, chunk=2)
    probe = tmp_path / "probe"
    run_sweep(_sq, GRID, store=probe, chunk=2)
    for p in _chunks(probe):  # every chunk claimed by a process that no longer exists
        info = {"host": socket.gethostname(), "pid": dead.pid, "time": time.time()}
        (store / f".{p.name[:-len('.npz')]}.claim").write_text(json.dumps(info))
    table = run_sweep(_sq, GRID, store=store, chunk=2)
    np.testing.assert_array_equal(table["y"], ref["y"])
    assert not list(store.glob(".*")) and len(_chunks(store)) == 2


# ------------------------------------------------------------------------------------- killed atomic writes


KILLED_WRITER = """
import os, sys, time
from gradflow import checks
os.fsync = lambda fd: time.sleep(60)  # stop between the temporary file's write and its rename
checks.atomic_write_npz(sys.argv[1], {"step": __import__("numpy").arange(3)})
"""


def test_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    """A checkpoint write killed (SIGKILL) midway left a hidden .tmp file for good (train.py's checkpoints go
    through checks.atomic_write_npz)."""
    path = tmp_path / "ckpt.npz"
    live = tmp_path / f".ckpt.npz.{os.getpid()}@{socket.gethostname()}.abc.tmp"  # this (live) process
    live.write_bytes(b"x")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=os.getcwd())
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob(".ckpt.npz.*.tmp"))) < 2:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    left = [p for p in tmp_path.glob(".ckpt.npz.*.tmp") if p != live]
    assert len(left) == 1 and not path.exists()  # what a kill leaves
    checks.atomic_write_npz(path, {"step": np.arange(4)})
    assert not left[0].exists() and live.exists()  # the dead writer's file only
    with np.load(path) as z:
        np.testing.assert_array_equal(z["step"], np.arange(4))
