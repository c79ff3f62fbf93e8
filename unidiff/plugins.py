"""Plugin discovery and the registries that plugins fill.

`get_plugin_manager()` builds a fresh pluggy manager every time it is called (no global state for tests to patch):
it adds the hookspecs and the core's own hook implementations, blocks the plugins named in
``UNIDIFF_DISABLE_PLUGINS`` (comma separated), and loads the ``unidiff`` entry-point group one plugin at a time, so
a plugin that fails to import is reported by name while the others still load. `Registry` then calls every
plugin's ``register_*`` hooks with a callback and keeps what they register, sorted by name.

Plugins are isolated from each other: a plugin that fails to import (anything it raises, ``sys.exit`` included),
whose hooks have the wrong signature, whose hook raises, or that registers a wrong value or a name another plugin
already holds, is recorded in `Registry.broken` with its package and the reason, and everything else keeps working.
A hook that raises registers nothing; a refused registration drops only that one entry. Built-in plugins register
first, so a third-party plugin that reuses a built-in's name is the one that loses.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from unidiff import hookspecs
from unidiff.errors import PluginError, UnidiffError, UnknownNameError
from unidiff.modality import short_repr, vocab_size_problem

GROUP = "unidiff"
DISABLE_ENV = "UNIDIFF_DISABLE_PLUGINS"
# Core modules that implement hooks themselves, registered like plugins but not through entry points.
# The core's own hook modules, registered first under these plugin names (what `unidiff plugins` lists and
# UNIDIFF_DISABLE_PLUGINS takes; the policies' and architectures' names are older than their modules' places).
CORE_PLUGINS = {"unidiff.policies": "unidiff.sampling.policies", "unidiff.process.schedules": "unidiff.process.schedules",
                "unidiff.process.absorbing": "unidiff.process.absorbing",
                "unidiff.architectures": "unidiff.models.architectures"}
BUILTIN_PACKAGE = "unidiff"  # the distribution of the core and the built-in plugins, which register first
# The core's own commands: a plugin's command may not take these names (nor be a group of that name).
CORE_COMMANDS = frozenset({"train", "generate", "infill", "edit", "caption", "inpaint", "eval", "plugins"})
COMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*\Z")
COMMAND_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


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
    for modname, module in CORE_PLUGINS.items():
        if not pm.is_blocked(modname):
            pm.register(importlib.import_module(module), name=modname)
            pm.unidiff_info[modname] = PluginInfo(modname, BUILTIN_PACKAGE, _version(BUILTIN_PACKAGE), modname)
    seen = set()
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in seen or pm.is_blocked(ep.name):
            continue  # the same distribution may be visible twice on sys.path
        seen.add(ep.name)
        dist = ep.dist
        info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?", ep.value)
        who, package = f"plugin {ep.name!r}", f"{info.package} {info.version}"  # the reason names the package
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as e:  # a broken plugin, even one that exits, must not take the others down
            _mark_broken(pm.unidiff_broken, ep.name, who, f"{package} failed to import", e)
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as e:  # a hook of the wrong signature (PluginValidationError), one module under two names
            if pm.get_plugin(ep.name) is plugin:
                pm.unregister(name=ep.name)  # pluggy may have added some of its hooks before refusing one
            _mark_broken(pm.unidiff_broken, ep.name, who, f"{package} could not be registered", e)
            continue
        pm.unidiff_info[ep.name] = info
    return pm


def describe(info: PluginInfo | None, name: str = "?") -> str:
    """How messages name a plugin: ``plugin 'quad' (quadplug 0.1.0)``, or only its name if its package is unknown."""
    if info is None:
        return f"plugin {name!r}"
    return f"plugin {info.name!r} ({info.package} {info.version})"


def _mark_broken(broken: dict[str, str], name: str, who: str, what: str, error: BaseException | str,
                 fix: str | None = None) -> None:
    """Record (and warn) why a plugin is broken, on one line; a second reason is appended to the first. The warning
    adds ``fix`` (default: fix, reinstall or disable the plugin)."""
    why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    reason = " ".join(f"{what}: {why}".split())  # pluggy's messages span lines; a report is one line per plugin
    broken[name] = f"{broken[name]}; {reason}" if name in broken else reason
    fix = f"fix or reinstall it, or disable it with {DISABLE_ENV}={name}" if fix is None else fix
    warnings.warn(f"unidiff {who}: {reason}; the other plugins still work" + (f": {fix}" if fix else ""),
                  stacklevel=3)


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

    KINDS = ("modalities", "datasets", "models", "policies", "schedules", "processes", "architectures", "commands")
    SINGULAR = {"modalities": "modality", "datasets": "dataset", "models": "model", "policies": "policy",
                "schedules": "schedule", "processes": "process", "architectures": "architecture",
                "commands": "command"}

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
            for impl in sorted(caller.get_hookimpls(), key=lambda i: not self.builtin(i.plugin_name)):
                staged: list[tuple[str, Any, dict]] = []
                args = {"register": self._registrar(kind, impl.plugin_name, staged)} if "register" in impl.argnames \
                    else {}
                try:
                    impl.function(**args)
                except (Exception, SystemExit) as e:  # what it registered before failing is dropped with it
                    self._broken(impl.plugin_name, f"register_{kind} failed", e)
                    continue
                for name, obj, meta in staged:
                    self._add(kind, impl.plugin_name, name, obj, meta)
        for kind in self.KINDS:
            self.entries[kind] = dict(sorted(self.entries[kind].items()))

    def builtin(self, plugin: str) -> bool:
        """Whether ``plugin`` ships with unidiff (the core's hooks and the built-in modalities)."""
        info = self.info.get(plugin)
        return info is not None and info.package == BUILTIN_PACKAGE

    def describe(self, plugin: str) -> str:
        return describe(self.info.get(plugin), plugin)

    def _broken(self, plugin: str, what: str, error: BaseException | str, fix: str | None = None) -> None:
        _mark_broken(self.broken, plugin, self.describe(plugin), what, error, fix)

    def _registrar(self, kind: str, plugin: str, staged: list) -> Callable:
        def register(name: str, obj: Any, **meta: Any) -> None:
            problem = self._problem(kind, name, obj, meta)
            if problem:
                self._broken(plugin, f"register_{kind} refused {self.SINGULAR[kind]} {short_repr(name)}", problem)
            else:
                staged.append((name, obj, meta))
        return register

    def _problem(self, kind: str, name: Any, obj: Any, meta: dict) -> str | None:
        """Why a registration is refused (a wrong type or value), or None if it is accepted."""
        if not isinstance(name, str) or not name.strip():
            return f"the name must be a non-empty str; got {short_repr(name)}: call register(name, ...) with a name"
        if kind == "models":
            if not isinstance(obj, (str, os.PathLike)) or not str(obj):
                return f"a model is registered as the path of its folder; got {type(obj).__name__} {short_repr(obj)}"
            return None
        if kind == "commands":
            return self._command_problem(name, obj, meta)
        if not callable(obj):
            what = {"modalities": "a factory that returns a Modality (e.g. its class)",
                    "datasets": "a builder, builder(split) -> contents",
                    "policies": "a factory that returns a Policy (e.g. its class)",
                    "schedules": "a factory that returns a Schedule (e.g. its class)",
                    "processes": "a factory that returns a Process (e.g. its class)",
                    "architectures": "a builder, build(cfg, layout, heads, grids) -> the denoiser"}[kind]
            return f"expected {what}; got {type(obj).__name__} {short_repr(obj)}"
        if kind == "datasets" and (not isinstance(meta.get("modality"), str) or not meta["modality"]):
            return f"a dataset is registered with the modality of its contents, register(name, builder, " \
                   f"modality='text'); got modality={short_repr(meta.get('modality'))}"
        if kind == "architectures":
            from unidiff.models.architectures import config_problem

            return config_problem(meta.get("config"))
        if kind == "modalities":
            size = getattr(obj, "vocab_size", None)  # declared on the class; an instance's is checked when built
            if size is not None and not hasattr(size, "__get__") and (problem := vocab_size_problem(size)):
                return problem
        return None

    @staticmethod
    def _command_problem(name: str, target: Any, meta: dict) -> str | None:
        words = name.split()
        if not 1 <= len(words) <= 2 or " ".join(words) != name or not all(COMMAND_WORD.match(w) for w in words):
            return (f"a command is named by one or two lowercase words (e.g. 'text frontier'); got {short_repr(name)}")
        if words[0] in CORE_COMMANDS:
            return f"{words[0]!r} is one of unidiff's own commands: name the command e.g. '<plugin> {words[-1]}'"
        if not callable(target) and not (isinstance(target, str) and COMMAND_TARGET.match(target)):
            return (f"a command is registered as 'module:function' (imported when it runs) or a callable; got "
                    f"{type(target).__name__} {short_repr(target)}")
        if not isinstance(meta.get("help", ""), str) or set(meta) - {"help"}:
            return f"a command takes only help='one line'; got {short_repr(meta)}"
        return None

    def _add(self, kind: str, plugin: str, name: str, obj: Any, meta: dict) -> None:
        if kind == "commands":  # "text" and "text frontier" cannot both be commands: one would hide the other
            clash = next((n for n in self.entries[kind] if n != name and n.split()[0] == name.split()[0]
                          and 1 in (len(n.split()), len(name.split()))), None)
            if clash is not None:
                self._broken(plugin, f"command {name!r} ignored", f"it clashes with the command {clash!r} of "
                             f"{self.describe(self.owner[(kind, clash)])}: rename it in {plugin!r}", fix="")
                return
        first = self.owner.get((kind, name))
        if first is not None:  # the later plugin loses: built-ins register first, so a newcomer never wins
            fix = f"rename it in {plugin!r}" if self.builtin(plugin) else \
                f"rename it in {plugin!r} or disable that plugin with {DISABLE_ENV}={plugin}"
            self._broken(plugin, f"{self.SINGULAR[kind]} {name!r} ignored",
                         f"it is already registered by {self.describe(first)}: {fix}", fix="")
            return
        self.owner[(kind, name)] = plugin
        self.entries[kind][name] = (obj, meta)
        info = self.info.get(plugin)
        if info is not None:
            info.provides.setdefault(kind, []).append(name)

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
        """A new modality: the registered factory called with ``options``; what it builds is checked to be one."""
        factory, _ = self._get("modalities", name)
        modality = factory(**options)
        missing = [a for a in ("encode", "decode") if not callable(getattr(modality, a, None))]
        problem = f"it has no {' or '.join(missing)} method" if missing else \
            vocab_size_problem(getattr(modality, "vocab_size", None))
        if problem:
            raise PluginError(f"{self.describe(self.owner[('modalities', name)])} built modality {name!r} as "
                              f"{type(modality).__name__} {short_repr(modality)}, which is not a usable modality: {problem}; "
                              f"report it to the plugin's authors")
        return modality

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

    def process(self, name: str):
        """A new noise process: the registered factory called with no arguments, checked to be a `Process`."""
        from unidiff.process.base import Process

        factory, _ = self._get("processes", name)
        try:
            process = factory()
        except Exception as e:
            raise PluginError(f"{self.describe(self.owner[('processes', name)])} could not build process {name!r}: "
                              f"{type(e).__name__}: {e}; report it to the plugin's authors") from None
        if not isinstance(process, Process):
            raise PluginError(f"{self.describe(self.owner[('processes', name)])} built process {name!r} as "
                              f"{type(process).__name__} {short_repr(process)}, which is not a unidiff.process."
                              f"Process; report it to the plugin's authors")
        return process

    def architecture(self, name: str) -> tuple[Callable[..., Any], dict]:
        """The builder of an architecture and its metadata (``config=`` its [model] dataclass)."""
        return self._get("architectures", name)

    def schedule_factory(self, name: str) -> Callable[..., Any]:
        """The registered factory of a schedule, ``factory(**params)`` (`unidiff.process.schedules.get_schedule` builds
        it from a spec string)."""
        return self._get("schedules", name)[0]

    def command(self, name: str) -> Callable[..., Any]:
        """The function of a registered command, ``function(argv, prog)``, imported now."""
        target, _ = self._get("commands", name)
        if callable(target):
            return target
        module, _, function = target.partition(":")
        try:
            return getattr(importlib.import_module(module), function)
        except (Exception, SystemExit) as e:
            plugin = self.owner[("commands", name)]
            raise PluginError(f"{self.describe(plugin)}: command {name!r} runs {target}, which does not import: "
                              f"{type(e).__name__}: {e}; fix or reinstall the plugin, or disable it with "
                              f"{DISABLE_ENV}={plugin}") from None

    def command_help(self, name: str) -> str:
        return self._get("commands", name)[1].get("help", "")

    def plugin_of(self, kind: str, name: str) -> PluginInfo | None:
        plugin = self.owner.get((kind, name))
        return self.info.get(plugin) if plugin else None
