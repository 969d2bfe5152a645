"""The policy twin beside the rules' shell reader: what it follows, run in Python.

The rules read scripts with a shell parser (webhook/rules/shell.py); the policy reads them by
separators and word shapes, in RE2. Here each regex of webhook/policy/regex.py that stands for
part of the parser runs in Python's `re` (whose leftmost-first matching is RE2's for these
constructs), step for step as the CEL of webhook/policy/ uses it, against the rules on random
commands: words and continuations, redirections that write files, the text of a command that
a retarget rewrites, HTTP clients that send, idle setup, the URLs of work retargeted. What the
CEL computes with them is proven against a real apiserver in
tests/e2e/test_policy_equivalence.py.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.policy.test_policy import is_url_twin, retargeted_address_twin
from webhook.policy import regex as policy_regex
from webhook.rules.commands import IDLE, WORK, classify
from webhook.rules.grammar import (
    CONTINUATION_MASK,
    DEV_TCP_CONNECTION,
    HTTP_METHOD_OPTIONS,
    HTTP_READ_METHODS,
    HTTP_SENDING_OPTIONS,
    IDLE_COMMANDS,
    OUTPUT_FILTERS,
    PACKAGE_MANAGERS,
    PROBE_TOOL_PACKAGES,
    SHELL_LIBRARIES,
    SOURCE_COMMANDS,
)
from webhook.rules.programs import ProgramReader
from webhook.rules.segments import command_index
from webhook.rules.shell import read_script

SERVICES = make_settings().services

# --- words ------------------------------------------------------------------------------------


def policy_words(script: str) -> list[list[str]]:
    """The words of each segment of a one-line script, as script_text.segment_words gives
    them (continuations dropped, empty words with them)."""
    segments = re.findall(policy_regex.SEGMENT_RE, marked(script))
    words = []
    for segment in segments:
        found = [word.replace(policy_regex.AMPERSAND_MARK, "&").replace(policy_regex.PIPE_MARK, "|")
                 .replace(policy_regex.CONTINUATION_MARK, "")
                 for word in re.findall(policy_regex.SEGMENT_WORD_RE, segment)]
        words.append([word for word in found if word])
    return [segment for segment in words if segment]


PLAIN_WORDS = st.lists(st.sampled_from(
    ["nc", "mlflow", "5000", "a", "b", " ", "  ", "\t", "\u00a0", "\u2003", "\x1c",
     "\\\n", " \\\n ", ":", "/x"]), min_size=1, max_size=10).map("".join)


@settings(max_examples=500, deadline=None)
@given(PLAIN_WORDS)
def test_words_split_where_the_shell_parser_splits_them(script: str) -> None:
    """ASCII white space separates words, a no-break space or another Unicode space does not,
    and a continuation joins what stands around it, as in the rules' reader."""
    reading = read_script(script, {})
    if reading is None:
        return
    expected = [[word.strip("'") for word in command.words] for command in reading.commands]
    assert policy_words(script) == expected


# --- redirections -----------------------------------------------------------------------------


def is_redirection(words: list[str], position: int) -> bool:
    """command_kinds.redirection_flags for one word."""
    word = words[position]
    after_operator = position > 0 and bool(
        re.search(policy_regex.BARE_REDIRECTION_RE, words[position - 1]))
    return ((bool(re.search(policy_regex.REDIRECTION_WORD_RE, word)) or after_operator)
            and DEV_TCP_CONNECTION not in word)


def segment_writes(segment: str) -> bool:
    """command_kinds.segment_writes, without variables: quoted strings set aside."""
    placeholder = policy_regex.QUOTED_PLACEHOLDER
    dequoted = "".join(
        token.replace(">", placeholder).replace("<", placeholder)
        if len(token) > 1 and token[0] in "'\"" else token
        for token in re.findall(policy_regex.QUOTED_TOKENS_RE, segment))
    return ">" in segment and writes_file([word for words in policy_words(dequoted)
                                           for word in words])


def writes_file(words: list[str]) -> bool:
    """command_kinds.writes_file, without variables."""
    for position, word in enumerate(words):
        found = re.search(policy_regex.WRITE_REDIRECTION_RE, word) if ">" in word else None
        if found is None or not found.group():
            continue
        redirection = found.group()
        operator = re.search(policy_regex.WRITE_OPERATOR_RE, redirection)
        assert operator is not None
        target = redirection[operator.end():] or (
            words[position + 1] if position + 1 < len(words) else "")
        unquoted = re.search(policy_regex.UNQUOTE_RE, target)
        target = unquoted.group() if unquoted else ""
        if not (re.search(policy_regex.HARMLESS_TARGET_RE, target)
                or DEV_TCP_CONNECTION in target):
            return True
    return False


