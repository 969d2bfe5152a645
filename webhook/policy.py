"""The native twin: a MutatingAdmissionPolicy (CEL, in the apiserver) with the webhook's rules.

``build_policy`` turns the same ``Settings`` the webhook runs with into a
MutatingAdmissionPolicy and its MutatingAdmissionPolicyBinding. The CEL mirrors
``mutate.py`` and ``probes.py`` step by step, so that a pod admitted through the policy ends up
as the webhook would leave it:

* the program of each init container (command + args) is split into simple commands like
  ``probes.py`` does it (``sh -c`` scripts at ``;``, ``&&``, ``|``, newlines, brackets...),
  the command word is found past keywords, assignments, redirections and wrappers, and each
  probe's arguments are matched against RE2 forms of the managed host patterns;
* waiters are removed (or, in ``rewrite`` mode, their probes retargeted by a tokenizer that
  stands in for ``re.sub``, which Kubernetes CEL lacks);
* env is replaced in place, later duplicates dropped, absent variables appended to app
  containers, in the webhook's order;
* the ``backend-injector/status`` annotation gets the same compact JSON, merged with an
  earlier one read back with regexes (CEL cannot parse JSON).

CEL has no functions, no ``let`` and no loops with state. Three idioms stand in for them:
Python functions below expand to CEL text (macros), ``[x].map(v, body)[0]`` binds ``v`` to a
value computed once, and lists of strings are flattened with ``join``/``split`` (the
``flatten`` of the CEL lists library only arrived in Kubernetes 1.34 and the v1beta1 policy
must also run on 1.34, whose CEL compatibility level is 1.33).

The patch is built like the webhook's: per-index operations in the same order (init
containers in place, removals from the back, app containers, the annotation). Every value in
it is a literal of the policy or a list of strings: the pod reaches CEL as typed values, and a
sub-object copied from it cannot be marshalled into a patch. Every operation is guarded on
equality, so a second pass changes nothing; that matters more than for the webhook, since the
apiserver runs an ``IfNeeded`` policy again on its own output whenever it changed the pod.

Credentials in ``value`` mode are literals inside the policy object, readable by anyone who may
read MutatingAdmissionPolicies; the YAML header says so and docs/policy.md recommends
``secretKeyRef`` mode with the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from webhook.config import Action, CredentialMode, EnvScope, Service, Settings
from webhook.grammar import (
    ASSIGNMENT,
    CLIENTS,
    COMMAND_AFTER_DOUBLE_DASH,
    COMPUTED_PART,
    CONTINUES_AFTER_DOT,
    DEV_TCP_HOST,
    DOCKERIZE,
    DOCKERIZE_VALUE_OPTIONS,
    DOCKERIZE_WORK_OPTIONS,
    IDLE_COMMANDS,
    KUBELET_VARIABLE,
    LABEL_CHARS,
    LIVENESS_QUERIES,
    LOOP_HEADERS,
    MYSQLADMIN,
    MYSQLADMIN_COMMANDS,
    MYSQLADMIN_LIVENESS,
    NAMESPACE_LABEL,
    PORT_LAST_TOOLS,
    PORT_OPTIONS,
    PROBE_COMMANDS,
    QUERY_CLIENTS,
    QUOTES,
    REDIRECTION,
    REDIS_CLI,
    REDIS_LIVENESS,
    SAFE_VALUE,
    SHELL_KEYWORDS,
    SHELL_VARIABLE,
    SHELLS,
    TRAILING_PUNCTUATION,
    URL_HOST,
    VARIABLE_PORT,
    WRAPPER_NUMBER,
    WRAPPERS,
    host_form,
    host_names,
    literal,
)
from webhook.mutate import INJECT_KEY, OPT_OUT_VALUES, STATUS_KEY, managed_env_entries

API_VERSIONS = ("admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1")
DEFAULT_API_VERSION = API_VERSIONS[0]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# --- regular expressions (RE2: no lookaround, no backreferences) ---------------------------
#
# Python's \s and \S are Unicode-aware and RE2's are ASCII-only, so the white space of
# str.isspace() is spelled out: the tabs and breaks, the separators \x1c-\x1f (which also make
# the exec-form joiner count as white space, as in probes.py) and the Unicode spaces.
SPACE_CLASS = (
    "\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0"
    "\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
WORD_RE = f"[^{SPACE_CLASS}]+"
# Private-use characters standing in, while a script is split, for the separators `$(` and
# `&&` (so that a character class can split at them) and for an `&` inside a redirection
# (`2>&1`, `&>f`, `>&-`), which does not separate commands. A script that already holds one
# is not retargeted.
_MARK = "\ue000"
AMPERSAND_MARK = "\ue001"
_AND = "\ue002"
# Literal replacements (CEL has no regex replace), in this order: `&&` first, since probes.py
# tries it before a lone `&` wherever a scan starts; then the `&` of redirections, which
# probes.py recognises with look-arounds: after `<` or `>`, or before `>`, `-` or a digit.
HIDDEN = (
    ("$(", _MARK),
    ("&&", _AND),
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
_MARKS = (_MARK, AMPERSAND_MARK, _AND, COMMENT_MARK, *IN_COMMENT.values())
# The part of a line before its comment: `#` starts one at the start of the line or after
# white space or a separator, as probes.py's look-behind has it.
COMMENT_PREFIX_RE = f"^(?:[^#]*[^#{SPACE_CLASS};&|()`]#+)*[^#]*"
_SEPARATORS = ";&|\\n()`" + _MARK + _AND + COMMENT_MARK
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
WRAPPER_OPTION_RE = WRAPPER_NUMBER  # `-s`, `5`, `30s`: what probes.py skips after `timeout`
# Each word of a simple command is classed K (keyword, assignment, redirection), W (wrapper or
# shell) or O (option or number); the command word is the first one past this prefix.
COMMAND_PREFIX_RE = "^(?:K|WO*)*"
DEV_TCP_RE = DEV_TCP_HOST
RSTRIP_RE = f"(?s)^(?:.*[^{TRAILING_PUNCTUATION}])?"  # as probes._host_of strips it
URL_HOST_RE = URL_HOST
# probes.HostPattern's port may be a variable standing for a number: `$PORT`, `${PORT}`.
VARIABLE_PORT_RE = VARIABLE_PORT
# A variable reference anywhere in a word (grammar.SHELL_VARIABLE without its group names,
# which the policy does not need).
SHELL_VARIABLE_RE = SHELL_VARIABLE.replace("?P<plain>", "?:").replace("?P<braced>", "?:").replace(
    "?P<default>", "?:")
STATUS_SHAPE_RE = "(?s)^\\s*\\{.*\\}\\s*$"
_LABEL = NAMESPACE_LABEL
_LABEL_CHARS = LABEL_CHARS + "."
_EXEC_JOINER = "\x1f"


def host_search_re(service: Service) -> str:
    """RE2 twin of ``HostPattern.regex.search``: the look-behind and look-ahead of probes.py
    become a consumed boundary character (or the end), which is the same for a yes/no search.
    """
    return (
        f"(?:^|[^{_LABEL_CHARS}])"
        + host_form(service.hosts)
        + f"(?:$|[^{_LABEL_CHARS}]|\\.$|\\.[^{CONTINUES_AFTER_DOT}])"
    )


def host_token_re(hosts: Iterable[str]) -> str:
    """One host occurrence as ``_retarget_matches`` sees it, with what it consumes after it.

    In order of preference, as probes.py decides: an attached port (``mlflow:5000``, or a
    variable, ``mlflow:${MLFLOW_PORT}``), a port as the next word (``mlflow 5000``), the bare
    host. The character after the host (the look-ahead in probes.py) is consumed; when it is a
    label character the rest of that run is consumed too, since no host can start inside it
    (the look-behind).
    """
    # The host is written once: a shorter host form never succeeds where the longest failed
    # (it is followed by `.` and a letter or digit), so this is the four alternatives
    # HOST+attached, HOST+variable, HOST+next word, HOST+bare in that order, at a fraction of
    # the length (the apiserver charges regex length times text length).
    attached_port = f"[:/][0-9]{{1,5}}(?:$|[^0-9{_LABEL_CHARS}]|[A-Za-z_.-][{_LABEL_CHARS}]*)"
    # A variable standing for the port (`mlflow:${MLFLOW_PORT}`) ends where probes.py's does:
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


def all_regexes(settings: Settings) -> list[str]:
    """Every regular expression the policy uses, for tests that check their syntax."""
    services = settings.services
    external_hosts = _external_hosts(services)
    regexes = [
        WORD_RE, SEGMENT_RE, SEGMENT_WORD_RE, UNQUOTE_RE, BASENAME_RE,
        ASSIGNMENT_RE, REDIRECTION_RE, WRAPPER_OPTION_RE, COMMAND_PREFIX_RE, DEV_TCP_RE,
        RSTRIP_RE, URL_HOST_RE, STATUS_SHAPE_RE, SHELL_VARIABLE_RE, COMMENT_PREFIX_RE,
        "^[:/][0-9]", "^[:/][0-9]{1,5}",
        f"^[{SPACE_CLASS}]+[0-9]", f"^[{SPACE_CLASS}]+", "^[0-9]{1,5}", '"[^"]*"', "^[:/][$]",
    ]
    if external_hosts:
        regexes.append(external_search_re(external_hosts))
    regexes += [host_search_re(service) for service in services]
    regexes += [ADDRESS_RE, ADDRESS_PREFIX_RE, ADDRESS_HOST_RE, "^[/?#]", ":[0-9]{1,5}$",
                f"[{SPACE_CLASS}]", "^-*", "^(?s:.*[^;])", VARIABLE_WHOLE_RE,
                QUOTED_VARIABLE_WHOLE_RE, READ_TOKENS_RE, TEXT_TOKENS_RE, SAFE_VALUE_RE,
                "[A-Za-z_][A-Za-z0-9_]*", "-[^}]*", COMPUTED_RE, KUBELET_TOKENS_RE,
                KUBELET_WHOLE_RE]
    regexes += [f"^(?:{host_form(service.hosts)})$" for service in services]
    retargetable = [s for s in services if s.external is not None]
    if retargetable:
        hosts = [host for s in retargetable for host in s.hosts]
        regexes += [retarget_token_re(hosts), f"^(?:{host_token_re(hosts)})$"]
        for service in retargetable:
            regexes += [service_start_re(service), "^" + host_form(service.hosts)]
    regexes += [status_list_re(key) for key in ("removed", "rewritten", "env")]
    return regexes


def _external_hosts(services: Sequence[Service]) -> list[str]:
    return sorted({s.external.host.lower() for s in services if s.external is not None})


# Python's re.IGNORECASE also folds these to ASCII letters (its simple case folding plus the
# special cases of re._casefix); RE2's (?i) folds only some of them, so the letters are spelled
# out as classes instead. tests/test_policy.py checks the table against Python over all of
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


# --- CEL text -------------------------------------------------------------------------------


def cel_string(text: str) -> str:
    """A CEL double-quoted string literal: backslash, quote and anything unprintable escaped."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def cel_value(value: Any) -> str:
    """A JSON-like value as a CEL literal. Map values and list items are wrapped in ``dyn``
    because Kubernetes CEL requires homogeneous literals (a string next to a map is not)."""
    if isinstance(value, str):
        return cel_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        entries = ", ".join(f"{cel_string(k)}: dyn({cel_value(v)})" for k, v in value.items())
        return "{" + entries + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"dyn({cel_value(item)})" for item in value) + "]"
    raise TypeError(f"no CEL literal for {type(value).__name__}")


