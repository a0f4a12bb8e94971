"""The one parser of a config file's argument: ``configs/<file>.py:<arg>``.

Every config file's ``get_config(arg)`` reads ``arg`` with :func:`parse_arg`: at most one
*choice* (a task, a method, a domain, a protocol, ...) and any number of *flags* (``smoke``:
a seconds-long run), comma-separated in any order, e.g. ``default.py:smoke``,
``nyuv2_mtl.py:bam,smoke``, ``decathlon_sdl.py:dtd,smoke``, ``metadataset_sdl.py:omniglot``.
"""

from __future__ import annotations

from collections.abc import Sequence


def parse_arg(arg: str | None, config_name: str, choices: Sequence[str] = (),
              flags: Sequence[str] = ("smoke",), default: str | None = None,
              required: bool = False) -> tuple[str | None, frozenset[str]]:
    """``'[choice][,flag...]'`` -> ``(choice, flags)``.

    Args:
      arg: what follows ``:`` in ``--config configs/<file>.py:<arg>`` (``None`` or ``''``:
        nothing).
      config_name: the config file's name, for messages (``'nyuv2_mtl.py'``).
      choices: the values the choice may take (empty: the file takes no choice).
      flags: the flags the file takes (default: ``'smoke'``).
      default: the choice when ``arg`` names none (one of ``choices``).
      required: a choice must be named (no ``default``).

    Returns:
      ``(choice, flags)``: the named choice, else ``default`` (``None`` when there is no
      default); the frozenset of the flags named.

    Raises:
      ValueError: a part of ``arg`` that is neither a choice nor a flag, two choices, or no
        choice when one is ``required``; the message says what the file takes, with an
        example, and what was found.
    """
    choices, flags = tuple(choices), tuple(flags)
    if default is not None and default not in choices:
        raise ValueError(f"parse_arg: default={default!r} is not one of choices={choices}.")
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    named = [p for p in parts if p not in flags]
    bad = [p for p in named if p not in choices]
    if bad or len(named) > 1 or (required and not named):
        what = describe(config_name, choices, flags, required, default)
        raise ValueError(f"{config_name} takes {what}; found {arg!r}.")
    return (named[0] if named else default), frozenset(p for p in parts if p in flags)


def describe(config_name: str, choices: Sequence[str], flags: Sequence[str],
             required: bool = False, default: str | None = None) -> str:
    """What a config file's argument may be, in words (the body of :func:`parse_arg`'s
    error), e.g. ``"one of ('semantic', 'depth', 'normal'), optionally followed by ',smoke',
    e.g. nyuv2_stl.py:semantic,smoke"``."""
    flag_text = " or ".join(f"',{f}'" for f in flags)
    if not choices:
        return (f"no argument other than {' or '.join(repr(f) for f in flags)}" if flags
                else "no argument")
    text = f"one of {tuple(choices)}"
    if not required:
        text += " or nothing" + (f" (= {default!r})" if default is not None else "")
    if flags:
        text += f", optionally followed by {flag_text}"
    example = f"{config_name}:{choices[0]}" + (f",{flags[0]}" if flags else "")
    return f"{text}, e.g. {example}"
