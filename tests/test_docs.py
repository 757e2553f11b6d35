"""The documentation: README.md (the quick start) and docs/*.md (the manual).

Every relative link names an existing file, and an existing heading when it has a #anchor; every `fcnseg …`
command line names a real command and only real options of it (read from the click group in fcnseg.cli);
every repository path and fcnseg.module.name the pages mention exists; the README stays a quick start;
every command has its section in docs/commands.md and every config key its row. No Caffe needed.
"""
from __future__ import annotations

import ast
import re
import shlex
import unicodedata
from pathlib import Path

import click
import pytest

from fcnseg.cli import cli
from fcnseg.config import Config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

README_MAX_LINES = 250
README_FIRST_COMMAND_BY = 40
FCNSEG = {"fcnseg", ".venv/bin/fcnseg"}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, lines inside fenced code blocks), each as (1-based line number, line)."""
    prose, code, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"\s*(```|~~~)", line)
        if marker and (fence is None or marker.group(1) == fence):
            fence = marker.group(1) if fence is None else None
        elif fence is None:
            prose.append((number, line))
        else:
            code.append((number, line))
    return prose, code


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings; a repeated heading gets -1, -2 … as on GitHub."""
    prose, _ = split_markdown(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    for _, line in prose:
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def prose_text(page: Path) -> str:
    """The page without its fenced code blocks and inline code spans (links inside code are not links)."""
    prose, _ = split_markdown(page.read_text(encoding="utf-8"))
    return re.sub(r"`[^`]*`", "``", "\n".join(line for _, line in prose))


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose_text(page)):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # https:, mailto: …: not a file
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{rel(page)}: link ({target})"
        if REPO not in dest.parents and dest != REPO:
            problems.append(f"{where} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no file {rel(dest)}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: {rel(dest)} has no heading with anchor #{anchor}")
    return problems


