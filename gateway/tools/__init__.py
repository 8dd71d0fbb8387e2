"""Command-line tools for people at the wire; the CLI module only dispatches to them."""
