"""What a command's words say beyond its name, in the policy twin (CEL): redirections, and
commands whose kind hangs on their arguments.

The twins of what ``webhook.rules.commands`` and the shell reader (``webhook.rules.shell``) tell
from a command's arguments and redirections:

- a redirection is never an argument; one that writes a file (grammar.FILE_WRITE_REDIRECTS to
  a target that is not harmless) is work, whatever the command;
- an HTTP client that sends a body or a method other than GET/HEAD is work, not a probe;
- installing probe tools (``apk add --no-cache netcat-openbsd``), reading a shell library and
  filtering a probe's output (``| grep -q PONG``) are as idle as ``sleep``.

The reader knows redirections from the parse tree; here they are known by the shape of the
words of a script split at white space (``webhook.policy.regex``). In exec form nothing is a
redirection: no shell reads the words.
"""

from __future__ import annotations

from webhook.policy.cel import (
    FALSE,
    TRUE,
    Expr,
    add,
    all_of,
    any_of,
    cond,
    let,
    map_of,
    not_,
    strings,
    sub,
)
from webhook.policy.regex import (
    BARE_REDIRECTION_RE,
    HARMLESS_TARGET_RE,
    QUOTED_PLACEHOLDER,
    QUOTED_TOKENS_RE,
    REDIRECTION_WORD_RE,
    SHORT_SENDING_RE,
    WRITE_OPERATOR_RE,
    WRITE_REDIRECTION_RE,
)
from webhook.policy.script_text import segment_words, unquote
from webhook.policy.variables import expanded_word
from webhook.rules.grammar import (
    COMMENT,
    DEV_TCP_CONNECTION,
    HTTP_CLIENTS,
    HTTP_METHOD_OPTIONS,
    HTTP_READ_METHODS,
    HTTP_SENDING_OPTIONS,
    IDLE_COMMANDS,
    OUTPUT_FILTERS,
    PACKAGE_MANAGERS,
    PROBE_TOOL_PACKAGES,
    QUOTES,
    SHELL_LIBRARIES,
    SOURCE_COMMANDS,
)

# The short option that names the method, which may have it attached (`-XPOST`).
_SHORT_METHOD_OPTIONS = sorted(o for o in HTTP_METHOD_OPTIONS if not o.startswith("--"))

# --- redirections ---------------------------------------------------------------------------


def redirection_flags(words: Expr, in_script: Expr) -> Expr:
    """For each word, whether it is a redirection: an operator with its target (`>/dev/null`,
    `2>&1`), or the target of an operator standing alone before it (`>` `/tmp/x`); but not a
    bash connection (`>/dev/tcp/h/p`), whose target the rules' reader takes for a word of the
    command."""

    def is_redirection(position: Expr, word: Expr) -> Expr:
        after_operator = cond(position.gt(0),
                              words[sub(position, 1)].matches(BARE_REDIRECTION_RE), FALSE)
        return all_of(any_of(word.matches(REDIRECTION_WORD_RE), after_operator),
                      not_(word.contains(DEV_TCP_CONNECTION)))

    return cond(in_script, words.transform_list("position", "word", is_redirection),
                words.map("word", lambda _: FALSE))


def segment_writes(segment: Expr, env: Expr) -> Expr:
    """Whether a segment of a marked script (never a comment) writes a file with a redirection
    (shell._Walker._redirect). What is quoted in it redirects nothing (`echo "==> up"`): in
    each string closed within the segment, `<` and `>` stand as a placeholder while it is
    looked at."""
    dequoted = segment.find_all(QUOTED_TOKENS_RE).map("token", lambda token: cond(
        all_of(token.size().gt(1), any_of(*(token.starts_with(q) for q in QUOTES))),
        token.replace(">", QUOTED_PLACEHOLDER).replace("<", QUOTED_PLACEHOLDER), token)).join("")
    return all_of(segment.contains(">"), not_(segment.starts_with(COMMENT)),
                  writes_file(segment_words(dequoted), env))


