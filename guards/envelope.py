"""Envelopes: the typed shape every worker's output is checked against.

A worker reports one :class:`Envelope` per step: how it went (``status``), what it
produced (``result``), how sure it is (``confidence``) and why (``reason``). Workers rarely
return an ``Envelope`` instance directly; :func:`coerce_envelope` accepts the shapes they
do return (a dict, LangChain structured output, an ``AIMessage`` with JSON content or an
envelope tool call, a bare pydantic model) and never raises for bad output: an output
that cannot be read becomes a ``failed`` envelope plus a short error for the trip record.

Envelopes are stored in graph state as plain JSON dicts (:func:`envelope_to_dict`), so
every checkpointer serializes them without an allow-list.
"""

from __future__ import annotations

import json
import math
from typing import Any, Generic, Literal, TypeVar, cast

from langchain_core.messages import AIMessage
from langchain_core.utils.json import parse_json_markdown
from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, ValidationError

from .errors import ConfigurationError

__all__ = (
    "Envelope",
    "EnvelopeStatus",
    "coerce_envelope",
    "envelope_to_dict",
    "plain_envelope_dict",
)

T = TypeVar("T")

EnvelopeStatus = Literal["success", "partial", "failed"]
"""How a worker's step went.

- ``"success"``: the step did what was asked; ``result`` holds the answer.
- ``"partial"``: the step did part of it; ``result`` holds what is usable and ``reason``
  says what is missing.
- ``"failed"``: the step produced nothing usable; ``reason`` says why. Outputs that cannot
  be read as an envelope also become ``"failed"``.
"""

_MAX_SHOWN = 80
"""How many characters of a worker's text an error message quotes."""

_MAX_ERRORS = 3
"""How many validation errors an error message lists before "(+N more)"."""