def _strings(values: Iterable[str]) -> str:
    return "[" + ", ".join(cel_string(value) for value in sorted(values)) + "]"


def _commented(script: str) -> str:
    """``script`` with each comment marked and its separators hidden (see COMMENT_MARK)."""
    hidden = "cm_"
    for char, stand_in in IN_COMMENT.items():
        hidden += f".replace({cel_string(char)}, {cel_string(stand_in)})"
    line = _let(
        f"ln_.find({cel_string(COMMENT_PREFIX_RE)})",
        "cp_",
        f"cp_.size() == ln_.size() ? ln_ : cp_ + {cel_string(COMMENT_MARK)} + "
        + _let("ln_.substring(cp_.size())", "cm_", hidden),
    )
    return f'{script}.split("\\n").map(ln_, {line}).join("\\n")'


def _uncommented(text: str) -> str:
    """The inverse of _commented."""
    text += f'.replace({cel_string(COMMENT_MARK)}, "")'
    for char, stand_in in IN_COMMENT.items():
        text += f".replace({cel_string(stand_in)}, {cel_string(char)})"
    return text


def _is_comment(record: str) -> str:
    return f'({record}.words.size() > 0 && {record}.words[0].startsWith("#"))'


def _marked(script: str) -> str:
    """``script`` with comments set apart, and `$(`, `&&` and the `&` of redirections hidden,
    ready to be split."""
    marked = _commented(script)
    for old, new in HIDDEN:
        marked += f".replace({cel_string(old)}, {cel_string(new)})"
    return marked


def _unmarked_ampersands(text: str) -> str:
    return f'{text}.replace({cel_string(AMPERSAND_MARK)}, "&")'


def _let(value: str, name: str, body: str) -> str:
    """``body`` with ``name`` bound to ``value``, evaluated once (CEL has no `let`)."""
    return f"[{value}].map({name}, {body})[0]"


def _unquote(word: str) -> str:
    return f"{word}.find({cel_string(UNQUOTE_RE)})"


def _basename(word: str) -> str:
    return f"{word}.find({cel_string(BASENAME_RE)})"


def _word_class(word: str) -> str:
    """K, W, O or X for one word, as probes._command_of treats it."""
    keyword = (
        f"u_ in {_strings(SHELL_KEYWORDS)} || u_.matches({cel_string(ASSIGNMENT_RE)})"
        f" || u_.matches({cel_string(REDIRECTION_RE)})"
    )
    wrapper = f"{_basename('u_')} in {_strings(WRAPPERS | SHELLS)}"
    option = f'{word}.startsWith("-") || {word}.matches({cel_string(WRAPPER_OPTION_RE)})'
    body = f'({keyword}) ? "K" : ({wrapper} ? "W" : ({option} ? "O" : "X"))'
    return _let(_unquote(word), "u_", body)


