"""The regular expressions of the policy twin, in RE2 (no look-around, no back-references).

Each is the twin of something the rules (``webhook/rules/``) do with Python's ``re``: the
look-arounds of its host patterns become consumed boundary characters, its shell splitting a
tokenizer over marked separators, its ``re.sub`` a tokenizer whose host tokens are rewritten.
Everything is built from ``webhook.rules.grammar``, so a rule changes there, once.
tests/policy/test_policy.py runs these with Python's ``re`` against the rules; the e2e tests
have the apiserver compile them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from webhook.rules.grammar import (
    ASSIGNMENT,
    COMPUTED_PART,
    CONTINUES_AFTER_DOT,
    DEV_TCP_HOST,
    KUBELET_VARIABLE,
    LABEL_CHARS,
    QUOTES,
    REDIRECTION,
    SAFE_VALUE,
    SHELL_VARIABLE,
    TRAILING_PUNCTUATION,
    URL_HOST,
    VARIABLE_PORT,
    WRAPPER_NUMBER,
    host_form,
    host_names,
    literal,
)
from webhook.settings import Service

# --- regular expressions (RE2: no lookaround, no backreferences) ---------------------------
#
# Python's \s and \S are Unicode-aware and RE2's are ASCII-only, so the white space of
# str.isspace() is spelled out: the tabs and breaks, the separators \x1c-\x1f (which also make
# the exec-form joiner count as white space, as in the rules) and the Unicode spaces.
SPACE_CLASS = (
    "\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0"
    "\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
WORD_RE = f"[^{SPACE_CLASS}]+"
# Private-use characters standing in, while a script is split, for the separators `$(` and
# `&&` (so that a character class can split at them) and for an `&` inside a redirection
# (`2>&1`, `&>f`, `>&-`), which does not separate commands. A script that already holds one
# is not retargeted.
SUBSTITUTION_MARK = "\ue000"
AMPERSAND_MARK = "\ue001"
AND_MARK = "\ue002"
# Literal replacements (CEL has no regex replace), in this order: `&&` first, since the rules
# tries it before a lone `&` wherever a scan starts; then the `&` of redirections, which
# the rules recognise with look-arounds: after `<` or `>`, or before `>`, `-` or a digit.
HIDDEN = (
    ("$(", SUBSTITUTION_MARK),
    ("&&", AND_MARK),
    (">&", ">" + AMPERSAND_MARK),
    ("<&", "<" + AMPERSAND_MARK),
    ("&>", AMPERSAND_MARK + ">"),
    ("&-", AMPERSAND_MARK + "-"),
    *((f"&{digit}", f"{AMPERSAND_MARK}{digit}") for digit in range(10)),
)
# A comment (grammar.COMMENT, up to the end of its line) is cut off as a segment of its own:
# a mark before its `#`, and the separators inside it hidden, so it is one inert segment.
COMMENT_MARK = "\ue003"
IN_COMMENT = {";": "\ue004", "&": "\ue005", "|": "\ue006", "(": "\ue007", ")": "\ue008",
               "`": "\ue009"}
MARKS = (SUBSTITUTION_MARK, AMPERSAND_MARK, AND_MARK, COMMENT_MARK, *IN_COMMENT.values())
# The part of a line before its comment: `#` starts one at the start of the line or after
# white space or a separator, as the rules' look-behind has it.
COMMENT_PREFIX_RE = f"^(?:[^#]*[^#{SPACE_CLASS};&|()`]#+)*[^#]*"
_SEPARATORS = ";&|\\n()`" + SUBSTITUTION_MARK + AND_MARK + COMMENT_MARK
# A simple command with the separator that ends it: the tokens of a script, one per segment
# of probes.segments (empty ones included), so that reading and retargeting share indexes.
SEGMENT_RE = f"[^{_SEPARATORS}]*[{_SEPARATORS}]|[^{_SEPARATORS}]+"
SEGMENT_WORD_RE = f"[^{SPACE_CLASS}{_SEPARATORS}]+"
# probes.unquote strips quote characters from both ends; `find` returns the leftmost match,
# from the first non-quote character to the last one.
UNQUOTE_RE = f"(?s)[^{QUOTES}](?:.*[^{QUOTES}])?"
BASENAME_RE = "[^/]*$"
ASSIGNMENT_RE = ASSIGNMENT
REDIRECTION_RE = REDIRECTION
WRAPPER_OPTION_RE = WRAPPER_NUMBER  # `-s`, `5`, `30s`: what the rules skip after `timeout`
# The command word of a simple command is the first one past a prefix of keywords, and of
# wrappers with their options (`timeout 60 sh -c`). CEL has no loop with state to walk the
# words, so each word is written as one letter of its class, the letters of a command joined,
# and the prefix measured by a regex over them:
KEYWORD_CLASS = "K"  # a shell keyword, an assignment or a redirection
WRAPPER_CLASS = "W"  # a wrapper or a shell
OPTION_CLASS = "O"  # an option or a number, which a wrapper may take
OTHER_CLASS = "X"  # anything else: the command word, if it comes first
COMMAND_PREFIX_RE = f"^(?:{KEYWORD_CLASS}|{WRAPPER_CLASS}{OPTION_CLASS}*)*"
DEV_TCP_RE = DEV_TCP_HOST
RSTRIP_RE = f"(?s)^(?:.*[^{TRAILING_PUNCTUATION}])?"  # as commands._host_of strips it
URL_HOST_RE = URL_HOST
# probes.HostPattern's port may be a variable standing for a number: `$PORT`, `${PORT}`.
VARIABLE_PORT_RE = VARIABLE_PORT
# A variable reference anywhere in a word (grammar.SHELL_VARIABLE without its group names,
# which the policy does not need).
SHELL_VARIABLE_RE = SHELL_VARIABLE.replace("?P<plain>", "?:").replace("?P<braced>", "?:").replace(
    "?P<default>", "?:")
STATUS_SHAPE_RE = "(?s)^\\s*\\{.*\\}\\s*$"
_LABEL_CHARS = LABEL_CHARS + "."
# Joins the words of an exec-form program into one text to retarget (white space to the
# host patterns, see SPACE_CLASS).
EXEC_JOINER = "\x1f"


def host_search_re(service: Service) -> str:
    """RE2 twin of ``HostPattern.regex.search``: the look-behind and look-ahead of the rules
    become a consumed boundary character (or the end), which is the same for a yes/no search.
    """
    return (
        f"(?:^|[^{_LABEL_CHARS}])"
        + host_form(service.hosts)
        + f"(?:$|[^{_LABEL_CHARS}]|\\.$|\\.[^{CONTINUES_AFTER_DOT}])"
    )


def host_token_re(hosts: Iterable[str]) -> str:
    """One host occurrence as ``_retarget_matches`` sees it, with what it consumes after it.

    In order of preference, as the rules decide: an attached port (``mlflow:5000``, or a
    variable, ``mlflow:${MLFLOW_PORT}``), a port as the next word (``mlflow 5000``), the bare
    host. The character after the host (the look-ahead in the rules) is consumed; when it is a
    label character the rest of that run is consumed too, since no host can start inside it
    (the look-behind).
    """
    # The host is written once: a shorter host form never succeeds where the longest failed
    # (it is followed by `.` and a letter or digit), so this is the four alternatives
    # HOST+attached, HOST+variable, HOST+next word, HOST+bare in that order, at a fraction of
    # the length (the apiserver charges regex length times text length).
    attached_port = f"[:/][0-9]{{1,5}}(?:$|[^0-9{_LABEL_CHARS}]|[A-Za-z_.-][{_LABEL_CHARS}]*)"
    # A variable standing for the port (`mlflow:${MLFLOW_PORT}`) ends where the rules' one does:
    # nothing after it is looked at, and no host can start inside its name.
    variable_port = f"[:/]{VARIABLE_PORT_RE}"
    next_word_port = f"[{SPACE_CLASS}]+[0-9]{{1,5}}(?:$|[^\\w.:/-])"
    bare = (
        f"$|[^{_LABEL_CHARS}]|\\.$|\\.[^{_LABEL_CHARS}$`]|\\.[_.-][{_LABEL_CHARS}]*"
    )
    return f"{host_form(hosts)}(?:{attached_port}|{variable_port}|{next_word_port}|{bare})"


def retarget_token_re(hosts: Iterable[str]) -> str:
    """Tokens whose concatenation is the text: host occurrences, label runs, single characters.

    A label run that ends in a dot before `$` or a backtick takes that character along: the
    host before it goes on into a computed part (grammar.CONTINUES_AFTER_DOT), which the
    token's end must not pass for the end of the text.
    """
    return f"{host_token_re(hosts)}|[{_LABEL_CHARS}]*\\.[$`]|[{_LABEL_CHARS}]+|(?s:.)"


def external_hosts_of(services: Sequence[Service]) -> list[str]:
    return sorted({s.external.host.lower() for s in services if s.external is not None})


# Python's re.IGNORECASE also folds these to ASCII letters (its simple case folding plus the
# special cases of re._casefix); RE2's (?i) folds only some of them, so the letters are spelled
# out as classes instead. tests/policy/test_policy.py checks the table against Python over all of
# Unicode.
PYTHON_IGNORECASE_EXTRAS = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
_FOLDED = "".join(PYTHON_IGNORECASE_EXTRAS.values())


def _ignoring_case(text: str) -> str:
    """``text`` as a regex matching what Python's re.IGNORECASE matches for it."""
    out = []
    for char in text:
        lower = char.lower()
        if char.isascii() and char.isalpha():
            out.append(f"[{lower}{char.upper()}{PYTHON_IGNORECASE_EXTRAS.get(lower, '')}]")
        else:
            out.append(literal(char))
    return "".join(out)


