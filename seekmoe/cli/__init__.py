"""The `seekmoe` command: one module per group of subcommands."""
