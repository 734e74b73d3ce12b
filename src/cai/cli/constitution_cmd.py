"""``cai constitution``: validate, show, lint and audit the coverage of constitution files; print the schema."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from cai.cli.common import console, handle_errors, out
from cai.constitution import Constitution, load_constitution, validate_constitution_file
from cai.constitution.load import default_constitution_path
from cai.constitution.schema import HARM_CATEGORIES
from cai.errors import UserInputError

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


def _format_option() -> str:
    return typer.Option("text", "--format", help="text, or json for machines")


@app.command()
@handle_errors
def lint(
    path: str = typer.Argument(..., help="Constitution YAML file, or 'default'"),
    fmt: str = _format_option(),
    checker: str = typer.Option(None, "--checker", help="Model spec that checks the most similar pairs for duplicates "
                                "and contradictions (e.g. embedded); none: no model checks"),
    checker_pairs: int = typer.Option(10, "--checker-pairs", help="Pairs the checker reads, most similar first"),
    duplicate_warning: float = typer.Option(0.90, "--duplicate-warning", help="Embedding similarity from which two "
                                            "principles are near-duplicates (warning)"),
    duplicate_error: float = typer.Option(0.98, "--duplicate-error", help="Similarity from which that is an error"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="Skip the embedding comparison"),
) -> None:
    """Find near-duplicate, contradicting, vague, wrongly phrased and overlong principles, each at its line.

    Exit 1 when there are errors, 0 for warnings only. A comment '# lint: ignore RULE -- reason' in a principle marks
    its findings of that rule as explained."""
    from cai.constitution.lint import LintConfig, lint_constitution

    _check_format(fmt)
    file = str(default_constitution_path()) if path == "default" else path
    try:
        cfg = LintConfig(checker=checker, checker_pairs=checker_pairs, duplicate_warning=duplicate_warning,
                         duplicate_error=duplicate_error, embeddings=not no_embeddings)
    except ValueError as e:
        raise UserInputError(f"bad lint option: {e}", fix="see `cai constitution lint --help`.") from None
    report = lint_constitution(file, cfg)
    if fmt == "json":
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        for f in report.findings:
            colour = "dim" if f.explained else ("red" if f.severity == "error" else "yellow")
            who = f" {f.principle_id}" + (f".{f.field}" if f.field else "") if f.principle_id else ""
            out.print(f"[{colour}]{escape(f.where())}: {f.severity} \\[{f.rule}]{escape(who)}: {escape(f.message)}[/]",
                      highlight=False, soft_wrap=True)
            if f.explained:
                out.print(f"    explained: {escape(f.explained)}", highlight=False, soft_wrap=True)
            else:
                out.print(f"    fix: {escape(f.fix)}", highlight=False, soft_wrap=True)
        out.print(f"{escape(report.file)}: {report.principles} principles, {report.errors} error(s), "
                  f"{report.warnings} warning(s), {report.explained} explained", highlight=False)
    if report.errors:
        raise typer.Exit(1)


@app.command()
@handle_errors
def coverage(
    path: str = typer.Argument(..., help="Constitution YAML file, or 'default'"),
    taxonomy: str = typer.Option("cai-12", "--taxonomy", help="cai-12, mlcommons-ailuminate, llama-guard-3, "
                                 "harmbench, or a taxonomy YAML file"),
    fmt: str = _format_option(),
    judge: str = typer.Option(None, "--judge", help="Model spec that also judges which categories each principle "
                              "covers (e.g. embedded)"),
    judge_all: bool = typer.Option(False, "--judge-all", help="Judge every category, not only those no tag covers"),
    probe: bool = typer.Option(False, "--probe", help="Write requests for each uncovered category and show how the "
                               "policy model answers them"),
    probe_prompts: int = typer.Option(3, "--probe-prompts", help="Requests per uncovered category"),
    generator: str = typer.Option("embedded", "--generator", help="Model spec that writes the probe requests"),
    policy: str = typer.Option("embedded", "--policy", help="Model spec whose answers the probe shows"),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe's sampling"),
) -> None:
    """Category x principle matrix against a harm taxonomy; uncovered categories first."""
    from cai.constitution.coverage import CoverageConfig, measure_coverage
    from cai.constitution.taxonomies import load_taxonomy

    _check_format(fmt)
    try:
        cfg = CoverageConfig(taxonomy=taxonomy, judge=judge, judge_all=judge_all, probe=probe, probe_prompts=probe_prompts,
                             generator=generator, policy=policy, seed=seed)
    except ValueError as e:
        raise UserInputError(f"bad coverage option: {e}", fix="see `cai constitution coverage --help`.") from None
    const = load_constitution(path)
    tax, _ = load_taxonomy(cfg.taxonomy)
    report = measure_coverage(const, tax, cfg)
    if fmt == "json":
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return
    _print_coverage(report)


def _print_coverage(report) -> None:
    """The coverage table (uncovered categories first), the matrix, and the probe's answers."""
    total, uncovered = len(report.categories), report.uncovered
    out.print(f"[bold]{escape(report.constitution)}[/] against [bold]{escape(report.taxonomy)}[/] "
              f"v{escape(report.taxonomy_version)}: {total - len(uncovered)}/{total} categories covered"
              + (f" (tags and judge {escape(report.judge)})" if report.judge else " (by tags)"))
    t = Table(show_lines=False)
    t.add_column("category", style="bold", overflow="fold")
    t.add_column("name", overflow="fold")
    t.add_column("maps to", overflow="fold")
    t.add_column("principles", overflow="fold")
    for c in report.categories:
        cells = ", ".join(p + ("" if p in c.by_tag else " (judge)") for p in c.principles) or "[red]UNCOVERED[/]"
        t.add_row(escape(c.id), escape(c.name), escape(", ".join(c.maps_to) or "-"),
                  cells if not c.covered else escape(cells))
    out.print(t)
    legend = ", ".join(f"{n + 1}={p}" for n, p in enumerate(report.principles))
    out.print(f"matrix (T: by tag, M: by the judge model); columns: {escape(legend)}", highlight=False, soft_wrap=True)
    width = max(len(c.id) for c in report.categories)
    out.print(" " * width + " " + "".join(f"{n + 1:>3}" for n in range(len(report.principles))), markup=False,
              soft_wrap=True)
    for c, row in zip(report.categories, report.matrix()):
        out.print(f"{c.id:<{width}} " + "".join(f"{x or '.':>3}" for x in row), markup=False, highlight=False,
                  soft_wrap=True)
    for c in uncovered:
        if not c.probes:
            continue
        refused = sum(p.refused for p in c.probes)
        out.print(f"[bold]probe {escape(c.id)}[/]: the policy declined {refused} of {len(c.probes)} requests")
        for p in c.probes:
            out.print(f"  - {'declined' if p.refused else 'complied'}: {escape(p.prompt[:120])}", highlight=False,
                      soft_wrap=True)
            out.print(f"    answer: {escape(' '.join(p.answer.split())[:160])}", highlight=False, soft_wrap=True)
    if uncovered:
        out.print(f"{len(uncovered)} uncovered: {escape(', '.join(c.id for c in uncovered))}. Add a principle tagged "
                  "with a tag the category maps to, or map the category in the taxonomy file.", highlight=False)


def _check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise UserInputError(f"--format {fmt!r} is not known.", fix="use --format text or --format json.")