def external_search_re(external_hosts: Sequence[str]) -> str:
    """RE2 twin of ``ProgramReader._external_host.search``: an external host anywhere in the
    word, with the boundaries of managed hosts (consumed, as in ``host_search_re``) and
    Python's case-insensitive matching, under which the label characters of the boundaries
    take in the folded letters too."""
    names = "|".join(_ignoring_case(host) for host in sorted(external_hosts, key=len,
                                                               reverse=True))
    return (
        f"(?:^|[^{_FOLDED}{_LABEL_CHARS}])(?:{names})"
        f"(?:$|[^{_FOLDED}{_LABEL_CHARS}]|\\.$|\\.[^{_FOLDED}A-Za-z0-9])"
    )


def service_start_re(service: Service) -> str:
    return f"^(?:{host_names(service.hosts)})(?:[^A-Za-z0-9_-]|$)"


def status_list_re(key: str) -> str:
    return f'"{key}"\\s*:\\s*\\[[^\\]]*\\]'


# A host part computed at run time, as the rules' script scan sets it apart.
COMPUTED_RE = f"\\.(?:{COMPUTED_PART})"
# Variable references, resolved against the init container's literal env and the default as
# the rules do: in a probe's words when reading (variables.expand_word), and, quotes and all,
# in a probe's text when retargeting (variables.expand_in_probe). A text is cut into tokens:
# references (quoted ones first, for the text), runs without `$` (or `"`), single characters.
VARIABLE_WHOLE_RE = f"^(?:{SHELL_VARIABLE_RE})$"
QUOTED_VARIABLE_WHOLE_RE = f'^"(?:{SHELL_VARIABLE_RE})"$'
READ_TOKENS_RE = f"{SHELL_VARIABLE_RE}|[^$]+|(?s:.)"
TEXT_TOKENS_RE = f'"(?:{SHELL_VARIABLE_RE})"|{SHELL_VARIABLE_RE}|[^$"]+|(?s:.)'
SAFE_VALUE_RE = SAFE_VALUE
# `$(NAME)` references as the kubelet expands them (`$$(` escapes one), and the rest.
KUBELET_TOKENS_RE = "\\$\\$\\(|\\$\\([A-Za-z_][A-Za-z0-9_]*\\)|[^$]+|(?s:.)"
KUBELET_WHOLE_RE = f"^(?:{KUBELET_VARIABLE})$"

