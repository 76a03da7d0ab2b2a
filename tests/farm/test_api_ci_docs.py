"""docs/CI.md stays runnable: its YAML parses and every `farm submit` option it uses exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from farm.client.cli import submit_cmd

CI_DOC = Path(__file__).resolve().parents[2] / "docs" / "CI.md"


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", CI_DOC.read_text(), flags=re.S)


def submit_commands() -> list[list[str]]:
    commands = []
    for block in fenced_blocks("yaml") + fenced_blocks("sh"):
        text = block.replace("\\\n", " ")
        for match in re.finditer(r"farm submit [^\n]*(?:\n\s+--[^\n]*)*", text):
            commands.append(shlex.split(match.group(0).replace("\n", " "), comments=True))
    return commands


def test_ci_yaml_parses() -> None:
    documents = [yaml.safe_load(block) for block in fenced_blocks("yaml")]
    github, gitlab = documents
    steps = github["jobs"]["farm"]["steps"]
    assert any("farm submit" in step.get("run", "") for step in steps)
    assert github["jobs"]["farm"]["env"]["FARM_TOKEN"] == "${{ secrets.FARM_TOKEN }}"
    assert any("farm submit" in line for line in gitlab["farm"]["script"])
    assert gitlab["farm"]["artifacts"]["reports"]["junit"] == "farm-report.xml"


def test_every_documented_submit_option_exists() -> None:
    known = {opt for param in submit_cmd.params for opt in getattr(param, "opts", [])}
    known |= {opt for param in submit_cmd.params for opt in getattr(param, "secondary_opts", [])}
    commands = submit_commands()
    assert len(commands) >= 3
    for command in commands:
        used = {word for word in command if word.startswith("--")}
        assert used <= known, f"unknown farm submit options in docs/CI.md: {sorted(used - known)}"
        assert "--wait" in used and "--junit" in used
