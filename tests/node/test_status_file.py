"""status.json: rewritten atomically when a field changes, at least every REFRESH_S seconds,
and never left half-written for `node status`."""
from __future__ import annotations

import json

from bitswarm.node import status as status_mod
from bitswarm.node.status import StatusFile, read_status


def test_status_is_rewritten_on_change_and_refreshed(tmp_path, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(status_mod.time, "time", lambda: clock[0])
    st = StatusFile(tmp_path, swarm="s")
    st.write()
    first = json.loads((tmp_path / "status.json").read_text())
    assert first["phase"] == "starting" and first["updated"] == 1000.0

    clock[0] += 1.0
    st.write()                                  # nothing changed, 1 s later: file untouched
    assert json.loads((tmp_path / "status.json").read_text())["updated"] == 1000.0

    st.update(phase="training", round=3)
    st.write()                                  # a change: written at once
    now = read_status(tmp_path)
    assert now["phase"] == "training" and now["round"] == 3 and now["updated"] == 1001.0

    clock[0] += status_mod.REFRESH_S
    st.write()                                  # unchanged but stale: refreshed
    assert json.loads((tmp_path / "status.json").read_text())["uptime_s"] == 1.0 + status_mod.REFRESH_S
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]     # no temp file left