# An env value's address as hosts._ADDRESS reads it: scheme, user, host, port; then its
# prefix (scheme and user) and its host apart.
ADDRESS_RE = (
    "^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?[A-Za-z0-9][-A-Za-z0-9.]*(?::[0-9]{1,5})?"
)
ADDRESS_PREFIX_RE = "^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?"
ADDRESS_HOST_RE = "^[A-Za-z0-9][-A-Za-z0-9.]*"

# Small pieces of the retargeting and reading steps (see webhook.policy.program).
ATTACHED_PORT_START_RE = "^[:/][0-9]"  # `:5000` or `/5000` right after a host
ATTACHED_PORT_RE = "^[:/][0-9]{1,5}"
VARIABLE_PORT_START_RE = "^[:/][$]"  # `:${PORT}` right after a host
NEXT_WORD_PORT_START_RE = f"^[{SPACE_CLASS}]+[0-9]"  # `mlflow 5000`
LEADING_SPACE_RE = f"^[{SPACE_CLASS}]+"
LEADING_PORT_RE = "^[0-9]{1,5}"
ANY_SPACE_RE = f"[{SPACE_CLASS}]"
QUOTED_NAME_RE = '"[^"]*"'  # one name in the status annotation's lists
ADDRESS_END_RE = "^[/?#]"  # what may follow an address in an env value
TRAILING_PORT_RE = ":[0-9]{1,5}$"
OPTION_DASHES_RE = "^-*"
WITHOUT_TRAILING_SEMICOLON_RE = "^(?s:.*[^;])"
VARIABLE_NAME_RE = "[A-Za-z_][A-Za-z0-9_]*"
VARIABLE_DEFAULT_RE = "-[^}]*"  # `-default` in `${NAME:-default}`


def whole_host_re(service: Service) -> str:
    """A whole host name (an env value's host part) in any of ``service``'s forms."""
    return f"^(?:{host_form(service.hosts)})$"


def whole_host_token_re(hosts: Iterable[str]) -> str:
    """A whole token of ``retarget_token_re`` that is a host occurrence."""
    return f"^(?:{host_token_re(hosts)})$"


def host_prefix_re(service: Service) -> str:
    """The host form at the start of a host token, without what the token consumed after it."""
    return "^" + host_form(service.hosts)
