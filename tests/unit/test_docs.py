"""The docs name only commands and options that exist, and call none of them planned.

README.md and every docs/**/*.md are read for mentions of the CLI, inside inline code spans and
code blocks: `replicator <command> [<subcommand>] [--option ...]` (also after `--config FILE`,
an environment assignment or a path such as `.venv/bin/replicator`), and spans that start with
a command's own name (`verify --table T --repair`, `connector show|apply`). Each is checked
against the real Typer app, walked through typer.main.get_command: an unknown command,
subcommand or option fails, and so does an existing command named in a sentence (or a list
item) that calls it planned.

The syntax the docs use for alternatives is understood: `show|apply|status` and `\\|` (a pipe
escaped in a table) between subcommands or option values, ` / ` between subcommands
(`stack install / up / down [--purge] / status`) or commands (`lag / status [--watch]`),
brackets and parentheses around optional parts, placeholders (`T`, `P:O…`, `...`,
`'{name}_v2'`). In code blocks a `#` comment, a shell pipe and `&&`/`;`/redirections end the
command; a trailing backslash continues it on the next line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

from replicator.cli import app

ROOT = Path(__file__).resolve().parents[2]


# --- the real command tree -------------------------------------------------------------------


@dataclass
class Command:
    name: str
    options: dict[str, bool] = field(default_factory=dict)  # every spelling -> takes a value
    commands: dict[str, Command] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        return bool(self.commands)


def _tree(click_command: Any, name: str) -> Command:
    """The click command (Typer vendors click, so this goes by attributes, not classes)."""
    node = Command(name)
    for param in click_command.params:
        if getattr(param, "param_type_name", "") != "option":
            continue
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        for spelling in [*param.opts, *param.secondary_opts]:
            node.options[spelling] = takes_value
    node.options.setdefault("--help", False)
    for sub_name, sub in (getattr(click_command, "commands", None) or {}).items():
        node.commands[sub_name] = _tree(sub, sub_name)
    return node


@cache
def cli() -> Command:
    return _tree(typer.main.get_command(app), "replicator")


# --- mentions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    text: str  # as written, for messages
    tokens: tuple[str, ...]  # after `replicator` (or from the command's own name, when bare)
    line: int
    scope: str  # the sentence or list item around it, code masked out (for "planned")


@dataclass(frozen=True)
class Problem:
    line: int
    mention: str
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: `{self.mention}`: {self.what}"


_PROGRAM = re.compile(r"(?<![^\s(])(?:[\w.~-]*/)*replicator(?=\s|$)")
_PROGRAM_PATH = re.compile(r"(?:[\w.~-]*/)*bin/replicator$|replicator$")
_SHELL_END = re.compile(r"\s(?:\|\||\||&&|;|>>?|2>&1|2>|<)(?=\s|$)|;\s*$")
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_FENCE = re.compile(r"^\s*(```|~~~)")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")
_PLANNED = re.compile(r"\bplanned\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z0-9-]*")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _command_mentions(segment: str) -> list[tuple[str, list[str]]]:
    """`replicator ...` inside one command line or span: (as written, tokens after it)."""
    starts = [m for m in _PROGRAM.finditer(segment) if _PROGRAM_PATH.fullmatch(m.group(0))]
    found = []
    for match, following in zip(starts, [*starts[1:], None], strict=False):
        # a second `replicator` starts a mention of its own
        end = following.start() if following else len(segment)
        found.append((segment[match.start() : end].strip(), _tokens(segment[match.end() : end])))
    return found


def _bare_mention(span: str) -> list[str] | None:
    """A span that starts with a command's own name: `verify --table T`, `dlq list|show`."""
    words = _tokens(span)
    if not words:
        return None
    first = [w for w in re.split(r"\\?\|", words[0]) if w]
    if first and all(_WORD.fullmatch(w) and w in cli().commands for w in first):
        return words
    return None


