"""Texts the loop tests share: an analyst re-asking in other words, and drafts that improve."""

from __future__ import annotations

ASKS = [
    "I need more context about the Q3 revenue numbers.",
    "I need some more context about the Q3 revenue numbers.",
    "I still need more context about the Q3 revenue numbers.",
    "Please, I need more context about the Q3 revenue numbers.",
]
"""The analyst's request in slightly different words each time."""

DRAFTS = [
    "Our app helps teams. It is fast and has many features that people like a lot.",
    "Our app helps small engineering teams review code faster. Reviews that took a day now "
    "take an hour, and people like it.",
    "Acme Review helps small engineering teams review code faster: reviews that took a day "
    "now take about an hour. Setup takes ten minutes.",
    "Acme Review cuts code review time for small engineering teams from a day to about an "
    "hour. Setup takes ten minutes and it works with GitHub and GitLab.",
    "Acme Review cuts code review from a day to an hour for teams of five to fifty "
    "engineers. It connects to GitHub or GitLab in ten minutes, and pricing starts at $10 "
    "per seat.",
    "Teams of five to fifty engineers use Acme Review to cut code review from a day to an "
    "hour. Connect GitHub or GitLab in ten minutes; plans start at $10 per seat, with a "
    "30-day free trial.",
]
"""A writer's drafts, each really better than the last."""
