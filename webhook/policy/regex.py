"""The regular expressions of the policy twin, in RE2 (no look-around, no back-references).

Each is the twin of something the rules (``webhook/rules/``) do with Python's ``re``: the
look-arounds of its host patterns become consumed boundary characters, its shell splitting a
tokenizer over marked separators, its ``re.sub`` a tokenizer whose host tokens are rewritten.
Everything is built from ``webhook.rules.grammar``, so a rule changes there, once.
tests/policy/test_policy.py runs these with Python's ``re`` against the rules; the e2e tests
have the apiserver compile them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from webhook.rules.grammar import (
    ADDRESS_HOST,
    ASSIGNMENT,
    COMPUTED_PART,
    CONTINUES_AFTER_DOT,
    DEV_TCP_HOST,
    FILE_WRITE_REDIRECTS,
    HARMLESS_WRITE_TARGETS,
    HTTP_SENDING_OPTIONS,
    KUBELET_VARIABLE,
    LABEL_CHARS,
    PATH_STARTS,
    QUOTES,
    REDIRECTION,
    SAFE_VALUE,
    SHELL_KEYWORDS,
    SHELL_VARIABLE,
    TRAILING_PUNCTUATION,
    URL_HOST,
    VARIABLE_PORT,
    WRAPPER_NUMBER,
    address_pattern,
    address_prefix,
    host_form,
    host_names,
    literal,
    url_in_text,
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
# The white space that separates the words of a script for the rules' shell parser
# (tree-sitter's bash grammar): ASCII only. A no-break space is part of a word there, as it is
# to the shell, though the host patterns (Python's `\s`) count it as white space.
BLANKS = "\\t\\n\\v\\f\\r "
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
# The `|` of `>|` (a redirection that writes a file) is hidden too: it separates nothing.
PIPE_MARK = "\ue00b"
HIDDEN = (
    ("$(", SUBSTITUTION_MARK),
    ("&&", AND_MARK),
    (">|", ">" + PIPE_MARK),
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
# A line continuation (grammar.LINE_CONTINUATION) is taken out of a script before it is split,
# as the rules' reader takes it out: it stands as this mark, which words drop (`a\\⏎b` is the
# word `ab`) and which a command's text gives back as written.
CONTINUATION_MARK = "\ue00a"
MARKS = (SUBSTITUTION_MARK, AMPERSAND_MARK, AND_MARK, COMMENT_MARK, PIPE_MARK,
         CONTINUATION_MARK, *IN_COMMENT.values())
# The part of a line before its comment: `#` starts one at the start of the line or after
# white space or a separator, as the rules' look-behind has it.
COMMENT_PREFIX_RE = f"^(?:[^#]*[^#{BLANKS};&|()`]#+)*[^#]*"
_SEPARATORS = ";&|\\n()`" + SUBSTITUTION_MARK + AND_MARK + COMMENT_MARK
# A simple command with the separator that ends it: the tokens of a script, one per segment
# of probes.segments (empty ones included), so that reading and retargeting share indexes.
SEGMENT_RE = f"[^{_SEPARATORS}]*[{_SEPARATORS}]|[^{_SEPARATORS}]+"
SEGMENT_WORD_RE = f"[^{BLANKS}{_SEPARATORS}]+"
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

# --- redirections ---------------------------------------------------------------------------
#
# The rules' reader knows redirections from the parse tree; the policy knows them by shape, in
# words split at white space. A word holding one of grammar.FILE_WRITE_REDIRECTS (the ones
# starting with `>` may follow a descriptor number: `2>`) writes to what follows the operator
# in the word (`>/tmp/x`, `2>&1`), or to the next word when nothing does (`> /tmp/x`).


def _write_operators() -> str:
    operators = sorted(FILE_WRITE_REDIRECTS, key=lambda op: (-len(op), op))
    return "|".join(f"[0-9]*{literal(op)}" if op.startswith(">") else literal(op)
                    for op in operators)


WRITE_REDIRECTION_RE = f"(?:{_write_operators()})(?s:.*)"  # the operator and its target
WRITE_OPERATOR_RE = f"^(?:{_write_operators()})"
# Targets where writing leaves nothing behind: a descriptor (`2>&1`), `-` (closed), the
# grammar's harmless files; a bash connection (grammar.DEV_TCP_CONNECTION) is a probe instead.
HARMLESS_TARGET_RE = (
    "^(?:[0-9]+$|-$|" + "|".join(literal(target) for target in HARMLESS_WRITE_TARGETS) + ")"
)
# A word that is a redirection, which the reader never takes for an argument: with its target
# attached (`>/dev/null`, `2>&1`, `<<EOF`), or an operator alone, whose target is the next word.
REDIRECTION_WORD_RE = REDIRECTION
_REDIRECTION_OPERATOR = "[0-9]*(?:<<<|<<-|<<|<>|<&|<|>>|>\\||>&|>)|&>>|&>"
BARE_REDIRECTION_RE = f"^(?:{_REDIRECTION_OPERATOR})$"
# What goes before a command's own words in a script, which the rules do not count as its text
# (the parse tree's command starts at its name): keywords, assignments, redirections.
_PREFIX_WORD = (
    "['\"]*(?:" + "|".join(literal(keyword) for keyword in sorted(SHELL_KEYWORDS)) + ")['\"]*"
    f"|['\"]*[A-Za-z_][A-Za-z0-9_]*=[^{BLANKS}]*"
    f"|['\"]*(?:[0-9]*[<>]|&>)[^{BLANKS}]*"
)
# A command substitution opens with one of these, which end a segment; it stands where the
# command word goes when white space (or nothing) is before it.
SUBSTITUTION_OPENERS = (SUBSTITUTION_MARK, "`")
TRAILING_SPACE_RE = f"[{BLANKS}{CONTINUATION_MARK}]$"
COMMAND_LEAD_RE = f"^[{BLANKS}]*(?:(?:{_PREFIX_WORD})[{BLANKS}]+)*"
# A segment cut into the strings quoted in it, the runs between them and lone quotes; while
# its redirections are looked for, the `<` and `>` of each string stand as the placeholder.
QUOTED_TOKENS_RE = "'[^']*'|\"(?:[^\"\\\\]|\\\\(?s:.))*\"|[^'\"]+|(?s:.)"
QUOTED_PLACEHOLDER = "\ue00c"
# ...and what goes after them: redirections, with their targets attached or not.
COMMAND_TAIL_RE = (
    f"(?:[{BLANKS}]+(?:{_REDIRECTION_OPERATOR})"
    f"(?:[^{BLANKS}]+|[{BLANKS}]+[^{BLANKS}]+))*[{BLANKS}]*$"
)
# What follows the word at the start of a text: from the white space after it to the end.
AFTER_FIRST_WORD_RE = f"[{BLANKS}](?s:.*)$"
# The part of a segment before the separator that ends it.
SEGMENT_BODY_RE = f"^[^{_SEPARATORS}]*"
# A script whose quotes do not close cannot be read (the rules' parser rejects it): every
# quote outside a quoted string and a backslash escape must open a string that closes.
BALANCED_QUOTES_RE = "^(?:[^'\"\\\\]|\\\\(?s:.)|'[^']*'|\"(?:[^\"\\\\]|\\\\(?s:.))*\")*$"
# Nor can one holding `<>` (open for reading and writing), which the parser does not know.
UNPARSED_OPERATOR = "<>"

# --- HTTP clients -------------------------------------------------------------------------
#
# commands._sends: a short sending option may have its value attached (`-XPOST`, `-d@f`).
SHORT_SENDING_RE = "^(?:" + "|".join(
    option for option in sorted(HTTP_SENDING_OPTIONS)
    if len(option) == 2 and option[0] == "-" and option[1] != "-") + ")"
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
    # A variable standing for the port (`mlflow:${MLFLOW_PORT}`) ends where the rules' one does;
    # when its name is not closed by a brace, the label run that goes on after it is taken
    # along (`$PORT-x`): no host or URL can start inside that run (the look-behind).
    variable_port = f"[:/]\\$\\{{?{VARIABLE_NAME_RE}(?:\\}}|[{_LABEL_CHARS}]*)"
    next_word_port = f"[{SPACE_CLASS}]+[0-9]{{1,5}}(?:$|[^\\w.:/-])"
    bare = (
        f"$|[^{_LABEL_CHARS}]|\\.$|\\.[^{_LABEL_CHARS}$`]|\\.[_.-][{_LABEL_CHARS}]*"
    )
    return f"{host_form(hosts)}(?:{attached_port}|{variable_port}|{next_word_port}|{bare})"


def retarget_token_re(hosts: Iterable[str]) -> str:
    """Tokens whose concatenation is the text: URLs, host occurrences, label runs, single
    characters.

    A URL comes first, as in the rules' scanner (``hosts._scanner``), so a host inside one is
    never a host token; a token starts only where the rules' look-behind lets a URL start
    (never inside a label run), so the tokens find the URLs the rules find. A label run that
    ends in a dot before `$` or a backtick takes that character along: the host before it goes
    on into a computed part (grammar.CONTINUES_AFTER_DOT), which the token's end must not pass
    for the end of the text.
    """
    return (f"{URL_IN_TEXT_RE}|{host_token_re(hosts)}|[{_LABEL_CHARS}]*\\.[$`]"
            f"|[{_LABEL_CHARS}]+|(?s:.)")


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
# the rules do: in a probe's words when reading (each reference resolved), and, quotes and all,
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



def _unnamed(regex: str) -> str:
    """``regex`` with its named groups made plain (the policy reads whole matches only)."""
    return re.sub(r"\(\?P<[A-Za-z_]+>", "(?:", regex)


# URLs and addresses as webhook.rules.urls reads them: a URL in a probe's text (a token of its
# own, see retarget_token_re), and an address from the start of a text (an env value's item,
# a URL token), then its prefix (scheme and user info) and its host apart.
URL_IN_TEXT_RE = url_in_text(SPACE_CLASS)
WHOLE_URL_RE = f"^(?:{URL_IN_TEXT_RE})$"
ADDRESS_RE = "^" + _unnamed(address_pattern(SPACE_CLASS))
ADDRESS_PREFIX_RE = "^" + _unnamed(address_prefix(SPACE_CLASS))
ADDRESS_HOST_RE = "^" + ADDRESS_HOST
# The text of a command that does work cut into URLs (as ``retarget_token_re`` finds them),
# label runs and single characters: only the URLs are retargeted (hosts.retarget_urls).
WORK_TOKENS_RE = f"{URL_IN_TEXT_RE}|[{_LABEL_CHARS}]+|(?s:.)"

# Small pieces of the retargeting and reading steps (see webhook.policy.program).
ATTACHED_PORT_START_RE = "^[:/][0-9]"  # `:5000` or `/5000` right after a host
ATTACHED_PORT_RE = "^[:/][0-9]{1,5}"
VARIABLE_PORT_START_RE = "^[:/][$]"  # `:${PORT}` right after a host
VARIABLE_PORT_AT_START_RE = f"^[:/]{VARIABLE_PORT}"  # all of it, to keep what follows
NEXT_WORD_PORT_START_RE = f"^[{SPACE_CLASS}]+[0-9]"  # `mlflow 5000`
LEADING_SPACE_RE = f"^[{SPACE_CLASS}]+"
LEADING_PORT_RE = "^[0-9]{1,5}"
ANY_SPACE_RE = f"[{SPACE_CLASS}]"
QUOTED_NAME_RE = '"[^"]*"'  # one name in the status annotation's lists
ADDRESS_END_RE = f"^[{PATH_STARTS}]"  # what may follow an address: its path
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
