"""The project's exceptions for user mistakes: main.py prints them as one line, exit 2."""


class UserError(ValueError):
  """A user mistake: bad config value, missing file, unknown name.
  main.py prints it as one line and exits 2."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the run needs is absent; the message names the path. Also a
  FileNotFoundError, so code that catches that keeps working."""
