"""Every command the README and the docs show runs.

- each ``qfl launch`` example passes the launcher's own validation (``--check``: the
  options are checked as before a launch; nothing starts), so a stale example fails here;
- each benchmark answers ``--help`` when run as a script, as the docs run it (a module in
  ``bench/`` named like a package would shadow it: that once broke ``make bench``);
- each ``make`` target exists and names only files that exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qfl.launcher import PROJECT_DIR, main

DOCS = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
PACKAGES = ("client", "server", "strategies", "transport")


def launch_examples(path: Path) -> list[str]:
    """The ``qfl launch`` command lines in a Markdown file's code blocks, continuations joined."""
    examples, in_code, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code, pending = not in_code, ""
            continue
        if not in_code:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if re.search(r"(^|\s|/)qfl launch\b", line):
            examples.append(line)
    return examples


EXAMPLES = [(path.relative_to(PROJECT_DIR).as_posix(), cmd) for path in DOCS for cmd in launch_examples(path)]


def test_the_docs_show_launch_examples():
    assert len([e for e in EXAMPLES if e[0] == "README.md"]) >= 5


@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}:{i}" for i, (w, _) in enumerate(EXAMPLES)])
def test_every_launch_example_passes_the_launchers_check(where, command, tmp_path, monkeypatch, capsys):
    words = shlex.split(command, comments=True)
    while "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
        var, _, value = words.pop(0).partition("=")
        if var == "PYTHONPATH":  # a user's module the launcher imports to check it ($PWD: the project's root)
            monkeypatch.syspath_prepend(str(PROJECT_DIR / value.removeprefix("$PWD/")))
    argv = words[words.index("launch"):]
    monkeypatch.chdir(PROJECT_DIR)  # the docs' commands run from the project's root (its relative paths)
    out = tmp_path / "runs"
    if "--resume" in argv:  # continues an earlier run: give it one
        (out / "earlier" / "checkpoints").mkdir(parents=True)
        os.symlink("earlier", out / "latest")
    code = main([*argv, "--set", f'output-dir="{out}"', "--check"])
    assert code == 0, f"{where}: {command}\n{capsys.readouterr().err}"
    assert "check: the options are valid" in capsys.readouterr().out
    assert not any(p.name != "earlier" and p.name != "latest" for p in out.glob("*"))  # nothing written


def test_check_names_a_wrong_option_and_starts_nothing(tmp_path, capsys):
    code = main(["launch", "--clients", "2", "--set", "dirichlet-alpha=-1", "--set", f'output-dir="{tmp_path}"',
                 "--check"])
    assert code == 2 and "dirichlet-alpha" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


BENCH_MODULES = sorted((PROJECT_DIR / "bench").glob("*.py"))
BENCHMARKS = [p.name for p in BENCH_MODULES if 'if __name__ == "__main__":' in p.read_text()]  # not the helpers


def test_no_bench_module_shadows_a_package():
    assert {p.stem for p in BENCH_MODULES} & set(PACKAGES) == set()


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_runs_as_a_script(script):
    proc = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:")


def _make_targets() -> list[str]:
    phony = re.search(r"^\.PHONY:(.*)$", (PROJECT_DIR / "Makefile").read_text(), re.M)
    assert phony
    return phony.group(1).split()


@pytest.mark.parametrize("target", _make_targets())
def test_every_make_target_names_existing_files(target):
    proc = subprocess.run(["make", "-n", target], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode == 0, proc.stderr
    for path in re.findall(r"\b((?:bench|scripts|tests)/[\w/.-]+\.py)\b", proc.stdout):
        assert (PROJECT_DIR / path).is_file(), f"make {target} runs {path}, which does not exist"
