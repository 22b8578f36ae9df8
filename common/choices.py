"""The one lookup of a name among its choices, with the one error message for a miss."""
from __future__ import annotations

from typing import Mapping, Sequence, TypeVar

from common.errors import UserError

V = TypeVar("V")


def check_choice(value, choices: Sequence | Mapping, what: str) -> None:
  """Raises UserError("unknown <what> <value>; choices: a, b, c") unless value is one of
  `choices` (a sequence, or a mapping's keys). `what` names the setting, e.g.
  "predictor (config.sampling.predictor)", so the message says what to change."""
  if value not in choices:
    raise UserError(f"unknown {what} {value!r}; choices: {', '.join(map(str, choices))}")


def lookup(table: Mapping[str, V], value, what: str) -> V:
  """table[value] after check_choice: the registry lookup every factory uses."""
  check_choice(value, table, what)
  return table[value]
