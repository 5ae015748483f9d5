"""The method registry: a pluggy manager over the ``camkit`` entry-point group.

A few small functions over a dict of :class:`MethodInfo`, built on first use. Built-in
methods (:mod:`camkit.methods`) and third-party plugins go through the same hook. Explainers
(:class:`~camkit.method.ExplainerSpec`, from the ``camkit_explainers`` hook) are kept beside
the methods, in the same namespace, as :class:`ExplainerInfo`.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as metadata
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from camkit import hookspecs
from camkit._version import __version__
from camkit.errors import MethodNotFoundError, PluginError, did_you_mean
from camkit.method import ExplainerSpec, Method, MethodConfig

ENTRY_POINT_GROUP = "camkit"
BUILTIN = "camkit"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_IMPORT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one method."""

    name: str
    summary: str
    paper: str
    config: type[MethodConfig]
    needs_gradients: bool
    distribution: str
    version: str
    aliases: tuple[str, ...] = ()
    cls: type[Method] = field(default=Method, repr=False)
    many_forwards: bool = False
    needs_attention: bool = False

    def schema(self) -> dict[str, Any]:
        """The config's JSON schema (defaults and constraints included)."""
        return self.config.model_json_schema()


@dataclass(frozen=True)
class ExplainerInfo:
    """What the registry knows about one explainer: its spec and who provides it."""

    spec: ExplainerSpec
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.spec.aliases

    @property
    def summary(self) -> str:
        return self.spec.summary

    @property
    def paper(self) -> str:
        return self.spec.paper

    @property
    def needs_gradients(self) -> bool:
        return self.spec.needs_gradients

    @property
    def many_forwards(self) -> bool:
        return self.spec.many_forwards

    @property
    def needs_attention(self) -> bool:
        return False

    def load(self, which: str = "target") -> Any:
        """Import the explainer (or its ``returns`` type, its ``function``): see
        :meth:`ExplainerSpec.load`."""
        return self.spec.load(which)


@dataclass
class PluginInfo:
    """One plugin: an entry point, the built-ins, or an object registered at run time."""

    name: str
    distribution: str
    version: str
    status: str  # "ok", "broken" or "blocked"
    methods: list[str] = field(default_factory=list)
    error: BaseException | None = None
    explainers: list[str] = field(default_factory=list)


def canonical_name(name: str) -> str:
    """Lookup form of a method name: case and ``_``/``-`` do not matter."""
    return name.strip().lower().replace("_", "-")


