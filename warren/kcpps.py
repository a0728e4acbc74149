"""KoboldCpp ``.kcpps`` config files: read them as KoboldCpp writes them, write them back the same way.

A ``.kcpps`` file is ``json.dumps(args.__dict__)``: one JSON object with every argparse destination
(~100 keys), written by KoboldCpp's GUI or ``--exportconfig``. Older files use legacy keys
(``usecublas``, ``blasbatchsize``), translated here exactly as KoboldCpp's ``convert_invalid_args``
does. Values are coerced to each option's kind with a clear error naming the key; keys warren does
not implement are collected (only when set to something other than their default, since every file
carries all of them) so the caller can list them in one warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.errors import ConfigError
from warren.options import BOOKKEEPING_KEYS, BY_KEY, LEGACY_KEYS, OPTIONS, Kind, Option, Support

MAX_CONFIG_BYTES = 50 * 1024 * 1024  # KoboldCpp's GUI loader refuses larger files too


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    values: dict[str, Any]  # supported and accepted keys, coerced
    ignored: tuple[str, ...]  # refused or unknown keys that were set to a non-default value


def _type_error(path: Path, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: key {key!r} is {json.dumps(value)[:60]}, expected {expected}",
                       hint="fix the value in the file, or override it on the command line")


def coerce(option: Option, value: Any, path: Path) -> Any:
    """Coerce one JSON value to the option's kind; ``None`` stays ``None`` for optional options."""
    kind, key = option.kind, option.key
    if value is None:
        if kind is Kind.FLAG:
            return False
        if option.default is None or kind in (Kind.STRS, Kind.FLOATS, Kind.STR):
            return option.default if option.default is not None else None
        return option.default
    if kind is Kind.FLAG:
        if isinstance(value, bool):
            return value
        raise _type_error(path, key, value, "true or false")
    if kind in (Kind.INT, Kind.OPT_INT):
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not value.is_integer()):
            raise _type_error(path, key, value, "a whole number")
        return int(value)
    if kind is Kind.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _type_error(path, key, value, "a number")
        return float(value)
    if kind is Kind.STR:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]  # argparse nargs=1 options (config) are saved as one-item lists
        if not isinstance(value, str):
            raise _type_error(path, key, value, "a string")
        return value
    if kind is Kind.FLOATS:
        if not isinstance(value, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise _type_error(path, key, value, "a list of numbers")
        return [float(v) for v in value]
    # Kind.STRS
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise _type_error(path, key, value, "a list of strings")
    return [str(v) for v in value]


def _is_default(option: Option, value: Any) -> bool:
    return value in (None, False, "", [], 0) or value == option.default


def read_kcpps(path: str | Path) -> LoadedConfig:
    """Load a ``.kcpps``/``.kcppt`` file. Raises ``ConfigError`` for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}", hint="give the path of a .kcpps file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {size // 2**20} MB; a .kcpps file is a few KB",
                              hint="is this really a .kcpps file?")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}", hint="a .kcpps file is the JSON KoboldCpp saves") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text", hint="a .kcpps file is JSON text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} holds a JSON {type(raw).__name__}, not an object",
                          hint="a .kcpps file is one JSON object of KoboldCpp settings")
    return parse_kcpps(raw, path)


def parse_kcpps(raw: dict[str, Any], path: Path) -> LoadedConfig:
    raw = dict(raw)
    for legacy, current in LEGACY_KEYS.items():  # convert_invalid_args
        if legacy in raw and current not in raw:
            raw[current] = raw[legacy]
        raw.pop(legacy, None)
    model = raw.pop("model_param", None)
    if model and not raw.get("model"):
        raw["model"] = model
    raw["onready"] = ""  # as KoboldCpp: a config file never runs shell commands

    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        option = BY_KEY.get(key)
        if option is None:
            if key not in BOOKKEEPING_KEYS and value not in (None, False, "", [], 0):
                ignored.append(key)
            continue
        if option.support is Support.REFUSED:
            if not _is_default(option, value):
                ignored.append(key)
            continue
        if key in ("config", "exportconfig", "analyze"):
            continue  # a config file cannot chain to another one or switch modes
        values[key] = coerce(option, value, path)
    if isinstance(values.get("model"), list) and len(values["model"]) > 1:
        raise ConfigError(f"{path}: 'model' lists {len(values['model'])} files; warren loads one GGUF per entry",
                          hint="split multi-part downloads with llama.cpp's gguf-split --merge")
    if values.get("model") is not None and not isinstance(values["model"], list):
        values["model"] = [values["model"]]
    return LoadedConfig(values, tuple(sorted(ignored)))


def export_kcpps(opts: dict[str, Any], path: str | Path) -> Path:
    """Write ``opts`` (every KoboldCpp key) as a ``.kcpps`` file KoboldCpp itself can load."""
    path = Path(path)
    if path.suffix.lower() not in (".kcpps", ".kcppt"):
        path = path.with_name(path.name + ".kcpps")
    data = {o.key: opts.get(o.key, o.default) for o in OPTIONS}
    model = data.get("model") or []
    data["model_param"] = model[0] if model else None
    data["port_param"] = data["port"]
    data["config"] = None
    data["exportconfig"] = ""
    data["analyze"] = ""
    data["istemplate"] = False
    try:
        path.write_text(json.dumps(data), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", hint="check the directory exists and is writable") from None
    return path
