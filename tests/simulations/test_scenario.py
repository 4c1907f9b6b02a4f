"""Scenario files: every key is checked before anything runs, with one line naming it."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitswarm.simulations.scenario import ScenarioError, load_scenario
from bitswarm.simulations.virtual import membership

SCENARIOS = sorted((Path(__file__).parents[2] / "simulations" / "scenarios").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text('name = "t"\nnodes = 4\nrounds = 3\n' + text)
    return p


def test_every_shipped_scenario_loads():
    assert len(SCENARIOS) >= 5
    for p in SCENARIOS:
        s = load_scenario(p)
        assert s.nodes >= 1 and s.rounds >= 1, p


@pytest.mark.parametrize("text,match", [
    ("colour = 1\n", r"unknown key\(s\) \['colour'\]"),
    ('codec = "gzip"\n', "codec = 'gzip': expected fp32, fp16, int8, ternary, top-k"),
    ('engine = "threads"\n', "engine = 'threads': expected virtual or processes"),
    ("lr = 2\n", "lr = 2.0: expected a number with 0 < lr < 1"),
    ('local_steps = "ten"\n', "local_steps = 'ten': expected an integer"),
    ("[data]\nsplit = \"random\"\n", "data.split = 'random': expected topic or dirichlet or iid"),
    ("[data]\nfolderz = []\n", r"unknown key\(s\) \['data.folderz'\]"),
    ("[link]\nloss = 1.5\n", r"link.loss = 1.5: expected a fraction in \[0, 1\)"),
    ("[[churn]]\nround = 9\n", r"churn.round = 9: expected a round in \[0, 2\]"),
    ("[[churn]]\nround = 1\nleave = [7]\n", r"churn.leave = \[7\]: expected node indices"),
    ("[[churn]]\nleave = [1]\n", "every \\[\\[churn\\]\\] needs `round`"),
    ('engine = "processes"\nsurrogate = true\n', "surrogate = True: expected false"),
    ('[data]\nsource = "folders"\nfolders = ["a", "b", "c", "d"]\neval = "e"\n',
     "data.folders = 'a': expected existing folders"),
])
def test_bad_scenarios_fail_with_one_line_naming_the_key(tmp_path, text, match):
    with pytest.raises(ScenarioError, match=match) as e:
        load_scenario(write(tmp_path, text))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ScenarioError, match="not a readable TOML"):
        load_scenario(tmp_path / "bad.toml")


def test_membership_applies_churn_events_and_the_churn_fraction(tmp_path):
    s = load_scenario(write(tmp_path, "initial_nodes = 3\n[[churn]]\nround = 1\nleave = [0]\n"
                                      "crash = [1]\njoin = [3]\n[[churn]]\nround = 2\n"
                                      "join = [0]\n"))
    plan = membership(s)
    assert plan[0] == {"leave": set(), "crash": set(), "join": set()}
    assert plan[1] == {"leave": {0}, "crash": {1}, "join": {3}}
    assert plan[2]["join"] == {0}
    p = tmp_path / "c.toml"
    p.write_text('name = "c"\nnodes = 10\nrounds = 6\nchurn_fraction = 0.3\n')
    plan = membership(load_scenario(p))
    online = set(range(10))
    for r, ev in enumerate(plan):
        online = (online - ev["leave"] - ev["crash"]) | ev["join"]
        assert len(online) == (10 if r == 0 else 7)      # 3 of 10 away every round after 0
    assert any(ev["join"] for ev in plan[2:])            # nodes come back
