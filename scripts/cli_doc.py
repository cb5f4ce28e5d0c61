"""Write docs/cli.md from the argparse parser of `soundflow/cli.py` (the command-line contract).

    python scripts/cli_doc.py [OUT.md]     # default: docs/cli.md beside this checkout's soundflow/

Every subcommand and flag comes from `cli.build_parser()`, so the page is exact for the code it
was generated from; rerun it after changing the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soundflow.cli import build_parser

HEAD = """# Command line

`soundflow` (or `python -m soundflow`) is the project's one command line: every subcommand and
flag is defined in `soundflow/cli.py`; no module keeps an argparse of its own. This page is
generated from that parser by `scripts/cli_doc.py` — rerun it after changing a flag.

Conventions:

- `--json` on a bench command prints one JSON object with the metrics as the **last line of
  stdout** (progress goes to stderr); `--out DIR` writes `report.md`, `metrics.json`, the per-item
  or per-event rows (`items.jsonl` / `events.jsonl`) and PNG plots.
- `listen --jsonl` prints one JSON object per event, the same events as the server sends
  ([server-protocol.md](server-protocol.md)): `{"type": "decision", "chunk", "t", "decision",
  "p_response", "latency_ms", ...}` and `{"type": "response", "chunk", "t", "text"}`.
- `--model` takes a backend name (`mini`, `tiny`, `tiny-qwen`, `qwen2.5-omni`) or a checkpoint
  folder ([formats.md](formats.md#checkpoint)).
- Bad input (a missing file, an unreadable clip, a bad value) ends with one line
  `soundflow: error: ...` and exit status 2 (`SOUNDFLOW_DEBUG=1` shows the traceback). A
  benchmark whose measured system fails raises (`bench.common.SystemFailed`) instead of
  reporting figures for another system.

"""


def _subparsers(p: argparse.ArgumentParser):
    for a in p._actions:  # argparse keeps no public view of its subcommands
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            for name, sp in a.choices.items():
                yield name, sp, helps.get(name, "")


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _args(p: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(a.option_strings) if a.option_strings else (a.metavar or a.dest)
        if a.option_strings and a.nargs != 0:
            name += f" {a.metavar or a.dest.upper()}"
        if isinstance(a, argparse._StoreTrueAction):
            default = "off"
        elif not a.option_strings:
            default = "(optional)" if a.nargs == "?" else "(required)"
        else:
            default = "(required)" if a.required else ("–" if a.default is None else f"`{a.default}`")
            if isinstance(a, argparse._AppendAction):
                default = "none (repeatable)"
        choices = " \\| ".join(f"`{c}`" for c in a.choices) if a.choices else ""
        rows.append(f"| `{_cell(name)}` | {default} | {choices} | {_cell(a.help or '')} |")
    if not rows:
        return []
    return ["| argument | default | choices | meaning |", "|---|---|---|---|", *rows, ""]


def _walk(p: argparse.ArgumentParser, path: list[str], out: list[str]) -> None:
    subs = list(_subparsers(p))
    for name, sp, help_ in subs:
        full = [*path, name]
        inner = list(_subparsers(sp))
        level = "#" * min(2 + len(path), 4)
        out.append(f"{level} `soundflow {' '.join(full)}`\n\n")
        if help_:
            out.append(help_[0].upper() + help_[1:] + ".\n\n")
        if inner:
            out.append("Subcommands: " + ", ".join(f"`{n}`" for n, _, _ in inner) + ".\n\n")
            _walk(sp, full, out)
            continue
        usage = " ".join(sp.format_usage().split())
        out.append(f"```\n{usage.removeprefix('usage: ')}\n```\n\n")
        out.extend(line + "\n" for line in _args(sp))


def render() -> str:
    out = [HEAD]
    _walk(build_parser(), [], out)
    return "".join(out).rstrip() + "\n"


def main(argv: list[str]) -> None:
    import soundflow

    dest = Path(argv[0]) if argv else Path(soundflow.__file__).resolve().parent.parent / "docs" / "cli.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render(), encoding="utf-8")
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1:])
