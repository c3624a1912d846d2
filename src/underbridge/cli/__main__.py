"""`python -m underbridge.cli`: the same as the `underbridge` command."""

from underbridge.cli import main

main()
