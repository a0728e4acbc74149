"""The catalog: every model this server *can* load, with its load settings and policy knobs.

Sources, in order (a later entry with a name already taken is skipped with a warning):

1. ``--model``: the active model, named after its file stem.
2. ``--catalog FILE.toml``: entries with their settings and knobs (``pinned``, ``keep_alive``, ``priority``)::

       [defaults]
       keep_alive = "10m"
       [models.smol]
       model = "/models/SmolLM2.gguf"      # or: config = "/models/smol.kcpps"
       contextsize = 2048                  # any KoboldCpp model option
       pinned = true

3. every ``.gguf``, ``.kcpps`` and ``.kcppt`` file directly in ``--admindir`` / ``--models-dir``, named
   after its stem. A ``.gguf`` gets the command line's model settings; a ``.kcpps`` its own.

Every entry goes through the same validation as the command line (``warren/validation.py``); an entry
that fails is kept with its error, so it is listed and a load of it says why. ``refresh()`` rescans
directories and re-reads only files whose size or mtime changed; an entry whose file vanished is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.errors import ConfigError, ModelNotFound, WarrenError
from warren.gguf.estimate import MemoryEstimate, estimate_args, estimate_memory
from warren.gguf.reader import GGUFInfo, read_gguf
from warren.kcpps import read_kcpps
from warren.options import BY_KEY, Support, defaults
from warren.settings import ModelSettings
from warren.units import parse_duration
from warren.validation import Environment, ValidationFailed, validate

log = logging.getLogger(__name__)

MODEL_FILE_SUFFIXES = (".gguf", ".kcpps", ".kcppt")
# Keys that belong to the server, not to a model: a catalog entry or .kcpps cannot change them.
SERVER_KEYS = ("port", "host", "password", "adminpassword", "admin", "admindir", "multiuser", "maxrequestsize",
               "defaultgenamt", "genlimit", "quiet", "debugmode", "nomodel", "config", "exportconfig", "analyze",
               "maxconnections", "headertimeout", "bodytimeout", "preloadstory", "chatcompletionsadapter")
POLICY_KEYS = ("pinned", "keep_alive", "priority")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    origin: str  # "--model", "catalog", or the directory it was found in
    source: Path  # the file that defines it (.gguf, .kcpps, or the catalog file)
    settings: ModelSettings | None  # None when the entry is invalid
    estimate: MemoryEstimate | None
    error: str = ""
    fingerprint: tuple[Any, ...] = ()  # changes when the file or the settings change
    pinned: bool = False
    keep_alive: float | None = None  # seconds; None: the server default; < 0: never unload
    priority: int = 0  # among idle instances, lower priority is evicted first

    @property
    def stale(self) -> bool:
        """Whether a file this entry was built from changed since (the fingerprint holds their stats)."""
        return any(isinstance(p, str) and isinstance(k, tuple) and _stat_key(Path(p)) != k
                   for p, k in zip(self.fingerprint, self.fingerprint[1:], strict=False))

    @property
    def valid(self) -> bool:
        return self.settings is not None

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"name": self.name, "origin": self.origin, "source": str(self.source), "valid": self.valid,
                "error": self.error or None, "pinned": self.pinned, "keep_alive": self.keep_alive,
                "priority": self.priority,
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in s.as_wire().items()} if s else None,
                "estimate": self.estimate.as_dict() if self.estimate else None}


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return (-1, -1)


class Catalog:
    def __init__(self, base_opts: dict[str, Any], *, active: ModelSettings | None = None,
                 dirs: tuple[Path, ...] = (), catalog_file: Path | None = None,
                 env: Environment | None = None, embeddings: Path | None = None) -> None:
        """``embeddings``: KoboldCpp's ``--embeddingsmodel``, a catalog entry of its own (named after its file)
        that serves embeddings requests which name no model (``warren/api/embedding.py``)."""
        self.base_opts = base_opts
        self.embeddings = embeddings  # the command line's merged options: model settings for directory .gguf files
        self.active = active
        self.dirs = dirs
        self.catalog_file = catalog_file
        self.env = env or Environment()
        self.entries: dict[str, CatalogEntry] = {}
        self._cache: dict[tuple[Any, ...], CatalogEntry] = {}
        self._infos: dict[str, tuple[tuple[Any, ...], GGUFInfo]] = {}
        self._toml_cache: tuple[tuple[int, int], list[CatalogEntry]] | None = None
        self._installed: dict[str, tuple[str, str]] = {}  # reload_config entries with an override: name -> files
        self.skipped: dict[str, str] = {}  # files of the directories that are not served: path -> why

    # -- building entries -----------------------------------------------------------------------------
    def _server_opts(self) -> dict[str, Any]:
        return {k: self.base_opts[k] for k in SERVER_KEYS if k in self.base_opts}

    def _validated(self, name: str, origin: str, source: Path, opts: dict[str, Any], knobs: dict[str, Any],
                   fingerprint: tuple[Any, ...]) -> CatalogEntry:
        try:
            plan = validate({**opts, "nomodel": False, "admin": False}, env=self.env, check_port=False)
        except ValidationFailed as exc:
            return CatalogEntry(name, origin, source, None, None, "; ".join(f.message for f in exc.errors),
                                fingerprint, **knobs)
        if plan.model is None or plan.gguf is None:
            return CatalogEntry(name, origin, source, None, None, "no model file given", fingerprint, **knobs)
        settings = dataclasses.replace(plan.model, name=name)
        estimate = estimate_memory(plan.gguf, **estimate_args(settings))
        return CatalogEntry(name, origin, source, settings, estimate, "", fingerprint + (settings,), **knobs)

    def _from_gguf(self, path: Path, origin: str, extra: dict[str, Any] | None = None,
                   knobs: dict[str, Any] | None = None, name: str | None = None) -> CatalogEntry:
        opts = {**self.base_opts, **(extra or {}), "model": [str(path)]}
        return self._validated(name or path.stem, origin, path, opts, knobs or {}, (str(path), _stat_key(path)))

    def _from_kcpps(self, path: Path, origin: str, model_override: Path | None = None,
                    knobs: dict[str, Any] | None = None, name: str | None = None) -> CatalogEntry:
        fingerprint: tuple[Any, ...] = (str(path), _stat_key(path), str(model_override or ""))
        try:
            loaded = read_kcpps(path)
        except ConfigError as exc:
            return CatalogEntry(name or path.stem, origin, path, None, None, exc.message, fingerprint, **(knobs or {}))
        values = dict(loaded.values)
        if model_override is not None:
            values["model"] = [str(model_override)]
        model = (values.get("model") or [None])[0]
        if model and not Path(model).is_absolute() and not Path(model).exists():
            values["model"] = [str(path.parent / model)]  # relative to the config file, as users expect
        opts = {**defaults(), **values, **self._server_opts()}
        model_path = Path((opts.get("model") or [""])[0] or ".")
        return self._validated(name or path.stem, origin, path, opts, knobs or {},
                               fingerprint + (str(model_path), _stat_key(model_path)))

    def _from_file(self, path: Path, origin: str) -> CatalogEntry:
        key = (str(path), _stat_key(path), "file")
        cached = self._cache.get(key)
        if cached is not None and not cached.stale:  # stale: the model file a .kcpps names has changed
            return cached
        if path.suffix.lower() == ".gguf":
            entry = self._from_gguf(path, origin)
        else:
            entry = self._from_kcpps(path, origin)
        self._cache[key] = entry
        return entry

    def _catalog_file_entries(self) -> list[CatalogEntry]:
        """The TOML file's entries, parsed and validated again only when it or one of its files changed
        (refresh runs every few seconds; validating reads each model's GGUF header)."""
        assert self.catalog_file is not None
        key = _stat_key(self.catalog_file)
        cached = self._toml_cache
        if cached is not None and cached[0] == key and not any(e.stale for e in cached[1]):
            return cached[1]
        entries = self._from_catalog_file()
        self._toml_cache = (key, entries)
        return entries

    def _from_catalog_file(self) -> list[CatalogEntry]:
        assert self.catalog_file is not None
        path = self.catalog_file
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read catalog file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog file {path} is not valid TOML: {exc}") from None
        unknown = set(data) - {"defaults", "models"}
        if unknown:
            raise ConfigError(f"catalog file {path}: unknown section(s) {', '.join(sorted(unknown))}",
                              hint="a catalog file has [defaults] and [models.NAME] tables")
        base_knobs = self._knobs(data.get("defaults", {}), f"{path} [defaults]", allow_settings=False)
        entries = []
        for name, table in (data.get("models") or {}).items():
            if not isinstance(table, dict):
                raise ConfigError(f"catalog file {path}: models.{name} is not a table")
            table = dict(table)
            knobs = {**base_knobs, **self._knobs(table, f"{path} [models.{name}]")}
            for k in POLICY_KEYS:
                table.pop(k, None)
            config = table.pop("config", None)
            model = table.pop("model", None)
            self._check_option_keys(table, f"{path} [models.{name}]")
            if config:
                entries.append(self._from_kcpps(Path(config), "catalog", Path(model) if model else None, knobs, name))
            elif model:
                entries.append(self._from_gguf(Path(model), "catalog", table, knobs, name))
            else:
                raise ConfigError(f"catalog file {path}: models.{name} needs 'model' (a .gguf) or 'config' (a .kcpps)")
        return entries

    @staticmethod
    def _knobs(table: dict[str, Any], where: str, allow_settings: bool = True) -> dict[str, Any]:
        knobs: dict[str, Any] = {}
        if not allow_settings and set(table) - set(POLICY_KEYS):
            raise ConfigError(f"{where}: only {', '.join(POLICY_KEYS)} may be set here")
        if "pinned" in table:
            if not isinstance(table["pinned"], bool):
                raise ConfigError(f"{where}: pinned must be true or false")
            knobs["pinned"] = table["pinned"]
        if "keep_alive" in table:
            knobs["keep_alive"] = parse_duration(table["keep_alive"], f"{where}: keep_alive")
        if "priority" in table:
            if isinstance(table["priority"], bool) or not isinstance(table["priority"], int):
                raise ConfigError(f"{where}: priority must be a whole number")
            knobs["priority"] = table["priority"]
        return knobs

    @staticmethod
    def _check_option_keys(table: dict[str, Any], where: str) -> None:
        for key in table:
            option = BY_KEY.get(key)
            if option is None or option.support is Support.REFUSED or key in SERVER_KEYS:
                raise ConfigError(f"{where}: {key!r} is not a model option warren takes",
                                  hint="use KoboldCpp model option names (contextsize, threads, gpulayers …)")

    # -- the catalog ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the entries from their sources; unchanged files are not read again."""
        entries: dict[str, CatalogEntry] = {}

        def add(entry: CatalogEntry) -> None:
            if entry.name in entries:
                if entries[entry.name].source != entry.source:
                    log.warning("catalog name taken; skipped name=%s source=%s", entry.name, entry.source)
                return
            entries[entry.name] = entry

        if self.active is not None:
            previous = self.entries.get(self.active.name)
            keep = previous is not None and previous.origin == "--model" and not previous.stale
            add(previous if keep and previous is not None else self._active_entry())
        used: dict[tuple[Any, ...], CatalogEntry] = {}
        if self.embeddings is not None:
            add(self._from_file(self.embeddings, "--embeddingsmodel"))
            key = (str(self.embeddings), _stat_key(self.embeddings), "file")
            used[key] = self._cache[key]
        if self.catalog_file is not None:
            for entry in self._catalog_file_entries():
                add(entry)
        for folder in self.dirs:
            try:
                names = sorted(os.listdir(folder))
            except OSError as exc:
                log.warning("cannot list model directory dir=%s error=%s", folder, exc)
                continue
            for filename in names:
                path = self.inside(folder, filename)
                if path is None:
                    self._skip(folder / filename, self._why_not(folder, filename))
                    continue
                key = (str(path), _stat_key(path), "file")
                add(self._from_file(path, str(folder)))
                if key in self._cache:
                    used[key] = self._cache[key]
        for name, (filename, override) in list(self._installed.items()):
            try:
                add(self._admin_entry(filename, override))
            except WarrenError as exc:  # its files went away or broke: it is gone from the catalog
                log.warning("admin entry dropped name=%s error=%s", name, exc.message)
                del self._installed[name]
        self._cache = used  # forget versions of files that changed or went away
        self.entries = entries

    def _active_entry(self) -> CatalogEntry:
        assert self.active is not None
        s = self.active
        fingerprint = (str(s.path), _stat_key(s.path), s)
        try:
            estimate = estimate_memory(read_gguf(s.path), **estimate_args(s))
        except ConfigError as exc:  # the file changed under a running server
            return CatalogEntry(s.name, "--model", s.path, None, None, exc.message, fingerprint)
        return CatalogEntry(s.name, "--model", s.path, s, estimate, "", fingerprint)

    @property
    def embeddings_name(self) -> str | None:
        """The ``--embeddingsmodel``'s entry name (the active model's, when it is the same file)."""
        return self.embeddings.stem if self.embeddings is not None else None

    def gguf_info(self, entry: CatalogEntry) -> GGUFInfo:
        """The entry's GGUF header (for listings such as Ollama's), read once per version of the file."""
        assert entry.settings is not None
        cached = self._infos.get(entry.name)
        if cached is not None and cached[0] == entry.fingerprint:
            return cached[1]
        info = read_gguf(entry.settings.path)
        self._infos[entry.name] = (entry.fingerprint, info)
        return info

    def get(self, name: str) -> CatalogEntry:
        entry = self.entries.get(name)
        if entry is None or entry.stale:
            self.refresh()  # a file may have appeared or changed since the last scan
            entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(self.entries) or "none"
            raise ModelNotFound(f"model {name!r} not found; available: {known}", model=name)
        return entry

    def redact(self, text: str) -> str:
        """``text`` with the folders of every model and config file the catalog knows cut off, leaving file
        names: messages for clients say which file, not where the operator keeps it."""
        folders = {str(d) for d in self.dirs}
        if self.catalog_file is not None:
            folders.add(str(self.catalog_file.parent))
        for entry in self.entries.values():
            folders.add(str(entry.source.parent))
            if entry.settings is not None:
                folders.add(str(entry.settings.path.parent))
        if self.active is not None:
            folders.add(str(self.active.path.parent))
        for folder in sorted(folders, key=len, reverse=True):
            if folder not in ("", ".", "/"):
                text = text.replace(folder.rstrip("/") + "/", "")
        return text

    def for_admin_file(self, filename: str, override: str | None = None) -> CatalogEntry:
        """KoboldCpp ``reload_config``: a file directly inside a catalog directory (no paths, no links out),
        optionally with a ``.kcpps`` there whose settings override its own. The entry is checked before
        anything changes: an invalid one is a ``ConfigError`` and leaves the catalog as it was. A model with
        an override is its own entry, ``MODEL~CONFIG``, kept across rescans, so the model as the directory
        has it (maybe loaded and serving) is never replaced under its name."""
        entry = self._admin_entry(filename, override)
        if not entry.valid:
            raise ConfigError(f"{filename}{' with ' + override if override else ''} cannot be loaded: "
                              f"{entry.error}", hint="fix the file; the active model is unchanged")
        if override:
            self._installed[entry.name] = (filename, override)
        self.entries[entry.name] = entry
        return entry

    def _admin_entry(self, filename: str, override: str | None) -> CatalogEntry:
        for folder in self.dirs:
            path = self.inside(folder, filename)
            if path is None:
                continue
            if not override:
                return self._from_file(path, str(folder))
            override_path = self.inside(folder, override)
            if override_path is None or path.suffix.lower() != ".gguf":
                raise ConfigError(f"overrideconfig {override!r} is not a .kcpps in the admin directory, or the "
                                  "target is not a .gguf")
            name = f"{path.stem}~{override_path.stem}"
            previous = self.entries.get(name)
            if previous is not None and not previous.stale:
                return previous
            return self._from_kcpps(override_path, str(folder), model_override=path, name=name)
        raise ModelNotFound(f"{filename!r} is not a model file in the admin directory", model=filename)

    @staticmethod
    def inside(folder: Path, filename: str) -> Path | None:
        """``folder/filename`` if ``filename`` is a model file's name directly in ``folder`` (no path, no
        ``..``) and it is, or links to, a readable file. The restriction is on the names a client may ask
        for: a link the operator put in the directory is followed wherever it points (Hugging Face's cache is
        a tree of links), since only the operator can create one there."""
        if not filename or "/" in filename or "\\" in filename or "\0" in filename or filename in (".", ".."):
            return None
        if not filename.lower().endswith(MODEL_FILE_SUFFIXES):
            return None
        path = folder / filename
        try:
            if not path.resolve(strict=True).is_file():
                return None
        except (OSError, RuntimeError):  # a dangling or looping link
            return None
        return path

    @staticmethod
    def _why_not(folder: Path, filename: str) -> str:
        path = folder / filename
        if not filename.lower().endswith(MODEL_FILE_SUFFIXES):
            return "not a .gguf, .kcpps or .kcppt file"
        if path.is_symlink() and not path.exists():
            return f"a link to {os.readlink(path)}, which does not exist"
        return "not a regular file" if path.exists() else "gone while listing"

    def _skip(self, path: Path, reason: str) -> None:
        """Name each file of a models directory that is not served, once, with the reason."""
        if self.skipped.get(str(path)) != reason:
            self.skipped[str(path)] = reason
            log.warning("models directory file skipped file=%s reason=%s", path, reason)
