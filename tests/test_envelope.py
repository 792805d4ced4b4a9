"""Tests for sanegraph.guards.envelope: the Envelope model and coerce_envelope."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError

from sanegraph.guards import envelope as envelope_module
from sanegraph.guards.envelope import Envelope, coerce_envelope, envelope_to_dict
from sanegraph.guards.errors import ConfigurationError

UNSUPPORTED = (
    "expected an Envelope, a dict with 'status', an AIMessage with JSON content or an "
    "envelope tool call, or a pydantic model; got "
)


class Report(BaseModel):
    title: str
    pages: int = 1


class Other(BaseModel):
    x: int


class ToolCallingFake(GenericFakeChatModel):
    """A scripted chat model that accepts ``bind_tools`` (so structured output works)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def assert_invalid(
    result: tuple[Envelope[Any], str | None], error: str, result_type: Any = Any
) -> None:
    """The output was rejected with exactly ``error`` and a matching failed envelope."""
    env, got = result
    assert got == error
    assert env == Envelope(status="failed", reason=f"invalid envelope: {error}")
    assert type(env) is Envelope[result_type]


def tool_call(name: str, args: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


# -- the model ---------------------------------------------------------------------------


def test_envelope_defaults() -> None:
    env = Envelope(status="success")
    assert (env.status, env.result, env.confidence, env.reason) == ("success", None, None, "")


def test_envelope_is_frozen() -> None:
    env = Envelope(status="success")
    with pytest.raises(ValidationError, match="frozen"):
        env.status = "failed"  # type: ignore[misc]


def test_envelope_rejects_extra_keys_and_bad_confidence() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Envelope(status="success", note="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        Envelope(status="success", confidence=1.01)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Envelope(status="success", confidence=-0.1)


def test_typed_envelope_validates_result() -> None:
    env = Envelope[Report](status="success", result={"title": "Q3"}, confidence=0.9)  # type: ignore[arg-type]
    assert env.result == Report(title="Q3")
    with pytest.raises(ValidationError, match=r"result\.title"):
        Envelope[Report](status="success", result={"pages": 3})  # type: ignore[arg-type]


def test_tool_schema_has_a_valid_name_and_describes_fields_for_the_model() -> None:
    tool = convert_to_openai_tool(Envelope[Report])["function"]
    # "Envelope[Report]" would be rejected by OpenAI and Anthropic as a tool name.
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", tool["name"])
    assert tool["name"] == "Envelope"
    assert tool["description"].startswith("Report the outcome of your step")
    properties = tool["parameters"]["properties"]
    assert list(properties) == ["status", "result", "confidence", "reason"]
    assert all(properties[name]["description"] for name in properties)
    assert tool["parameters"]["required"] == ["status"]


# -- 1. Envelope instances ---------------------------------------------------------------


def test_envelope_instance_is_returned_as_is_for_any() -> None:
    env = Envelope[Report](status="partial", result=Report(title="Q3"), reason="no Q4")
    got, error = coerce_envelope(env)
    assert got is env
    assert error is None


def test_envelope_instance_of_the_right_type_is_returned_as_is() -> None:
    env = Envelope[Report](status="success", result=Report(title="Q3"))
    got, error = coerce_envelope(env, Report)
    assert got is env
    assert error is None


def test_untyped_envelope_is_revalidated_against_result_type() -> None:
    env = Envelope(status="success", result={"title": "Q3", "pages": 4}, confidence=0.5)
    got, error = coerce_envelope(env, Report)
    assert error is None
    assert type(got) is Envelope[Report]
    assert isinstance(got.result, Report)
    assert got == Envelope[Report](
        status="success", result=Report(title="Q3", pages=4), confidence=0.5
    )


def test_envelope_instance_with_wrong_result_shape_is_invalid() -> None:
    env = Envelope(status="success", result={"pages": 4})
    assert_invalid(coerce_envelope(env, Report), "result.title: Field required", Report)


def test_envelope_instance_with_wrong_result_type_is_invalid() -> None:
    env = Envelope(status="success", result="just text")
    assert_invalid(
        coerce_envelope(env, Report),
        "result: Input should be a valid dictionary or instance of Report (got str)",
        Report,
    )


# -- 2. dicts with "status" --------------------------------------------------------------


def test_dict_is_validated() -> None:
    got, error = coerce_envelope(
        {"status": "partial", "result": [1, 2], "confidence": 0.4, "reason": "half"}
    )
    assert error is None
    assert got == Envelope(status="partial", result=[1, 2], confidence=0.4, reason="half")
    assert type(got) is Envelope[Any]


def test_dict_result_is_validated_into_the_result_model() -> None:
    got, error = coerce_envelope({"status": "success", "result": {"title": "Q3"}}, Report)
    assert error is None
    assert got.result == Report(title="Q3", pages=1)
    assert type(got) is Envelope[Report]


def test_dict_with_wrong_result_shape_is_invalid() -> None:
    assert_invalid(
        coerce_envelope({"status": "success", "result": {"title": "Q3", "pages": "many"}}, Report),
        "result.pages: Input should be a valid integer, unable to parse string as an integer "
        "(got 'many')",
        Report,
    )


def test_confidence_out_of_range_is_invalid() -> None:
    assert_invalid(
        coerce_envelope({"status": "success", "confidence": 1.5}),
        "confidence: Input should be less than or equal to 1 (got 1.5)",
    )
    _, error = coerce_envelope({"status": "success", "confidence": -0.2})
    assert error == "confidence: Input should be greater than or equal to 0 (got -0.2)"


def test_extra_keys_are_forbidden() -> None:
    assert_invalid(
        coerce_envelope({"status": "success", "answer": 42}),
        "answer: Extra inputs are not permitted",
    )


def test_unknown_status_is_invalid() -> None:
    assert_invalid(
        coerce_envelope({"status": "done"}),
        "status: Input should be 'success', 'partial' or 'failed' (got 'done')",
    )


def test_many_errors_are_summarised() -> None:
    _, error = coerce_envelope({"status": "done", "confidence": 2, "a": 1, "b": 2, "c": 3})
    assert error is not None
    assert error.startswith("status: Input should be")
    assert "; confidence: Input should be less than or equal to 1 (got 2)" in error
    assert error.endswith("; (+2 more)")
    assert "\n" not in error


def test_dict_without_status_is_invalid() -> None:
    assert_invalid(
        coerce_envelope({"result": 1, "confidence": 0.5}),
        "dict has no 'status' key (keys: 'result', 'confidence'); an envelope needs 'status' "
        "('success', 'partial' or 'failed') and optionally 'result', 'confidence', 'reason'",
    )


# -- 3. structured output with include_raw=True ------------------------------------------


def test_include_raw_without_parsing_error_coerces_parsed() -> None:
    output = {
        "raw": AIMessage(content=""),
        "parsed": Envelope[Report](status="success", result=Report(title="Q3")),
        "parsing_error": None,
    }
    got, error = coerce_envelope(output, Report)
    assert error is None
    assert got is output["parsed"]


def test_include_raw_parsed_dict_is_validated() -> None:
    output = {
        "raw": AIMessage(content=""),
        "parsed": {"status": "success", "result": {"title": "Q3"}},
        "parsing_error": None,
    }
    got, error = coerce_envelope(output, Report)
    assert error is None
    assert got.result == Report(title="Q3")


def test_include_raw_with_parsing_error_is_invalid() -> None:
    output = {
        "raw": AIMessage(content="{not json"),
        "parsed": None,
        "parsing_error": OutputParserException("Invalid json output: {not json"),
    }
    assert_invalid(
        coerce_envelope(output),
        "structured output failed to parse: Invalid json output: {not json",
    )


def test_include_raw_parsed_model_of_wrong_type_is_invalid() -> None:
    output = {"raw": None, "parsed": Other(x=1), "parsing_error": None}
    assert_invalid(
        coerce_envelope(output, Report),
        "result: Input should be a valid dictionary or instance of Report (got Other)",
        Report,
    )


def test_structured_output_from_a_real_chat_model_pipeline() -> None:
    """``with_structured_output(Envelope[Report], include_raw=True)`` end to end."""
    replies: Iterator[AIMessage] = iter(
        [
            AIMessage(
                content="",
                tool_calls=[
                    tool_call(
                        "Envelope",
                        {"status": "success", "result": {"title": "Q3"}, "confidence": 0.8},
                    )
                ],
            ),
            AIMessage(
                content="",
                tool_calls=[tool_call("Envelope", {"status": "success", "confidence": 1.5})],
            ),
            AIMessage(content="I need more context"),
        ]
    )
    model = ToolCallingFake(messages=replies)
    structured = model.with_structured_output(Envelope[Report], include_raw=True)

    got, error = coerce_envelope(structured.invoke("report"), Report)
    assert error is None
    assert got == Envelope[Report](status="success", result=Report(title="Q3"), confidence=0.8)

    # The parser's ValidationError is summarised like any other.
    assert_invalid(
        coerce_envelope(structured.invoke("report"), Report),
        "structured output failed to parse: confidence: Input should be less than or equal "
        "to 1 (got 1.5)",
        Report,
    )

    # No tool call: nothing parsed, so the error quotes what the model said instead.
    assert_invalid(
        coerce_envelope(structured.invoke("report"), Report),
        "structured output is empty; AIMessage content is not JSON: 'I need more context'",
        Report,
    )


# -- 4. AIMessage ------------------------------------------------------------------------


def test_ai_message_envelope_tool_call() -> None:
    message = AIMessage(
        content="Here you go.",
        tool_calls=[
            tool_call("search", {"query": "Q3"}, "call_1"),
            tool_call("Envelope", {"status": "success", "result": {"title": "Q3"}}, "call_2"),
        ],
    )
    got, error = coerce_envelope(message, Report)
    assert error is None
    assert got == Envelope[Report](status="success", result=Report(title="Q3"))


def test_ai_message_envelope_tool_call_with_bad_args_is_invalid() -> None:
    message = AIMessage(
        content="", tool_calls=[tool_call("Envelope", {"status": "success", "confidence": 7})]
    )
    assert_invalid(
        coerce_envelope(message),
        "confidence: Input should be less than or equal to 1 (got 7)",
    )


def test_ai_message_with_only_other_tool_calls_is_invalid() -> None:
    message = AIMessage(content="", tool_calls=[tool_call("search", {"query": "Q3"})])
    assert_invalid(
        coerce_envelope(message),
        "AIMessage has no content and none of its tool calls ['search'] has a 'status' argument",
    )


@pytest.mark.parametrize(
    "content",
    [
        '{"status": "partial", "reason": "no Q4"}',
        '```json\n{"status": "partial", "reason": "no Q4"}\n```',
        '  ```JSON\n{"status": "partial", "reason": "no Q4"}```  \n',
        '```\n{"status": "partial", "reason": "no Q4"}\n```',
        '\n\n{"status": "partial", "reason": "no Q4"}\n',
    ],
    ids=["bare", "json-fence", "upper-fence-no-newline", "plain-fence", "whitespace"],
)
def test_ai_message_json_content(content: str) -> None:
    got, error = coerce_envelope(AIMessage(content=content))
    assert error is None
    assert got == Envelope(status="partial", reason="no Q4")


def test_ai_message_list_content_joins_text_blocks() -> None:
    message = AIMessage(
        content=[
            {"type": "text", "text": '```json\n{"status": "success", '},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            '"result": {"title": "Q3"}}',
            {"type": "text", "text": "\n```"},
        ]
    )
    got, error = coerce_envelope(message, Report)
    assert error is None
    assert got == Envelope[Report](status="success", result=Report(title="Q3"))


def test_ai_message_plain_text_is_invalid() -> None:
    assert_invalid(
        coerce_envelope(AIMessage(content="I need more context")),
        "AIMessage content is not JSON: 'I need more context'",
    )


def test_ai_message_long_text_is_truncated_in_the_error() -> None:
    _, error = coerce_envelope(AIMessage(content="word " * 100))
    assert error == f"AIMessage content is not JSON: {'word ' * 15 + 'wo...'!r}"
    assert len(error) < 130


def test_ai_message_json_that_is_not_an_object_is_invalid() -> None:
    assert_invalid(
        coerce_envelope(AIMessage(content="[1, 2]")),
        "AIMessage content is JSON but not an object: got list",
    )


def test_ai_message_json_object_without_status_is_invalid() -> None:
    _, error = coerce_envelope(AIMessage(content='{"title": "Q3"}'))
    assert error is not None
    assert error.startswith("AIMessage content JSON has no 'status' key (keys: 'title')")


def test_ai_message_empty_content_is_invalid() -> None:
    assert_invalid(coerce_envelope(AIMessage(content="")), "AIMessage content is empty")


# -- 5. other pydantic models ------------------------------------------------------------


def test_pydantic_model_becomes_a_success_envelope() -> None:
    report = Report(title="Q3")
    got, error = coerce_envelope(report, Report)
    assert error is None
    assert got == Envelope[Report](status="success", result=report)
    assert got.result is report


def test_pydantic_model_with_result_type_any() -> None:
    got, error = coerce_envelope(Other(x=1))
    assert error is None
    assert got == Envelope(status="success", result=Other(x=1))


def test_pydantic_model_of_the_wrong_type_is_invalid() -> None:
    assert_invalid(
        coerce_envelope(Other(x=1), Report),
        "result: Input should be a valid dictionary or instance of Report (got Other)",
        Report,
    )


# -- 6. strings --------------------------------------------------------------------------


def test_json_string_is_parsed() -> None:
    got, error = coerce_envelope('```json\n{"status": "failed", "reason": "no data"}\n```')
    assert error is None
    assert got == Envelope(status="failed", reason="no data")


def test_non_json_string_is_invalid() -> None:
    assert_invalid(coerce_envelope("done!"), "output text is not JSON: 'done!'")


# -- 7. anything else --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "type_name"),
    [(None, "NoneType"), (3, "int"), ([{"status": "success"}], "list"), (b"{}", "bytes")],
)
def test_unsupported_types_are_invalid(output: Any, type_name: str) -> None:
    assert_invalid(coerce_envelope(output), UNSUPPORTED + type_name)


def test_failed_envelope_has_the_requested_result_type() -> None:
    got, error = coerce_envelope(None, Report)
    assert error == UNSUPPORTED + "NoneType"
    assert type(got) is Envelope[Report]
    # ... so coercing it again is a no-op rather than a second failure.
    assert coerce_envelope(got, Report) == (got, None)


def test_bad_result_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"result_type=\.\.\.\) must be a type"):
        coerce_envelope({"status": "success"}, 5)