def _segment_record(words: str) -> str:
    """{cmd, args, raw, words} of one simple command, as probes._command_index finds them
    (``raw``: the arguments as written, quotes and all)."""
    prefix = (
        f'{words}.map(wc_, {_word_class("wc_")}).join("")'
        f".find({cel_string(COMMAND_PREFIX_RE)}).size()"
    )
    nothing = f'{{"cmd": dyn(""), "args": dyn([]), "raw": dyn([]), "words": dyn({words})}}'
    found = (
        f"u_ in {_strings(LOOP_HEADERS)}"
        f" ? {nothing}"
        f' : {{"cmd": dyn({_basename("u_")}),'
        f' "args": dyn({words}.transformList(ia_, a_, ia_ > k_, {_unquote("a_")})),'
        f' "raw": dyn({words}.transformList(ia_, a_, ia_ > k_, a_)),'
        f' "words": dyn({words})}}'
    )
    body = f"k_ < {words}.size() ? {_let(_unquote(f'{words}[k_]'), 'u_', found)} : {nothing}"
    return _let(prefix, "k_", body)


def _is_probe(record: str) -> str:
    other = (
        f"({record}.cmd in {_strings(PROBE_COMMANDS)}"
        f' || {record}.words.exists(wp_, wp_.contains("/dev/tcp/")'
        f' || wp_.contains("/dev/udp/")))'
    )
    return (
        f"(!{_is_comment(record)} && !{_dockerize_works(record)}"
        f" && ({record}.cmd in {_strings(CLIENTS)} ? {_client_probes(record)} : {other}))"
    )


def _probed_words(record: str) -> str:
    probing = _strings(PROBE_COMMANDS | CLIENTS)
    return f"({record}.cmd in {probing} ? {record}.args : {record}.words)"


def _normalised_query(text: str) -> str:
    """probes._normalised_query(probes._first_shell_word(text))."""
    first = (
        f"({text}.startsWith(\"'\") || {text}.startsWith('\"'))"
        f" ? {text}.substring(1).split({text}.substring(0, 1))[0]"
        f' : {text}.split(" ")[0]'
    )
    squeezed = f'fw_.findAll({cel_string(WORD_RE)}).join(" ")'
    return _let(first, "fw_", f'{squeezed}.find("^(?s:.*[^;])").trim().lowerAscii()')


def _client_probes(record: str) -> str:
    """A client probes its host when it runs a liveness check (probes._classify)."""
    raw, args = f"{record}.raw", f"{record}.args"
    verdict = "false"
    for name, flags in reversed(QUERY_CLIENTS.items()):
        long_flags = [flag for flag in flags if flag.startswith("--")]
        attached = " || ".join(f"w_.startsWith({cel_string(flag + '=')})" for flag in long_flags)
        attached_value = "".join(
            f"w_.startsWith({cel_string(flag + '=')}) ? [w_.substring({len(flag) + 1})] : "
            for flag in long_flags
        ) + "[]"
        text = (
            f"(w_ in {_strings(flags)} ? [] : {attached_value})"
            f' + {raw}.transformList(ia_, x_, ia_ > j_, x_)'
        )
        query = _let(f'({text}).join(" ")', "tx_", _normalised_query("tx_"))
        queries = (
            f"{raw}.transformList(j_, w_, w_ in {_strings(flags)} || {attached or 'false'},"
            f" {query})"
        )
        live = f"qs_.size() > 0 && qs_.all(q_, q_ in {_strings(LIVENESS_QUERIES)})"
        verdict = (
            f"({record}.cmd == {cel_string(name)} ? {_let(queries, 'qs_', live)} : {verdict})"
        )
    verbs = f"{args}.map(a_, a_.lowerAscii()).filter(v_, v_ in {_strings(MYSQLADMIN_COMMANDS)})"
    mysqladmin = _let(verbs, "vb_",
                      f"vb_.size() > 0 && vb_.all(v_, v_ in {_strings(MYSQLADMIN_LIVENESS)})")
    redis = (
        f"{args}.size() > 0 && {args}[{args}.size() - 1].lowerAscii()"
        f" in {_strings(REDIS_LIVENESS)}"
    )
    return (
        f"({record}.cmd == {cel_string(MYSQLADMIN)} ? {mysqladmin}"
        f" : ({record}.cmd == {cel_string(REDIS_CLI)} ? {redis} : {verdict}))"
    )


def _names_external_host(word: str, external_hosts: Sequence[str]) -> str:
    """probes._names_external_host: an external host found in the word, quoted or not (the
    quotes at its ends count as boundaries either way, so the word is not unquoted)."""
    if not external_hosts:
        return "false"
    return f"{word}.matches({cel_string(external_search_re(external_hosts))})"


def _names_some_host(word: str) -> str:
    """probes._host_of(word) is not None (no unquoting: _names_some_host does not unquote)."""
    return (
        f"({word}.matches({cel_string(DEV_TCP_RE)})"
        f" || {word}.find({cel_string(RSTRIP_RE)}).matches({cel_string(URL_HOST_RE)}))"
    )


def word_tag(word: str, services: Sequence[Service]) -> str:
    """"s<i>" for every managed service the word probes, in the order of the services and
    comma-separated (the facts are split at commas), else "@" for the external address, as
    probes.ProgramReader._managed_services_in and _names_external_host."""
    external = _names_external_host(word, _external_hosts(services))
    if not services:
        return f'({external} ? "@" : "")'
    named = " + ".join(
        f'({word}.matches({cel_string(host_search_re(service))}) ? "s{index}," : "")'
        for index, service in enumerate(services)
    )
    return _let(named, "ms_", f'ms_ != "" ? ms_ : ({external} ? "@" : "")')


# A host part computed at run time, as probes.py's script scan sets it apart.
COMPUTED_RE = f"\\.(?:{COMPUTED_PART})"
# Variable references, resolved against the init container's literal env and the default as
# probes.py does: in a probe's words when reading (probes._expand_word), and, quotes and all,
# in a probe's text when retargeting (probes._expand_in_probe). A text is cut into tokens:
# references (quoted ones first, for the text), runs without `$` (or `"`), single characters.
VARIABLE_WHOLE_RE = f"^(?:{SHELL_VARIABLE_RE})$"
QUOTED_VARIABLE_WHOLE_RE = f'^"(?:{SHELL_VARIABLE_RE})"$'
READ_TOKENS_RE = f"{SHELL_VARIABLE_RE}|[^$]+|(?s:.)"
TEXT_TOKENS_RE = f'"(?:{SHELL_VARIABLE_RE})"|{SHELL_VARIABLE_RE}|[^$"]+|(?s:.)'
SAFE_VALUE_RE = SAFE_VALUE
_ENV_OF_INIT = "variables.inits[i_].?env.orValue([])"


def _resolution(token: str) -> str:
    """What a reference token stands for: the last literal value of its variable when that is
    not empty, else its default; "" for neither (probes._resolved, where None and "" both
    leave the reference as written)."""
    name = f'{token}.find("[A-Za-z_][A-Za-z0-9_]*")'
    values = f"{_ENV_OF_INIT}.filter(e_, e_.name == nm_ && has(e_.value)).map(e_, e_.value)"
    # Only a braced reference can hold a `-`, and then it starts the default.
    default = f'{token}.contains("-") ? {token}.find("-[^}}]*").substring(1) : ""'
    chosen = _let(
        values,
        "vs_",
        _let('vs_.size() > 0 ? vs_[vs_.size() - 1] : ""', "vl_",
             f'vl_ != "" ? vl_ : ({default})'),
    )
    return _let(name, "nm_", chosen)