def _mask(text: str) -> str:
    """The text with every code span blanked but its first backtick (same length), so that
    sentence marks and words inside code count for nothing."""
    return _SPAN.sub(lambda m: "`" + " " * (len(m.group(0)) - 1), text)


def _sentences(masked: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, and of each table cell, in a masked block."""
    bounds, start = [], 0
    for mark in re.finditer(r"(?<=[.!?])\s+(?=[A-Z*(\[`])|(?<!\\)\|", masked):
        bounds.append((start, mark.start()))
        start = mark.end()
    bounds.append((start, len(masked)))
    return bounds


def _blocks(lines: list[str]) -> list[tuple[str, int, str]]:
    """Markdown split into (kind, first line number, text): "code" (one logical line of a code
    block), "item" (a list item with its continuation lines), "row" (a table row), "para"."""
    blocks: list[tuple[str, int, str]] = []
    current: list[str] = []
    kind, first, fence = "para", 0, ""

    def flush() -> None:
        nonlocal current
        if current:
            blocks.append((kind, first, "\n".join(current)))
        current = []

    pending: list[str] = []  # a code line continued with a backslash
    for number, line in enumerate(lines, 1):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1) == fence:
                fence = ""
                continue
            pending.append(line.rstrip().removesuffix("\\"))
            if not line.rstrip().endswith("\\"):
                blocks.append(("code", number - len(pending) + 1, " ".join(pending)))
                pending = []
            continue
        if opened:
            flush()
            fence = opened.group(1)
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            flush()
            kind = "para"
            if line.strip():
                blocks.append(("para", number, line))
            continue
        if line.lstrip().startswith("|"):
            flush()
            blocks.append(("row", number, line))
            kind = "para"
            continue
        if _ITEM.match(line):
            flush()
            kind, first = "item", number
        elif not current:
            kind, first = "para", number
        current.append(line)
    flush()
    return blocks


def mentions(markdown: str) -> list[Mention]:
    """Every CLI mention in a Markdown text, with the sentence or item it stands in."""
    found: list[Mention] = []
    for kind, first, text in _blocks(markdown.splitlines()):
        if kind == "code":
            line = _COMMENT.sub("", text)
            scope = text  # a comment may call it planned
            for segment in _SHELL_END.split(line):
                for written, tokens in _command_mentions(segment):
                    found.append(Mention(written, tuple(tokens), first, scope))
            continue
        masked = _mask(text)
        sentences = _sentences(masked)
        for span in _SPAN.finditer(text):
            code = " ".join(span.group(2).split())
            if kind == "item":
                scope = masked
            else:
                scope = next((masked[a:b] for a, b in sentences if a <= span.start() < b), masked)
            line = first + text.count("\n", 0, span.start())
            prefixed = _command_mentions(code)
            for written, tokens in prefixed:
                found.append(Mention(written, tuple(tokens), line, scope))
            if not prefixed:
                bare = _bare_mention(code)
                if bare is not None:
                    found.append(Mention(code, tuple(bare), line, scope))
    return found


# --- checking a mention ------------------------------------------------------------------------


def _clean(token: str) -> str:
    """A token without the brackets, parentheses and ellipses of the docs' syntax."""
    return token.strip("[](){},;").removesuffix("…").removesuffix("...").rstrip("],)")


def _is_placeholder(word: str) -> bool:
    return not word or word in ("...", "…") or not _WORD.fullmatch(word)


def _alternatives(token: str) -> list[str]:
    return [w for w in re.split(r"\\?\|", _clean(token)) if w]


def check(mention: Mention) -> list[str]:
    """What is wrong with one mention: unknown commands and options; an existing command
    called planned."""
    root = cli()
    problems: list[str] = []
    tokens = list(mention.tokens)
    i = 0
    # options of `replicator` itself (`--config FILE`), then the command
    while i < len(tokens) and _clean(tokens[i]).startswith("-"):
        option = _clean(tokens[i]).split("=", 1)[0]
        if option not in root.options:
            problems.append(f"`replicator` has no option {option}")
            return problems
        i += 2 if root.options[option] and "=" not in tokens[i] else 1
    if i == len(tokens):
        return problems
    parent, named = root, []  # the group whose commands are named next; commands named so far
    current: list[Command] = []
    expecting_name = True
    for token in tokens[i:]:
        cleaned = _clean(token)
        if cleaned in ("/", "\\|", "|"):  # `stack install / up`: another command of the group
            if cleaned == "/":
                expecting_name = True
            continue
        if expecting_name and not cleaned.startswith("-"):
            words = _alternatives(token)
            if not words or all(_is_placeholder(w) for w in words):
                expecting_name = False  # TABLE, P:O…, '{name}_v2': arguments, not names
                continue
            target = parent
            current = []
            for word in words:
                command = target.commands.get(word)
                if command is None:
                    problems.append(f"`{_path(target)}` has no command {word!r}")
                    continue
                current.append(command)
                named.append(command)
            if not current:
                return problems
            if all(c.is_group for c in current) and len(current) == 1:
                parent = current[0]  # its subcommand comes next
            else:
                expecting_name = False
            continue
        if cleaned.startswith("-") and cleaned not in ("-", "--") and not _is_number(cleaned):
            option = cleaned.split("=", 1)[0]
            owners = current or [parent]
            for command in owners:
                if option not in command.options:
                    problems.append(f"`{_path(command)}` has no option {option}")
            expecting_name = False
            continue
        # an argument or an option's value; a group's next word is still a subcommand
        if not (len(current) == 1 and current[0].is_group):
            expecting_name = False
    if named and _PLANNED.search(mention.scope):
        problems.append("called planned, but it exists")
    return problems


def _is_number(token: str) -> bool:
    return re.fullmatch(r"-\d+(\.\d+)?", token) is not None


@cache
def _paths() -> dict[int, str]:
    paths: dict[int, str] = {}

    def walk(node: Command, prefix: str) -> None:
        paths[id(node)] = prefix
        for name, sub in node.commands.items():
            walk(sub, f"{prefix} {name}")

    walk(cli(), "replicator")
    return paths


def _path(command: Command) -> str:
    return _paths().get(id(command), command.name)


def problems_in(markdown: str) -> list[Problem]:
    return [Problem(m.line, m.text, what) for m in mentions(markdown) for what in check(m)]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# --- the checker itself ------------------------------------------------------------------------


def _whats(markdown: str) -> list[str]:
    return [p.what for p in problems_in(markdown)]


def test_an_unknown_command_fails() -> None:
    assert _whats("Run `replicator frobnicate --now`.") == [
        "`replicator` has no command 'frobnicate'"
    ]


def test_an_unknown_option_fails() -> None:
    assert _whats("Then `replicator verify --bogus` shows it.") == [
        "`replicator verify` has no option --bogus"
    ]


def test_an_unknown_subcommand_fails() -> None:
    assert _whats("There is `replicator connector delete`.") == [
        "`replicator connector` has no command 'delete'"
    ]


def test_an_existing_command_called_planned_fails() -> None:
    assert _whats("Consumer lag (planned: `replicator lag`). Until then, Kafka's tool.") == [
        "called planned, but it exists"
    ]
    assert _whats("**Planned**: `verify` and `backfill`.") == ["called planned, but it exists"] * 2
    assert _whats("- a bullet that is planned.\n  More of it: `replicator dlq list`.\n") == [
        "called planned, but it exists"
    ]


def test_planned_elsewhere_does_not_count() -> None:
    text = "Something else is planned. `replicator lag` shows the lag.\n\n`replicator status`."
    assert _whats(text) == []


def test_the_docs_syntax_is_understood() -> None:
    text = r"""
| `replicator backfill [--into TABLE\|'{name}_v2'] [--from-beginning \| --from-time T]` | x |
| `replicator stack install / up / down [--purge] / status` | y |
| `replicator lag / status [--watch] [--json] [--metrics-url URL…] [--table T…]` | z |
| `replicator dlq list [--json] / show P:O / replay (P:O… \| --reason R \| --all)` | y |
| `replicator read PATTERN VALUE [--store auto\|postgres\|dynamodb]` | x |
| `replicator phase set TABLE PHASE --why TEXT [--force]` | y |

What exists: `connector show|apply|status|restart`, `stack up|status`, `verify --table T
--repair` (a span over two lines), `REPLICATOR_CONNECTOR__NAME=x replicator connector apply`,
`replicator --config FILE postgres sql`, `replicator snapshot --table T --where ...`,
`.venv/bin/replicator stack down`, `kubectl exec deploy/replicator -- replicator connector status`,
`replicator verify -t Payments --no-recheck`, `replicator` itself, `snapshot` as a word.

```sh
replicator verify -t Payments --repair   # planned? no: a comment about something --else
replicator dlq list --json | jq --raw-output '.[]' && replicator cost --window 60
replicator backfill --table IntegrationLogs \
  --from-time 2026-11-25T14:00:00Z --rate-limit 500
docker compose up -d replicator
```

```sql
SELECT * FROM pg_replication_slots WHERE slot_name = 'replicator';
```
"""
    found = mentions(text)
    assert _whats(text) == ["called planned, but it exists"]  # the comment in the code block
    assert len(found) >= 20
    continued = [m for m in found if "IntegrationLogs" in m.tokens]
    assert continued and "--rate-limit" in continued[0].tokens


def test_the_docs_syntax_still_catches_errors() -> None:
    text = r"""
| `replicator stack install / up / sideways [--purge] / status` | x |
| `replicator backfill [--table T…] [--into TABLE\|'{name}_v2'] [--from-nowhere \| --follow]` | y |

`connector show|apply|delete`, `replicator --konfig FILE postgres sql`.

```sh
replicator phase set Payments hybrid-read --why "..." --yes
replicator lag --table Payments \
  --bogus
```
"""
    assert _whats(text) == [
        "`replicator stack` has no command 'sideways'",
        "`replicator backfill` has no option --from-nowhere",
        "`replicator connector` has no command 'delete'",
        "`replicator` has no option --konfig",
        "`replicator phase set` has no option --yes",
        "`replicator lag` has no option --bogus",
    ]


def test_bogus_mentions_added_to_the_readme_fail() -> None:
    """The check over a scratch copy of the README, with bad mentions added, finds them."""
    readme = (ROOT / "README.md").read_text()
    bogus = (
        "\n\nRun `replicator frobnicate` first.\n\n"
        "```sh\nreplicator verify --bogus\n```\n\n"
        "Consumer lag, planned: `replicator lag`.\n"
    )
    found = [str(p) for p in problems_in(readme + bogus)]
    before = [str(p) for p in problems_in(readme)]
    new = [p for p in found if p not in before]
    assert len(new) == 3, new
    assert "has no command 'frobnicate'" in new[0]
    assert "`replicator verify` has no option --bogus" in new[1]
    assert "`replicator lag`: called planned, but it exists" in new[2]


# --- the real docs -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_what_exists(path: Path) -> None:
    problems = problems_in(path.read_text())
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(map(str, problems))


def test_the_docs_mention_every_command() -> None:
    """A check that finds no mention would pass anything: every command (and subcommand) of
    the app is named somewhere in the docs."""
    named: set[str] = set()
    for path in doc_files():
        for mention in mentions(path.read_text()):
            named |= _named_paths(mention)
    every = {p for p in _paths().values() if p != "replicator"}
    assert not every - named, f"commands no doc names: {sorted(every - named)}"


def _named_paths(mention: Mention) -> set[str]:
    names: set[str] = set()
    parent = cli()
    for token in mention.tokens:
        words = _alternatives(token)
        if not words:
            continue
        hits = [parent.commands[w] for w in words if w in parent.commands]
        for hit in hits:
            names.add(_path(hit))
        if len(hits) == 1 and hits[0].is_group:
            parent = hits[0]
    return names
