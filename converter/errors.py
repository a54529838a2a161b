"""The converter's expected failures, and the exit code each kind has.

Every ``bnfold`` command exits with one of these codes, with the same
meaning in every command (each command's ``--help`` lists the ones it can
return: :data:`COMMAND_EXIT_CODES`):

- 0: success;
- 2: a usage or input error: a bad option, a missing or unreadable file,
  data or a model that does not fit; one line says what, no traceback;
- 3: a parity failure: a graph does not compute what the network it came
  from computes (or is not that network); nothing was written;
- 1: an unexpected failure, that is a bug: the traceback is printed.

An expected failure is a :class:`BnfoldError` (its class says the code), or
an error of the repository contract found by name in :data:`FOREIGN`, or an
``OSError`` about a named file (permission denied, no such file, disk full).
Anything else, a bare ``ValueError`` included, is a bug. stdlib only: the
training and the folding code both raise these.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_PARITY = 3

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 2 usage or input error; 3 parity failure (nothing written); "
    "1 unexpected failure (a bug: the traceback is shown)."
)

# What each code means in the footer of a command's --help.
EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INPUT: "usage or input error",
    EXIT_PARITY: "parity failure (nothing written)",
    EXIT_BUG: "unexpected failure (a bug: the traceback is shown)",
}
# The codes each command can return, in the order its footer lists them: a
# command without 3 neither proves parity nor calls code that does.
COMMAND_EXIT_CODES: dict[str, tuple[int, ...]] = {
    "train": (EXIT_OK, EXIT_INPUT, EXIT_BUG),
    "export": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "fold": (EXIT_OK, EXIT_INPUT, EXIT_BUG),
    "verify": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "convert": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "import": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "quantize": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "serve": (EXIT_OK, EXIT_INPUT, EXIT_BUG),
    "demo": (EXIT_OK, EXIT_INPUT, EXIT_PARITY, EXIT_BUG),
    "sample-image": (EXIT_OK, EXIT_INPUT, EXIT_BUG),
}
# Where a code means something narrower in one command.
COMMAND_MEANING: dict[tuple[str, int], str] = {
    ("export", EXIT_PARITY): "the export lost BatchNorm nodes (nothing written)",
    ("demo", EXIT_PARITY): "the model it builds failed its parity proof (nothing written)",
    ("serve", EXIT_BUG): "the server failed to start or stopped on an unexpected error "
    "(its log says why)",
}


def exit_codes_help(command: str) -> str:
    """The footer of ``bnfold COMMAND --help``: only the codes that command can return."""
    parts = []
    for code in COMMAND_EXIT_CODES[command]:
        parts.append(f"{code} {COMMAND_MEANING.get((command, code), EXIT_MEANINGS[code])}")
    return "Exit codes: " + "; ".join(parts) + "."


class BnfoldError(Exception):
    """An expected failure, shown to the user as one line; the class sets the exit code."""

    exit_code: int = EXIT_INPUT


class InputError(BnfoldError, ValueError):
    """A usage or input error: what the user gave does not work (exit 2)."""

    exit_code = EXIT_INPUT


class ParityFailure(BnfoldError):
    """A graph does not compute what it should; nothing was written (exit 3)."""

    exit_code = EXIT_PARITY


# Errors of modules that do not derive from BnfoldError (the repository
# contract, shared with the service), by "module.QualifiedName": matching by
# name imports nothing, and a class that moves only needs its new name here.
FOREIGN: dict[str, int] = {
    "bnfold.contract.ContractError": EXIT_INPUT,
    "bnfold.contract.RepositoryError": EXIT_INPUT,
    "bnfold.converter.repository.RepositoryError": EXIT_INPUT,
}


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure, or None when ``exc`` is a bug."""
    if isinstance(exc, BnfoldError):
        return exc.exit_code
    for cls in type(exc).__mro__:
        code = FOREIGN.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    if isinstance(exc, OSError) and exc.filename is not None:
        return EXIT_INPUT
    return None


def message(exc: BaseException) -> str:
    """The one line shown for an expected failure."""
    if isinstance(exc, OSError) and not isinstance(exc, BnfoldError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