# A command, then its redirections. Left out: a redirection glued to the word before it
# (`x>f`), which the policy reads as one argument (its write is seen all the same), and words
# after a redirection, which the rules' parser takes for more targets of it.
REDIRECTED = st.tuples(
    st.sampled_from(["echo x", "nc -z db 1", "echo", "echo '==> up'", 'echo "a > b"', "true"]),
    st.lists(st.sampled_from(
        [">/tmp/f", "> /tmp/f", ">> /dev/null", ">>/tmp/f", "2>&1", ">&2", ">&-", "&> /dev/null",
         "&>>/tmp/f", ">| /tmp/f", ">|/dev/null", "> '/dev/null'", '> "/tmp/f"', ">'/tmp/f'",
         "> /dev/tcp/db/1", ">/dev/udp/db/1", "2> /dev/stderr", "< /dev/null", "2>-",
         ">/dev/fd/3", ">&/tmp/f", "1>/dev/null"]), max_size=3),
).map(lambda parts: " ".join([parts[0], *parts[1]]))


@settings(max_examples=600, deadline=None)
@given(REDIRECTED)
def test_a_redirection_writes_a_file_as_the_reader_says(command: str) -> None:
    reading = read_script(command, {})
    if reading is None:
        return
    assert segment_writes(command) == reading.writes_files


@settings(max_examples=600, deadline=None)
@given(REDIRECTED)
def test_redirections_are_never_arguments(command: str) -> None:
    """The words the policy keeps as a command's (plain words) are the reader's: redirections
    apart, a bash connection's target among them."""
    reading = read_script(command, {})
    if reading is None or len(reading.commands) != 1 or "'" in command or '"' in command:
        return  # the policy splits quoted strings at white space, the parser does not
    words = [word for segment in policy_words(command) for word in segment]
    plain = [word for position, word in enumerate(words) if not is_redirection(words, position)]
    expected = list(reading.commands[0].words)
    # The reader writes a connection's target as a word; the policy keeps it with its `>`.
    assert [re.sub(r"^[0-9]*[<>]+&?", "", word) for word in plain] == expected


# --- the text a retarget rewrites -------------------------------------------------------------


def marked(script: str) -> str:
    """script_text.marked for a script without comments."""
    script = script.replace("\\\n", policy_regex.CONTINUATION_MARK)
    for old, new in policy_regex.HIDDEN:
        script = script.replace(old, new)
    return script


def piece_text(piece: str) -> str:
    """script_text.piece_text: a marked piece as written."""
    for mark, written in ((policy_regex.SUBSTITUTION_MARK, "$("), (policy_regex.AND_MARK, "&&"),
                          (policy_regex.AMPERSAND_MARK, "&"), (policy_regex.PIPE_MARK, "|"),
                          (policy_regex.COMMENT_MARK, "")):
        piece = piece.replace(mark, written)
    return piece.replace(policy_regex.CONTINUATION_MARK, CONTINUATION_MASK)


def command_text(script: str) -> str:
    """container_programs.retargeted_piece's cut: the command's own text in the first segment
    of a script (its body, before the separator that ends it, as written)."""
    body = re.search(policy_regex.SEGMENT_BODY_RE, marked(script))
    assert body is not None
    segment = piece_text(body.group())
    lead = re.search(policy_regex.COMMAND_LEAD_RE, segment)
    assert lead is not None
    rest = segment[lead.end():]
    tail = re.search(policy_regex.COMMAND_TAIL_RE, rest)
    assert tail is not None
    cut = tail.group()
    if DEV_TCP_CONNECTION in cut:
        after = re.search(policy_regex.AFTER_FIRST_WORD_RE,
                          cut[cut.rindex(DEV_TCP_CONNECTION):])
        cut = after.group() if after else ""
    return rest[: len(rest) - len(cut)]


LAID_OUT = st.tuples(
    st.lists(st.sampled_from(["until", "!", "URI=http://mlflow:5000", "X=1", ">/tmp/f", "2>&1"]),
             max_size=3),
    st.lists(st.sampled_from(["nc", "-z", "mlflow", "5000", "http://minio:9000/x"]),
             min_size=1, max_size=4),
    st.lists(st.sampled_from([">/dev/null", "2>&1", "> /tmp/f", ">&2", "&>/dev/null",
                              "> /dev/tcp/db/1"]), max_size=3),
)


