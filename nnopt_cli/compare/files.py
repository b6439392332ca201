"""Reading the files of a run folder for compare: tolerant (a missing or broken file is a short
reason, never an exception) and bounded (untrusted.py: regular files only, size caps, no alias
bombs), since a run folder may come from anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nnopt_cli.store import untrusted
from nnopt_cli.store.untrusted import CONFIG_MAX_BYTES, METRICS_MAX_BYTES, SUMMARY_MAX_BYTES

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser is ~10x faster per run


def read_text(path: Path, cap: int = SUMMARY_MAX_BYTES) -> tuple[str | None, str | None]:
    """(text, None), or (None, why not): 'missing' or a short reason. Regular files of at most
    `cap` bytes only (a FIFO or a link to /dev/zero is refused, not read); bytes that are not
    UTF-8 become U+FFFD."""
    try:
        return untrusted.read_text(path, cap), None
    except FileNotFoundError:
        return None, "missing"
    except untrusted.UntrustedFileError as e:
        return None, str(e).removeprefix(f"{path} ")
    except OSError as e:
        return None, f"cannot read it ({e.strerror})"


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """(object, None), or (None, why not): 'missing' or a short reason."""
    text, why = read_text(path)
    if text is None:
        return None, why
    return untrusted.json_object(text)


def read_jsonl(path: Path) -> tuple[list[dict], str | None]:
    """The rows before the first unreadable line, and a note when there was one."""
    text, why = read_text(path, METRICS_MAX_BYTES)
    if text is None:
        return [], None if why == "missing" else f"metrics.jsonl: {why}"
    rows: list[dict] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_int=untrusted.parse_int)
            if not isinstance(row, dict):
                raise ValueError
        except (ValueError, RecursionError):
            where = "last line is torn" if i == len(lines) - 1 else f"line {i + 1} is not JSON"
            return rows, f"metrics.jsonl: {where}, kept the {len(rows)} row(s) before it"
        rows.append(row)
    return rows, None


def read_yaml(path: Path) -> tuple[Any, str | None]:
    text, why = read_text(path, CONFIG_MAX_BYTES)
    if text is None:
        return None, why
    try:
        return untrusted.load_yaml(text, str(path), Loader), None
    except yaml.YAMLError as e:
        return None, f"not valid YAML ({str(e).splitlines()[0]})"
    except untrusted.UntrustedFileError as e:
        return None, str(e).removeprefix(f"{path}: ")
    except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits, nesting too deep
        return None, f"not readable YAML ({type(e).__name__}: {str(e)[:80]})"


CHOICES_MARK = "\n    choices:\n"  # hydra.runtime.choices, as Hydra indents hydra.yaml


def hydra_choices(path: Path) -> dict[str, str]:
    """hydra.runtime.choices from .hydra/hydra.yaml, without the hydra/* ones; {} if unreadable.

    Only the choices block is parsed when it can be found: building the whole 4 kB document is
    what dominated reading a run."""
    text, _ = read_text(path, CONFIG_MAX_BYTES)
    if text is None:
        return {}
    choices: Any = None
    at = text.find(CHOICES_MARK)
    if at >= 0 and text.startswith("hydra:\n"):
        block = []
        for line in text[at + len(CHOICES_MARK):].splitlines():
            if not line.startswith("      "):
                break
            block.append(line[6:])
        try:
            choices = untrusted.load_yaml("\n".join(block), str(path), Loader) if block else {}
        except (yaml.YAMLError, untrusted.UntrustedFileError):
            choices = None
    if not isinstance(choices, dict):
        try:
            choices = untrusted.load_yaml(text, str(path), Loader)["hydra"]["runtime"]["choices"]
        except (yaml.YAMLError, untrusted.UntrustedFileError, KeyError, TypeError):
            return {}
    if not isinstance(choices, dict):
        return {}
    return {str(k): v for k, v in choices.items() if not str(k).startswith("hydra/") and v is not None}