KUBELET_TOKENS_RE = "\\$\\$\\(|\\$\\([A-Za-z_][A-Za-z0-9_]*\\)|[^$]+|(?s:.)"
KUBELET_WHOLE_RE = f"^(?:{KUBELET_VARIABLE})$"


def _kubelet_expanded(element: str) -> str:
    """probes._expand_kubelet for one element of command + args: `$(NAME)` replaced by the
    last literal value of NAME (`$$(` escapes it), any other reference left as written."""
    value = _let(
        f'{_ENV_OF_INIT}.filter(e_, e_.name == tk_.substring(2, tk_.size() - 1)'
        " && has(e_.value)).map(e_, e_.value)",
        "kv_",
        "kv_.size() > 0 ? kv_[kv_.size() - 1] : tk_",
    )
    tokens = (
        f"{element}.findAll({cel_string(KUBELET_TOKENS_RE)}).map(tk_,"
        f' tk_.matches({cel_string(KUBELET_WHOLE_RE)}) ? {value} : tk_).join("")'
    )
    return f'({element}.contains("$(") ? {tokens} : {element})'


def _expanded_word(word: str, in_script: str) -> str:
    """probes._expand_word in a script: each reference resolved, unresolved ones as written."""
    value = _let(_resolution("tk_"), "rv_", 'rv_ != "" ? rv_ : tk_')
    tokens = (
        f"{word}.findAll({cel_string(READ_TOKENS_RE)}).map(tk_,"
        f' tk_.matches({cel_string(VARIABLE_WHOLE_RE)}) ? {value} : tk_).join("")'
    )
    return f'({in_script} && {word}.contains("$") ? {tokens} : {word})'


def _expanded_text(text: str) -> str:
    """probes._expand_in_probe: each reference (with the quotes around it) replaced by its
    value where that is one plain word."""
    value = _let(
        _resolution("tk_"),
        "rv_",
        f'rv_ != "" && rv_.matches({cel_string(SAFE_VALUE_RE)}) ? rv_ : tk_',
    )
    reference = (
        f"tk_.matches({cel_string(VARIABLE_WHOLE_RE)})"
        f" || tk_.matches({cel_string(QUOTED_VARIABLE_WHOLE_RE)})"
    )
    return (
        f'({text}.contains("$") ? {text}.findAll({cel_string(TEXT_TOKENS_RE)})'
        f'.map(tk_, {reference} ? {value} : tk_).join("") : {text})'
    )


def _segment_facts(record: str, services: Sequence[Service], in_script: str) -> str:
    """What one simple command contributes, as tags: "s<i>", "@", "!o" (another host),
    "!w" (work), "!p" (a probe whose port is apart from its host, which the policy cannot
    retarget). The twin of probes.ProgramReader._read_segment.

    A variable in a script's probe may stand for any host: it is resolved against the init
    container's literal env and the default, as probes.py does; one that stays unresolved
    counts as another host, so the container is kept.
    """
    other_candidates = f"({record}.args.size() > 0 ? {record}.args : {record}.words)"
    unresolved = (
        f"({in_script} && xw_.exists(wv_, !wv_.startsWith(\"-\")"
        f" && wv_.matches({cel_string(SHELL_VARIABLE_RE)})))"
    )
    other = (
        f'tt_.exists(t_, t_ != "") || !({unresolved} || {other_candidates}.exists(wo_,'
        f' !wo_.startsWith("-") && {_names_some_host("wo_")})) ? [] : ["!o"]'
    )
    # A wait tool that runs a command of its own counts as work (probes.py reads that command
    # apart); a port given apart from the host is tagged "!p": the policy cannot retarget it.
    apart = (
        f'({_runs_command(record)} ? ["!w"] : []) + ({_port_apart(record)} ? ["!p"] : [])'
    )
    probe = _let(
        f"{_probed_words(record)}.map(wr_, {_expanded_word('wr_', in_script)})",
        "xw_",
        _let(
            f"xw_.map(wt_, {word_tag('wt_', services)})",
            "tt_",
            f'tt_.filter(t_, t_ != "") + ({other}) + {apart}',
        ),
    )
    work = (
        f'!{_is_comment(record)} && {record}.cmd != ""'
        f' && !({record}.cmd in {_strings(IDLE_COMMANDS)}) ? ["!w"] : []'
    )
    return f"({_is_probe(record)} ? {probe} : ({work}))"


def _stripped_option(word: str) -> str:
    """An option's name without its leading dashes."""
    return f'{word}.substring({word}.find("^-*").size())'


def _runs_command(record: str) -> str:
    """probes._command_cut found a command: after `--` for the wait tools that take one, or
    dockerize's first word that is neither an option nor an option's value."""
    args = f"{record}.args"
    value_option = _let(
        f"{args}[j_ - 1]",
        "p_",
        f'p_.startsWith("-") && !p_.contains("=")'
        f" && {_stripped_option('p_')} in {_strings(DOCKERIZE_VALUE_OPTIONS)}",
    )
    positional = (
        f'{args}.transformList(j_, a_, !a_.startsWith("-") && (j_ == 0 || !({value_option})),'
        " a_).size() > 0"
    )
    return (
        f'(({record}.cmd in {_strings(COMMAND_AFTER_DOUBLE_DASH)} && {args}.indexOf("--") >= 0'
        f' && {args}.indexOf("--") < {args}.size() - 1)'
        f" || ({record}.cmd == {cel_string(DOCKERIZE)} && {positional}))"
    )


def _dockerize_works(record: str) -> str:
    """dockerize with an option that renders files: work, not a probe (probes._classify)."""
    option = _stripped_option("a_") + '.split("=")[0]'
    return (
        f"({record}.cmd == {cel_string(DOCKERIZE)} && {record}.args.exists(a_,"
        f' a_.startsWith("-") && {option} in {_strings(DOCKERIZE_WORK_OPTIONS)}))'
    )


def _port_apart(record: str) -> str:
    """The probe's port may be given apart from its host: a port option or the last word."""
    options = " || ".join(
        f'w_ == {cel_string(option)} || w_.startsWith({cel_string(option + "=")})'
        for option in PORT_OPTIONS
    )
    return (
        f"({record}.cmd in {_strings(PORT_LAST_TOOLS)}"
        f" || {record}.words.exists(w_, {options}))"
    )


