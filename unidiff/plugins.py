"""Plugin discovery and the registries that plugins fill.

`get_plugin_manager()` builds a fresh pluggy manager every time it is called (no global state for tests to patch):
it adds the hookspecs and the core's own hook implementations, blocks the plugins named in
``UNIDIFF_DISABLE_PLUGINS`` (comma separated), and loads the ``unidiff`` entry-point group one plugin at a time, so
a plugin that fails to import is reported by name while the others still load. `Registry` then calls every
plugin's ``register_*`` hooks with a callback and keeps what they register, sorted by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from unidiff import hookspecs
from unidiff.errors import UnidiffError, UnknownNameError

GROUP = "unidiff"
DISABLE_ENV = "UNIDIFF_DISABLE_PLUGINS"
# Core modules that implement hooks themselves, registered like plugins but not through entry points.
CORE_PLUGINS = ("unidiff.policies",)


@dataclass
class PluginInfo:
    name: str  # entry-point name (what UNIDIFF_DISABLE_PLUGINS takes)
    package: str  # distribution that provides it
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)  # kind -> registered names


def disabled_plugins() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the core hooks and every enabled, importable ``unidiff`` entry-point plugin."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.unidiff_info = {}  # plugin name -> PluginInfo
    pm.unidiff_broken = {}  # plugin name -> error text
    for name in disabled_plugins():
        pm.set_blocked(name)
    for modname in CORE_PLUGINS:
        if not pm.is_blocked(modname):
            pm.register(importlib.import_module(modname), name=modname)
            pm.unidiff_info[modname] = PluginInfo(modname, "unidiff", _version("unidiff"), modname)
    seen = set()
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in seen or pm.is_blocked(ep.name):
            continue  # the same distribution may be visible twice on sys.path
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as e:  # a broken plugin must not take the others down
            pm.unidiff_broken[ep.name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"unidiff plugin {ep.name!r} ({ep.value}) failed to import and was skipped: "
                          f"{type(e).__name__}: {e}", stacklevel=2)
            continue
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        pm.unidiff_info[ep.name] = PluginInfo(ep.name, dist.name if dist else "?",
                                              dist.version if dist else "?", ep.value)
    return pm


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


class Registry:
    """Everything the installed plugins register, looked up by name.

    Args:
        pm: a plugin manager; a fresh one from `get_plugin_manager()` when omitted.
    """

    KINDS = ("modalities", "datasets", "models", "policies")
    SINGULAR = {"modalities": "modality", "datasets": "dataset", "models": "model", "policies": "policy"}

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm or get_plugin_manager()
        # Copies: several registries may be built on one manager, each filling ``provides`` afresh.
        self.info: dict[str, PluginInfo] = {k: dataclasses.replace(v, provides={})
                                            for k, v in self.pm.unidiff_info.items()}
        self.broken: dict[str, str] = dict(self.pm.unidiff_broken)
        self.owner: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
        self.entries: dict[str, dict[str, Any]] = {k: {} for k in self.KINDS}
        for kind in self.KINDS:
            caller = getattr(self.pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():
                try:
                    impl.function(register=self._registrar(kind, impl.plugin_name))
                except UnidiffError:
                    raise
                except Exception as e:
                    self.broken[impl.plugin_name] = f"register_{kind} failed: {type(e).__name__}: {e}"
                    warnings.warn(f"unidiff plugin {impl.plugin_name!r}: register_{kind} failed: {e}", stacklevel=2)
        for kind in self.KINDS:
            self.entries[kind] = dict(sorted(self.entries[kind].items()))

    def _registrar(self, kind: str, plugin: str) -> Callable:
        def register(name: str, obj: Any, **meta: Any) -> None:
            key = (kind, name)
            if key in self.owner:
                raise UnidiffError(f"{self.SINGULAR[kind]} {name!r} is registered by two plugins, "
                                   f"{self.owner[key]!r} and {plugin!r}: disable one with {DISABLE_ENV}={plugin}")
            self.owner[key] = plugin
            self.entries[kind][name] = (obj, meta)
            info = self.info.get(plugin)
            if info is not None:
                info.provides.setdefault(kind, []).append(name)
        return register

    def _get(self, kind: str, name: str) -> tuple[Any, dict]:
        try:
            return self.entries[kind][name]
        except KeyError:
            hint = f"Install the plugin that provides it, or check {DISABLE_ENV}"
            if self.broken:
                hint += "; these plugins failed to load: " + "; ".join(f"{k} ({v})" for k, v in self.broken.items())
            raise UnknownNameError(self.SINGULAR[kind], name, list(self.entries[kind]), hint) from None

    def names(self, kind: str) -> list[str]:
        return list(self.entries[kind])

    def modality(self, name: str, **options: Any):
        factory, _ = self._get("modalities", name)
        return factory(**options)

    def dataset(self, name: str) -> tuple[Callable, dict]:
        """The builder of a dataset and its metadata (``modality=...``)."""
        return self._get("datasets", name)

    def model_path(self, name: str) -> Path:
        path, _ = self._get("models", name)
        return Path(path)

    def policy(self, name: str, **options: Any):
        """A new policy: the registered factory called with ``options`` (e.g. threshold=0.9)."""
        factory, _ = self._get("policies", name)
        try:
            return factory(**options)
        except TypeError as e:
            raise UnidiffError(f"policy {name!r} does not take the options {sorted(options)}: {e}") from None

    def plugin_of(self, kind: str, name: str) -> PluginInfo | None:
        plugin = self.owner.get((kind, name))
        return self.info.get(plugin) if plugin else None
