"""A settings file's problems as an operator reads them: one line each, no traceback.

Each line is ``path.in.file: message`` (``engines[0].url: ...``); a YAML syntax error is
``FILE:LINE:COLUMN: problem``; a problem of the whole file (a non-loopback ``host`` with
no key, say) is its message alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.settings import Settings, load_settings


class ConfigProblems(Exception):
    """The settings could not be loaded; ``lines`` says why, one problem a line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_checked(config_file: Path | None, **overrides: Any) -> Settings:
    """:func:`~gateway.config.settings.load_settings`, its failures as
    :class:`ConfigProblems`."""
    try:
        if config_file is not None:
            _check_shape(config_file)
        return load_settings(config_file, **overrides)
    except ValidationError as exc:
        raise ConfigProblems(validation_lines(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigProblems([yaml_line(config_file, exc)]) from None
    except FileNotFoundError:
        raise ConfigProblems([f"{config_file}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigProblems([f"{config_file}: cannot be read ({exc})"]) from None


def _check_shape(config_file: Path) -> None:
    """The file is YAML whose top level is a mapping (or empty)."""
    document = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    if document is not None and not isinstance(document, dict):
        raise ConfigProblems([f"{config_file}: the top level must be a mapping of "
                              f"settings (key: value), not a {type(document).__name__}"])


def validation_lines(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        path = location(error["loc"])
        lines.append(f"{path}: {message}" if path else message)
    return lines


def location(loc: tuple[int | str, ...]) -> str:
    """``("engines", 0, "url")`` -> ``engines[0].url``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def yaml_line(config_file: Path | None, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
    context = getattr(exc, "context", None)
    where = f"{config_file}:{mark.line + 1}:{mark.column + 1}" if mark is not None \
        else str(config_file)
    return f"{where}: YAML: {problem}" + (f" ({context})" if context else "")