def command_lines(page: Path) -> list[tuple[int, str]]:
    """Every `fcnseg …` command on the page, as (line number, command text).

    In fenced code blocks: each line (continued lines joined), with a leading `$ ` prompt, a trailing
    `# comment` and leading VAR=value assignments dropped, split at `;`, `&&` and `||`; lines whose first
    word is not fcnseg (make, python, output) are not commands. In the prose: inline code spans that start
    with `fcnseg `.
    """
    text = page.read_text(encoding="utf-8")
    prose, code = split_markdown(text)
    found: list[tuple[int, str]] = []
    joined: list[tuple[int, str]] = []
    for number, line in code:
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
        else:
            joined.append((number, line.strip()))
    for number, line in joined:
        line = re.sub(r"^\$\s+", "", line)
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"\s*(?:;|&&|\|\|)\s*", line):
            part = re.sub(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+", "", part.strip())
            if part.split(" ", 1)[0] in FCNSEG:
                found.append((number, part))
    prose_lines = "\n".join(line for _, line in prose)
    for match in re.finditer(r"`([^`]+)`", prose_lines):
        span = " ".join(match.group(1).split())
        if span.split(" ", 1)[0] in FCNSEG and " " in span:
            found.append((prose[prose_lines.count("\n", 0, match.start())][0], span))
    return found


def options_of(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def command_problems(text: str) -> list[str]:
    """What in one command line is not a real command or option of fcnseg.

    Synopsis notation is allowed and not checked itself: placeholders (RUN_DIR, IMAGE…), brackets and
    parentheses around optional parts, `|` between alternatives, `…`. Every word that starts with `-` is an
    option of the command reached so far (the text before `=` for --opt=value); the first positional
    words after a group must name its subcommands; other positional words are arguments and not checked.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        return [f"cannot be parsed as a shell command ({exc})"]
    command: click.Command = cli
    path = ["fcnseg"]
    problems = []
    for word in words[1:]:
        for token in word.split("|"):
            token = token.strip("[]()")
            if token in ("", "…", "...") or re.match(r"-\d", token):
                continue
            if token.startswith("-"):
                name = token.split("=", 1)[0]
                if name not in options_of(command):
                    problems.append(f"'{' '.join(path)}' has no option {name}")
            elif isinstance(command, click.Group):
                sub = command.commands.get(token)
                if sub is None:
                    problems.append(f"'{' '.join(path)}' has no command {token!r}")
                    return problems
                command, path = sub, path + [token]
    return problems


def top_level_names(module: Path) -> set[str]:
    """Names a module defines or imports at its top level (read with ast: nothing is imported)."""
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def python_name_exists(dotted: str) -> bool:
    """Whether `fcnseg.module[.name]` names a module of the package, or a top-level name in one."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:k])
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.is_file():
                return k == len(parts) or parts[k] in top_level_names(module)
    return False


def named_problems(page: Path) -> list[str]:
    """Repository paths (fcnseg/…, scripts/…, configs/…, tests/…, docs/…, .ci/…; globs allowed) and Python
    names (fcnseg.module.name, `from fcnseg.module import name`) the page mentions that do not exist."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for path in sorted(set(re.findall(r"(?<![\w./-])((?:fcnseg|scripts|configs|tests|docs|\.ci)/[\w./*-]*)", text))):
        path = path.rstrip(".")
        exists = any(REPO.glob(path)) if "*" in path else (REPO / path).exists()
        if not exists:
            problems.append(f"{rel(page)}: no file or folder {path}")
    dotted = set(re.findall(r"(?<![\w/])fcnseg(?:\.[A-Za-z_]\w*)+", text))
    for module, imported in re.findall(r"from (fcnseg[\w.]*) import ([\w, ]+)", text):
        dotted.update(f"{module}.{name.strip()}" for name in imported.split(",") if name.strip())
    problems += [f"{rel(page)}: no Python name {name}" for name in sorted(dotted) if not python_name_exists(name)]
    return problems


def leaf_commands(group: click.Group = cli, path: tuple[str, ...] = ("fcnseg",)):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, path + (name,))
        else:
            yield " ".join(path + (name,)), command


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_name_existing_files_and_headings(page):
    problems = link_problems(page)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_command_lines_name_real_commands_and_options(page):
    problems = [f"{rel(page)}:{number}: {text}\n    {problem}"
                for number, text in command_lines(page) for problem in command_problems(text)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_named_files_and_python_names_exist(page):
    problems = named_problems(page)
    assert problems == [], "\n".join(problems)


def test_the_checks_see_the_commands_and_can_fail():
    readme_commands = [text for _, text in command_lines(README)]
    assert len(readme_commands) >= 10
    assert sum(len(command_lines(page)) for page in PAGES) >= 100
    assert command_problems("fcnseg infer --run runs/demo a.tif -o out --overlay") == []
    assert command_problems("fcnseg infer --run runs/demo a.tif -o out --overlays") == [
        "'fcnseg infer' has no option --overlays"]
    assert command_problems("fcnseg data imports --images a") == ["'fcnseg data' has no command 'imports'"]
    assert command_problems("fcnseg eval runs/demo --cpu") == ["'fcnseg eval' has no option --cpu"]
    assert python_name_exists("fcnseg.images.apply_window") and python_name_exists("fcnseg.doctor")
    assert not python_name_exists("fcnseg.images.no_such_name") and not python_name_exists("fcnseg.nope")


def test_a_broken_link_is_found(tmp_path, monkeypatch):
    page = REPO / "docs" / "commands.md"
    bad = tmp_path.resolve() / "page.md"
    bad.write_text("# Title\n[a](commands.md) [b](nope.md) [c](commands.md#no-such-heading) [d](#title)\n"
                   "`[not a link](nope2.md)`\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path.resolve())
    (tmp_path / "commands.md").write_text(page.read_text(encoding="utf-8"))
    assert link_problems(bad) == ["page.md: link (nope.md): no file nope.md",
                                  "page.md: link (commands.md#no-such-heading): commands.md has no heading "
                                  "with anchor #no-such-heading"]


def test_github_slugs():
    assert github_slug("The reference path: ImageNet VGG16 → one channel → FCN-32s → 16s → 8s") == \
        "the-reference-path-imagenet-vgg16--one-channel--fcn-32s--16s--8s"
    assert github_slug("`fcnseg train` and `fcnseg eval`") == "fcnseg-train-and-fcnseg-eval"
    assert github_slug("Sparse objects: phase-contrast bacteria (`make demo-bacteria`)") == \
        "sparse-objects-phase-contrast-bacteria-make-demo-bacteria"


def test_readme_is_a_quick_start():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    _, code = split_markdown("\n".join(lines))
    first = next(number for number, line in code if line.split(" ", 1)[0] in FCNSEG)
    assert first <= README_FIRST_COMMAND_BY
    assert "../shared" not in "\n".join(lines)


def test_every_command_has_its_section_and_every_option_is_documented():
    commands_md = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    everything = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    missing = []
    for name, command in leaf_commands():
        if f"## `{name}`" not in commands_md:
            missing.append(f"docs/commands.md has no section '## `{name}`'")
        missing += [f"{name} {option} is in no page" for option in sorted(options_of(command) - {"-h", "--help"})
                    if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", everything)]
    assert missing == [], "\n".join(missing)


def test_every_config_key_is_in_the_config_table():
    commands_md = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    keys = [f"{section}.{key}" for section, values in Config().to_dict().items() for key in values]
    assert len(keys) > 30
    missing = [key for key in keys if f"`{key}`" not in commands_md and f"`{key.split('.')[1]}`" not in commands_md]
    assert missing == []
