"""``cai constitution``: validate, show and print the schema of constitution files."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from cai.cli.common import console, handle_errors, out
from cai.constitution import Constitution, load_constitution, validate_constitution_file
from cai.constitution.load import default_constitution_path
from cai.constitution.schema import HARM_CATEGORIES

app = typer.Typer(help="Validate, show and describe constitution files.", no_args_is_help=True)


@app.command()
@handle_errors
def validate(path: str = typer.Argument(..., help="Constitution YAML file")) -> None:
    """Report every problem in a constitution file, with file, line and field. Exit 2 if any."""
    const, problems = validate_constitution_file(path)
    if problems:
        for p in problems:
            console.print(f"[red]{escape(str(p))}[/]", highlight=False)  # paths and values may hold "[/]"
        console.print(f"{len(problems)} problem(s). Fix them at the lines shown; `cai constitution schema` lists every field.")
        raise typer.Exit(2)
    assert const is not None
    cov = const.covered_categories()
    missing = [c for c, ids in cov.items() if not ids]
    out.print(f"OK: {escape(path)}: '{escape(const.name)}' v{escape(const.version)}, {len(const.principles)} principles, "
              f"{len(const.demonstrations)} shared demonstrations, hash {const.content_hash()}")
    if missing:
        out.print(f"note: no principle is tagged with harm categories: {', '.join(missing)}")


@app.command()
@handle_errors
def show(path: str = typer.Argument("default", help="Constitution YAML file, or 'default'")) -> None:
    """Print a constitution readably."""
    const = load_constitution(path)
    out.print(f"[bold]{escape(const.name)}[/] v{escape(const.version)} ({escape(const.language)})  hash {const.content_hash()}")
    if const.description:
        out.print(const.description, markup=False)
    t = Table(show_lines=True)
    t.add_column("id", style="bold")
    t.add_column("tags")
    t.add_column("critique request")
    t.add_column("preference question")
    for p in const.principles:
        t.add_row(*(escape(x) for x in (p.id, ", ".join(p.tags), p.critique_request, p.preference_question)))
    out.print(t)
    cov = const.covered_categories()
    out.print("harm-taxonomy coverage: " + ", ".join(f"{HARM_CATEGORIES[c]}: {len(v)}" for c, v in cov.items()))
    out.print(f"{len(const.demonstrations)} shared few-shot demonstrations")


@app.command()
def schema() -> None:
    """Print the JSON schema of constitution files."""
    typer.echo(json.dumps(Constitution.model_json_schema(), indent=2))


@app.command()
def path() -> None:
    """Print the path of the shipped default constitution."""
    typer.echo(str(default_constitution_path()))

from cai.cli import constitution_tools_cmd; constitution_tools_cmd.register(app)  # noqa: E402,E702
