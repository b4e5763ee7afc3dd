"""The metric names a PromQL expression reads, for checking dashboards and autoscalers against /metrics."""

from __future__ import annotations

import re

# Words of PromQL that are not metric names: aggregation modifiers, set and vector-matching operators.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects: names not called as functions, outside strings, label
    matchers, ranges and grouping lists. Grafana's `$variables` are read as opaque values."""
    text = re.sub(r"\$\{?\w+\}?", "1", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    if text.count("(") != text.count(")"):
        raise ValueError(f"unbalanced parentheses in {expr!r}")
    names = set()
    for match in _NAME.finditer(text):
        word = match.group()
        before = text[: match.start()]
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # the exponent or unit of a number, e.g. 1e3
        names.add(word)
    return names


def grafana_variable_metrics(query: str) -> set[str]:
    """Metrics a Grafana variable query reads: `label_values(metric, label)` or a PromQL expression."""
    found = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    if found:
        return metric_names(found.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()  # every series' values of a label: no metric named
    return metric_names(query)


def exposition_names(text: str) -> set[str]:
    """Every series name a /metrics page offers: each family's samples, and the names the
    client library gives its types (`_total`, `_bucket`...), even for families with no sample yet."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