def _retarget_text(text: str, services: Sequence[Service]) -> str:
    """probes._retarget_matches for every service with an external address, without re.sub:
    the text is cut into tokens, host tokens are rewritten, and the tokens joined again."""
    retargetable = [s for s in services if s.external is not None]
    hosts = [host for s in retargetable for host in s.hosts]
    choice = "[]"
    for service in reversed(retargetable):
        assert service.external is not None
        found = cel_string("^" + host_form(service.hosts))
        choice = (
            f"(tk_.matches({cel_string(service_start_re(service))})"
            f" ? [tk_.find({found}), {cel_string(service.external.host)},"
            f" {cel_string(str(service.external.port))}] : {choice})"
        )
    # The three characters before the token, as probes.py looks back for `://`: tokens are at
    # least one character long, so three tokens back reach far enough.
    after_url = (
        '((q_ >= 3 ? tks_[q_ - 3] : "") + (q_ >= 2 ? tks_[q_ - 2] : "")'
        ' + (q_ >= 1 ? tks_[q_ - 1] : "")).endsWith("://")'
    )
    space = f"[{SPACE_CLASS}]"
    next_word = _let(
        f"r_.find({cel_string('^' + space + '+')})",
        "sp_",
        "p_[1] + sp_ + p_[2] + r_.substring(sp_.size()"
        f" + r_.substring(sp_.size()).find({cel_string('^[0-9]{1,5}')}).size())",
    )
    rewrite = (
        f"r_.matches({cel_string('^[:/][0-9]')})"
        f" ? p_[1] + r_.substring(0, 1) + p_[2]"
        f" + r_.substring(r_.find({cel_string('^[:/][0-9]{1,5}')}).size())"
        # A variable port: the token ends with it (see host_token_re), all of it is replaced.
        f" : (r_.matches({cel_string('^[:/][$]')}) ? p_[1] + r_.substring(0, 1) + p_[2]"
        f' : ({after_url} ? p_[1] + ":" + p_[2] + r_'
        f" : (r_.matches({cel_string('^' + space + '+[0-9]')}) ? {next_word} : p_[1] + r_)))"
    )
    replaced = _let(choice, "p_", _let("tk_.substring(p_[0].size())", "r_", rewrite))
    # Cheap tests first: most tokens are not hosts, and most texts name none.
    starts = " || ".join(f"tk_.startsWith({cel_string(host)})" for host in sorted(set(hosts)))
    is_host = f"({starts}) && tk_.matches({cel_string(f'^(?:{host_token_re(hosts)})$')})"
    names_one = " || ".join(f"{text}.contains({cel_string(host)})" for host in sorted(set(hosts)))
    tokens = _let(
        f"{text}.findAll({cel_string(retarget_token_re(hosts))})",
        "tks_",
        f'tks_.transformList(q_, tk_, {is_host} ? {replaced} : tk_).join("")',
    )
    return f"(!({names_one}) ? {text} : {tokens})"


def _env_operations(env: str, path: str, values: str, kind: str, *, add_absent: str) -> str:
    """mutate.Rules._set_env as operation descriptors, in its order: managed entries replaced
    at their first index and other entries whose value is a retargeted address (``values``,
    see _retarget_value) replaced in place, in the order of the env; later duplicates of
    managed ones removed from the back; absent ones appended when the CEL condition
    ``add_absent`` holds (containers that use the backend)."""
    managed = "e_.name in variables.managedEnv"
    first = f"{env}.map(x_, x_.name).indexOf(e_.name) == j_"
    replaced = (
        f"{env}.transformList(j_, e_, ({managed} && {first}"
        f" && e_ != variables.managedEnv[e_.name]) || (!({managed}) && {values}[j_] != \"\"),"
        f' {managed} ? "R " + {path} + "/env/" + string(j_) + " " + e_.name'
        f' : "V " + {path} + "/env/" + string(j_) + " {kind} " + string(i_) + " "'
        " + string(j_))"
    )
    duplicates = _let(
        f"{env}.transformList(j_, e_, {managed} && !({first}), j_)",
        "d_",
        f'd_.transformList(k_, v_, "D " + {path} + "/env/" + string(d_[d_.size() - 1 - k_]))',
    )
    absent = _let(
        f"variables.managedOrder.filter(n_, !{env}.exists(x_, x_.name == n_))",
        "n2_",
        f'{env}.size() > 0 ? n2_.map(n_, "A " + {path} + "/env/- " + n_)'
        f' : (n2_.size() > 0 ? ["L " + {path} + "/env"] : [])',
    )
    return f"{replaced} + {duplicates} + ({add_absent} ? {absent} : [])"


def _env_changes(env: str, values: str, *, add_absent: str) -> str:
    """The names _set_env reports as changed, in its order, joined with commas."""
    managed = "e_.name in variables.managedEnv"
    first = f"{env}.map(x_, x_.name).indexOf(e_.name) == j_"
    replaced = (
        f"{env}.transformList(j_, e_, ({managed} && {first}"
        f" && e_ != variables.managedEnv[e_.name]) || (!({managed}) && {values}[j_] != \"\"),"
        " e_.name)"
    )
    duplicates = f"{env}.transformList(j_, e_, {managed} && !({first}), e_.name)"
    absent = f"variables.managedOrder.filter(n_, !{env}.exists(x_, x_.name == n_))"
    return f'({replaced} + {duplicates} + ({add_absent} ? {absent} : [])).join(",")'


ADDRESS_RE = (
    "^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?[A-Za-z0-9][-A-Za-z0-9.]*(?::[0-9]{1,5})?"
)
ADDRESS_PREFIX_RE = "^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?"
ADDRESS_HOST_RE = "^[A-Za-z0-9][-A-Za-z0-9.]*"


def _retarget_value(value: str, services: Sequence[Service]) -> str:
    """ProgramReader.retarget_value: an env value's addresses of managed hosts pointed at the
    external address, or "" when nothing changes. Each comma-separated item is matched from
    its start; RE2's leftmost-first match, followed by one of `/?#` or the end, is the one
    the look-ahead of probes._ADDRESS admits (the host and port runs are maximal)."""
    choice = "it_"
    for service in reversed(services):
        whole = cel_string(f"^(?:{host_form(service.hosts)})$")
        replaced = (
            f"pf_ + {cel_string(str(service.external))} + it_.substring(m_.size())"
            if service.external is not None else "it_"
        )
        choice = f"(h_.matches({whole}) ? {replaced} : {choice})"
    address = (
        '(it_.size() == m_.size() || it_.substring(m_.size()).matches("^[/?#]"))'
        ' && (m_.contains("://") || m_.matches(":[0-9]{1,5}$"))'
    )
    item = _let(
        f"it_.find({cel_string(ADDRESS_RE)})",
        "m_",
        f'm_ == "" || !({address}) ? it_ : '
        + _let(
            f"m_.find({cel_string(ADDRESS_PREFIX_RE)})",
            "pf_",
            _let(f"m_.substring(pf_.size()).find({cel_string(ADDRESS_HOST_RE)})", "h_", choice),
        ),
    )
    rewritten = _let(f'{value}.split(",").map(it_, {item}).join(",")', "o_",
                     f'o_ == {value} ? "" : o_')
    return (
        f'(!{value}.contains(":") || {value}.matches({cel_string(f"[{SPACE_CLASS}]")}) ? ""'
        f" : {rewritten})"
    )


def _values(containers: str, services: Sequence[Service]) -> str:
    """Per container, per env entry: the retargeted value of a literal one, else ""."""
    retarget = _retarget_value('e_.?value.orValue("")', services)
    return (
        f'{containers}.map(c_, c_.?env.orValue([]).map(e_, has(e_.valueFrom) ? ""'
        f" : {retarget}))"
    )


def _uses_backend(settings: Settings) -> str:
    """mutate.Rules._uses_backend for the container ``c_``: its pod waited for a managed
    service, or it carries a managed variable, or its env, command or args name a managed
    host (``add_env_to: all``: every container)."""
    if settings.add_env_to is EnvScope.ALL:
        return "true"
    names_host = " || ".join(
        f"t_.matches({cel_string(host_search_re(service))})" for service in settings.services
    )
    texts = (
        'c_.?command.orValue([]) + c_.?args.orValue([])'
        ' + c_.?env.orValue([]).map(e_, e_.?value.orValue(""))'
    )
    return (
        f"(variables.podWaited || {_ENV}.exists(e_, e_.name in variables.managedEnv)"
        f" || ({texts}).exists(t_, {names_host}))"
    )