def writes_file(words: Expr, env: Expr) -> Expr:
    """Whether a command's words write a file with a redirection: an operator of
    grammar.FILE_WRITE_REDIRECTS to a target that, unquoted and with its variables resolved,
    is not a descriptor, `-`, a harmless file or a bash connection."""

    def target_of(position: Expr, redirection: Expr) -> Expr:
        attached = redirection.substring(redirection.find(WRITE_OPERATOR_RE).size())
        following = add(position, 1)
        return let(attached, "attached_target", lambda attached_target: cond(
            attached_target.ne(""), attached_target,
            cond(following.lt(words.size()), words[following], "")))

    def writes(position: Expr, word: Expr) -> Expr:
        def harmful(redirection: Expr) -> Expr:
            target = unquote(expanded_word(target_of(position, redirection), TRUE, env))
            return all_of(redirection.ne(""), let(target, "target", lambda target: not_(any_of(
                target.matches(HARMLESS_TARGET_RE), target.contains(DEV_TCP_CONNECTION)))))

        return all_of(word.contains(">"),
                      let(word.find(WRITE_REDIRECTION_RE), "redirection", harmful))

    return words.transform_list("position", "word", lambda position, _: position,
                                where=writes).size().gt(0)


# --- HTTP clients ---------------------------------------------------------------------------


def http_sends(command: Expr, arguments: Expr) -> Expr:
    """commands._sends for curl and wget: an option of grammar.HTTP_SENDING_OPTIONS (its value
    attached or not), unless it names a read method (`-X GET`, `--method=HEAD`)."""

    def sending(position: Expr, argument: Expr) -> Expr:
        def of_option(option: Expr) -> Expr:
            attached = cond(argument.contains("="), argument.substring(add(option.size(), 1)), "")
            short_method = any_of(*(argument.starts_with(o) for o in _SHORT_METHOD_OPTIONS))
            following = add(position, 1)
            method = cond(attached.ne(""), attached, cond(
                all_of(short_method, argument.size().gt(2)), argument.substring(2),
                cond(following.lt(arguments.size()), arguments[following], "")))
            names_method = any_of(option.is_in(strings(HTTP_METHOD_OPTIONS)), short_method)
            reads = method.upper_ascii().is_in(strings(HTTP_READ_METHODS))
            return all_of(
                any_of(option.is_in(strings(HTTP_SENDING_OPTIONS)),
                       argument.matches(SHORT_SENDING_RE)),
                not_(all_of(names_method, reads)))

        return let(argument.split("=")[0], "option", of_option)

    return all_of(command.is_in(strings(HTTP_CLIENTS)), arguments.transform_list(
        "position", "argument", lambda position, _: position, where=sending).size().gt(0))


# --- idle commands ----------------------------------------------------------------------------


def installs_probe_tools(command: Expr, arguments: Expr) -> Expr:
    """commands._installs_probe_tools: a package manager's install (or update) verb, then only
    packages of grammar.PROBE_TOOL_PACKAGES (options set aside)."""
    verbs = map_of({manager: strings(verbs) for manager, verbs in PACKAGE_MANAGERS.items()})

    def checked(plain: Expr) -> Expr:
        others = plain.transform_list(
            "position", "installed", lambda _, installed: installed,
            where=lambda position, installed: all_of(
                position.gt(0), not_(installed.is_in(strings(PROBE_TOOL_PACKAGES)))))
        return all_of(plain.size().gt(0), plain[0].is_in(verbs[command]), others.size().eq(0))

    plain = arguments.filter("argument", lambda argument: not_(argument.starts_with("-")))
    return all_of(command.is_in(strings(PACKAGE_MANAGERS)), let(plain, "plain", checked))


def reads_shell_library(command: Expr, arguments: Expr) -> Expr:
    """commands._reads_shell_library: `. /opt/bitnami/scripts/libos.sh` only defines
    functions."""
    return all_of(command.is_in(strings(SOURCE_COMMANDS)), arguments.size().eq(1),
                  any_of(*(arguments[0].starts_with(library) for library in SHELL_LIBRARIES)))


def is_idle(command: Expr, arguments: Expr) -> Expr:
    """commands._kind_otherwise says idle (a command that is no probe): the glue of a loop, an
    output filter, installing probe tools or reading a shell library."""
    return any_of(command.is_in(strings(IDLE_COMMANDS | OUTPUT_FILTERS)),
                  installs_probe_tools(command, arguments),
                  reads_shell_library(command, arguments))


__all__ = ["http_sends", "installs_probe_tools", "is_idle", "reads_shell_library",
           "redirection_flags", "segment_writes", "writes_file"]