def test_unhashable_result_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unhashable type: 'dict'"):
        coerce_envelope({"status": "success"}, Annotated[str, {"max": 3}])


def test_parametrized_classes_are_cached() -> None:
    coerce_envelope({"status": "success", "result": {"title": "Q3"}}, Report)
    assert envelope_module._CLASSES[Report] is Envelope[Report]


# -- envelope_to_dict --------------------------------------------------------------------


def test_envelope_to_dict_is_json_ready() -> None:
    env = Envelope[Report](status="success", result=Report(title="Q3"), confidence=0.5)
    assert envelope_to_dict(env) == {
        "status": "success",
        "result": {"title": "Q3", "pages": 1},
        "confidence": 0.5,
        "reason": "",
    }


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

envelopes = st.builds(
    Envelope,
    status=st.sampled_from(["success", "partial", "failed"]),
    result=json_values,
    confidence=st.none() | st.floats(min_value=0, max_value=1),
    reason=st.text(),
)


@given(envelopes)
def test_round_trip_through_dict(env: Envelope[Any]) -> None:
    got, error = coerce_envelope(envelope_to_dict(env))
    assert error is None
    assert got == env


@given(
    st.builds(
        Envelope[Report],
        status=st.sampled_from(["success", "partial", "failed"]),
        result=st.none() | st.builds(Report, title=st.text(), pages=st.integers()),
        confidence=st.none() | st.floats(min_value=0, max_value=1),
        reason=st.text(),
    )
)
def test_typed_round_trip_through_dict(env: Envelope[Report]) -> None:
    got, error = coerce_envelope(envelope_to_dict(env), Report)
    assert error is None
    assert got == env
    assert got.result is None or isinstance(got.result, Report)


