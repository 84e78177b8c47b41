"""Storage that verifies what it reads (issue 22 item 5): figures checked like the data, sweep chunks that
carry their own identity, one store shared by two runs, no temporary file left by a killed write.

References: the first run's bytes and rows, compared exactly; the PNG decoder (a truncated file does not
decode); the chunk's own recorded index and key.
"""

from __future__ import annotations

import io
import json

import matplotlib.image
import pytest

from analyses import runner
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
