"""tools/mutation_check.py stays in step with the code: every mutant's anchor is found exactly
once in its file, and every test it names exists (running the mutants themselves is a separate,
long job: docs/testing.md)."""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import mutation_check  # noqa: E402


def test_every_mutant_anchor_occurs_exactly_once():
    assert mutation_check.check_anchors() == []
    assert len(mutation_check.MUTANTS) >= 15


def test_every_named_test_exists():
    for m in mutation_check.MUTANTS:
        for node in m.tests:
            path, _, name = node.partition("::")
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"{m.name}: no test {node}"


def test_a_stale_anchor_is_reported(tmp_path):
    """The check fails loudly when the code no longer holds an anchor."""
    for m in {m.path for m in mutation_check.MUTANTS}:
        os.makedirs(tmp_path / os.path.dirname(m), exist_ok=True)
        (tmp_path / m).write_text("# the code moved on\n")
    problems = mutation_check.check_anchors(str(tmp_path))
    assert len(problems) == len(mutation_check.MUTANTS)
    assert all("occurs 0 times" in p for p in problems)
