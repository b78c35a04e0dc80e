"""One lookup for every registry (models, bound methods, losses, pruners, ...).

Every registry is a plain dict from name to entry; `lookup` gives all of them
the same error ("unknown pruner 'x'; valid: a, b, c"), so a user who mistypes
any name sees the valid ones in the same words.
"""
from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
  """A name that is not in its registry. A ValueError (bad input) and a KeyError (lookup)."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0])


def unknown(kind: str, name, registry: Mapping) -> str:
  """The message for an unknown `name` of `kind`."""
  return f"unknown {kind} {name!r}; valid: {', '.join(sorted(map(str, registry)))}"


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
  """`registry[name]`, or UnknownNameError naming `kind` and the valid names."""
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise UnknownNameError(unknown(kind, name, registry)) from None
