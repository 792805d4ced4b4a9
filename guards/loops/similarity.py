"""Text normalization, short hashes and the default near-duplicate sketch for loop detection.

Everything here is deterministic across processes and Python versions (no ``hash()``,
whose string hashing is salted per process), because loop-window entries are
checkpointed and compared again after a resume.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any
from zlib import crc32

from xxhash import xxh3_64_hexdigest

from ..errors import ConfigurationError

__all__ = ("MinHash", "normalize", "short_hash", "text_of")

_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?\b"
    r"|\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"
    r"|\b1\d{9}(?:\.\d+)?\b|\b1\d{12}\b"
)
"""ISO dates and datetimes, clock times, and Unix times in seconds or milliseconds
(2001-2033). Matched after lower-casing, hence ``t`` and ``z``."""

_IDENTIFIER = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
    r"|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b"
    r"|\b(?=\w*\d)(?=\w*[a-z])\w{16,}\b"
)
"""UUIDs, hex ids of 8+ characters (with a digit and a letter, so "deadbeef" the word and
"12345678" the number are kept), and long mixed letter-digit tokens (``toolu_01Ab...``)."""

_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"<ts>|<id>|\w+")

_MAX_WORDS = 4000
"""Words of one text the near-duplicate sketch reads (the first ones): bounds its cost."""


def normalize(text: str) -> str:
    """Lower-case ``text``, collapse whitespace, and mask volatile tokens.

    Timestamps become ``<ts>`` and ids ``<id>``, so that two steps differing only in a
    request id or a clock reading count as the same action. Small numbers (page 2, 3
    items) are kept: they usually carry meaning.
    """
    text = text.lower()
    # The shortest volatile token ("1:02:03") has 7 characters.
    if len(text) >= 7 and _DIGIT.search(text):
        text = _TIMESTAMP.sub("<ts>", text)
        text = _IDENTIFIER.sub("<id>", text)
    return " ".join(text.split())


def short_hash(text: str, size: int = 6) -> str:
    """A ``2 * size``-character hex digest of ``text`` (``size`` <= 8; 48 bits by default).

    XXH3-64 (the ``xxhash`` package LangGraph itself depends on): deterministic across
    processes and platforms, and a quarter of BLAKE2b's cost on these short texts (0.1 µs
    against 0.39 µs, twice per step). Fingerprints only have to tell apart the few dozen
    steps of a loop window, not resist an adversary.
    """
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates
        data = text.encode("utf-8", "surrogatepass")
    return xxh3_64_hexdigest(data)[: 2 * size]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                parts.append(text_of(block))
        return " ".join(parts)
    return text_of(content)


def text_of(value: Any) -> str:
    """A stable text form of a JSON-like value (or a message, or a pydantic model).

    Strings are returned as they are, ``None`` as ``""``, containers as compact JSON with
    sorted keys; messages by their content.
    """
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is float:  # not bool, a subclass of int
        return repr(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    content = getattr(value, "content", None)
    if content is not None and hasattr(value, "type"):
        return _content_text(content)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump(mode="json")
    try:
        return json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
        )
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted
        return repr(value)


def _sketch(text: str, k: int) -> tuple[list[int], list[str]]:
    """The ``k`` smallest 20-bit hashes of the text's words and word pairs, and its numbers."""
    words = _WORD.findall(text)[:_MAX_WORDS]
    if not words:
        return [], []
    # One encode for all words, and CRC-32 continues across calls: the hash of "a b" is
    # crc32(b, crc32(" ", crc32(a))), so no bigram string is built. CRC-32 is no perfect
    # min-wise hash, but near enough to tell rewordings from new text, and it is fast.
    data = "\x00".join(words).encode("utf-8", "surrogatepass").split(b"\x00")
    unigrams = list(map(crc32, data))
    hashes = set(unigrams)
    hashes.update(map(crc32, data[1:], map(crc32, repeat(b" "), unigrams)))
    smallest: list[int] = []
    for h in sorted(hashes):
        top = h >> 12
        if not smallest or top != smallest[-1]:
            smallest.append(top)
            if len(smallest) == k:
                break
    numbers = [w for w in words if _DIGIT.search(w)] if _DIGIT.search(text) else []
    return smallest, numbers


@lru_cache(maxsize=8192)
def _parse(signature: str) -> tuple[str, frozenset[str]]:
    sketch, _, numbers = signature.partition("/")
    return numbers, frozenset(sketch[i : i + 5] for i in range(0, len(sketch), 5))


@dataclass(frozen=True, slots=True, kw_only=True)
class MinHash:
    """The default :class:`~sanegraph.guards.loops.Similarity`: a bottom-k MinHash sketch.

    A text's features are its normalized words and word pairs (shingles of one and two
    words); the signature keeps the ``k`` smallest 20-bit feature hashes (``5 * k`` hex
    characters), and the similarity of two signatures estimates the Jaccard similarity of
    the two feature sets (exactly, when both texts have fewer than ``k`` features). Texts
    that differ in their numbers ("section 2" and "section 3", "40%" and "60%") are never
    similar: a changing number is usually progress, not a rewording. Timestamps and ids
    are masked before this comparison (see ``normalize``). Deterministic, and no
    dependency beyond the standard library.

    Rewordings of one sentence score about 0.6-0.9, drafts that are really revised
    0.1-0.4 against the previous version, unrelated texts below 0.15.

    Example:
        ```python
        sketch = MinHash()
        a = sketch.signature("i need more context about the q3 numbers.")
        b = sketch.signature("i still need more context about the q3 numbers.")
        assert sketch.similarity(a, b) > 0.5
        ```
    """

    k: int = 16
    """How many feature hashes a signature keeps (signature length ``5 * k``)."""

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 4 <= self.k <= 64:
            raise ConfigurationError(
                f"MinHash.k must be a whole number in [4, 64], got {self.k!r}. Pass e.g. "
                "MinHash(k=16): larger is more precise and makes each window entry longer."
            )

    def signature(self, text: str) -> str:
        """The sketch of ``text`` (already normalized), or ``""`` for a text with no words.

        The sketch is followed by ``/`` and a hash of the text's numbers, if it has any.
        """
        smallest, numbers = _sketch(text, self.k)
        sketch = ("%05x" * len(smallest)) % tuple(smallest)
        if not numbers:
            return sketch
        tag = crc32(" ".join(sorted(set(numbers))).encode("utf-8", "surrogatepass"))
        return f"{sketch}/{tag & 0xFFFFFF:06x}"

    def similarity(self, a: str, b: str) -> float:
        """Estimated Jaccard similarity of the texts behind two signatures, in [0, 1]."""
        if not a or not b:
            return 0.0
        if a == b:
            return 1.0
        a_numbers, sa = _parse(a)
        b_numbers, sb = _parse(b)
        if a_numbers != b_numbers:
            return 0.0
        both = sa & sb
        if not both:
            return 0.0
        union = sa | sb
        k = self.k
        if len(sa) < k and len(sb) < k:
            # Neither sketch was cut short: they are the whole feature sets.
            return len(both) / len(union)
        # The k smallest hashes of the union are a uniform sample of it: the share of them
        # found in both sketches estimates the Jaccard similarity.
        if len(union) > k:
            last = sorted(union)[k - 1]
            return sum(1 for h in both if h <= last) / k
        return len(both) / k
