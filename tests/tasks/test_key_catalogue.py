"""The key catalogue (tasks.keys) is the only place a ``jobyard:`` key or its TTL is written.

Pure: reads the product's source with ``ast``, no services.
"""

import ast
import functools
import re
from pathlib import Path

import pytest

import tasks
from tasks import keys

pytestmark = pytest.mark.pure

ROOT = Path(tasks.__file__).resolve().parent.parent
PACKAGES = ("tasks", "executor", "autoscaler", "jobyard")
CATALOGUE = Path("tasks/keys.py")
#: Files still to be moved onto the catalogue: none any more.
TTL_PENDING: set = set()
#: A ``jobyard:`` key name typed out in a string (not the ``jobyard/jobyard:latest`` image).
KEY_TEXT = re.compile(r"(?<![\w/])jobyard:[a-z_]+")
TTL_NAME = re.compile(r"(TTL|RETENTION|KEEP_SECONDS)(_SECONDS)?$")


@functools.cache
def product_files() -> tuple:
    """(path relative to the checkout, parsed module) of every product module."""
    return tuple((path.relative_to(ROOT), ast.parse(path.read_text(), str(path)))
                 for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")))


def _docstrings(tree) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def typed_out_keys(tree) -> list[str]:
    """String constants (docstrings aside, f-string parts included) that spell a jobyard: key."""
    skip = _docstrings(tree)
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and KEY_TEXT.search(node.value)]


def _literal(node) -> bool:
    """Whether ``node`` is a number worked out from literals only (``14 * 24 * 3600``)."""
    return not any(isinstance(n, (ast.Name, ast.Attribute, ast.Call)) for n in ast.walk(node))


def literal_ttls(tree) -> list[str]:
    """``X_TTL = ...`` definitions, and ``expire(key, <literal>)`` / ``ex=<literal>`` calls."""
    found = [target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name) and TTL_NAME.search(target.id)]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr == "expire" and len(node.args) == 2 and _literal(node.args[1]):
            found.append(f"expire(..., {ast.unparse(node.args[1])})")
        found += [f"ex={ast.unparse(k.value)}" for k in node.keywords if k.arg == "ex" and _literal(k.value)]
    return found


def test_no_product_module_types_out_a_key():
    typed = {str(path): found for path, tree in product_files() if path != CATALOGUE
             if (found := typed_out_keys(tree))}
    assert typed == {}, "build every jobyard: key with tasks.keys"


def test_every_ttl_is_named_in_the_catalogue():
    literal = {str(path): found for path, tree in product_files()
               if path != CATALOGUE and path not in TTL_PENDING if (found := literal_ttls(tree))}
    assert literal == {}, "name each TTL next to its key in tasks.keys"


def test_every_catalogue_name_used_exists():
    used = {(str(path), node.attr) for path, tree in product_files() for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "keys"}
    assert {(path, name) for path, name in used if not hasattr(keys, name)} == set()


def _documented_keys():
    """Each key of the catalogue with the text that documents it: docstring or ``#:`` comment."""
    source = CATALOGUE_SOURCE.splitlines()
    tree = ast.parse(CATALOGUE_SOURCE)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and _returns_key(node):
            yield node.name, ast.get_docstring(node) or ""
        elif (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and isinstance(value := getattr(keys, node.targets[0].id), str) and value.startswith(keys.PREFIX + ":")):
            above = []
            for line in reversed(source[:node.lineno - 1]):
                if not line.startswith("#:"):
                    break
                above.append(line)
            yield node.targets[0].id, " ".join(above)


def _returns_key(node) -> bool:
    return any(isinstance(n, ast.Return) and isinstance(n.value, ast.JoinedStr) for n in ast.walk(node))


CATALOGUE_SOURCE = (ROOT / CATALOGUE).read_text()


def test_every_key_says_how_it_goes_away():
    documented = dict(_documented_keys())
    assert {"AGENTS", "DEAD", "SKIPPED", "agent", "job_facts", "rejected", "bell"} <= set(documented)
    assert [name for name, text in documented.items() if not re.search(r"TTL|[Ss]wept", text)] == []


@pytest.mark.parametrize("source, found", [
    ('key = f"jobyard:agent:{name}"', ['jobyard:agent:']),
    ('client.get("jobyard:autoscaler:shape")', ['jobyard:autoscaler:shape']),
    ('def f():\n    """Reads jobyard:agent:<host>."""\n', []),
    ('image = "jobyard/jobyard:latest"', []),
])
def test_the_key_scan_finds_typed_out_keys(source, found):
    assert typed_out_keys(ast.parse(source)) == found


@pytest.mark.parametrize("source, found", [
    ("REJECTED_TTL = 14 * 24 * 3600", ["REJECTED_TTL"]),
    ("pipe.expire(key, 14 * 24 * 3600)", ["expire(..., 14 * 24 * 3600)"]),
    ("client.set(key, value, ex=60)", ["ex=60"]),
    ("pipe.expire(key, keys.DEAD_TTL)", []),
    ("client.set(key, value, ex=self.ttl)", []),
])
def test_the_ttl_scan_finds_literal_ttls(source, found):
    assert literal_ttls(ast.parse(source)) == found
