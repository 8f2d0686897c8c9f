"""FHIR search syntax for conditional URLs and conditional references.

The escaping rules are tables so that the polars version used to build references for whole
columns (elements/fhir_json.py) applies exactly the same rules.
"""

from collections.abc import Iterator, Sequence
from urllib.parse import quote_plus

# The longest query a lookup by many values sends: a server refuses longer ones (the local server at
# 70,000 characters; a form body of 100 KB is Express's default limit).
LONGEST_LOOKUP_QUERY = 60_000

# FHIR search escaping: unescaped, `identifier=SYS|A,B` means "SYS|A or B", so a conditional PUT for
# the value "A,B" finds nothing and creates a new copy on every run. Backslash goes first so it is
# not escaped twice.
SEARCH_ESCAPES: tuple[tuple[str, str], ...] = (("\\", "\\\\"), (",", "\\,"), ("|", "\\|"), ("$", "\\$"))
# URL escaping: the server parses the conditional URL as a URL, where `%` starts an escape, `&`
# separates parameters, `#` starts a fragment and `+` means a space. `%` goes first.
URL_ESCAPES: tuple[tuple[str, str], ...] = (("%", "%25"), ("&", "%26"), ("#", "%23"), ("+", "%2B"))


def _apply(value: str, escapes: tuple[tuple[str, str], ...]) -> str:
    for special, escaped in escapes:
        value = value.replace(special, escaped)
    return value


def escape_search_value(value: str) -> str:
    """A token value escaped for a FHIR search parameter."""
    return _apply(value, SEARCH_ESCAPES)


def identifier_token(system: str, value: str) -> str:
    """`system|value` with both parts escaped. The system is always present: a value holding `|` is
    only found by Medplum with its system in front."""
    if not system:
        raise ValueError("an identifier system is required for conditional writes")
    return f"{escape_search_value(system)}|{escape_search_value(value)}"


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """`Patient?identifier=SYS|VALUE`: the target of a conditional PUT or a conditional reference."""
    return f"{resource_type}?identifier={_apply(identifier_token(system, value), URL_ESCAPES)}"


def lookup_chunks(values: Sequence[str], most: int) -> Iterator[Sequence[str]]:
    """`values` (search values, escaped) in runs of at most `most` whose comma-joined query, URL-encoded,
    stays within LONGEST_LOOKUP_QUERY."""
    start, length = 0, 0
    for end, value in enumerate(values):
        size = len(quote_plus(value)) + 3  # and its encoded comma
        if end > start and (end - start == most or length + size > LONGEST_LOOKUP_QUERY):
            yield values[start:end]
            start, length = end, 0
        length += size
    if start < len(values):
        yield values[start:]