# A native sidecar (an init container with restartPolicy Always) is served like an app
# container: it gets the absent variables too.
_SIDECAR = 'c_.?restartPolicy.orValue("") == "Always"'
_ENV = "c_.?env.orValue([])"
_INIT_PATH = '"/spec/initContainers/" + string(i_)'
_CONTAINER_PATH = '"/spec/containers/" + string(i_)'


def _json_list(names: str) -> str:
    return f'"[" + {names}.map(n_, "\\"" + n_ + "\\"").join(",") + "]"'


def _earlier_status(key: str) -> str:
    """The names under ``key`` in an earlier status annotation (our own compact JSON)."""
    found = f"variables.currentStatus.find({cel_string(status_list_re(key))})"
    quoted = cel_string('"[^"]*"')
    return _let(
        found,
        "m_",
        f'm_ == "" ? [] : m_.substring(m_.indexOf("[")).findAll({quoted})'
        ".map(s_, s_.substring(1, s_.size() - 1))",
    )


# --- layout ---------------------------------------------------------------------------------

_OPENERS = {"(": ")", "[": "]", "{": "}"}


def _atoms(expression: str) -> list[str]:
    """Brackets, commas, string literals (whole) and the text between them."""
    atoms: list[str] = []
    text = ""
    index = 0
    while index < len(expression):
        char = expression[index]
        if char in "\"'":
            end = index + 1
            while expression[end] != char:
                end += 2 if expression[end] == "\\" else 1
            text += expression[index : end + 1]
            index = end + 1
            continue
        if char in _OPENERS or char in _OPENERS.values() or char == ",":
            if text:
                atoms.append(text)
            atoms.append(char)
            text = ""
        else:
            text += char
        index += 1
    if text:
        atoms.append(text)
    return atoms


def _group(atoms: list[str], start: int) -> tuple[list[Any], int]:
    """Nest ``atoms`` from ``start`` up to the closing bracket into lists; returns the end."""
    items: list[Any] = []
    index = start
    while index < len(atoms):
        atom = atoms[index]
        if atom in _OPENERS:
            inner, index = _group(atoms, index + 1)
            items.append([atom, *inner])
        elif atom in _OPENERS.values():
            items.append(atom)
            return items, index + 1
        else:
            items.append(atom)
            index += 1
    return items, index


def _flat(items: list[Any]) -> str:
    return "".join(_flat(item) if isinstance(item, list) else item for item in items)


def _render(items: list[Any], indent: int, width: int) -> str:
    """A bracketed group on one line if it fits, else one comma-separated element a line."""
    flat = _flat(items)
    if indent + len(flat) <= width or not isinstance(items[0], str) or items[0] not in _OPENERS:
        return "".join(
            _render(item, indent, width) if isinstance(item, list) else item for item in items
        )
    pad = " " * (indent + 2)
    lines: list[str] = []
    current = ""
    for item in items[1:-1]:
        if item == ",":
            lines.append(current.strip() + ",")
            current = ""
        elif isinstance(item, list):
            current += _render(item, indent + 2, width)
        else:
            current += item
    if current.strip():
        lines.append(current.strip())
    body = "\n".join(pad + line for line in lines)
    return f"{items[0]}\n{body}\n{' ' * indent}{items[-1]}"


def pretty(expression: str, width: int = 96) -> str:
    """``expression`` laid out on several lines; only white space outside strings changes."""
    items, _ = _group(_atoms(expression), 0)
    return "".join(
        _render(item, 0, width) if isinstance(item, list) else item for item in items
    )


# --- the objects ---------------------------------------------------------------------------


