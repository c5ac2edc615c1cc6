"""Reading what the CLI said, whatever the terminal width."""


def said(result) -> str:
    """The command's output as one line: rich draws errors in a box as wide as the terminal and
    wraps long messages (paths) inside it."""
    return " ".join(result.output.replace("│", " ").split())


def evaluate(benchmark: str, root, out):
    """``edgewatch evaluate BENCHMARK --data-dir ROOT --out OUT``, run in-process."""
    from typer.testing import CliRunner

    from edgewatch.cli import app

    return CliRunner().invoke(app, ["evaluate", benchmark, "--data-dir", str(root), "--out", str(out)])


def assert_refused(result, expected: str) -> None:
    """A user's mistake: exit code 2 and the one-line error naming it."""
    assert result.exit_code == 2, result.output
    assert expected in said(result), said(result)
