"""``LoopPolicy``: which loop detectors run, and their limits. Plain data.

The detectors are in :mod:`.detectors`; what one step contributes to the window is built
in :mod:`.entry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .._frozen import FrozenDict
from ..errors import ConfigurationError
from ..ledger import DEFAULT_WINDOW
from .similarity import MinHash

__all__ = (
    "FingerprintPart",
    "LoopDetector",
    "LoopPolicy",
    "Similarity",
)

FingerprintPart = Literal["output", "tool_calls", "request"]
"""What an agent's action fingerprint covers (:attr:`LoopPolicy.fingerprint`).

- ``"output"``: the step's envelope: status, result and reason, normalized (whitespace,
  case, timestamps and ids masked).
- ``"tool_calls"``: the tools the step called, with their arguments and the results it saw
  (so paging through results that change is not a repeat).
- ``"request"``: what the agent was asked: the last message of ``state["messages"]``, or
  else the newest envelope of another agent. Cover it for routers and supervisors, whose
  answer legitimately repeats while their input changes.
"""

LoopDetector = Literal[
    "repeat", "copy", "cycle", "near_duplicate", "tool_repeat", "tool_errors", "no_progress"
]
"""Which detector fired: the ``detector`` key of a loop trip. The trip's ``kind`` is
``"loop_repeat"``, ``"loop_copy"``, ``"loop_cycle"``, ``"loop_near_duplicate"``,
``"tool_repeat"``, ``"tool_errors"`` or ``"no_progress"`` respectively."""

_PARTS: tuple[FingerprintPart, ...] = ("output", "tool_calls", "request")
_MINHASH = MinHash()


@runtime_checkable
class Similarity(Protocol):
    """How near-duplicates are recognised: a short signature per text, and a similarity.

    The signature is stored in the ledger's window, so keep it short (under ~100
    characters) and JSON-ready; the similarity must be deterministic. The default is
    :class:`MinHash`. To use embeddings, sign each text with a locality-sensitive hash of
    its embedding (e.g. the signs of 64 random projections, as hex) and return the share
    of equal bits.

    Example:
        ```python
        class Exact:
            def signature(self, text: str) -> str:
                return text[:32]

            def similarity(self, a: str, b: str) -> float:
                return float(a == b)

        LoopPolicy(similarity=Exact())
        ```
    """

    def signature(self, text: str) -> str:
        """The signature of ``text`` (already normalized); ``""`` for none."""
        ...

    def similarity(self, a: str, b: str) -> float:
        """How similar the texts behind two signatures are, from 0 to 1."""
        ...


def _count(name: str, value: Any, minimum: int, remedy: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"LoopPolicy.{name} must be a whole number >= {minimum} or None (detector "
            f"off), got {value!r}. {remedy}"
        )


def _parts(name: str, value: Any) -> tuple[FingerprintPart, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list, set, frozenset)):
        raise ConfigurationError(
            f"LoopPolicy.{name} must be a tuple of {', '.join(map(repr, _PARTS))}, got "
            f"{value!r}. Pass e.g. ('output', 'tool_calls')."
        )
    out: list[FingerprintPart] = []
    for part in value:
        if part not in _PARTS:
            raise ConfigurationError(
                f"LoopPolicy.{name} has an unknown part {part!r}. Use "
                f"{', '.join(map(repr, _PARTS))}, or () to fingerprint nothing."
            )
        if part not in out:
            out.append(part)
    # A fixed order: the fingerprint must not depend on how the parts were listed.
    return tuple(p for p in _PARTS if p in out)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopPolicy:
    """Deterministic loop detectors over the window of the thread's recent steps.

    Each detector trips as soon as its pattern is in the window (the new step included),
    and routes the run to the task owner like any other trip; set a detector's limit to
    None to turn it off. Counts are of steps at different hops: parallel steps of one
    superstep count once. The comparisons:

    - repeat: ``same agent and fingerprint, count >= max_repeats``
    - copy: ``same result (16+ characters) from 2+ agents, count >= max_copies``
    - cycle: ``the last p * max_cycles steps are max_cycles copies of p >= 2 steps of 2+
      agents`` (agent and fingerprint equal)
    - near-duplicate: ``max_near_duplicates`` outputs of one agent, each pair with
      ``similarity >= min_similarity`` (revisions that keep drifting away from earlier
      versions never all match: a writer who really improves a draft does not trip)
    - tool repeat: ``calls with the same tool, arguments and result > max_tool_repeats``
      (a pending call counts as answering like the tool's latest answer)
    - tool errors: ``consecutive errors of one tool > max_tool_errors``
    - no progress: ``stalls >= max_stalls``, where a step that changes nothing watched adds
      1 to the stall count and a step that makes progress halves it (see ``watch``)

    Example:
        ```python
        LoopPolicy(max_repeats=3, max_cycles=2, watch=("draft",))
        LoopPolicy(fingerprint_per_agent={"supervisor": ("output", "request")})
        ```
    """

    max_repeats: int | None = 3
    """Trip when one agent's fingerprint occurs this many times in the window."""
    max_copies: int | None = 3
    """Trip when one result (16+ characters, normalized) occurs this many times in the
    window, from two or more agents: a string passed on unchanged."""
    max_cycles: int | None = 2
    """Trip when a cycle of steps (A→B→A→B...) repeats this many times in a row."""
    max_near_duplicates: int | None = 3
    """Trip when this many outputs of one agent are all pairwise near-duplicates."""
    min_similarity: float = 0.5
    """How similar two outputs must be to be near-duplicates, in (0, 1]: an estimate of
    the Jaccard similarity of their words and word pairs with the default :class:`MinHash`."""
    max_tool_repeats: int | None = 3
    """Trip when a tool is called with the same arguments and gives the same result more
    than this many times in the window (so paging and polling whose results change pass)."""
    max_tool_errors: int | None = 3
    """Trip when a tool returns an error more than this many times in a row."""
    max_stalls: int | None = 4
    """Trip when the stall count reaches this: steps without progress add 1, a step with
    progress halves it."""
    watch: tuple[str, ...] = ()
    """State keys whose change is progress: a step that writes one of them with a value not
    seen in the window. Empty (default): a step makes progress when its envelope's status
    and result are new in the window, or when a tool it called gave an answer (not an
    error) that no step in the window saw: paging and polling whose results change."""
    window: int = DEFAULT_WINDOW
    """How many recent steps the ledger keeps for detection (the ledger's ``window_size``)."""
    fingerprint: tuple[FingerprintPart, ...] = ("output", "tool_calls")
    """What an agent's action covers, for the repeat, cycle and near-duplicate detectors
    (see :data:`FingerprintPart`): by default what it answered and which tools it called."""
    fingerprint_per_agent: Mapping[str, tuple[FingerprintPart, ...]] = field(
        default_factory=lambda: FrozenDict({})
    )
    """Per-agent overrides of ``fingerprint``; ``()`` exempts an agent from the repeat and
    near-duplicate detectors."""
    similarity: Similarity = _MINHASH
    """How near-duplicates are recognised (see :class:`Similarity`)."""

    def __post_init__(self) -> None:
        for name, minimum, example in (
            ("max_repeats", 2, "max_repeats=3"),
            ("max_copies", 2, "max_copies=3"),
            ("max_cycles", 2, "max_cycles=2"),
            ("max_near_duplicates", 2, "max_near_duplicates=3"),
            ("max_tool_repeats", 1, "max_tool_repeats=3"),
            ("max_tool_errors", 1, "max_tool_errors=3"),
            ("max_stalls", 1, "max_stalls=4"),
        ):
            _count(name, getattr(self, name), minimum, f"Pass e.g. LoopPolicy({example}).")
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, int)
            or not 2 <= self.window <= 1024
        ):
            raise ConfigurationError(
                f"LoopPolicy.window must be a whole number in [2, 1024], got {self.window!r}. "
                f"Pass e.g. LoopPolicy(window={DEFAULT_WINDOW}); each step scans the window."
            )
        for name in ("max_repeats", "max_copies", "max_near_duplicates"):
            limit = getattr(self, name)
            if limit is not None and limit > self.window:
                raise ConfigurationError(
                    f"LoopPolicy.{name}={limit} can never trip with window={self.window}. "
                    f"Raise LoopPolicy.window to at least {limit}."
                )
        if self.max_cycles is not None and 2 * self.max_cycles > self.window:
            raise ConfigurationError(
                f"LoopPolicy.max_cycles={self.max_cycles} can never trip with "
                f"window={self.window}: a cycle of two steps needs {2 * self.max_cycles}. "
                f"Raise LoopPolicy.window to at least {2 * self.max_cycles}."
            )
        sim = self.min_similarity
        if isinstance(sim, bool) or not isinstance(sim, (int, float)) or not 0 < sim <= 1:
            raise ConfigurationError(
                f"LoopPolicy.min_similarity must be in (0, 1], got {sim!r}. Pass e.g. "
                "min_similarity=0.5; raise it if different outputs are taken for rewordings."
            )
        watch = (self.watch,) if isinstance(self.watch, str) else self.watch
        if not isinstance(watch, (tuple, list)) or not all(isinstance(k, str) and k for k in watch):
            raise ConfigurationError(
                f"LoopPolicy.watch must be a tuple of state keys, got {self.watch!r}. "
                "Pass e.g. watch=('draft', 'answer'), or () to watch the envelopes' results."
            )
        object.__setattr__(self, "watch", tuple(dict.fromkeys(watch)))
        object.__setattr__(self, "fingerprint", _parts("fingerprint", self.fingerprint))
        per_agent = self.fingerprint_per_agent
        if not isinstance(per_agent, Mapping):
            raise ConfigurationError(
                f"LoopPolicy.fingerprint_per_agent must map agent names to parts, got "
                f"{per_agent!r}. Pass e.g. {{'supervisor': ('output', 'request')}}."
            )
        checked = {}
        for agent, parts in per_agent.items():
            if not isinstance(agent, str) or not agent:
                raise ConfigurationError(
                    f"LoopPolicy.fingerprint_per_agent keys must be agent names, got {agent!r}."
                )
            checked[agent] = _parts(f"fingerprint_per_agent[{agent!r}]", parts)
        object.__setattr__(self, "fingerprint_per_agent", FrozenDict(checked))
        if not isinstance(self.similarity, Similarity):
            raise ConfigurationError(
                f"LoopPolicy.similarity must have signature(text) and similarity(a, b) "
                f"methods, got {type(self.similarity).__name__}. Pass e.g. MinHash(k=16)."
            )

    def parts_for(self, agent: str) -> tuple[FingerprintPart, ...]:
        """What ``agent``'s fingerprint covers: its override, or ``fingerprint``."""
        return self.fingerprint_per_agent.get(agent, self.fingerprint)

    @classmethod
    def coerce(cls, value: LoopPolicy | bool | int | None) -> LoopPolicy | None:
        """Build a ``LoopPolicy`` from an instance, True/None (defaults), False (off), or
        an int (``max_repeats``)."""
        if value is None or value is True:
            return cls()
        if value is False:
            return None
        if isinstance(value, LoopPolicy):
            return value
        if isinstance(value, int):
            return cls(max_repeats=value)
        raise ConfigurationError(
            f"loops must be a LoopPolicy, a bool or an int, got {type(value).__name__}. "
            "Pass e.g. loops=LoopPolicy(max_repeats=3), loops=3, or loops=False to turn "
            "loop detection off."
        )
