"""Recipes: the papers' settings as named presets (`--recipe NAME` on any command).

A recipe is a YAML file shipped with the package (`unime/cli/recipes/<paper>/<name>.yaml`):

    title: ...
    paper: ...
    plan: {stage: embedder, model: Qwen/Qwen2-VL-2B-Instruct, ...}     # what `unime plan` sizes (reasoner: the
                                                                       # model of its reasoner stages)
    commands:
      train embedder:                                                  # `unime train embedder`
        lora-r: {value: 16, source: "UniME-V2 implementation details (SPEC 1.5)"}
      mine: {...}

Each value names its source. Layering (lowest first): the command's defaults < the recipe < a
`--config` file < options given on the command line. `--print-config` shows the resolved values and
where each came from. `docs/RECIPES.md` is the table of every recipe (a test holds it to these files).
"""

from __future__ import annotations

import difflib
import functools

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from unime.errors import UnimeError


@dataclass(frozen=True)
class RecipeValue:
    value: Any
    source: str


@dataclass
class Recipe:
    name: str
    title: str
    paper: str
    commands: dict[str, dict[str, RecipeValue]]
    plan: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def options(self, command: str) -> dict[str, RecipeValue]:
        """The recipe's values for `command` ("train embedder", "mine", ...), keyed by option dest."""
        if command not in self.commands:
            raise UnimeError(f"recipe {self.name!r} has no settings for `unime {command}`; it covers: "
                             + ", ".join(f"`unime {c}`" for c in self.commands))
        return self.commands[command]


def _root():
    return resources.files("unime.cli.recipes")


def list_recipes() -> list[str]:
    names = []
    for group in sorted(_root().iterdir(), key=lambda p: p.name):
        if group.is_dir() and not group.name.startswith(("_", ".")):
            names += [f"{group.name}/{f.name[:-5]}" for f in sorted(group.iterdir(), key=lambda p: p.name)
                      if f.name.endswith(".yaml")]
    return names


@functools.lru_cache(maxsize=1)
def recipe_commands() -> frozenset[str]:
    """The commands some recipe has settings for (`unime train embedder`, ...), and `plan`, which plans them: the
    commands that take `--recipe`."""
    return frozenset({"plan"} | {c for name in list_recipes() for c in load_recipe(name).commands})


def recipes_for(command: str) -> list[str]:
    """The recipes `unime COMMAND --recipe` takes: those with settings for the command (for `plan`: with a plan)."""
    return [name for name in list_recipes()
            if (bool(load_recipe(name).plan) if command == "plan" else command in load_recipe(name).commands)]


def close_recipes(name: str, known: list[str], n: int = 3) -> list[str]:
    """The recipes `name` was likely meant as: one whose part after the slash is `name`'s (`qwen2-vl-2b`,
    `v2/qwen2-vl-2b` -> `unime-v2/qwen2-vl-2b`), else the closest by name or by that part (difflib), else those
    whose part after the slash contains it (`reranker`)."""
    stem = name.rsplit("/", 1)[-1]
    exact = [k for k in known if k.split("/", 1)[1] == stem]
    if exact:
        return exact[:n]
    by_stem: dict[str, list[str]] = {}
    for k in known:
        by_stem.setdefault(k.split("/", 1)[1], []).append(k)
    out = difflib.get_close_matches(name, known, n=n)
    for s in difflib.get_close_matches(stem, list(by_stem), n=n):
        out += [k for k in by_stem[s] if k not in out]
    return (out or [k for k in known if stem and stem in k.split("/", 1)[1]])[:n]


def load_recipe(name: str) -> Recipe:
    known = list_recipes()
    if name not in known:
        close = close_recipes(name, known)
        hint = ""
        if close:
            hint = f"did you mean {', '.join(close[:-1]) + ' or ' if close[:-1] else ''}{close[-1]}? "
        raise UnimeError(f"unknown recipe {name!r}; {hint}known recipes: {', '.join(known)}")
    group, stem = name.split("/", 1)
    path = _root() / group / f"{stem}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    commands: dict[str, dict[str, RecipeValue]] = {}
    for command, opts in (raw.get("commands") or {}).items():
        section = {}
        for key, spec in (opts or {}).items():
            if not isinstance(spec, dict) or set(spec) != {"value", "source"}:
                raise UnimeError(f"recipe {name}: {command}.{key} must be {{value: ..., source: ...}}")
            section[key.replace("-", "_")] = RecipeValue(spec["value"], str(spec["source"]))
        commands[command] = section
    return Recipe(name=name, title=str(raw.get("title", name)), paper=str(raw.get("paper", "")),
                  commands=commands, plan=dict(raw.get("plan") or {}), notes=list(raw.get("notes") or []))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def recipes_markdown() -> str:
    """docs/RECIPES.md: every recipe's values with their sources (regenerate with
    `python -c "from unime.cli.recipes import recipes_markdown; print(recipes_markdown(), end='')" \
    > docs/RECIPES.md`)."""
    lines = ["# Recipes", "",
             "The papers' settings as presets: `unime <command> --recipe NAME ...`. Layering, lowest first: the",
             "command's defaults < the recipe < `--config FILE` < options on the command line.",
             "`--print-config` prints the resolved options and the origin of each value. `unime plan --recipe NAME`",
             "estimates the memory per device. SPEC sections refer to `SPEC.md` of the project (the digest of the",
             "papers and their code releases); options a recipe does not list keep the command's defaults.",
             "This file is generated from `src/unime/cli/recipes/` (a test keeps them equal).", ""]
    for name in list_recipes():
        r = load_recipe(name)
        lines += [f"## `{name}`", "", f"{r.title}. Source: {r.paper}.", ""]
        for note in r.notes:
            lines.append(f"- {note}")
        if r.notes:
            lines.append("")
        for command, opts in r.commands.items():
            lines += [f"`unime {command} --recipe {name}`", "", "| option | value | source |", "|---|---|---|"]
            for key, rv in opts.items():
                lines.append(f"| `--{key.replace('_', '-')}` | {_fmt(rv.value)} | {rv.source} |")
            lines.append("")
    return "\n".join(lines)
