"""One declaration per run param: its type, default, bounds, check, form field and docs.

A DAG's params are a pydantic model whose fields are declared with ``param()``.
From that one declaration come the trigger form (``Model.form()``: Airflow
``Param`` objects with their JSON schema, which the API server checks when a
run is triggered), the validation in the first task (``Model.from_params()``,
raising ``ParamError`` naming the param, never its value), the defaults, what
crosses XCom (the model, dumped), and the reference tables in ``docs/``.
Fields declared without ``param()`` are resolved by the first task, not asked for.

Light to import: the DAG files read it at parse time.
"""

from __future__ import annotations

import types
from datetime import datetime
from typing import Any, ClassVar, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from synap_backfill.common import checks
from synap_backfill.common.checks import ParamError


def param(default: Any, *, title: str, description: str = "", check: str,
          section: str | None = None, minimum: float | None = None, maximum: float | None = None,
          required: bool = False, **form: Any) -> Any:
    """A param: ``check`` names its rule in ``checks.CHECKS``; ``form`` adds JSON-schema keywords
    (``pattern``, ``format``, ``values_display``) to the trigger form's field."""
    return Field(default, title=title, description=description, json_schema_extra={
        "param": {"check": check, "section": section, "minimum": minimum, "maximum": maximum,
                  "required": required, "form": form}})


def param_meta(info: FieldInfo) -> dict[str, Any] | None:
    extra = info.json_schema_extra
    return extra.get("param") if isinstance(extra, dict) else None  # type: ignore[return-value]


class ParamsModel(BaseModel):
    """A DAG's params (declared with ``param()``) plus what its first task resolves."""

    model_config = ConfigDict(frozen=True, validate_default=True, extra="forbid")
    dag_label: ClassVar[str] = "DAG"

    @classmethod
    def params(cls) -> dict[str, FieldInfo]:
        """The fields a user sets, in form order."""
        return {name: info for name, info in cls.model_fields.items() if param_meta(info)}

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields[info.field_name]
        meta = param_meta(field)
        if meta is None:
            return value
        if get_origin(field.annotation) is Literal:
            meta = {**meta, "enum": get_args(field.annotation)}
        rule = checks.CHECKS[meta["check"]]
        return rule(info.field_name, value, meta)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **resolved: Any) -> Any:
        """Validate the params a run was triggered with; ``ParamError`` names the first bad one.

        A missing param takes its declared default, the one the form shows.
        Keys that are not params (a resolved field, a typo) are ignored here,
        as Airflow ignores them in a run's conf.
        """
        names = cls.params()
        try:
            return cls(**{k: v for k, v in params.items() if k in names}, **resolved)
        except ValidationError as exc:
            raise as_param_error(exc) from None

    def to_dict(self) -> dict[str, Any]:
        """What crosses XCom: plain JSON values."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Any:
        """Rebuild from ``to_dict()`` output, as it comes back from XCom."""
        try:
            return cls(**raw)
        except ValidationError as exc:
            raise as_param_error(exc) from None

    @classmethod
    def form(cls, fixed: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """The trigger form: one Airflow ``Param`` per param; ``overrides`` change defaults.

        ``fixed``: values declared by the deployment. Each is a ``const`` param: Airflow's UI
        renders a truthy ``const`` as a hidden input, and the API server refuses a run whose
        conf gives it any other value.
        """
        from airflow.sdk import Param

        unknown = sorted(set(overrides) - set(cls.params()))
        if unknown:
            raise ParamError(unknown[0], f"not a param of this DAG (its params: "
                                         f"{', '.join(cls.params())})")
        out = {}
        for name, info in cls.params().items():
            schema = form_schema(info)
            if fixed is not None and name in fixed:
                if name in overrides:
                    raise ParamError(name, "declared by the deployment: not a default to change")
                # No section: a hidden field must not leave an empty section in the form.
                out[name] = Param(fixed[name], type=schema["type"], title=schema["title"],
                                  const=fixed[name], description="Declared by the deployment; "
                                                                 "a run cannot change it.")
            elif "default" in schema or name in overrides:
                default = overrides.get(name, schema.pop("default", None))
                out[name] = Param(default, **schema)
            else:
                out[name] = Param(**schema)
        return out


def as_param_error(exc: ValidationError) -> ParamError:
    """The first error, as a ParamError: its param and the problem, never the value."""
    error = exc.errors(include_input=False, include_url=False)[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        return cause
    loc = error.get("loc") or ("params",)
    return ParamError(str(loc[0]), error["msg"])


def json_type(annotation: Any) -> str | list[str]:
    """The JSON-schema type of a field's annotation; ``["null", t]`` for an optional one."""
    names = {int: "integer", float: "number", bool: "boolean", str: "string", datetime: "string"}
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        (member,) = members
        return ["null", json_type(member)]  # type: ignore[list-item]
    if origin is Literal:
        return "string"
    if origin is list:
        return "array"
    if origin is dict:
        return "object"
    return names[annotation]


def form_schema(info: FieldInfo) -> dict[str, Any]:
    """A param's field as ``Param`` keyword arguments: the JSON schema the form shows and checks."""
    meta = param_meta(info) or {}
    schema: dict[str, Any] = {"type": json_type(info.annotation), "title": info.title}
    if not meta.get("required"):
        default = info.default
        schema["default"] = default.isoformat() if isinstance(default, datetime) else default
    if info.description:
        schema["description"] = info.description
    if meta.get("section"):
        schema["section"] = meta["section"]
    if get_origin(info.annotation) is Literal:
        schema["enum"] = list(get_args(info.annotation))
    if get_origin(info.annotation) is list:
        schema["items"] = {"type": "string"}  # Airflow's form: a multi-select with ``examples``
    for key in ("minimum", "maximum"):
        if meta.get(key) is not None:
            schema[key] = meta[key]
    schema.update(meta.get("form") or {})
    return schema
