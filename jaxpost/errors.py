"""The library's own refusals: one family, so the experiment boundary turns each into a one-line message."""


class JaxpostError(ValueError):
  """A value, file or state jaxpost refuses; the message says what is wrong, where, and what to do."""


class CheckpointError(JaxpostError):
  """A checkpoint directory that cannot be resumed as asked (another model, or nothing usable left)."""


# What the experiment and CLI boundary turns into one line: the library's refusals (ValueError family) and the
# file system's (missing file, read-only or full disk, a workdir that is a file).
ANTICIPATED = (ValueError, OSError)


def one_line(error: BaseException) -> str:
  """`error` as the single line the user sees (no traceback), with the way to see the traceback."""
  text = " ".join(str(error).split()) or type(error).__name__
  return f"error: {text} (JAXPOST_TRACEBACK=1 shows where it was raised)"
