"""The one exception family for bad user input.

Everything a user can fix (a malformed cohort, study spec or config) raises a subclass of
``InputError`` with a message naming the file, key or slide; the CLI turns it into exit code 2
without a traceback, while genuine bugs still surface with theirs.
"""

from pydantic import ValidationError


class InputError(ValueError):
    """Bad user input; the message says where and what."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem of a pydantic error, each naming its dotted key path."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors())
