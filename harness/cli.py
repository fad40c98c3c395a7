"""The ``xlpref`` command line.

Commands are loaded lazily from ``harness.commands.*`` (``xlpref --help`` imports no torch).
Bad input (:class:`xlpref.errors.InputError`, click usage errors) exits with code 2 and one clear
message; a server that stays down (:class:`xlpref.errors.ServiceUnavailableError`) with code 1 and one
line; tracebacks are shown only with ``-v``.

Example::

    xlpref data check --data-dir ../shared/data
    xlpref -v --seed 1 sample --model tiny-random-llama --prompts mini/ --langs en,es --n 2 -o s.jsonl
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from harness.commands import DEFAULT_SEED
from xlpref.errors import InputError, ServiceUnavailableError

# name -> "module:attr"; one line per command, each module owns its commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("harness.commands.data_cmd:data", "Validate and summarise data."),
    "models": ("harness.commands.models_cmd:models", "Prepare and inspect models."),
    "sample": ("harness.commands.sample_cmd:sample", "Sample responses per prompt and language."),
    "score": ("harness.commands.score_cmd:score", "Score responses with the implicit reward."),
    "pairs": ("harness.commands.pairs_cmd:pairs", "Build preference pairs from scored responses."),
    "train": ("harness.commands.train_cmd:train", "DPO (+NLL) training on preference pairs."),
    "annotate": ("harness.commands.annotate_cmd:annotate", "Build pairs with a registered annotator (e.g. lidr)."),
    "generate": ("harness.commands.evaluate_cmd:generate", "Generate X-AlpacaEval outputs for a model."),
    "evaluate": ("harness.commands.evaluate_cmd:evaluate", "Judge outputs against reference outputs."),
    "metrics": ("harness.commands.metrics_cmd:metrics", "Win rate and LC win rate from annotations."),
    "difficulty": ("harness.commands.metrics_cmd:difficulty", "Fit instruction difficulty from annotations."),
    "judge-agreement": ("harness.commands.evaluate_cmd:judge_agreement", "Measure a judge against GPT-4 Turbo."),
    "leaderboard": ("harness.commands.results_cmd:leaderboard", "Regenerate and print the leaderboard."),
    "remetrics": ("harness.commands.results_cmd:remetrics", "Recompute rows' metrics.json from their annotations."),
    "compare": ("harness.commands.results_cmd:compare", "Per-language deltas with bootstrap CIs."),
    "check": ("harness.commands.results_cmd:check", "Regression gate: exit 0 or 1."),
    "plot": ("harness.commands.results_cmd:plot", "PNG charts of WR and LC by iteration."),
    "run": ("harness.commands.run_cmd:run", "Run the ICR loop with evaluation around every iteration."),
    "compare-baselines": ("harness.commands.baselines_cmd:compare_baselines", "Run ICR, LIDR, English-only; one table."),
    "capabilities": ("harness.commands.capabilities_cmd:capabilities", "Capability suites (lm-eval) on a model."),
    "bench": ("harness.commands.bench_cmd:bench", "Performance benchmarks against naive baselines."),
    "doctor": ("harness.commands.doctor_cmd:doctor", "Versions, GPUs, and a short check of every GPU path here."),
    "language-check": ("harness.commands.language_cmd:language_check", "Answer languages of outputs, samples or pairs."),
    "reward-accuracy": ("harness.commands.reward_accuracy_cmd:reward_accuracy", "Implicit reward vs a judge, per language."),
}


#: What every interruption says: record logs, judge caches and finished stages are kept.
RESUME_HINT = "What was finished is kept; rerun the same command to resume."


@dataclass
class Context:
    """Global options, passed to every command as ``ctx.obj``."""

    run_dir: Path | None = None
    seed: int = DEFAULT_SEED
    verbose: int = 0


class LazyGroup(click.Group):
    """A click group whose commands are imported only when invoked (or listed in detail)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("harness.commands"):
                return None
            raise
        return getattr(module, attr, None)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above, so ``--help`` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Run directory for artifacts (default: per command).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Global random seed.")
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.version_option(package_name="xlpref")
@click.pass_context
def cli(ctx: click.Context, run_dir: Path | None, seed: int, verbose: int) -> None:
    """xlpref: multilingual preference alignment by implicit cross-lingual rewarding (ICR)."""
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(run_dir=run_dir, seed=seed, verbose=verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps bad input to exit code 2 with one clear line."""
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})
                  for a in (argv if argv is not None else sys.argv[1:]))
    try:
        # standalone_mode=False returns the code of ctx.exit(n) instead of raising it.
        code = cli.main(args=argv, prog_name="xlpref", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"Aborted. {RESUME_HINT}", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)  # usage errors: 2
    except InputError as exc:
        if verbose:
            raise
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except ServiceUnavailableError as exc:  # the input was fine: exit 1, and a rerun resumes
        if verbose:
            raise
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(1)
    except OSError as exc:
        if verbose:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"error: {where}{_one_line(exc.strerror or str(exc))}", err=True)
        sys.exit(2)


def _one_line(message: str) -> str:
    # Library messages wrapped into an InputError can span lines; the user gets one.
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


if __name__ == "__main__":
    main()
