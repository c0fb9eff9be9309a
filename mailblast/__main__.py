"""`python -m mailblast`, and the `mailblast` command.

A compose worker process imports the main module again (multiprocessing's "spawn" does), so the
CLI, and all it brings (typer, rich, aiosmtplib), is imported only when the command runs.
"""


def main() -> None:
    from mailblast.cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
