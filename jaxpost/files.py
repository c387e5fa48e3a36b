"""Small file helpers with the library's guarantees: writes are atomic, a bad JSON file is named in the error."""

import json
import os

from jaxpost.errors import JaxpostError


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename, so a crash never leaves half a file."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def read_json(path: str):
  """The JSON value in `path`; a file that is not JSON (or not UTF-8) is a JaxpostError naming it and the line."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise JaxpostError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
  except UnicodeDecodeError as error:
    raise JaxpostError(f"{path}: not UTF-8 text (byte {error.start})") from None