def _variables(settings: Settings) -> list[dict[str, str]]:
    services = settings.services
    no_external = [f"s{i}" for i, s in enumerate(services) if s.external is None]
    entries = managed_env_entries(settings)
    shell_flag = 'x_.startsWith("-") && !x_.startsWith("--") && x_.substring(1).contains("c")'
    script_index = (
        f"a_.size() >= 3 && {_basename('a_[0]')} in {_strings(SHELLS)}"
        " ? " + _let(
            f'a_.transformList(j_, x_, j_ >= 1 && j_ < a_.size() - 1'
            f' && (!x_.startsWith("-") || ({shell_flag})), ({shell_flag}) ? j_ + 1 : -1)',
            "c_",
            "c_.size() > 0 ? c_[0] : -1",
        )
        + " : -1"
    )
    segments = (
        "variables.argvs.transformList(i_, a_, variables.scriptIndex[i_] < 0"
        " ? (a_.size() > 0 ? [a_] : [])"
        f" : {_marked('a_[variables.scriptIndex[i_]]')}.findAll({cel_string(SEGMENT_RE)})"
        f".map(s_, s_.findAll({cel_string(SEGMENT_WORD_RE)})"
        f".map(w_, {_unmarked_ampersands('w_')})))"
    )
    managed = 'variables.facts[i_].exists(f_, f_.startsWith("s"))'
    named = f"c_.name in {_strings(settings.waiter_names)}"
    waits = (
        f'{managed} && !("!o" in variables.facts[i_]) && !("!w" in variables.facts[i_])'
        " && !variables.computed[i_]"
    )
    if settings.action is Action.REMOVE:
        remove = f"({named}) || ({waits})"
    else:
        orphaned = f"variables.facts[i_].exists(f_, f_ in {_strings(no_external)})"
        # A waiter whose port the policy cannot retarget ("!p") is removed instead.
        remove = (
            f"(({named}) || ({waits}))"
            f' && (!({managed}) ? !("@" in variables.facts[i_])'
            f' : ({orphaned} || "!p" in variables.facts[i_]))'
        )
    retargets = any(s.external is not None for s in services)
    # What to retarget, per init container, as [text, "1" if it is a probe]: the segments of
    # the script (each with the separator that ends it, which a host match sees as the end
    # of the text, as probes.py does), or the exec-form words joined; [] for nothing.
    script = "variables.argvs[i_][variables.scriptIndex[i_]]"
    retarget_input = (
        "variables.inits.transformList(i_, c_, variables.removeInit[i_] || !" + managed
        + " || variables.computed[i_]"
        + " ? [] : (variables.scriptIndex[i_] < 0"
        " ? (variables.probeFlags[i_].size() > 0 && variables.probeFlags[i_][0]"
        f" && !variables.argvs[i_].exists(x_, x_.contains({cel_string(_EXEC_JOINER)}))"
        f' ? [[variables.argvs[i_].join({cel_string(_EXEC_JOINER)}), "1"]] : [])'
        f" : ([{', '.join(cel_string(m) for m in _MARKS)}]"
        f".exists(m_, {script}.contains(m_)) ? [] : "
        + _let(
            f"{_marked(script)}.findAll({cel_string(SEGMENT_RE)})",
            "st_",
            f"st_.transformList(h_, t_, [{_unmarked_ampersands('t_')},"
            ' variables.probeFlags[i_][h_] ? "1" : "0"])',
        )
        + ")))"
    )
    # A script's probe is retargeted with its variables resolved (probes._expand_in_probe),
    # and written so only when the retarget changed something.
    retargeted = _let(
        f"variables.scriptIndex[i_] >= 0 ? {_expanded_text('pc_[0]')} : pc_[0]",
        "ex_",
        _let(_retarget_text("ex_", services), "rt_", "rt_ == ex_ ? pc_[0] : rt_"),
    )
    retarget_output = (
        "variables.retargetInput.transformList(i_, pcs_, pcs_.map(pc_, pc_[1] == \"1\""
        f' ? {retargeted} : pc_[0]).join(""))'
    )
    retargeted_argvs = (
        "(variables.scriptIndex[i_] < 0"
        f" ? variables.retargetOutput[i_].split({cel_string(_EXEC_JOINER)})"
        " : a_.transformList(j_, x_, j_ == variables.scriptIndex[i_]"
        " ? " + _uncommented(
            f"variables.retargetOutput[i_].replace({cel_string(_MARK)}, \"$(\")"
            f".replace({cel_string(_AND)}, \"&&\")"
        ) + " : x_))"
    )
    # Only a retargeted probe writes the program out (with the kubelet's expansion in it);
    # otherwise the program stays as written.
    new_argvs = (
        "variables.argvs.transformList(i_, a_, variables.retargetInput[i_].size() == 0"
        " ? variables.written[i_]"
        f" : {_let(retargeted_argvs, 'na_', 'na_ == a_ ? variables.written[i_] : na_')})"
    )
    variables: list[tuple[str, str]] = [
        ("managedEnv", "{" + ", ".join(
            f"{cel_string(name)}: dyn({cel_value(entry)})" for name, entry in entries.items()
        ) + "}"),
        ("managedOrder", "[" + ", ".join(cel_string(name) for name in entries) + "]"),
        ("inits", "object.spec.?initContainers.orValue([])"),
        ("containers", "object.spec.?containers.orValue([])"),
        ("written", "variables.inits.map(c_, c_.?command.orValue([]) + c_.?args.orValue([]))"),
        # The program as the kubelet runs it: `$(NAME)` expanded from the literal env.
        ("argvs", (
            "variables.inits.transformList(i_, c_, variables.written[i_].map(x_,"
            f" {_kubelet_expanded('x_')}))"
        )),
        ("scriptIndex", f"variables.argvs.map(a_, {script_index})"),
        ("segments", segments),
        ("records", f"variables.segments.map(g_, g_.map(ws_, {_segment_record('ws_')}))"),
        # Probes to retarget: not those whose port or command the policy cannot follow.
        ("probeFlags", (
            f"variables.records.transformList(i_, g_, g_.map(r_, {_is_probe('r_')}"
            f" && !{_runs_command('r_')} && !{_port_apart('r_')}))"
        )),
        ("facts", (
            "variables.records.transformList(i_, g_, g_.map(r_,"
            f' {_segment_facts("r_", services, "variables.scriptIndex[i_] >= 0")}.join(","))'
            '.join(",").split(",").filter(f_, f_ != ""))'
        )),
        # A host part computed at run time (`mlflow.$(...)`): the policy splits the script
        # there, so it cannot tell the host; the container is kept as it is.
        ("computed", (
            f"variables.argvs.map(a_, a_.exists(x_, x_.matches({cel_string(COMPUTED_RE)})))"
        )),
        ("removeInit", f"variables.inits.transformList(i_, c_, {remove})"),
        ("currentStatus", (
            f"object.metadata.?annotations[?{cel_string(STATUS_KEY)}].orValue(\"\")"
        )),
        ("earlier", (
            f"variables.currentStatus.matches({cel_string(STATUS_SHAPE_RE)})"
            f" ? [{_earlier_status('removed')}, {_earlier_status('rewritten')},"
            f" {_earlier_status('env')}] : [[], [], []]"
        )),
        # The pod waited for a managed service, now or by an earlier pass's account.
        ("podWaited", (
            "variables.earlier[0].size() > 0 || variables.earlier[1].size() > 0"
            " || variables.removeInit.exists(r_, r_)"
            ' || variables.facts.exists(g_, g_.exists(f_, f_.startsWith("s")))'
        )),
        ("initValues", _values("variables.inits", services)),
        ("appValues", _values("variables.containers", services)),
    ]
    if retargets:
        variables += [
            ("retargetInput", retarget_input),
            ("retargetOutput", retarget_output),
            ("newArgvs", new_argvs),
        ]
    else:
        variables.append(("newArgvs", "variables.written"))
    # Only containers that use the backend get the absent variables (add_env_to), the native
    # sidecars among init containers.
    uses = _uses_backend(settings)
    sidecar_uses = f"({_SIDECAR} && {uses})"
    init_env = _env_operations(_ENV, _INIT_PATH, "variables.initValues[i_]", "I",
                               add_absent=sidecar_uses)
    app_env = _env_operations(_ENV, _CONTAINER_PATH, "variables.appValues[i_]", "C",
                              add_absent=uses)
    # Operations travel as descriptors, "KIND PATH [ARG]", joined into one string and split
    # again: that flattens the per-container lists without the lists library's flatten().
    # Their values are built only from literals and strings: the pod reaches CEL as typed
    # values, which a patch value cannot carry (a copied sub-object fails to marshal).
    variables += [
        ("newCommands", (
            "variables.inits.transformList(i_, c_, variables.newArgvs[i_].transformList(j_, x_,"
            " j_ < c_.?command.orValue([]).size(), x_))"
        )),
        ("newArgs", (
            "variables.inits.transformList(i_, c_, variables.newArgvs[i_].transformList(j_, x_,"
            " j_ >= c_.?command.orValue([]).size(), x_))"
        )),
        ("initOperations", (
            "variables.inits.transformList(i_, c_, !variables.removeInit[i_],"
            " ((variables.newCommands[i_] != c_.?command.orValue([]).map(x_, x_)"
            f' ? ["C " + {_INIT_PATH} + "/command " + string(i_)] : [])'
            " + (variables.newArgs[i_] != c_.?args.orValue([]).map(x_, x_)"
            f' ? ["G " + {_INIT_PATH} + "/args " + string(i_)] : [])'
            f" + {init_env}).join(\"\\n\"))"
            '.join("\\n")'
        )),
        ("removals", (
            "variables.removeInit.all(r_, r_) && variables.inits.size() > 0"
            ' ? "D /spec/initContainers"'
            " : " + _let(
                "variables.inits.transformList(i_, c_, variables.removeInit[i_], i_)",
                "d_",
                'd_.transformList(k_, v_, "D /spec/initContainers/"'
                ' + string(d_[d_.size() - 1 - k_])).join("\\n")',
            )
        )),
        ("containerOperations", (
            "variables.containers.transformList(i_, c_,"
            f" ({app_env}).join(\"\\n\"))"
            '.join("\\n")'
        )),
        ("operations", (
            "[variables.initOperations, variables.removals, variables.containerOperations]"
            '.join("\\n").split("\\n").filter(o_, o_ != "")'
        )),
        ("removed", "variables.inits.transformList(i_, c_, variables.removeInit[i_], c_.name)"),
        ("rewritten", (
            "variables.inits.transformList(i_, c_, !variables.removeInit[i_]"
            " && variables.newArgvs[i_] != variables.written[i_], c_.name)"
        )),
        ("envChanged", (
            "[variables.inits.transformList(i_, c_, !variables.removeInit[i_], "
            + _env_changes(_ENV, "variables.initValues[i_]", add_absent=sidecar_uses)
            + ').join(","), variables.containers.transformList(i_, c_, '
            + _env_changes(_ENV, "variables.appValues[i_]", add_absent=uses)
            + ').join(",")].join(",").split(",").filter(n_, n_ != "")'
        )),
        ("envNames", (
            "variables.envChanged.transformList(j_, n_,"
            " variables.envChanged.indexOf(n_) == j_, n_)"
        )),
        ("status", (
            "'{\"removed\":' + "
            + _json_list("(variables.earlier[0] + variables.removed"
                         ".filter(n_, !(n_ in variables.earlier[0])))")
            + " + ',\"rewritten\":' + "
            + _json_list("(variables.earlier[1] + variables.rewritten"
                         ".filter(n_, !(n_ in variables.earlier[1])))")
            + " + ',\"env\":' + "
            + _json_list("(variables.earlier[2] + variables.envNames"
                         ".filter(n_, !(n_ in variables.earlier[2])))")
            + " + '}'"
        )),
    ]
    return [{"name": name, "expression": pretty(expression)} for name, expression in variables]


