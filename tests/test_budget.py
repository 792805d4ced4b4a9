"""Budgets: the policy, pricing, the intake check, and the meter on real LangChain calls.

Unit tier: ``Budget`` validation, ``price_call`` against genai-prices, ``check_spend`` at
its boundaries. Then ``BudgetMeter`` attached to real model calls (scripted chat models,
chains, tools, ``RunnableLambda``, streaming, ``ainvoke``): a call the budget cannot
cover is never made. Graph-level tests live with ``guarded()``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID, uuid4

import genai_prices
import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from sanegraph.guards import Budget, GuardPolicy
from sanegraph.guards._frozen import FrozenDict
from sanegraph.guards.budget import (
    BudgetExceeded,
    BudgetMeter,
    Price,
    Spend,
    SpendPool,
    check_spend,
    metering,
    price_call,
)
from sanegraph.guards.budget import check as intake_module
from sanegraph.guards.budget import tokens as tokens_module
from sanegraph.guards.budget.log import ThreadSpend
from sanegraph.guards.budget.pricing import usage_counts
from sanegraph.guards.budget.tokens import TokenCounter
from sanegraph.guards.errors import ConfigurationError, GuardTripped
from sanegraph.guards.testing import ScriptedChatModel, ScriptExhausted

GENAI = genai_prices.__version__


def _genai_micros(provider: str | None, model: str, i: int, o: int) -> int:
    """What genai-prices itself says, in micro-dollars rounded up."""
    calc = calc_price(Usage(input_tokens=i, output_tokens=o), model_ref=model, provider_id=provider)
    return math.ceil(calc.total_price * 1_000_000)


def _tokens(text: str) -> int:
    return count_tokens_approximately([HumanMessage(text)])


# -- Budget ---------------------------------------------------------------------------------


def test_an_empty_budget_is_valid_and_sets_no_spend_limit() -> None:
    budget = Budget()

    assert (budget.usd, budget.tokens, budget.seconds, budget.per_agent) == (None,) * 4
    assert (budget.warn_at, budget.on_exhausted, budget.no_usage) == (0.75, "interrupt", "estimate")
    assert budget.has_spend_limits is False
    assert Budget(seconds=60).has_spend_limits is False


@pytest.mark.parametrize(
    "budget",
    [
        Budget(usd=5),
        Budget(tokens=1000),
        Budget(input_tokens=1000),
        Budget(output_tokens=1000),
        Budget(per_call_tokens=1000),
        Budget(per_agent={"analyst": {"usd": 1}}),
    ],
    ids=["usd", "tokens", "input", "output", "per_call", "per_agent"],
)
def test_each_money_or_token_limit_counts_as_a_spend_limit(budget: Budget) -> None:
    assert budget.has_spend_limits is True


def test_a_bare_number_is_refused_as_ambiguous() -> None:
    # budget=20 reads as $20 to one user and 20 seconds to another: say which.
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "budget=20 is ambiguous: say what it limits, e.g. budget=Budget(usd=20) for "
            "dollars or budget=Budget(seconds=20) for wall-clock time."
        ),
    ):
        GuardPolicy(budget=20)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ambiguous"):
        Budget.coerce(600)  # type: ignore[arg-type]


def test_per_agent_limits_and_prices_are_read_only_copies() -> None:
    limits: dict[str, Any] = {"usd": 1.0}
    budget = Budget(
        per_agent={"analyst": limits},  # type: ignore[dict-item]
        prices={"m": Price(input_per_mtok=1, output_per_mtok=2)},
    )
    limits["usd"] = 100.0

    assert budget.per_agent is not None and budget.per_agent["analyst"]["usd"] == 1.0
    assert isinstance(budget.per_agent, FrozenDict)
    with pytest.raises(TypeError):
        budget.per_agent["analyst"]["usd"] = 2  # type: ignore[index]
    assert isinstance(budget.prices, FrozenDict)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Budget(usd=0),
            "Budget.usd must be a positive number of US dollars, got 0. Pass e.g. "
            "Budget(usd=5), or None for no money limit.",
        ),
        (
            lambda: Budget(usd=True),
            "Budget.usd must be a positive number of US dollars, got True.",
        ),
        (
            lambda: Budget(usd=float("inf")),
            "Budget.usd must be a positive number of US dollars, got inf.",
        ),
        (
            lambda: Budget(tokens=0),
            "Budget.tokens must be a whole number >= 1, got 0. Pass e.g. "
            "Budget(tokens=100_000), or None for no such limit.",
        ),
        (
            lambda: Budget(input_tokens=2.5),
            "Budget.input_tokens must be a whole number >= 1, got 2.5.",
        ),
        (
            lambda: Budget(output_tokens=-1),
            "Budget.output_tokens must be a whole number >= 1, got -1.",
        ),
        (
            lambda: Budget(per_call_tokens=0),
            "Budget.per_call_tokens must be a whole number >= 1, got 0. Pass e.g. "
            "Budget(per_call_tokens=100_000), or None for no such limit.",
        ),
        (
            lambda: Budget(seconds=-1),
            "Budget.seconds must be a positive number, got -1.",
        ),
        (
            lambda: Budget(warn_at=0),
            "Budget.warn_at must be a fraction in (0, 1], got 0. Pass e.g. warn_at=0.75 to "
            "warn at 75% of each limit.",
        ),
        (
            lambda: Budget(warn_at=1.5),
            "Budget.warn_at must be a fraction in (0, 1], got 1.5.",
        ),
        (
            lambda: Budget(on_exhausted="stop"),  # type: ignore[arg-type]
            "Budget.on_exhausted must be one of 'interrupt', 'end', 'raise'; got 'stop'.",
        ),
        (
            lambda: Budget(no_usage="ignore"),  # type: ignore[arg-type]
            "Budget.no_usage must be one of 'estimate', 'refuse'; got 'ignore'.",
        ),
        (
            lambda: Budget(prices=[("m", 1)]),  # type: ignore[arg-type]
            "Budget.prices must map model names to Price(...), got [('m', 1)]. Pass e.g. "
            "prices={'my-model': Price(input_per_mtok=0.5, output_per_mtok=1.5)}.",
        ),
        (
            lambda: Budget(prices={"m": {"input_per_mtok": 1}}),  # type: ignore[dict-item]
            "Budget.prices['m'] must be a Price, got dict. Pass Price(input_per_mtok=..., "
            "output_per_mtok=...) in USD per million tokens.",
        ),
        (
            lambda: Budget(per_agent=["analyst"]),  # type: ignore[arg-type]
            "Budget.per_agent must map agent names to limits, got ['analyst']. Pass e.g. "
            "per_agent={'researcher': {'usd': 1.0, 'tokens': 50_000}}.",
        ),
        (
            lambda: Budget(per_agent={"analyst": {}}),
            "Budget.per_agent['analyst'] sets no limit. Give at least one of usd, tokens, "
            "input_tokens, output_tokens, or leave the agent out.",
        ),
        (
            lambda: Budget(per_agent={"analyst": {"dollars": 1}}),  # type: ignore[typeddict-unknown-key]
            "Budget.per_agent['analyst'] has an unknown limit 'dollars'. Use usd, tokens, "
            "input_tokens, output_tokens.",
        ),
        (
            lambda: Budget(per_agent={"analyst": {"usd": -1}}),
            "Budget.per_agent['analyst']['usd'] must be a positive number of US dollars, "
            "got -1. Pass e.g. {'usd': 1.0}.",
        ),
        (
            lambda: Budget(per_agent={"analyst": {"tokens": 0}}),
            "Budget.per_agent['analyst']['tokens'] must be a whole number >= 1, got 0. "
            "Pass e.g. {'tokens': 50_000}.",
        ),
        (
            lambda: Price(input_per_mtok=-1, output_per_mtok=0),
            "Price.input_per_mtok must be a finite number >= 0 (USD per million tokens), "
            "got -1. Pass e.g. Price(input_per_mtok=0.15, output_per_mtok=0.6).",
        ),
        (
            lambda: Price(input_per_mtok=0, output_per_mtok="1"),  # type: ignore[arg-type]
            "Price.output_per_mtok must be a number of US dollars per million tokens, got "
            "'1'. Pass e.g. Price(input_per_mtok=0.15, output_per_mtok=0.6).",
        ),
    ],
)
def test_invalid_budgets_say_what_to_change(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        make()


# -- Spend ----------------------------------------------------------------------------------

spends = st.builds(
    Spend,
    usd_micros=st.integers(0, 10**12),
    input_tokens=st.integers(0, 10**9),
    output_tokens=st.integers(0, 10**9),
)


def test_spend_has_a_json_form_and_totals() -> None:
    spend = Spend(usd_micros=4_980_000, input_tokens=1200, output_tokens=300)

    assert spend.to_dict() == {"usd_micros": 4_980_000, "input_tokens": 1200, "output_tokens": 300}
    assert Spend.from_dict(spend.to_dict()) == spend
    assert Spend.from_dict({}) == Spend() == Spend.from_dict(None)
    assert (spend.usd, spend.tokens) == (4.98, 1500)


@given(spends, spends, spends)
def test_spend_addition_is_associative_and_commutative(a: Spend, b: Spend, c: Spend) -> None:
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert a + Spend() == a


# -- pricing --------------------------------------------------------------------------------


def test_price_call_is_what_genai_prices_says_rounded_up_to_a_micro_dollar() -> None:
    # gpt-4o-mini: $0.15 / $0.60 per million tokens.
    assert (
        price_call("gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500}, provider="openai")
        == 450
    )
    assert _genai_micros("openai", "gpt-4o-mini", 1000, 500) == 450
    # 1 input token costs 0.15 micro-dollars: recorded spend is never below the price.
    assert (
        price_call("gpt-4o-mini", {"input_tokens": 1, "output_tokens": 0}, provider="openai") == 1
    )
    # Dated names and a missing provider resolve as genai-prices resolves them.
    assert (
        price_call(
            "gpt-4o-mini-2024-07-18",
            {"input_tokens": 1000, "output_tokens": 500},
            provider="openai",
        )
        == 450
    )
    assert price_call("gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500}) == 450


@settings(max_examples=150, deadline=None)
@given(
    ref=st.sampled_from(
        [
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-4o"),
            ("anthropic", "claude-sonnet-4-5"),  # tiered above 200k input tokens
            ("google_genai", "gemini-2.5-pro"),  # tiered, and a LangChain provider name
            ("deepseek", "deepseek-chat"),  # off-peak prices by time of day
        ]
    ),
    input_tokens=st.one_of(st.integers(0, 2_000_000), st.integers(199_990, 200_010)),
    output_tokens=st.integers(0, 200_000),
)
def test_cached_prices_equal_genai_prices_everywhere(
    ref: tuple[str, str], input_tokens: int, output_tokens: int
) -> None:
    provider, model = ref
    assert price_call(
        model, {"input_tokens": input_tokens, "output_tokens": output_tokens}, provider=provider
    ) == _genai_micros(provider, model, input_tokens, output_tokens)


def _genai_full(provider: str, model: str, **usage: int) -> int:
    calc = calc_price(Usage(**usage), model_ref=model, provider_id=provider)
    return math.ceil(calc.total_price * 1_000_000)


ANTHROPIC_CACHED = {
    "input_tokens": 10_000,  # LangChain counts every input token, cached ones included
    "output_tokens": 100,
    "total_tokens": 10_100,
    "input_token_details": {"cache_read": 9_000, "cache_creation": 0},
}
ANTHROPIC_WRITING = {
    "input_tokens": 10_000,
    "output_tokens": 100,
    "total_tokens": 10_100,
    "input_token_details": {"cache_read": 0, "cache_creation": 9_000},
}
OPENAI_CACHED = {
    "input_tokens": 10_000,
    "output_tokens": 400,
    "total_tokens": 10_400,
    "input_token_details": {"cache_read": 9_000, "audio": 0},
    "output_token_details": {"reasoning": 300, "audio": 0},  # reasoning is output
}


def test_prompt_caching_is_priced_on_the_full_usage() -> None:
    plain = {"input_tokens": 10_000, "output_tokens": 100}
    read = price_call("claude-sonnet-4-5", ANTHROPIC_CACHED, provider="anthropic")
    write = price_call("claude-sonnet-4-5", ANTHROPIC_WRITING, provider="anthropic")
    base = price_call("claude-sonnet-4-5", plain, provider="anthropic")
    assert read == _genai_full(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=10_000,
        cache_read_tokens=9_000,
        output_tokens=100,
    )
    assert write == _genai_full(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=10_000,
        cache_write_tokens=9_000,
        output_tokens=100,
    )
    # Cache reads cost a tenth of input, cache writes a quarter more: input/output pricing
    # alone would charge the first ~4.4x what it cost and undercharge the second.
    assert read < base / 4 and write > base
    assert price_call("gpt-4o", OPENAI_CACHED, provider="openai") == _genai_full(
        "openai", "gpt-4o", input_tokens=10_000, cache_read_tokens=9_000, output_tokens=400
    )


def test_usage_counts_map_langchain_details_to_genai_prices_fields() -> None:
    assert usage_counts(ANTHROPIC_WRITING) == {
        "input_tokens": 10_000,
        "output_tokens": 100,
        "cache_write_tokens": 9_000,
    }
    assert usage_counts(
        {
            "input_tokens": 50,
            "output_tokens": 20,
            "input_token_details": {"audio": 30},
            "output_token_details": {"audio": 5},
        }
    ) == {
        "input_tokens": 50,
        "output_tokens": 20,
        "input_audio_tokens": 30,
        "output_audio_tokens": 5,
    }


def test_a_policy_price_prices_cache_reads_and_writes() -> None:
    price = Price(
        input_per_mtok=3, output_per_mtok=15, cache_read_per_mtok=0.3, cache_write_per_mtok=3.75
    )
    prices = {"house": price}
    # 1,000 uncached * 3 + 9,000 read * 0.3 + 100 out * 15 = 3,000 + 2,700 + 1,500
    assert price_call("house", ANTHROPIC_CACHED, prices=prices) == 7_200
    # Without cache prices, cached tokens cost as input.
    assert (
        price_call(
            "house", ANTHROPIC_CACHED, prices={"house": Price(input_per_mtok=3, output_per_mtok=15)}
        )
        == 31_500
    )


def test_the_meter_records_cached_calls_at_their_price() -> None:
    usage = cast(Any, ANTHROPIC_CACHED)
    model = ScriptedChatModel(
        [AIMessage("cached", usage_metadata=usage)],
        model_name="claude-sonnet-4-5",
        provider="anthropic",
        max_tokens=100,
    )
    meter = BudgetMeter(Budget(usd=1), agent="a")
    model.invoke("hello", config={"callbacks": [meter]})
    (call,) = meter.calls
    assert call["usd_micros"] == price_call(
        "claude-sonnet-4-5", ANTHROPIC_CACHED, provider="anthropic"
    )
    assert call["usage_details"] == {"cache_read_tokens": 9_000}
    assert meter.spent.usd_micros == call["usd_micros"]


def test_a_policy_price_takes_precedence_and_rounds_up() -> None:
    prices = {
        "gpt-4o-mini": Price(input_per_mtok=1, output_per_mtok=2),
        "house-model": Price(input_per_mtok=0.15, output_per_mtok=0),
    }

    assert (
        price_call(
            "gpt-4o-mini",
            {"input_tokens": 1000, "output_tokens": 500},
            provider="openai",
            prices=prices,
        )
        == 2000
    )
    assert (
        price_call(
            "house-model",
            {"input_tokens": 10, "output_tokens": 99},
            provider="ollama",
            prices=prices,
        )
        == 2
    )  # 1.5 -> 2
    assert (
        price_call(
            "house-model", {"input_tokens": 0, "output_tokens": 0}, provider="ollama", prices=prices
        )
        == 0
    )


@pytest.mark.parametrize(
    ("provider", "model", "why"),
    [
        ("openai", "gpt-nonexistent", "genai-prices does not list this model"),
        ("ollama", "llama3", "genai-prices does not know the provider 'ollama'"),
    ],
)
def test_an_unknown_model_is_a_configuration_error_naming_it(
    provider: str, model: str, why: str
) -> None:
    message = (
        f"No price for model {model!r} from provider {provider!r}: {why}. Give its price in "
        f"the policy, in USD per million tokens: Budget(prices={{{model!r}: "
        "Price(input_per_mtok=..., output_per_mtok=...)}), or upgrade genai-prices "
        f"(installed: {GENAI}) if the model is new."
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        price_call(model, {"input_tokens": 10, "output_tokens": 10}, provider=provider)
    # The miss is cached: the same error again.
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        price_call(model, {"input_tokens": 10, "output_tokens": 10}, provider=provider)


def test_an_unknown_model_without_a_provider_is_a_configuration_error() -> None:
    message = (
        "No price for model 'mystery-7b' (no provider reported): genai-prices cannot match "
        "the model name to a provider. Give its price in the policy"
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        price_call("mystery-7b", {"input_tokens": 10, "output_tokens": 10})


# -- check_spend ----------------------------------------------------------------------------


def test_usd_limit_allows_exactly_the_limit_and_trips_one_micro_dollar_over() -> None:
    budget = Budget(usd=5)
    next_call = Spend(usd_micros=40_000, input_tokens=1000, output_tokens=500)

    trip, _ = check_spend(Spend(usd_micros=4_960_000), next_call, budget=budget, agent="analyst")
    assert trip is None

    trip, warnings = check_spend(
        Spend(usd_micros=4_960_001), next_call, budget=budget, agent="analyst", hops=7
    )
    assert trip is not None and warnings == []
    assert trip["message"] == (
        "The next model call would exceed Budget.usd=5 (spent=$4.960001, next call ~$0.04, "
        "agent='analyst'). Raise Budget.usd, or let a human top it up when the owner "
        "escalates."
    )
    assert {k: trip[k] for k in ("kind", "limit", "observed", "agent", "scope", "hop")} == {  # type: ignore[literal-required]
        "kind": "budget",
        "limit": 5,
        "observed": 5.000001,
        "agent": "analyst",
        "scope": "thread",
        "hop": 7,
    }
    assert dict(trip)["limit_key"] == "usd"


def test_a_usd_limit_is_read_exactly_despite_float_error() -> None:
    # 0.00397 * 1e6 == 3969.9999999999995 in floats; the limit is 3970 micro-dollars.
    budget = Budget(usd=0.00397)

    assert (
        check_spend(Spend(usd_micros=3000), Spend(usd_micros=970), budget=budget, agent="a")[0]
        is None
    )
    assert check_spend(Spend(usd_micros=3000), Spend(usd_micros=971), budget=budget, agent="a")[0]


def test_the_brief_example_message() -> None:
    trip, _ = check_spend(
        Spend(usd_micros=4_980_000), Spend(usd_micros=40_000), budget=Budget(usd=5), agent="analyst"
    )

    assert trip is not None
    assert trip["message"] == (
        "The next model call would exceed Budget.usd=5 (spent=$4.98, next call ~$0.04, "
        "agent='analyst'). Raise Budget.usd, or let a human top it up when the owner "
        "escalates."
    )


@pytest.mark.parametrize(
    ("budget", "at_limit", "over", "message"),
    [
        (
            Budget(tokens=1500),
            Spend(input_tokens=400, output_tokens=100),
            Spend(input_tokens=401, output_tokens=100),
            "The next model call would exceed Budget.tokens=1500 (spent=1000 tokens, next "
            "call ~501 tokens, agent='analyst'). Raise Budget.tokens, or let a human top it "
            "up when the owner escalates.",
        ),
        (
            Budget(input_tokens=1200),
            Spend(input_tokens=400, output_tokens=9999),
            Spend(input_tokens=401),
            "The next model call would exceed Budget.input_tokens=1200 (spent=800 input "
            "tokens, next call ~401 input tokens, agent='analyst'). Raise "
            "Budget.input_tokens, or let a human top it up when the owner escalates.",
        ),
        (
            Budget(output_tokens=300),
            Spend(input_tokens=9999, output_tokens=100),
            Spend(output_tokens=101),
            "The next model call would exceed Budget.output_tokens=300 (spent=200 output "
            "tokens, next call ~101 output tokens, agent='analyst'). Raise "
            "Budget.output_tokens, or let a human top it up when the owner escalates.",
        ),
    ],
    ids=["tokens", "input_tokens", "output_tokens"],
)
def test_token_limits_allow_the_limit_and_trip_one_token_over(
    budget: Budget, at_limit: Spend, over: Spend, message: str
) -> None:
    spent = Spend(input_tokens=800, output_tokens=200)

    assert check_spend(spent, at_limit, budget=budget, agent="analyst")[0] is None
    trip, _ = check_spend(spent, over, budget=budget, agent="analyst")

    assert trip is not None and trip["message"] == message
    assert dict(trip)["limit_key"] == message.split("Budget.")[1].split("=")[0]


def test_per_agent_limits_read_that_agents_spend_only() -> None:
    budget = Budget(usd=100, per_agent={"researcher": {"usd": 1, "tokens": 10_000}})
    by_agent = {
        "researcher": {"usd_micros": 990_000, "input_tokens": 10, "output_tokens": 0},
        "analyst": Spend(usd_micros=50_000_000),
    }
    next_call = Spend(usd_micros=20_000, input_tokens=100, output_tokens=100)

    assert (
        check_spend(Spend(), next_call, budget=budget, agent="analyst", spent_by_agent=by_agent)[0]
        is None
    )
    trip, _ = check_spend(
        Spend(usd_micros=51_000_000),
        next_call,
        budget=budget,
        agent="researcher",
        spent_by_agent=by_agent,
    )

    assert trip is not None
    assert trip["message"] == (
        "The next model call of 'researcher' would exceed "
        "Budget.per_agent['researcher']['usd']=1 (spent by 'researcher'=$0.99, next call "
        "~$0.02). Raise Budget.per_agent['researcher']['usd'], or let a human top it up "
        "when the owner escalates."
    )
    assert (trip["scope"], dict(trip)["limit_key"]) == ("agent", "usd:researcher")


def test_per_call_tokens_caps_one_projected_call() -> None:
    budget = Budget(per_call_tokens=4000)

    assert (
        check_spend(
            Spend(), Spend(input_tokens=1000, output_tokens=3000), budget=budget, agent="a"
        )[0]
        is None
    )
    trip, _ = check_spend(
        Spend(), Spend(input_tokens=1001, output_tokens=3000), budget=budget, agent="a"
    )

    assert trip is not None
    assert trip["message"] == (
        "The next model call would exceed Budget.per_call_tokens=4000 (next call ~4001 "
        "tokens: 1001 input + 3000 max output, agent='a'). Raise Budget.per_call_tokens, "
        "or lower the model's max_tokens or trim its input."
    )
    assert (trip["scope"], trip["limit"], trip["observed"]) == ("call", 4000, 4001)


def test_grants_raise_the_limit_they_name() -> None:
    budget = Budget(usd=5, per_agent={"a": {"tokens": 100}})
    spent = Spend(usd_micros=5_000_000, input_tokens=100)
    next_call = Spend(usd_micros=1_000_000, input_tokens=50)

    trip, _ = check_spend(spent, next_call, budget=budget, agent="a", spent_by_agent={"a": spent})
    assert trip is not None and dict(trip)["limit_key"] == "usd"

    trip, _ = check_spend(
        spent, next_call, budget=budget, agent="a", spent_by_agent={"a": spent}, grants={"usd": 1}
    )
    assert trip is not None and dict(trip)["limit_key"] == "tokens:a"
    assert trip["limit"] == 100

    trip, _ = check_spend(
        spent,
        next_call,
        budget=budget,
        agent="a",
        spent_by_agent={"a": spent},
        grants={"usd": 1, "tokens:a": 50},
    )
    assert trip is None


def test_warnings_fire_when_a_call_reaches_warn_at_and_only_once() -> None:
    budget = Budget(usd=4, tokens=1000, per_agent={"a": {"usd": 2}})
    next_call = Spend(usd_micros=1_000_000, input_tokens=10)

    assert check_spend(Spend(usd_micros=1_999_999), next_call, budget=budget, agent="a") == (
        None,
        [],
    )
    trip, warnings = check_spend(
        Spend(usd_micros=2_000_000),
        next_call,
        budget=budget,
        agent="a",
        spent_by_agent={"a": Spend(usd_micros=500_000)},
    )
    assert (trip, warnings) == (None, ["usd", "usd:a"])  # 3/4 and 1.5/2 reach 75%

    _, warnings = check_spend(
        Spend(usd_micros=2_000_000),
        next_call,
        budget=budget,
        agent="a",
        spent_by_agent={"a": Spend(usd_micros=500_000)},
        warned=["usd"],
    )
    assert warnings == ["usd:a"]


def test_a_trip_reports_no_warnings() -> None:
    trip, warnings = check_spend(
        Spend(usd_micros=3_000_000, input_tokens=900),
        Spend(usd_micros=2_000_000),
        budget=Budget(usd=4, tokens=1000),
        agent="a",
    )

    assert trip is not None and warnings == []


limits = st.builds(
    Budget,
    usd=st.one_of(st.none(), st.integers(1, 50).map(lambda c: c / 10)),
    tokens=st.one_of(st.none(), st.integers(1, 5000)),
    input_tokens=st.one_of(st.none(), st.integers(1, 5000)),
    output_tokens=st.one_of(st.none(), st.integers(1, 5000)),
    per_agent=st.one_of(
        st.none(),
        st.builds(
            lambda usd, tokens: {"a": {"usd": usd, "tokens": tokens}},
            st.integers(1, 50).map(lambda c: c / 10),
            st.integers(1, 5000),
        ),
    ),
)
small_spends = st.builds(
    Spend,
    usd_micros=st.integers(0, 6_000_000),
    input_tokens=st.integers(0, 6000),
    output_tokens=st.integers(0, 6000),
)


@settings(max_examples=400, deadline=None)
@given(budget=limits, spent=small_spends, by_agent=small_spends, projected=small_spends)
def test_check_spend_never_lets_a_limit_be_exceeded_without_tripping(
    budget: Budget, spent: Spend, by_agent: Spend, projected: Spend
) -> None:
    trip, _ = check_spend(
        spent, projected, budget=budget, agent="a", spent_by_agent={"a": by_agent}
    )
    after, mine = spent + projected, by_agent + projected
    exceeded = [
        budget.usd is not None and after.usd_micros > round(budget.usd * 1_000_000),
        budget.tokens is not None and after.tokens > budget.tokens,
        budget.input_tokens is not None and after.input_tokens > budget.input_tokens,
        budget.output_tokens is not None and after.output_tokens > budget.output_tokens,
    ]
    if budget.per_agent:
        agent_limits: Mapping[str, float] = budget.per_agent["a"]  # type: ignore[assignment]
        exceeded += [
            mine.usd_micros > round(agent_limits["usd"] * 1_000_000),
            mine.tokens > agent_limits["tokens"],
        ]
    assert (trip is not None) == any(exceeded)


grant_maps = st.dictionaries(
    st.sampled_from(["usd", "tokens", "input_tokens", "per_call_tokens", "usd:a", "tokens:a"]),
    st.integers(-2000, 2000).map(lambda n: n / 4),
    max_size=3,
)
gated_budgets = st.builds(
    lambda budget, cap, warn_at: Budget(
        usd=budget.usd,
        tokens=budget.tokens,
        input_tokens=budget.input_tokens,
        output_tokens=budget.output_tokens,
        per_agent=budget.per_agent,
        per_call_tokens=cap,
        warn_at=warn_at,
    ),
    limits,
    st.one_of(st.none(), st.integers(1, 9000)),
    st.sampled_from([0.5, 0.75, 0.9, 1.0]),
)


@settings(max_examples=500, deadline=None)
@given(
    budget=gated_budgets,
    grants=grant_maps,
    spent=small_spends,
    before=small_spends,
    own=small_spends,
    projected=small_spends,
    warned=st.sets(st.sampled_from(["usd", "tokens", "tokens:a"])),
)
def test_the_meters_gate_only_skips_checks_that_neither_trip_nor_warn(
    budget: Budget,
    grants: dict[str, float],
    spent: Spend,
    before: Spend,
    own: Spend,
    projected: Spend,
    warned: set[str],
) -> None:
    # The meter skips check_spend when the gate says every limit stays below its warning
    # threshold: check_spend must then say (None, []), whatever was warned before.
    gate = intake_module._make_gate(budget, "a", grants)
    expected = check_spend(
        spent,
        projected,
        budget=budget,
        agent="a",
        spent_by_agent={"a": before + own},
        grants=grants,
        warned=warned,
    )
    after = spent + projected  # the thread's spend and the agent's, with the call
    mine = own + projected
    args = (after.usd_micros, after.input_tokens, after.output_tokens, before)
    if intake_module.below(
        gate, projected.tokens, *args, mine.usd_micros, mine.input_tokens, mine.output_tokens
    ):
        assert expected == (None, [])
    elif not grants and not warned and budget.per_call_tokens is None:
        # Reaching a threshold means check_spend warns or trips.
        assert expected[0] is not None or expected[1]


def test_a_budget_trip_becomes_budget_exceeded() -> None:
    trip, _ = check_spend(
        Spend(usd_micros=5_000_000), Spend(usd_micros=1), budget=Budget(usd=5), agent="a"
    )
    assert trip is not None

    exc = GuardTripped.from_trip(trip)

    assert isinstance(exc, BudgetExceeded) and isinstance(exc, RuntimeError)
    assert (exc.kind, exc.limit, exc.observed, exc.agent) == ("budget", 5, 5.000001, "a")
    assert exc.trip["message"] == trip["message"]


# -- the meter on real model calls ---------------------------------------------------------


class NoUsageModel(ScriptedChatModel):
    """A scripted model whose answers carry no usage_metadata (as some integrations)."""

    def _next_response(self, messages: list[BaseMessage]) -> AIMessage:
        message = super()._next_response(messages)
        message.usage_metadata = None
        return message


class MemoryPool:
    """A tiny in-memory SpendPool (one process): USD only."""

    def __init__(self, usd_micros: int) -> None:
        self.left = usd_micros
        self.log: list[tuple[str, Any]] = []

    def reserve(self, amount: Spend, *, key: str) -> object | None:
        if amount.usd_micros > self.left:
            self.log.append(("refused", key))
            return None
        self.left -= amount.usd_micros
        self.log.append(("reserve", key))
        return (key, amount)

    def commit(self, reservation: Any, actual: Spend) -> None:
        key, amount = reservation
        self.left += amount.usd_micros - actual.usd_micros
        self.log.append(("commit", key))

    def release(self, reservation: Any) -> None:
        key, amount = reservation
        self.left += amount.usd_micros
        self.log.append(("release", key))


def test_the_model_is_not_called_when_the_projection_exceeds_the_budget() -> None:
    model = ScriptedChatModel(["never sent"], max_tokens=1000)
    meter = BudgetMeter(Budget(usd=0.0006), agent="analyst")

    # "hello" is 6 input tokens; 6 + 1000 max tokens of gpt-4o-mini cost $0.000601.
    assert (
        _tokens("hello") == 6
        and price_call("gpt-4o-mini", {"input_tokens": 6, "output_tokens": 1000}, provider="openai")
        == 601
    )
    message = (
        "The next model call would exceed Budget.usd=0.0006 (spent=$0.00, next call "
        "~$0.000601, agent='analyst'). Raise Budget.usd, or let a human top it up when the "
        "owner escalates."
    )
    with pytest.raises(BudgetExceeded, match=re.escape(message)) as caught:
        model.invoke("hello", config={"callbacks": [meter]})

    assert model.call_count == 0 and model.calls == []
    assert caught.value.trip["limit_key"] == "usd"
    assert meter.trip is not None and meter.trip["message"] == message
    assert (meter.spent, meter.calls) == (Spend(), [])


def test_allowed_calls_accumulate_usage_and_cost_exactly() -> None:
    model = ScriptedChatModel(["first answer", "a second, longer answer"], max_tokens=100)
    records: list[dict[str, Any]] = []
    meter = BudgetMeter(
        Budget(usd=1), agent="analyst", spent_before=Spend(usd_micros=7), on_call=records.append
    )

    replies = [model.invoke(text, config={"callbacks": [meter]}) for text in ("hello", "again")]

    usages = [r.usage_metadata for r in replies]
    assert all(u is not None for u in usages)
    expected = [
        Spend(
            usd_micros=price_call(
                "gpt-4o-mini",
                {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"]},
                provider="openai",
            ),
            input_tokens=u["input_tokens"],
            output_tokens=u["output_tokens"],
        )
        for u in usages
        if u is not None
    ]
    assert meter.spent == expected[0] + expected[1]
    assert meter.calls == records
    assert [
        (c["index"], c["provider"], c["model"], c["input_tokens"], c["usd_micros"], c["estimated"])
        for c in records
    ] == [
        (0, "openai", "gpt-4o-mini", expected[0].input_tokens, expected[0].usd_micros, False),
        (1, "openai", "gpt-4o-mini", expected[1].input_tokens, expected[1].usd_micros, False),
    ]
    first = records[0]
    assert first["max_tokens"] == 100 and first["agent"] == "analyst"
    assert first["projected"] == {
        "usd_micros": price_call(
            "gpt-4o-mini", {"input_tokens": 6, "output_tokens": 100}, provider="openai"
        ),
        "input_tokens": 6,
        "output_tokens": 100,
    }
    assert first["key"].startswith("meter-") and first["key"].endswith("|0")
    assert records[1]["key"] == first["key"][:-1] + "1"


def test_a_runaway_loop_stops_within_the_budget_when_max_tokens_is_known() -> None:
    # Each answer is well under max_tokens, so each call costs at most its projection.
    model = ScriptedChatModel(["partial result " * 20], cycle=True, max_tokens=400)
    meter = BudgetMeter(Budget(usd=0.005), agent="runaway")

    made = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(1000):
            model.invoke("keep going", config={"callbacks": [meter]})
            made += 1

    assert 0 < made == model.call_count == len(meter.calls)
    assert meter.spent.usd_micros <= 5_000
    # The call that was refused would have gone over.
    projection = meter.calls[-1]["projected"]["usd_micros"]
    assert meter.spent.usd_micros + projection > 5_000


def test_a_token_budget_allows_a_call_that_lands_exactly_on_it() -> None:
    projected = _tokens("hello") + 50
    model = ScriptedChatModel(["ok", "ok"], max_tokens=50)

    model.invoke("hello", config={"callbacks": [BudgetMeter(Budget(tokens=projected), agent="a")]})
    with pytest.raises(BudgetExceeded, match=re.escape(f"Budget.tokens={projected - 1} ")):
        model.invoke(
            "hello", config={"callbacks": [BudgetMeter(Budget(tokens=projected - 1), agent="a")]}
        )

    assert model.call_count == 1


def test_spend_before_the_step_and_per_agent_spend_count() -> None:
    model = ScriptedChatModel(["ok"], max_tokens=10)
    budget = Budget(usd=10, per_agent={"analyst": {"tokens": 1000}})
    meter = BudgetMeter(
        budget,
        agent="analyst",
        spent_before={"usd_micros": 1_000_000, "input_tokens": 5000, "output_tokens": 0},
        spent_by_agent_before={"analyst": {"input_tokens": 990}, "other": {"input_tokens": 1}},
    )

    with pytest.raises(BudgetExceeded, match=re.escape("Budget.per_agent['analyst']['tokens']")):
        model.invoke("hello", config={"callbacks": [meter]})
    assert model.call_count == 0


def test_per_call_tokens_blocks_a_call_with_a_large_max_tokens() -> None:
    model = ScriptedChatModel(["ok"], max_tokens=8000)
    meter = BudgetMeter(Budget(per_call_tokens=4000), agent="a")

    with pytest.raises(
        BudgetExceeded, match=re.escape("Budget.per_call_tokens=4000 (next call ~8006")
    ):
        model.invoke("hello", config={"callbacks": [meter]})
    assert model.call_count == 0
    # max_tokens passed at call time is what the provider gets: it is what is projected.
    model.invoke("hello", config={"callbacks": [meter]}, max_tokens=100)
    assert meter.calls[0]["max_tokens"] == 100


def test_without_max_tokens_a_call_reserves_the_output_allowance() -> None:
    model = ScriptedChatModel(["ok", "again"])
    meter = BudgetMeter(Budget(tokens=10_000), agent="a")
    model.invoke("hello", config={"callbacks": [meter]})
    assert meter.calls[0]["projected"]["output_tokens"] == 1000  # the default allowance
    assert meter.calls[0]["max_tokens"] is None

    small = BudgetMeter(Budget(tokens=10_000, assume_output_tokens=50), agent="a")
    model.invoke("hello", config={"callbacks": [small]})
    assert small.calls[0]["projected"]["output_tokens"] == 50


def test_the_output_allowance_is_not_the_calls_size_for_per_call_tokens() -> None:
    model = ScriptedChatModel(["ok"])
    meter = BudgetMeter(Budget(per_call_tokens=100), agent="a")  # no max_tokens: input only
    model.invoke("hello", config={"callbacks": [meter]})
    assert model.call_count == 1


def test_a_chain_is_metered() -> None:
    model = ScriptedChatModel(["one", "two"], model_name="claude-sonnet-4-5", provider="anthropic")
    chain = ChatPromptTemplate.from_messages([("user", "Summarize {topic}")]) | model
    meter = BudgetMeter(Budget(usd=1), agent="a")

    chain.invoke({"topic": "tides"}, config={"callbacks": [meter]})

    (call,) = meter.calls
    assert (call["provider"], call["model"]) == ("anthropic", "claude-sonnet-4-5")
    assert call["usd_micros"] == price_call(
        "claude-sonnet-4-5",
        {"input_tokens": call["input_tokens"], "output_tokens": call["output_tokens"]},
        provider="anthropic",
    )
    assert call["parent_run_id"] is not None  # the chain's run


def test_models_called_inside_a_lambda_and_a_tool_are_metered_and_blocked() -> None:
    model = ScriptedChatModel(["from lambda", "from tool", "never"], max_tokens=100)

    @tool
    def ask(question: str) -> str:
        """Ask the model."""
        return str(model.invoke(question).content)

    step = RunnableLambda(lambda q: model.invoke(q)) | RunnableLambda(
        lambda m: ask.invoke(m.content)
    )
    meter = BudgetMeter(Budget(usd=1), agent="a")
    assert step.invoke("hello", config={"callbacks": [meter]}) == "from tool"
    assert [c["index"] for c in meter.calls] == [0, 1]

    blocked = BudgetMeter(Budget(tokens=50), agent="a")  # 100 max tokens alone exceed it
    with pytest.raises(BudgetExceeded):
        ask.invoke({"question": "hello"}, config={"callbacks": [blocked]})
    assert model.call_count == 2


def test_streaming_is_metered_from_the_last_chunk() -> None:
    model = ScriptedChatModel(["several words in a stream"], max_tokens=50)
    meter = BudgetMeter(Budget(usd=1), agent="a")

    chunks = list(model.stream("hello", config={"callbacks": [meter]}))

    (call,) = meter.calls
    usage = chunks[-1].usage_metadata
    assert usage is not None
    assert (call["input_tokens"], call["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert call["estimated"] is False


def test_a_model_without_usage_is_estimated_never_free() -> None:
    model = NoUsageModel(["an answer of a few words"], model_name="no-usage-a", provider="house")
    prices = {"no-usage-a": Price(input_per_mtok=1, output_per_mtok=2)}
    meter = BudgetMeter(Budget(usd=1, prices=prices), agent="a")

    reply = model.invoke("hello", config={"callbacks": [meter]})

    assert reply.usage_metadata is None
    (call,) = meter.calls
    output = count_tokens_approximately([reply])
    assert (call["input_tokens"], call["output_tokens"], call["estimated"]) == (6, output, True)
    assert call["usd_micros"] == 6 * 1 + output * 2 > 0


def test_a_model_without_usage_is_refused_when_the_policy_says_so() -> None:
    model = NoUsageModel(["first", "second"], model_name="no-usage-b", provider="house")
    budget = Budget(
        usd=1, no_usage="refuse", prices={"no-usage-b": Price(input_per_mtok=1, output_per_mtok=1)}
    )
    records: list[dict[str, Any]] = []
    refused: set[tuple[str | None, str]] = set()  # a run's meters share one set
    meter = BudgetMeter(budget, agent="a", on_call=records.append, refused=refused)

    first = (
        "Model 'no-usage-b' (provider 'house') answered without usage_metadata and "
        "Budget.no_usage='refuse'. This call's spend was estimated (6 input + "
    )
    with pytest.raises(ConfigurationError, match=re.escape(first)):
        model.invoke("hello", config={"callbacks": [meter]})
    # The call that revealed it happened: its estimated spend is recorded.
    assert model.call_count == 1 and len(records) == 1 and meter.spent.usd_micros > 0

    later = (
        "Model 'no-usage-b' (provider 'house') reports no usage_metadata and "
        "Budget.no_usage='refuse': the call was not made. Use a chat model integration that "
        "reports usage, or set Budget(no_usage='estimate')."
    )
    with pytest.raises(ConfigurationError, match=re.escape(later)):
        model.invoke(
            "hello", config={"callbacks": [BudgetMeter(budget, agent="a", refused=refused)]}
        )
    assert model.call_count == 1 and refused == {("house", "no-usage-b")}


def test_an_unknown_model_fails_at_its_first_call_before_it_is_made() -> None:
    model = ScriptedChatModel(["never"], model_name="house-model-9", provider="house")
    meter = BudgetMeter(Budget(usd=1), agent="a")

    with pytest.raises(
        ConfigurationError,
        match=re.escape("No price for model 'house-model-9' from provider 'house'"),
    ):
        model.invoke("hello", config={"callbacks": [meter]})
    assert model.call_count == 0


def test_the_pool_reserves_commits_and_refuses() -> None:
    model = ScriptedChatModel(["ok"], cycle=True, max_tokens=100)
    projection = price_call(
        "gpt-4o-mini", {"input_tokens": 6, "output_tokens": 100}, provider="openai"
    )  # 61 micro-dollars
    pool = MemoryPool(usd_micros=2 * projection)
    meter = BudgetMeter(Budget(usd=100), agent="a", pool=pool, key="t1|node:task")
    assert isinstance(pool, SpendPool)

    model.invoke("hello", config={"callbacks": [meter]})
    model.invoke("hello", config={"callbacks": [meter]})
    assert pool.log == [
        ("reserve", "t1|node:task|0"),
        ("commit", "t1|node:task|0"),
        ("reserve", "t1|node:task|1"),
        ("commit", "t1|node:task|1"),
    ]
    # Committed at the real price: what the projection over-reserved came back.
    assert pool.left == 2 * projection - meter.spent.usd_micros

    pool.left = projection - 1
    message = (
        "The next model call would exceed the shared budget pool (next call ~$0.000061, "
        "106 tokens, agent='a'): the pool refused the reservation. Raise the pool's limit, "
        "or let a human top it up when the owner escalates."
    )
    with pytest.raises(BudgetExceeded, match=re.escape(message)) as caught:
        model.invoke("hello", config={"callbacks": [meter]})
    assert model.call_count == 2
    assert caught.value.trip["scope"] == "pool" and caught.value.trip["limit_key"] == "pool"
    assert pool.log[-1] == ("refused", "t1|node:task|2")


def test_a_failed_call_releases_its_reservation() -> None:
    model = ScriptedChatModel([])  # every call raises ScriptExhausted, inside the model
    pool = MemoryPool(usd_micros=1000)
    meter = BudgetMeter(Budget(usd=1), agent="a", pool=pool)

    with pytest.raises(ScriptExhausted):
        model.invoke("hello", config={"callbacks": [meter]})

    assert [entry[0] for entry in pool.log] == ["reserve", "release"]
    assert pool.left == 1000 and meter.calls == [] and meter.spent == Spend()


def test_warnings_are_recorded_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedChatModel(["ok"], cycle=True, max_tokens=10)
    per_call = _tokens("hello") + 10
    meter = BudgetMeter(Budget(tokens=per_call * 4), agent="a", warned=["usd"])

    with caplog.at_level(logging.WARNING, logger="sanegraph.guards.budget"):
        for _ in range(4):
            model.invoke("hello", config={"callbacks": [meter]})

    assert meter.warnings == ["tokens"]
    logged = [r.getMessage() for r in caplog.records if r.name == "sanegraph.guards.budget"]
    assert logged == ["Budget warning: the model calls of 'a' reached 75% of the tokens limit."]


def test_calls_in_flight_count_until_they_end() -> None:
    projection = price_call(
        "gpt-4o-mini", {"input_tokens": 6, "output_tokens": 100}, provider="openai"
    )
    meter = BudgetMeter(Budget(usd=3 * projection / 1_000_000), agent="a")
    metadata = {"ls_provider": "openai", "ls_model_name": "gpt-4o-mini", "ls_max_tokens": 100}
    runs = [uuid4() for _ in range(4)]

    def start(run: UUID) -> None:
        meter.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=run, metadata=metadata)

    for run in runs[:3]:
        start(run)
    with pytest.raises(BudgetExceeded, match=re.escape("(spent=$0.000183, next call ~$0.000061")):
        start(runs[3])
    meter.on_llm_error(RuntimeError("provider down"), run_id=runs[0])
    start(runs[3])  # the failed call's projection no longer counts


class GatedModel(ScriptedChatModel):
    """Answers only once `gate` parties are inside a call at the same time."""

    gate: Any = None

    def _next_response(self, messages: list[BaseMessage]) -> AIMessage:
        self.gate.wait()
        return super()._next_response(messages)


def test_parallel_calls_of_one_step_never_overspend() -> None:
    # Each answer uses all of max_tokens: a call costs exactly its projection.
    full = AIMessage(
        "ok", usage_metadata={"input_tokens": 6, "output_tokens": 100, "total_tokens": 106}
    )
    model = GatedModel([full], cycle=True, max_tokens=100)
    model.gate = threading.Barrier(3, timeout=10)
    projection = price_call(
        "gpt-4o-mini", {"input_tokens": 6, "output_tokens": 100}, provider="openai"
    )
    meter = BudgetMeter(Budget(usd=3.5 * projection / 1_000_000), agent="a")

    results = model.batch(
        ["hello"] * 8, config={"callbacks": [meter], "max_concurrency": 8}, return_exceptions=True
    )

    # Three calls fit, and run at the same time (the gate opens only for three at once);
    # the other five are refused whether they start before or after those end.
    assert [type(r).__name__ for r in results].count("AIMessage") == 3
    assert [type(r).__name__ for r in results].count("BudgetExceeded") == 5
    assert model.call_count == len(meter.calls) == 3
    assert meter.spent.usd_micros == 3 * projection


async def test_the_sync_inline_handler_blocks_an_async_call() -> None:
    model = ScriptedChatModel(["allowed", "never"], max_tokens=100)
    meter = BudgetMeter(Budget(tokens=_tokens("hello") + 100), agent="a")

    reply = await model.ainvoke("hello", config={"callbacks": [meter]})
    with pytest.raises(BudgetExceeded, match=re.escape("Budget.tokens=")):
        await model.ainvoke("hello", config={"callbacks": [meter]})

    assert reply.content == "allowed" and model.call_count == 1
    assert len(meter.calls) == 1


# -- counting input tokens: cached per message ------------------------------------------

texts = st.text(max_size=40)
blocks = st.one_of(
    texts,
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, texts),
    st.builds(lambda v: {"type": "other", "value": v}, st.integers() | texts),
)
contents = st.one_of(texts, st.lists(blocks, max_size=4))
names = st.one_of(st.none(), st.text(min_size=1, max_size=8))
tool_calls = st.lists(
    st.builds(
        lambda name, args, i: {"name": name, "args": args, "id": f"call_{i}"},
        st.text(min_size=1, max_size=8),
        st.dictionaries(st.text(max_size=5), st.integers() | texts | st.booleans(), max_size=3),
        st.integers(0, 99),
    ),
    max_size=3,
)
messages = st.one_of(
    st.builds(HumanMessage, content=contents, name=names),
    st.builds(
        lambda content, calls, name: AIMessage(content=content, tool_calls=calls, name=name),
        contents,
        tool_calls,
        names,
    ),
    st.builds(ToolMessage, content=contents, tool_call_id=st.text(max_size=12), name=names),
    st.builds(SystemMessage, content=contents),
    st.builds(ChatMessage, content=contents, role=st.sampled_from(["user", "critic"])),
)
tool_schemas = st.lists(
    st.builds(
        lambda name, description: {
            "type": "function",
            "function": {"name": name, "description": description, "parameters": {}},
        },
        st.text(min_size=1, max_size=10),
        texts,
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(messages, max_size=8), tools=tool_schemas)
def test_a_batch_counts_as_the_sum_of_its_messages_plus_the_tools_once(
    batch: list[BaseMessage], tools: list[dict[str, Any]]
) -> None:
    # count_tokens_approximately rounds up per message (no usage-metadata scaling by
    # default): what lets the meter cache each message's count.
    whole = count_tokens_approximately(batch, tools=tools or None)
    parts = sum(count_tokens_approximately([m]) for m in batch)
    tools_part = count_tokens_approximately([], tools=tools) if tools else 0

    assert whole == parts + tools_part
    counter = TokenCounter()
    assert counter.count(batch) == parts  # counted, then cached
    assert counter.count(batch) == parts  # from the cache
    if tools:
        assert counter.tools(tools) == tools_part
        assert counter.tools(tools) == tools_part


def _fresh(batch: list[BaseMessage]) -> int:
    return count_tokens_approximately(batch)


def test_a_cached_count_is_recounted_when_a_message_changes() -> None:
    human = HumanMessage("What is known about the topic?")
    call = {"name": "lookup", "args": {"query": "topic"}, "id": "call_1"}
    ai = AIMessage("Let me look.", tool_calls=[call])
    tool = ToolMessage("Found 3 results.", tool_call_id="call_1")
    blocks = AIMessage([{"type": "text", "text": "a list of blocks"}])
    system = SystemMessage("Be brief.")
    batch: list[BaseMessage] = [human, ai, tool, blocks, system]
    counter = TokenCounter()
    assert counter.count(batch) == _fresh(batch)

    human.content = "A much longer question about what is known about the topic?"
    ai.tool_calls = [*ai.tool_calls, {**call, "id": "call_2"}]  # a new list
    tool.tool_call_id = "call_1_with_a_longer_id"
    human.name = "a_named_user"
    assert counter.count(batch) == _fresh(batch)

    ai.tool_calls.append({**call, "id": "call_3"})  # the same list, one more call
    cast_blocks: list[Any] = blocks.content  # type: ignore[assignment]
    cast_blocks.append({"type": "text", "text": "a second block, appended in place"})
    system.additional_kwargs["__openai_role__"] = "developer"
    assert counter.count(batch) == _fresh(batch)


def test_each_call_counts_only_the_messages_it_has_not_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[int] = []

    def counting(batch: Any, **kwargs: Any) -> int:
        counted.append(len(list(batch)))
        return count_tokens_approximately(batch, **kwargs)

    monkeypatch.setattr(tokens_module, "count_tokens_approximately", counting)
    conversation: list[BaseMessage] = [HumanMessage("Summarize the topics.")]
    model = ScriptedChatModel(["a", "b", "c"], max_tokens=10)
    meter = BudgetMeter(Budget(tokens=10_000), agent="a")
    for turn in range(3):
        with metering(meter):
            conversation.append(model.invoke(conversation))
        conversation.append(HumanMessage(f"And topic {turn}?"))

    # One message at a time, each once: the first question, then each answer and question.
    assert counted == [1, 1, 1, 1, 1]
    projected = [c["projected"]["input_tokens"] for c in meter.calls]
    assert projected == [count_tokens_approximately(m) for m in model.calls]


def test_the_tools_part_is_cached_for_the_same_list_of_the_same_tools() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    counter = TokenCounter()
    first = counter.tools(tools)
    assert first == count_tokens_approximately([], tools=tools)

    tools.append({"type": "function", "function": {"name": "search_the_web", "parameters": {}}})
    assert counter.tools(tools) == count_tokens_approximately([], tools=tools) > first


def test_the_count_cache_is_bounded() -> None:
    counter = TokenCounter(max_entries=8)
    batch: list[BaseMessage] = [HumanMessage(f"message {i}") for i in range(20)]

    assert counter.count(batch) == _fresh(batch)
    assert len(counter) <= 8
    assert counter.count(batch) == _fresh(batch)


def test_the_count_cache_holds_no_message() -> None:
    import gc
    import weakref

    counter = TokenCounter()
    big = HumanMessage("x" * 200_000)
    alive = weakref.ref(big)
    assert counter.count([big]) == _fresh([big])
    del big
    gc.collect()
    assert alive() is None  # the counter kept no strong reference


# -- metering(): every call made in a context ---------------------------------------------


def test_metering_sees_calls_made_with_their_own_callbacks() -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    model = ScriptedChatModel(["x"], cycle=True, max_tokens=10)
    meter = BudgetMeter(Budget(usd=1), agent="a")

    with metering(meter):
        model.invoke("no config")
        model.invoke("explicit callbacks", config={"callbacks": [BaseCallbackHandler()]})
        RunnableLambda(lambda q: model.invoke(q)).invoke("nested")
    model.invoke("outside the block")

    assert model.call_count == 4 and len(meter.calls) == 3


async def test_metering_follows_async_tasks() -> None:
    import asyncio

    model = ScriptedChatModel(["x"], cycle=True, max_tokens=10)
    meter = BudgetMeter(Budget(usd=1), agent="a")

    with metering(meter):
        await asyncio.gather(model.ainvoke("one"), model.ainvoke("two"))

    assert sorted(c["index"] for c in meter.calls) == [0, 1]


def test_nested_metering_meters_each_call_once_by_the_innermost_step() -> None:
    model = ScriptedChatModel(["x"], cycle=True, max_tokens=10)
    thread = ThreadSpend("t")  # the steps of one thread share its spend
    outer = BudgetMeter(Budget(usd=1), agent="supervisor", thread=thread)
    inner = BudgetMeter(Budget(usd=1), agent="worker", thread=thread)

    with metering(outer):
        model.invoke("outer call")
        with metering(inner):
            model.invoke("inner call", config={"callbacks": [outer]})
        model.invoke("outer again")

    assert [c["agent"] for c in outer.calls] == ["supervisor", "supervisor"]
    assert [c["agent"] for c in inner.calls] == ["worker"]
    assert outer.spent.usd_micros == sum(c["usd_micros"] for c in outer.calls)
    paid = thread.paid()
    assert paid.total == outer.spent + inner.spent
    assert paid.by_agent == {"supervisor": outer.spent, "worker": inner.spent}


def test_an_inner_step_counts_what_the_enclosing_step_spent() -> None:
    model = ScriptedChatModel(["x"], cycle=True, max_tokens=10)
    per_call = _tokens("hello") + 10
    budget = Budget(tokens=2 * per_call)
    thread = ThreadSpend("t")
    outer = BudgetMeter(budget, agent="supervisor", thread=thread)
    inner = BudgetMeter(budget, agent="worker", thread=thread)

    with metering(outer):
        model.invoke("hello")
        with metering(inner):
            model.invoke("hello")
            with pytest.raises(BudgetExceeded):
                model.invoke("hello")  # the thread's third call of `per_call` tokens
        with pytest.raises(BudgetExceeded):
            model.invoke("hello")

    assert model.call_count == 2


def test_updated_prices_reach_the_next_pricer() -> None:
    # genai-prices' UpdatePrices installs a new snapshot: pricers made from the old one
    # must not keep the old price.
    import dataclasses
    from decimal import Decimal

    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    from sanegraph.guards.budget.pricing import pricer

    old = data_snapshot.get_snapshot()
    assert pricer("gpt-4o-mini", provider="openai")(1000, 500) == 450
    provider, _ = old.find_provider_model("gpt-4o-mini", None, "openai", None)
    models = [
        dataclasses.replace(m, prices=ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(2)))
        if m.id == "gpt-4o-mini"
        else m
        for m in provider.models
    ]
    providers = [
        dataclasses.replace(p, models=models) if p is provider else p for p in old.providers
    ]
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=providers, from_auto_update=False)
    )
    try:
        assert pricer("gpt-4o-mini", provider="openai")(1000, 500) == 2000
        assert (
            price_call(
                "gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500}, provider="openai"
            )
            == 2000
        )
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert pricer("gpt-4o-mini", provider="openai")(1000, 500) == 450
