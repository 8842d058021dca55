"""Every Lua script jobyard sends names its KEYS and ARGV at the top and documents them (pure).

A script's header comment lists each ``KEYS[n]`` / ``ARGV[n]`` (or a documented range,
``KEYS[a .. b]``, read with ``unpack``); the code then assigns each to a named local in
one block, and nothing below that block touches KEYS or ARGV: no positional offsets.
A library (``*.lib.lua``, functions scripts begin with) touches neither.
"""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from executor import take
from tasks import transport

pytestmark = pytest.mark.pure

ANY_ENTRY = re.compile(r"\b(?:KEYS|ARGV)\b")
ONE_ENTRY = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
RANGE = re.compile(r"\bunpack\((KEYS|ARGV), ([^,()]+?)(?:, ([^,()]+?))?\)")
DOCUMENTED = re.compile(r"^--\s+((?:KEYS|ARGV)\[[^\]]+\])")
NAMED_LOCAL = re.compile(r"^local [a-z_]+ = ")


def spaced(text: str) -> str:
    return " ".join(text.split())


def problems(script: str) -> list[str]:
    """What is wrong with ``script``'s KEYS/ARGV header and named locals (empty: nothing)."""
    lines = script.splitlines()
    header = []
    while len(header) < len(lines) and lines[len(header)].startswith("--"):
        header.append(lines[len(header)])
    documented = {spaced(m.group(1)) for line in header if (m := DOCUMENTED.match(line))}
    body = lines[len(header):]
    start = next((n for n, line in enumerate(body) if line.strip()), len(body))
    end = next((n for n in range(start, len(body)) if not NAMED_LOCAL.match(body[n])), len(body))
    used, found = set(), []
    for line in body[start:end]:
        used |= {f"{kind}[{index}]" for kind, index in ONE_ENTRY.findall(line)}
        used |= {spaced(f"{kind}[{first} .. {last}]" if last else f"{kind}[{first} ..]")
                 for kind, first, last in RANGE.findall(line)}
        if ANY_ENTRY.search(RANGE.sub("", ONE_ENTRY.sub("", line))):
            found.append(f"not a plain entry or range: {line.strip()}")
    for n, line in enumerate(body[end:], start=len(header) + end + 1):
        if ANY_ENTRY.search(line):
            found.append(f"line {n} uses KEYS/ARGV outside the named locals: {line.strip()}")
    found += [f"{entry} is not documented in the header" for entry in sorted(used - documented)]
    found += [f"{entry} is documented but not named" for entry in sorted(documented - used)]
    return found


LUA = sorted(f"{package}/lua/{path.name}" for package in ("tasks", "executor")
             for path in files(package).joinpath("lua").iterdir() if path.name.endswith(".lua"))
SCRIPTS = [name for name in LUA if not name.endswith(".lib.lua")]
LIBRARIES = [name for name in LUA if name.endswith(".lib.lua")]


def text(name: str) -> str:
    package, _, path = name.partition("/")
    return files(package).joinpath(path).read_text(encoding="utf-8")


def test_the_transport_loads_its_scripts_from_the_packaged_files():
    assert {"executor/lua/take.lua", "tasks/lua/publish.lua"} <= set(SCRIPTS)
    assert LIBRARIES == ["tasks/lua/delayed.lib.lua"]
    library = text("tasks/lua/delayed.lib.lua")
    assert take.TAKE == library + text("executor/lua/take.lua")
    assert transport.PUBLISH == library + text("tasks/lua/publish.lua")


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_library_touches_no_keys_or_arguments(name):
    assert not ANY_ENTRY.search(text(name))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_names_and_documents_each_key_and_argument_it_uses(name):
    script = text(name)
    assert problems(script) == []
    assert ONE_ENTRY.search(script)  # the check saw the script's entries at all


@pytest.mark.parametrize("script, problem", [
    ("-- KEYS[1] a list\nlocal list_key = KEYS[1]\nredis.call('RPOP', KEYS[1])\n", "outside the named locals"),
    ("-- KEYS[1] a list\nlocal list_key = KEYS[1]\nfor i = 1, 2 do\n  local n = ARGV[13 + 3 * i]\nend\n",
     "outside the named locals"),
    ("-- KEYS[1] a list\nlocal list_key = KEYS[1]\nlocal count = ARGV[1]\n", "ARGV[1] is not documented"),
    ("-- KEYS[1] a list\n-- ARGV[1] a count\nlocal list_key = KEYS[1]\n", "ARGV[1] is documented but not named"),
    ("-- KEYS[1] a list\nlocal list_key = KEYS[1]\nlocal other = KEYS[1 + 1]\n", "not a plain entry or range"),
    ("-- KEYS[2 ..] the lists\nlocal lists = {unpack(KEYS, 3)}\n", "KEYS[3 ..] is not documented"),
])
def test_the_check_finds_offsets_and_undocumented_entries(script, problem):
    assert any(problem in found for found in problems(script)), problems(script)


def test_the_check_passes_a_documented_script_with_ranges():
    script = ("-- KEYS[1] a hash\n-- KEYS[2 .. 1 + n] the lists\n-- ARGV[1] n\n\n"
              "local hash_key = KEYS[1]\nlocal n = tonumber(ARGV[1])\nlocal list_keys = {unpack(KEYS, 2, 1 + n)}\n\n"
              "return list_keys[1]\n")
    assert problems(script) == []