def _patch_expression() -> str:
    status_path = "/metadata/annotations/" + STATUS_KEY.replace("~", "~0").replace("/", "~1")
    retargeted_value = (
        '{"name": dyn((f_[2] == "I" ? variables.inits : variables.containers)[int(f_[3])]'
        ".env[int(f_[4])].name),"
        ' "value": dyn((f_[2] == "I" ? variables.initValues : variables.appValues)[int(f_[3])]'
        "[int(f_[4])])}"
    )
    operation = (
        'f_[0] == "V" ? JSONPatch{op: "replace", path: f_[1], value: ' + retargeted_value + "}"
        ' : (f_[0] == "R" ? JSONPatch{op: "replace", path: f_[1],'
        " value: variables.managedEnv[f_[2]]}"
        ' : (f_[0] == "D" ? JSONPatch{op: "remove", path: f_[1]}'
        ' : (f_[0] == "A" ? JSONPatch{op: "add", path: f_[1], value: variables.managedEnv[f_[2]]}'
        ' : (f_[0] == "L" ? JSONPatch{op: "add", path: f_[1],'
        " value: variables.managedOrder.map(n_, variables.managedEnv[n_])}"
        ' : (f_[0] == "C" ? JSONPatch{op: "replace", path: f_[1],'
        " value: variables.newCommands[int(f_[2])]}"
        ' : JSONPatch{op: "replace", path: f_[1], value: variables.newArgs[int(f_[2])]})))))'
    )
    split = _let('o_.split(" ")', "f_", operation)
    return (
        f"variables.operations.map(o_, {split})"
        " + (variables.operations.size() == 0 || variables.currentStatus == variables.status"
        " ? [] : (has(object.metadata.annotations)"
        f' ? [JSONPatch{{op: "add", path: {cel_string(status_path)}, value: variables.status}}]'
        ' : [JSONPatch{op: "add", path: "/metadata/annotations",'
        f" value: {{{cel_string(STATUS_KEY)}: variables.status}}}}]))"
    )


def _opt_out_expression() -> str:
    """mutate._opt_out_reason: the annotation or the label, any spelling of "false"."""
    values = _strings(OPT_OUT_VALUES)
    key = cel_string(INJECT_KEY)
    checks = [
        f"(has(object.metadata.{where}) && {key} in object.metadata.{where}"
        f" && object.metadata.{where}[{key}].trim().lowerAscii() in {values})"
        for where in ("annotations", "labels")
    ]
    return "!(" + " || ".join(checks) + ")"


def _namespace_exclusion(settings: Settings) -> list[dict[str, Any]]:
    if not settings.excluded_namespaces:
        return []
    return [{
        "key": NAMESPACE_NAME_LABEL,
        "operator": "NotIn",
        "values": sorted(settings.excluded_namespaces),
    }]


def build_policy(
    settings: Settings,
    *,
    api_version: str = DEFAULT_API_VERSION,
    name: str = "backend-injector",
) -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy with the webhook's rules for ``settings``, and its binding."""
    if api_version not in API_VERSIONS:
        raise ValueError(f"api_version must be one of {', '.join(API_VERSIONS)}")
    labels = {"app.kubernetes.io/name": "backend-injector"}
    excluded = _namespace_exclusion(settings)
    constraints: dict[str, Any] = {
        "resourceRules": [{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
        }],
        "matchPolicy": "Equivalent",
    }
    if excluded:
        # Also here and not only in the binding: a binding edited by hand must still never
        # reach the namespaces the control plane or the webhook itself live in.
        constraints["namespaceSelector"] = {"matchExpressions": excluded}
    policy = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": constraints,
            "matchConditions": [
                {"name": "not-opted-out", "expression": pretty(_opt_out_expression())},
            ],
            "variables": _variables(settings),
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {"expression": pretty(_patch_expression())},
            }],
        },
    }
    binding = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "policyName": name,
            "matchResources": {
                "namespaceSelector": {"matchExpressions": [
                    {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]},
                    *excluded,
                ]},
                # Saves evaluating the policy for labelled opt-outs; the matchCondition covers
                # the annotation and the other spellings.
                "objectSelector": {"matchExpressions": [
                    {"key": INJECT_KEY, "operator": "NotIn", "values": ["false"]},
                ]},
            },
        },
    }
    return [policy, binding]


class _Dumper(yaml.SafeDumper):
    """Long CEL expressions as literal blocks, so the YAML stays readable and diffable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(documents: Sequence[Mapping[str, Any]], settings: Settings | None = None) -> str:
    """Multi-document YAML with a header that says what it is (and warns about credentials)."""
    header = [
        "# backend-injector as a MutatingAdmissionPolicy: the webhook's rules in CEL.",
        "# Generated by `backend-injector policy`; regenerate rather than edit.",
    ]
    if settings is not None and settings.credentials.mode is CredentialMode.VALUE:
        header += [
            "# WARNING: credentials.mode is `value`, so the S3 credentials are literals inside",
            "# this policy, readable by anyone who may read MutatingAdmissionPolicies. Prefer",
            "# credentials.mode: secretKeyRef with the policy (see docs/policy.md).",
        ]
    body = "---\n".join(
        yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=100)
        for document in documents
    )
    return "\n".join(header) + "\n---\n" + body


def run_policy_command(settings: Settings, api_version: str = DEFAULT_API_VERSION) -> str:
    """What `backend-injector policy` prints: the policy and its binding as YAML."""
    return dump_yaml(build_policy(settings, api_version=api_version), settings)


def expressions(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every CEL expression in built documents (for tests and reviews)."""
    found: list[str] = []
    for document in documents:
        spec = document.get("spec", {})
        found += [c["expression"] for c in spec.get("matchConditions", [])]
        found += [v["expression"] for v in spec.get("variables", [])]
        found += [m["jsonPatch"]["expression"] for m in spec.get("mutations", [])]
    return found


__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_VERSION",
    "all_regexes",
    "build_policy",
    "cel_string",
    "dump_yaml",
    "expressions",
    "run_policy_command",
]
