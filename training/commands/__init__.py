"""Training-side subcommands of `whaleid`, imported only when one runs; see app/cli.py."""