@given(st.dictionaries(st.text().filter(lambda key: key != "status"), json_values))
def test_dict_without_status_always_fails_with_an_error(data: dict[str, Any]) -> None:
    got, error = coerce_envelope(data)
    assert error
    assert got.status == "failed"
    assert got.reason == f"invalid envelope: {error}"


@given(json_values | st.text())
def test_any_output_gives_an_envelope_and_never_raises(value: Any) -> None:
    got, error = coerce_envelope(value)
    if error is not None:
        assert got == Envelope(status="failed", reason=f"invalid envelope: {error}")


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5)
)
maybe_envelopes = st.dictionaries(
    st.sampled_from(["status", "result", "confidence", "reason", "extra"]),
    st.one_of(
        json_scalars,
        st.sampled_from(["success", "partial", "failed", "done"]),
        st.lists(json_scalars, max_size=3),
        st.dictionaries(st.text(max_size=3), json_scalars, max_size=3),
    ),
)


@settings(max_examples=400, deadline=None)
@given(output=maybe_envelopes)
def test_the_fast_path_agrees_with_pydantic(output: dict[str, Any]) -> None:
    from sanegraph.guards.envelope import plain_envelope_dict

    fast = plain_envelope_dict(output)
    if fast is None:
        return  # the node takes the full path
    envelope, error = coerce_envelope(output)
    assert error is None
    assert fast == envelope_to_dict(envelope)
    assert list(fast) == list(envelope_to_dict(envelope))


def test_the_fast_path_declines_what_needs_pydantic() -> None:
    from sanegraph.guards.envelope import plain_envelope_dict

    assert plain_envelope_dict({"status": "success", "result": 1}) == {
        "status": "success",
        "result": 1,
        "confidence": None,
        "reason": "",
    }
    for declined in (
        {"status": "success", "confidence": "0.5"},  # coercion
        {"status": "success", "confidence": True},
        {"status": "done"},
        {"status": "success", "result": {"a": {"b": 1}}},  # nested: full path
        {"status": "success", "result": float("inf")},
        {"status": "success", "extra": 1},
    ):
        assert plain_envelope_dict(declined) is None