class Envelope(BaseModel, Generic[T]):
    """The outcome of one worker step: status, result, confidence and reason.

    Parametrize it with the result type to have results validated (``Envelope[Report]``);
    a bare ``Envelope`` accepts any result. Envelopes are frozen and reject unknown keys.
    Pass it to ``with_structured_output`` or ``bind_tools`` to have a model fill it in.

    Example:
        ```python
        class Report(BaseModel):
            title: str

        env = Envelope[Report](status="success", result={"title": "Q3"}, confidence=0.9)
        assert env.result == Report(title="Q3")
        ```
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # Field docstrings become schema descriptions: the model reads them when it
        # fills the envelope in through structured output or a tool call.
        use_attribute_docstrings=True,
        # LangChain names the tool (or response format) after the schema title and
        # PydanticToolsParser looks it up by this title; the default, "Envelope[Report]",
        # is not a valid tool name for OpenAI or Anthropic (``^[a-zA-Z0-9_-]+$``).
        title="Envelope",
        json_schema_extra={
            "description": (
                "Report the outcome of your step: a status, your result, how confident "
                "you are and a short reason."
            )
        },
    )

    status: EnvelopeStatus
    """'success' if you did what was asked, 'partial' if you did part of it, 'failed' if
    you produced nothing usable."""
    result: T | None = None
    """Your result; null when the status is 'failed'."""
    confidence: float | None = Field(default=None, ge=0, le=1)
    """How confident you are in the result, from 0 (guessing) to 1 (certain)."""
    reason: str = ""
    """One or two sentences: why this status, and what is missing if it is not 'success'."""


_ANY: type[Envelope[Any]] = Envelope[Any]
"""The class coerce_envelope returns for ``result_type=Any``."""

_CLASSES: dict[Any, type[Envelope[Any]]] = {Any: _ANY}
"""Parametrized envelope classes by result type (subscripting costs microseconds)."""


def _envelope_class(result_type: Any) -> type[Envelope[Any]]:
    try:
        cls = _CLASSES.get(result_type)
    except TypeError:  # unhashable, e.g. Annotated[str, {...}]: pydantic rejects it below
        cls = None
    if cls is not None:
        return cls
    try:
        cls = cast("type[Envelope[Any]]", cast(Any, Envelope)[result_type])
    except (TypeError, PydanticUserError) as exc:
        raise ConfigurationError(
            f"coerce_envelope(result_type=...) must be a type pydantic can validate, got "
            f"{result_type!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}). Pass a "
            f"pydantic model, a TypedDict, a builtin such as dict[str, Any], or Any."
        ) from exc
    _CLASSES[result_type] = cls
    return cls


def _shorten(text: str, limit: int = _MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summarize(exc: ValidationError) -> str:
    # One "path: message" per error, the way a developer would fix them.
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:_MAX_ERRORS]:
        path = ".".join(str(p) for p in err["loc"]) or "envelope"
        part = f"{path}: {err['msg']}"
        if err["type"] in ("model_type", "model_attributes_type"):
            part += f" (got {type(err['input']).__name__})"  # a repr could be huge
        elif err["type"] not in ("missing", "extra_forbidden"):
            part += f" (got {_shorten(repr(err['input']), 40)})"
        parts.append(part)
    if len(errors) > _MAX_ERRORS:
        parts.append(f"(+{len(errors) - _MAX_ERRORS} more)")
    return "; ".join(parts)


def _invalid(cls: type[Envelope[Any]], error: str) -> tuple[Envelope[Any], str]:
    # Built as ``Envelope[result_type]`` so that every envelope coerce_envelope returns for
    # one result type has the same class (and is returned as-is if coerced again).
    env = cls(status="failed", result=None, confidence=None, reason=f"invalid envelope: {error}")
    return env, error


def _validate(cls: type[Envelope[Any]], data: Any) -> tuple[Envelope[Any], str | None]:
    try:
        return cls.model_validate(data), None
    except ValidationError as exc:
        return _invalid(cls, _summarize(exc))


def _from_dict(
    cls: type[Envelope[Any]], data: dict[Any, Any], source: str
) -> tuple[Envelope[Any], str | None]:
    if "status" in data:
        return _validate(cls, data)
    if "parsed" in data and "raw" in data and "parsing_error" in data:
        # ``with_structured_output(..., include_raw=True)``
        error = data["parsing_error"]
        if error is not None:
            if isinstance(error, ValidationError):
                shown = _summarize(error)
            else:
                # LangChain appends a troubleshooting URL to its parser errors.
                text = str(error).split("For troubleshooting, visit:")[0]
                shown = _shorten(" ".join(text.split()), 200)
            return _invalid(cls, f"structured output failed to parse: {shown}")
        parsed = data["parsed"]
        if parsed is not None:
            return _coerce(parsed, cls)
        # Nothing parsed: the model answered in text instead of calling the schema tool.
        # Read the raw message like any other, so the error quotes what it said.
        raw = data["raw"]
        if isinstance(raw, AIMessage):
            env, raw_error = _from_message(cls, raw)
            if raw_error is None:
                return env, None
            return _invalid(cls, f"structured output is empty; {raw_error}")
        return _invalid(cls, "structured output is empty: the model returned nothing to parse")
    keys = ", ".join(repr(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "")
    return _invalid(
        cls,
        f"{source} has no 'status' key (keys: {keys or 'none'}); an envelope needs "
        f"'status' ('success', 'partial' or 'failed') and optionally 'result', "
        f"'confidence', 'reason'",
    )


def _from_text(
    cls: type[Envelope[Any]], text: str, source: str
) -> tuple[Envelope[Any], str | None]:
    text = text.strip()
    if not text.strip("`"):
        return _invalid(cls, f"{source} is empty")
    if text[:7].lower() == "```json":
        # LangChain's pattern knows ```json and ``` fences only; models also write ```JSON.
        text = "```json" + text[7:]
    try:
        # LangChain's reader: JSON as is, or inside a ``` / ```json fence. Strict: a
        # truncated object is an error, not a partial envelope.
        data = parse_json_markdown(text, parser=json.loads)
    except ValueError:
        return _invalid(cls, f"{source} is not JSON: {_shorten(text)!r}")
    if not isinstance(data, dict):
        return _invalid(cls, f"{source} is JSON but not an object: got {type(data).__name__}")
    return _from_dict(cls, data, f"{source} JSON")


def _from_message(cls: type[Envelope[Any]], message: AIMessage) -> tuple[Envelope[Any], str | None]:
    for call in message.tool_calls:
        args = call.get("args")
        if isinstance(args, dict) and "status" in args:
            return _validate(cls, args)
    text = message.text
    if not text.strip() and message.tool_calls:
        names = [call.get("name") for call in message.tool_calls]
        return _invalid(
            cls,
            f"AIMessage has no content and none of its tool calls {names!r} has a "
            "'status' argument",
        )
    return _from_text(cls, text, "AIMessage content")


def _coerce(output: Any, cls: type[Envelope[Any]]) -> tuple[Envelope[Any], str | None]:
    if isinstance(output, Envelope):
        if type(output) is cls or cls is _ANY:
            return output, None
        try:
            data = output.model_dump()
        except Exception as exc:  # a result pydantic cannot dump: report, never raise
            return _invalid(cls, f"could not read {type(output).__name__}: {exc}")
        return _validate(cls, data)
    if isinstance(output, dict):
        return _from_dict(cls, output, "dict")
    if isinstance(output, AIMessage):
        return _from_message(cls, output)
    if isinstance(output, BaseModel):
        return _validate(cls, {"status": "success", "result": output})
    if isinstance(output, str):
        return _from_text(cls, output, "output text")
    return _invalid(
        cls,
        "expected an Envelope, a dict with 'status', an AIMessage with JSON content or an "
        f"envelope tool call, or a pydantic model; got {type(output).__name__}",
    )


def coerce_envelope(output: Any, result_type: Any = Any) -> tuple[Envelope[Any], str | None]:
    """Read a worker's output as an envelope, without raising for bad output.

    Accepted outputs, checked in this order:

    1. An :class:`Envelope` of any parametrization: returned as-is when ``result_type`` is
       ``Any`` or it already is ``Envelope[result_type]``, else re-validated.
    2. A dict with a ``"status"`` key.
    3. A dict from ``with_structured_output(..., include_raw=True)`` (``"raw"``,
       ``"parsed"``, ``"parsing_error"``): invalid with its parsing error, else ``parsed``
       read again (or, when nothing was parsed, the ``raw`` message as in 4).
    4. An ``AIMessage``: the args of its first tool call that has a ``"status"`` argument,
       else its text content as JSON (a ```json fence is allowed).
    5. Any other pydantic model: a ``success`` envelope with the model as ``result``.
    6. A string holding JSON, as in 4.

    Args:
        output: What the worker returned.
        result_type: The type ``result`` must have (``Any`` for no check).

    Returns:
        ``(envelope, None)`` when the output is a valid ``Envelope[result_type]``; otherwise
        ``(failed_envelope, error)``, where ``error`` is a short description such as
        ``"confidence: Input should be less than or equal to 1 (got 1.5)"`` and the failed
        envelope's ``reason`` is ``"invalid envelope: " + error``.

    Raises:
        ConfigurationError: ``result_type`` is not a type pydantic can validate.

    Example:
        ```python
        env, error = coerce_envelope({"status": "success", "result": {"title": "Q3"}}, Report)
        assert error is None and env.result == Report(title="Q3")
        ```
    """
    return _coerce(output, _envelope_class(result_type))


def envelope_to_dict(env: Envelope[Any]) -> dict[str, Any]:
    """Dump an envelope to a JSON-ready dict, for graph state and checkpoints.

    ``coerce_envelope(envelope_to_dict(env), result_type)`` gives back an equal envelope.

    Args:
        env: The envelope.

    Returns:
        A dict of JSON values: ``status``, ``result``, ``confidence`` and ``reason``.

    Raises:
        pydantic_core.PydanticSerializationError: ``result`` holds a value with no JSON form.

    Example:
        ```python
        envelope_to_dict(Envelope(status="partial", reason="no Q4 data"))
        # {'status': 'partial', 'result': None, 'confidence': None, 'reason': 'no Q4 data'}
        ```
    """
    return env.model_dump(mode="json")


_STATUSES = frozenset(("success", "partial", "failed"))
_ENVELOPE_KEYS = frozenset(("status", "result", "confidence", "reason"))
_SCALARS = (str, int, bool, type(None))


def _plain(value: Any) -> bool:
    """A JSON value that validation and a JSON dump would leave exactly as it is."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(type(v) in _SCALARS for v in value)
    if kind is dict:
        return all(type(k) is str and type(v) in _SCALARS for k, v in value.items())
    return False


def plain_envelope_dict(output: Any) -> dict[str, Any] | None:
    """The fast path of ``envelope_to_dict(coerce_envelope(output)[0])`` for plain dicts.

    Workers mostly return envelope dicts of plain JSON values. For those this builds the
    stored dict directly, without a pydantic round trip (this runs on every guarded
    step); for anything else (other types, coercion, typed results, errors) it returns
    None and the caller takes the full path. A test checks that both paths agree.

    Args:
        output: What the worker returned.

    Returns:
        The JSON-ready envelope dict, or None to take the full path.
    """
    if type(output) is not dict or not output.keys() <= _ENVELOPE_KEYS:
        return None
    status = output.get("status")
    if type(status) is not str or status not in _STATUSES:
        return None
    confidence = output.get("confidence")
    if confidence is not None:
        if type(confidence) not in (float, int) or not 0 <= confidence <= 1:
            return None
        confidence = float(confidence)
    reason = output.get("reason", "")
    if type(reason) is not str:
        return None
    result = output.get("result")
    if type(result) not in _SCALARS and not _plain(result):
        return None
    return {"status": status, "result": result, "confidence": confidence, "reason": reason}