class Registry:
    """Methods by name, collected from every registered plugin."""

    def __init__(self) -> None:
        self._pm: pluggy.PluginManager | None = None
        self._methods: dict[str, MethodInfo] = {}
        self._aliases: dict[str, str] = {}
        self._explainers: dict[str, ExplainerInfo] = {}
        self._explainer_aliases: dict[str, str] = {}
        self._plugins: dict[str, PluginInfo] = {}
        self._lock = threading.RLock()

    # -- loading ------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._pm is None:
                self._load()

    def _load(self) -> None:
        from camkit import methods

        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        self._methods, self._aliases, self._plugins = {}, {}, {}
        self._explainers, self._explainer_aliases = {}, {}
        disabled = {
            canonical_name(n) for n in os.environ.get("CAMKIT_DISABLE_PLUGINS", "").split(",") if n
        }
        self._add(pm, methods, BUILTIN, BUILTIN, __version__)
        if os.environ.get("CAMKIT_NO_PLUGIN_AUTOLOAD", "") not in ("", "0"):
            self._pm = pm
            return
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            if {canonical_name(ep.name), canonical_name(dist)} & disabled:
                pm.set_blocked(ep.name)
                self._plugins[ep.name] = PluginInfo(ep.name, dist, version, "blocked")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break camkit
                self._plugins[ep.name] = PluginInfo(ep.name, dist, version, "broken", error=exc)
                continue
            self._add(pm, plugin, ep.name, dist, version, strict=False)
        self._pm = pm

    def _add(
        self,
        pm: pluggy.PluginManager,
        plugin: object,
        name: str,
        dist: str,
        version: str,
        *,
        strict: bool = True,
    ) -> None:
        """Register ``plugin`` and its methods; on any error, leave nothing of it behind."""
        if pm.has_plugin(name):
            raise PluginError(
                f"cannot register plugin {name!r} of distribution {dist!r}: a plugin of that "
                "name is already registered; unregister it first or choose another name"
            )
        if pm.is_registered(plugin):
            raise PluginError(
                f"cannot register plugin {name!r} of distribution {dist!r}: the same object is "
                f"already registered as plugin {pm.get_name(plugin)!r}"
            )
        pm.register(plugin, name=name)
        try:
            classes = [
                cls
                for impl in pm.hook.camkit_methods.get_hookimpls()
                if impl.plugin is plugin
                for cls in _as_list(impl.function())
            ]
            infos = [self._info(cls, dist, version) for cls in classes]
            explainers = [
                self._explainer_info(spec, dist, version)
                for impl in pm.hook.camkit_explainers.get_hookimpls()
                if impl.plugin is plugin
                for spec in _as_list(impl.function(), "camkit_explainers", "ExplainerSpec")
            ]
        except Exception as exc:
            pm.unregister(plugin)
            # An installed plugin that breaks the contract is set aside; code registering a
            # plugin itself (built-ins, register_plugin) wants to hear about it.
            if strict:
                raise
            self._plugins[name] = PluginInfo(name, dist, version, "broken", error=exc)
            return
        new_names: dict[str, MethodInfo | ExplainerInfo] = {}
        claims: list[MethodInfo | ExplainerInfo] = [*infos, *explainers]
        for claim in claims:
            for claimed in (claim.name, *claim.aliases):
                key = canonical_name(claimed)
                owner = self._owner_of(key) or self._explainer_of(key) or new_names.get(key)
                if owner is not None:
                    pm.unregister(plugin)
                    raise PluginError(
                        f"{_kind(claim)} name {claimed!r} is claimed twice: by {_kind(owner)} "
                        f"{owner.name!r} of distribution {owner.distribution!r} and by "
                        f"{_kind(claim)} {claim.name!r} of distribution {claim.distribution!r}. "
                        f"Uninstall one, or block it with CAMKIT_DISABLE_PLUGINS={name}."
                    )
                new_names[key] = claim
        for info in infos:
            self._methods[info.name] = info
            for alias in info.aliases:
                self._aliases[canonical_name(alias)] = info.name
        for explainer in explainers:
            self._explainers[explainer.name] = explainer
            for alias in explainer.aliases:
                self._explainer_aliases[canonical_name(alias)] = explainer.name
        self._plugins[name] = PluginInfo(
            name, dist, version, "ok", [i.name for i in infos], None, [e.name for e in explainers]
        )

    def _owner_of(self, key: str) -> MethodInfo | None:
        if key in self._methods:
            return self._methods[key]
        if key in self._aliases:
            return self._methods[self._aliases[key]]
        return None

    def _explainer_of(self, key: str) -> ExplainerInfo | None:
        key = self._explainer_aliases.get(key, key)
        return self._explainers.get(key)

    @staticmethod
    def _explainer_info(spec: Any, dist: str, version: str) -> ExplainerInfo:
        if not isinstance(spec, ExplainerSpec):
            raise PluginError(
                f"distribution {dist!r} returned {spec!r} from camkit_explainers(), which is not "
                "a camkit.ExplainerSpec"
            )
        for claimed in (spec.name, *spec.aliases):
            if not _NAME.match(claimed or ""):
                raise PluginError(
                    f"explainer {spec.name!r} of distribution {dist!r} claims the name "
                    f"{claimed!r}; names are lower-case letters, digits and hyphens"
                )
        for which in ("target", "returns", *(("function",) if spec.function else ())):
            if not _IMPORT.match(getattr(spec, which)):
                raise PluginError(
                    f"explainer {spec.name!r} of distribution {dist!r}: {which} "
                    f"{getattr(spec, which)!r} is not of the form 'module:qualname'"
                )
        return ExplainerInfo(spec, dist, version)

    @staticmethod
    def _info(cls: Any, dist: str, version: str) -> MethodInfo:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise PluginError(
                f"distribution {dist!r} returned {cls!r}, which is not a camkit.Method"
            )
        if not _NAME.match(cls.name or ""):
            raise PluginError(
                f"method class {cls.__qualname__} of distribution {dist!r} has name {cls.name!r}; "
                "names are lower-case letters, digits and hyphens"
            )
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, MethodConfig)):
            raise PluginError(f"method {cls.name!r}: Config must subclass camkit.MethodConfig")
        if not cls.computes_map() and cls.weights is Method.weights:
            raise PluginError(f"method {cls.name!r} implements neither weights() nor map()")
        return MethodInfo(
            name=cls.name,
            summary=cls.summary,
            paper=cls.paper,
            config=cls.Config,
            needs_gradients=cls.needs_gradients,
            distribution=dist,
            version=version,
            aliases=tuple(cls.aliases),
            cls=cls,
            many_forwards=cls.many_forwards,
            needs_attention=cls.needs_attention,
        )

    # -- public -------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (module, class or instance with hookimpls) at run time."""
        self._ensure_loaded()
        assert self._pm is not None
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        with self._lock:
            self._add(self._pm, plugin, plugin_name, plugin_name, "runtime")

    def unregister(self, name: str) -> None:
        """Remove a plugin registered at run time, and its methods."""
        self._ensure_loaded()
        assert self._pm is not None
        with self._lock:
            info = self._plugins.pop(name, None)
            if self._pm.has_plugin(name):
                self._pm.unregister(name=name)
            for method in info.methods if info else []:
                removed = self._methods.pop(method)
                for alias in removed.aliases:
                    self._aliases.pop(canonical_name(alias), None)
            for explainer in info.explainers if info else []:
                gone = self._explainers.pop(explainer)
                for alias in gone.aliases:
                    self._explainer_aliases.pop(canonical_name(alias), None)

    def reload(self) -> None:
        """Forget everything and rediscover plugins (after installing one, or in tests)."""
        with self._lock:
            self._pm = None

    def names(self, pattern: str | None = None) -> list[str]:
        self._ensure_loaded()
        names = sorted(self._methods)
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern.lower())]

    def info(self, name: str) -> MethodInfo:
        self._ensure_loaded()
        key = canonical_name(name)
        owner = self._owner_of(key)
        if owner is not None:
            return owner
        for plugin in self._plugins.values():
            if plugin.status == "broken" and canonical_name(plugin.name) == key:
                raise PluginError(
                    f"method {name!r} comes from plugin {plugin.name!r} "
                    f"(distribution {plugin.distribution!r}), which failed to load: {plugin.error}"
                ) from plugin.error
            if plugin.status == "blocked" and canonical_name(plugin.name) == key:
                raise MethodNotFoundError(
                    f"method {name!r} is provided by plugin {plugin.name!r}, which "
                    "CAMKIT_DISABLE_PLUGINS blocks"
                )
        explainer = self._explainer_of(key)
        if explainer is not None:
            raise MethodNotFoundError(
                f"{name!r} is no CAM method but an explainer with a result type of its own "
                f"({explainer.summary}); call it directly: {explainer.spec.import_path()} "
                f"(see camkit.explainer_info({explainer.name!r}))"
            )
        known = sorted({*self._methods, *self._aliases, *self._explainers})
        raise MethodNotFoundError(
            f"no CAM method named {name!r}.{did_you_mean(key, known)} "
            f"Available: {', '.join(sorted(self._methods))}"
        )

    def explainer_names(self, pattern: str | None = None) -> list[str]:
        self._ensure_loaded()
        names = sorted(self._explainers)
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern.lower())]

    def explainer(self, name: str) -> ExplainerInfo:
        self._ensure_loaded()
        key = canonical_name(name)
        found = self._explainer_of(key)
        if found is not None:
            return found
        if self._owner_of(key) is not None:
            raise MethodNotFoundError(
                f"{name!r} is a CAM method, not an explainer: see camkit.method_info({name!r})"
            )
        known = sorted({*self._explainers, *self._explainer_aliases})
        raise MethodNotFoundError(
            f"no explainer named {name!r}.{did_you_mean(key, known)} "
            f"Available: {', '.join(sorted(self._explainers)) or 'none'}"
        )

    def plugins(self) -> list[PluginInfo]:
        self._ensure_loaded()
        return sorted(self._plugins.values(), key=lambda p: (p.name != BUILTIN, p.name))


def _as_list(
    returned: Any, hook: str = "camkit_methods", what: str = "Method classes"
) -> list[Any]:
    if returned is None:
        return []
    if isinstance(returned, (list, tuple)):
        return list(returned)
    raise PluginError(f"{hook}() must return a list of {what}, got {returned!r}")


def _kind(info: MethodInfo | ExplainerInfo) -> str:
    return "explainer" if isinstance(info, ExplainerInfo) else "method"


registry = Registry()
