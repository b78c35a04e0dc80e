"""Errors that mean "the user asked for something wrong": the CLI prints them as one line and exits 2."""


class ConfigError(ValueError):
  """A bad configuration value; the message names every problem found."""


class RunError(ValueError):
  """A run directory that cannot be used as asked (wrong config, not a run, not writable)."""
