"""Every command README.md, configs/README.md and the config docstrings show still names a
module that runs and a config that loads with the overrides shown (issue 15: modules moved,
old command lines must keep working as written)."""

import importlib.util
import pathlib
import re
import shlex

import pytest

from ur_jax.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted((ROOT / "configs").glob("*.py"))]


def _commands() -> list[tuple[str, str]]:
    """``(source file, command)`` for every ``python -m ur_jax...`` line, with its
    backslash-continued lines joined."""
    out = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            m = re.search(r"python -m ur_jax[\w.]*.*", line)
            if m:
                # (a command inside a shell string, e.g. gcloud's --command "...", ends in a quote)
                out.append((path.name,
                            m.group(0).split("`")[0].split("#")[0].strip().rstrip("\"'")))
    return out


COMMANDS = _commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 40, COMMANDS


@pytest.mark.parametrize("source,command", COMMANDS)
def test_command_names_a_runnable_module(source, command):
    module = command.split()[2]
    assert importlib.util.find_spec(module) is not None, f"{source}: {command}"
    if module.startswith("ur_jax.suites.") or module == "ur_jax.convert":
        spec = importlib.util.find_spec(module + ".__main__")
        assert spec is not None, f"{source}: {module} has no __main__ ({command})"


def _config_args(command: str):
    words = shlex.split(command.replace("...", ""))
    spec = words[words.index("--config") + 1]
    overrides = {}
    for w in words:
        if w.startswith("--config.") and "=" in w:
            key, value = w[len("--config."):].split("=", 1)
            overrides[key] = value
    return spec, overrides


CONFIG_COMMANDS = [(s, c) for s, c in COMMANDS
                   if "--config " in c and "<" not in c and "configs/X.py" not in c]


@pytest.mark.parametrize("source,command", CONFIG_COMMANDS)
def test_config_of_command_loads(source, command):
    spec, overrides = _config_args(command)
    config = load_config(str(ROOT / spec))
    for key in overrides:  # every key a documented command sets exists in the config
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            assert p in node, f"{source}: {command}: no key {key!r}"
            node = node[p]
        assert leaf in node, f"{source}: {command}: no key {key!r}"
