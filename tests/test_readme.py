"""The README keeps exactly two set-up commands, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "afloc-bench run --models all --datasets demo" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    test_cmd = _setup_commands()[1]
    tail = test_cmd.split("&& ", 2)[-1]  # after venv creation and activation
    ci = (ROOT / ".ci" / "run").read_text()
    assert tail in ci, f"{tail!r} not in .ci/run"


def test_layout_table_matches_the_tree():
    """Every path of the README's layout table exists, and every top-level folder is in the table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)`", section, flags=re.M)
    assert listed, "no layout table"
    for path in listed:
        assert (ROOT / path.replace("<model>/", "gloria/")).exists(), path
    top = {p.name + "/" for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
           and p.name not in ("build", "dist") and not p.name.endswith(".egg-info")}
    assert top <= {p.split("/")[0] + "/" for p in listed}, top - {p.split("/")[0] + "/" for p in listed}
    for model in ("gloria", "biovil", "medklip", "convirt", "chexzero", "saliency", "clip_family", "sanity",
                  "human_benchmark"):
        assert model in section and (ROOT / "baselines" / model / "README.md").is_file(), model
