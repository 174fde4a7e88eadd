"""The one error base of the package. Every error seekmoe raises on purpose is a SeekmoeError; those that are the
caller's input being wrong are also ValueErrors. Which HTTP status each maps to is decided at the server's edge
(seekmoe/server/errors.py), never where the error is raised."""

from __future__ import annotations


class SeekmoeError(Exception):
    """Something seekmoe refuses or cannot do, said in words the user can act on."""


class CLIError(SeekmoeError):
    """Bad input the user can fix at the command line; the CLI prints it as one line and exits with code 2."""


__all__ = ["CLIError", "SeekmoeError"]
