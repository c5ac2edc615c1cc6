"""Reading what the CLI said, whatever the terminal width."""


def said(result) -> str:
    """The command's output as one line: rich draws errors in a box as wide as the terminal and
    wraps long messages (paths) inside it."""
    return " ".join(result.output.replace("│", " ").split())
