"""Spark ML Params declared once: a table of (name, doc, typeConverter, default) from which a stage gets its
Param attributes, their defaults, `getX` and `setX`, and the keyword arguments its `__init__` and
`setParams` accept.

In the spirit of pyspark.ml's shared Params (pyspark/ml/param/_shared_params_code_gen.py writes `HasX`
mixins from such a table): here a mixin is built when its class statement runs, from the `PARAMS` it
declares, so a new stage (sparkdl's DeepImagePredictor, KerasImageFileTransformer, ...) writes one table:

    class _PredictorParams(DeclaredParams, HasInputCol, HasOutputCol):
        PARAMS = (ParamSpec("modelName", "backbone name", default="ResNet50"),
                  ParamSpec("topK", "classes kept per row", TypeConverters.toInt, 5))
        DEFAULTS = {"outputCol": "predictions"}  # Params inherited from HasInputCol, HasOutputCol, ...

Only simple Params (strings, numbers; never functions): `ml_io.ParamsWritable` persists them, so
`PipelineModel.save` and `mlflow.spark.log_model` carry the stage, and what is persisted (uid, param map,
default param map) is exactly what hand-written Params would persist.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pyspark.ml.param import Param, Params, TypeConverters


@dataclass(frozen=True)
class ParamSpec:
    """One Param: its name (camelCase, Spark's convention), doc, type converter and default (None: no
    default; its getter then answers None while the Param is unset)."""

    name: str
    doc: str
    converter: Callable[[Any], Any] = TypeConverters.toString
    default: Any = None


def _suffix(name: str) -> str:
    return name[0].upper() + name[1:]


def _getter(spec: ParamSpec) -> Callable[[Params], Any]:
    name = spec.name
    if spec.default is None:
        def get(self: Params) -> Any:
            param = getattr(self, name)
            return self.getOrDefault(param) if self.isDefined(param) else None
    else:
        def get(self: Params) -> Any:
            return self.getOrDefault(getattr(self, name))
    get.__name__ = get.__qualname__ = f"get{_suffix(name)}"
    get.__doc__ = f"Gets the value of {name} or its default value."
    return get


def _setter(name: str) -> Callable[[Params, Any], Params]:
    def set_(self: Params, value: Any) -> Params:
        return self._set(**{name: value})

    set_.__name__ = set_.__qualname__ = f"set{_suffix(name)}"
    set_.__doc__ = f"Sets the value of {name}."
    return set_


class DeclaredParams(Params):
    """A Params mixin whose subclasses declare `PARAMS` (a tuple of ParamSpec) and `DEFAULTS` (defaults of
    Params they inherit, e.g. outputCol of HasOutputCol). Each declared Param becomes a class attribute, as
    pyspark.ml declares them, with `getX` (unless the class writes its own); every Param of the class,
    declared or inherited, gets `setX` when it has none; `__init__` sets every default along the class
    hierarchy, after the bases set theirs."""

    PARAMS: ClassVar[tuple[ParamSpec, ...]] = ()
    DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        for spec in own.get("PARAMS", ()):
            setattr(cls, spec.name, Param(Params._dummy(), spec.name, spec.doc, typeConverter=spec.converter))
            if f"get{_suffix(spec.name)}" not in own:
                setattr(cls, f"get{_suffix(spec.name)}", _getter(spec))
        for name in cls.param_names():  # declared here or inherited (pyspark's HasX have getters only)
            if not hasattr(cls, f"set{_suffix(name)}"):
                setattr(cls, f"set{_suffix(name)}", _setter(name))
        for method in ("__init__", "setParams"):  # keyword methods taking **params: show every Param
            if method in own and _takes_params(own[method]):
                own[method].__signature__ = cls._keyword_signature(own[method])

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**self.declared_defaults())

    @classmethod
    def declared_defaults(cls) -> dict[str, Any]:
        """Every default this hierarchy declares, the most derived class winning."""
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            out.update({s.name: s.default for s in klass.__dict__.get("PARAMS", ()) if s.default is not None})
            out.update(klass.__dict__.get("DEFAULTS", {}))
        return out

    @classmethod
    def param_names(cls) -> list[str]:
        """The names of every Param of the class (declared here or inherited), sorted."""
        return sorted(n for n in dir(cls) if isinstance(getattr(cls, n, None), Param))

    def _set_params(self, kwargs: Mapping[str, Any]) -> Any:
        """`setParams`' body: set the given Params; a name that is no Param is a TypeError, as a keyword
        argument a signature does not have."""
        unknown = sorted(set(kwargs) - set(self.param_names()))
        if unknown:
            raise TypeError(f"{type(self).__name__} got an unexpected keyword argument {unknown[0]!r}")
        return self._set(**kwargs)

    @classmethod
    def _keyword_signature(cls, method: Callable[..., Any]) -> inspect.Signature:
        defaults = cls.declared_defaults()
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(n))
                   for n in cls.param_names()]
        return inspect.Signature(params, return_annotation=inspect.signature(method).return_annotation)


def _takes_params(method: Callable[..., Any]) -> bool:
    parameters = inspect.signature(inspect.unwrap(method)).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