@settings(max_examples=500, deadline=None)
@given(LAID_OUT)
def test_the_text_retargeted_is_the_commands_own(parts: tuple[list[str], ...]) -> None:
    """What the policy rewrites in a segment is the text the reader's parse tree spans for the
    command: past keywords, assignments and redirections before it, short of redirections
    after it (a connection, which the reader makes a word, stays)."""
    lead, words, tail = parts
    if words[0].startswith("-"):
        return
    keywords_first = [word for word in lead if word in ("until", "!")] + [
        word for word in lead if word not in ("until", "!")]
    segment = " ".join([*keywords_first, *words, *tail])
    if "until" in keywords_first:
        segment += "; do :; done"
    reading = read_script(segment, {})
    spans = [command.span for command in reading.commands
             if command.words[0] == words[0]] if reading is not None else []
    if not spans:
        return  # the parser took the command for more targets of a redirection before it
    assert spans[0] is not None
    start, end = spans[0]
    assert command_text(segment).rstrip() == segment[start:end]


# --- HTTP clients and idle commands ----------------------------------------------------------


def http_sends(arguments: list[str]) -> bool:
    """command_kinds.http_sends for curl or wget."""
    for position, argument in enumerate(arguments):
        option = argument.split("=")[0]
        attached = argument[len(option) + 1:] if "=" in argument else ""
        short_method = argument.startswith("-X")
        following = arguments[position + 1] if position + 1 < len(arguments) else ""
        method = attached or (argument[2:] if short_method and len(argument) > 2 else following)
        names_method = option in HTTP_METHOD_OPTIONS or short_method
        candidate = (option in HTTP_SENDING_OPTIONS
                     or bool(re.search(policy_regex.SHORT_SENDING_RE, argument)))
        if candidate and not (names_method and method.upper() in HTTP_READ_METHODS):
            return True
    return False


HTTP_ARGUMENTS = st.lists(st.sampled_from(
    ["-sf", "-q", "-O-", "http://mlflow:5000/x", "-X", "POST", "GET", "head", "-XPOST", "-XGET",
     "-Xhead", "--request", "--request=PUT", "--request=get", "--method=HEAD", "--method",
     "-d", "-d@f", "--data=x", "--data-raw", "-F", "a=b", "-T", "f", "--json", "--post-data=x",
     "--body-file", "--upload-file=f", "-H", "X-A: b", "="]), max_size=6)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(["curl", "wget"]), HTTP_ARGUMENTS)
def test_an_http_client_sending_is_work_as_in_the_rules(client: str,
                                                         arguments: list[str]) -> None:
    words = [client, *arguments]
    assert http_sends(arguments) == (classify(words, 0).kind == WORK)


def is_idle(command: str, arguments: list[str]) -> bool:
    """command_kinds.is_idle."""
    plain = [argument for argument in arguments if not argument.startswith("-")]
    installs = (command in PACKAGE_MANAGERS and bool(plain) and plain[0] in PACKAGE_MANAGERS[
        command] and all(package in PROBE_TOOL_PACKAGES for package in plain[1:]))
    library = (command in SOURCE_COMMANDS and len(arguments) == 1
               and arguments[0].startswith(SHELL_LIBRARIES))
    return command in IDLE_COMMANDS | OUTPUT_FILTERS or installs or library


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(sorted(PACKAGE_MANAGERS) + sorted(SOURCE_COMMANDS) + ["grep", "tr",
                                                                              "make"]),
       st.lists(st.sampled_from(["add", "install", "update", "remove", "-y", "--no-cache",
                                 "curl", "netcat-openbsd", "jq", "bash", "add",
                                 "/opt/bitnami/scripts/libos.sh", "/etc/profile", "-q", "PONG"]),
                max_size=4))
def test_setup_and_filters_are_idle_as_in_the_rules(command: str, arguments: list[str]) -> None:
    words = [command, *arguments]
    assert is_idle(command, arguments) == (classify(words, command_index(words)).kind == IDLE)


# --- the URLs of work -------------------------------------------------------------------------


def retarget_urls(text: str) -> str:
    """program.retarget_urls by Python's `re` on the same regexes, with the address twin of
    test_policy."""
    tokens = re.findall(policy_regex.WORK_TOKENS_RE, text)
    assert "".join(tokens) == text
    return "".join(retargeted_address_twin(token, SERVICES) if is_url_twin(token) else token
                   for token in tokens)


WORK_TEXT = st.lists(st.sampled_from(
    ["mc alias set m ", "http://", "https://u@", "s3://", "tcp://", "mlflow", "minio",
     "fastapi-app",
     "postgres", "kafka", ":5000", ":9000", ":${P}", "/api", "?q=mlflow", " ", ",", ";", "'", "\"",
     "x", "-", ".", "mlflow.flts.svc", "jdbc:postgresql://", "&&", "--uri=", "\u00a0",
     CONTINUATION_MASK]), max_size=10).map("".join)


@settings(max_examples=800, deadline=None)
@given(WORK_TEXT)
def test_the_urls_of_work_are_retargeted_as_in_the_rules(text: str) -> None:
    expected, _ = ProgramReader(SERVICES).hosts.retarget_urls(text)
    assert retarget_urls(text) == expected
