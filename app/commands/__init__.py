"""Serving-side subcommands of `whaleid` (torch-free); see app/cli.py."""
