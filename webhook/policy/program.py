"""The policy twin's reading of init container programs, as CEL built with ``webhook.policy.cel``.

The twin of ``probes.ProgramReader``: a program is split into simple commands (``sh -c``
scripts at the separators of ``grammar.SEPARATOR_TOKENS``), each command's word is found past
keywords, assignments, redirections and wrappers, probes and liveness queries are told from
work, and the words of probes are matched against the managed hosts (``policy_regex``).
What one command says is a list of *facts* (see the tags below); retargeting rewrites the
host tokens of a probe's text.

Each function here takes and returns ``Expr`` values; the policy's variables that hold the
per-container results are assembled in ``webhook.policy.mutation``.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook.policy.cel import (
    EMPTY_LIST,
    FALSE,
    Expr,
    Operand,
    add,
    all_of,
    any_of,
    cond,
    function,
    let,
    list_of,
    map_of,
    not_,
    replaced_all,
    string,
    strings,
    sub,
)
from webhook.policy.regex import (
    AMPERSAND_MARK,
    ASSIGNMENT_RE,
    ATTACHED_PORT_RE,
    ATTACHED_PORT_START_RE,
    BASENAME_RE,
    COMMAND_PREFIX_RE,
    COMMENT_MARK,
    COMMENT_PREFIX_RE,
    DEV_TCP_RE,
    HIDDEN,
    IN_COMMENT,
    KEYWORD_CLASS,
    KUBELET_TOKENS_RE,
    KUBELET_WHOLE_RE,
    LEADING_PORT_RE,
    LEADING_SPACE_RE,
    NEXT_WORD_PORT_START_RE,
    OPTION_CLASS,
    OPTION_DASHES_RE,
    OTHER_CLASS,
    QUOTED_VARIABLE_WHOLE_RE,
    READ_TOKENS_RE,
    REDIRECTION_RE,
    RSTRIP_RE,
    SAFE_VALUE_RE,
    SHELL_VARIABLE_RE,
    TEXT_TOKENS_RE,
    UNQUOTE_RE,
    URL_HOST_RE,
    VARIABLE_DEFAULT_RE,
    VARIABLE_NAME_RE,
    VARIABLE_PORT_START_RE,
    VARIABLE_WHOLE_RE,
    WITHOUT_TRAILING_SEMICOLON_RE,
    WORD_RE,
    WRAPPER_CLASS,
    WRAPPER_OPTION_RE,
    external_hosts_of,
    external_search_re,
    host_prefix_re,
    host_search_re,
    retarget_token_re,
    service_start_re,
    whole_host_token_re,
)
from webhook.rules.grammar import (
    CLIENTS,
    COMMAND_AFTER_DOUBLE_DASH,
    COMMENT,
    DEV_TCP_MARKERS,
    DOCKERIZE,
    DOCKERIZE_VALUE_OPTIONS,
    DOCKERIZE_WORK_OPTIONS,
    IDLE_COMMANDS,
    LIVENESS_QUERIES,
    LOOP_HEADERS,
    MYSQLADMIN,
    MYSQLADMIN_COMMANDS,
    MYSQLADMIN_LIVENESS,
    PORT_LAST_TOOLS,
    PORT_OPTIONS,
    PROBE_COMMANDS,
    QUERY_CLIENTS,
    REDIS_CLI,
    REDIS_LIVENESS,
    SHELL_KEYWORDS,
    SHELLS,
    URL_SCHEME_END,
    WRAPPERS,
)
from webhook.settings import Service

# --- facts ----------------------------------------------------------------------------------
#
# What the simple commands of one init container say is gathered as a list of strings: the
# lists of all its commands are joined with commas and split again, which is how CEL here
# flattens a list of lists (the lists library's flatten() only arrived in Kubernetes 1.34,
# and the v1beta1 policy must also run there at CEL compatibility level 1.33). A fact is:
SERVICE_TAG_PREFIX = "s"  # "s<i>": a probe of the i-th managed service (service_tag)
EXTERNAL_TAG = "@"  # a probe of an external address (a pass before retargeted it)
OTHER_HOST_TAG = "!o"  # a probe of a host that is not managed (kafka), or cannot be known
WORK_TAG = "!w"  # a command that does work
PORT_APART_TAG = "!p"  # a probe whose port is given apart from its host (not retargeted)
FACT_SEPARATOR = ","


def service_tag(index: int) -> str:
    return f"{SERVICE_TAG_PREFIX}{index}"


class CommandRecord:
    """One simple command as a CEL map: ``command`` (its command word's base name, "" when
    there is none), ``arguments`` (the words after it, unquoted), ``written`` (the same as
    written, quotes and all) and ``words`` (all its words)."""

    def __init__(self, record: Expr) -> None:
        self.record = record

    @property
    def command(self) -> Expr:
        return self.record.field("command")

    @property
    def arguments(self) -> Expr:
        return self.record.field("arguments")

    @property
    def written(self) -> Expr:
        return self.record.field("written")

    @property
    def words(self) -> Expr:
        return self.record.field("words")


# --- splitting ------------------------------------------------------------------------------


def commented(script: Expr) -> Expr:
    """``script`` with each comment marked and its separators hidden (see COMMENT_MARK)."""

    def marked_line(line: Expr) -> Expr:
        def with_prefix(before_comment: Expr) -> Expr:
            comment = let(line.substring(before_comment.size()), "comment",
                          lambda comment: replaced_all(comment, IN_COMMENT.items()))
            return cond(before_comment.size().eq(line.size()), line,
                        add(before_comment, string(COMMENT_MARK), comment))

        return let(line.find(COMMENT_PREFIX_RE), "before_comment", with_prefix)

    return script.split("\n").map("line", marked_line).join("\n")


def uncommented(text: Expr) -> Expr:
    """The inverse of ``commented``."""
    text = text.replace(COMMENT_MARK, "")
    return replaced_all(text, ((stand_in, char) for char, stand_in in IN_COMMENT.items()))


def marked(script: Expr) -> Expr:
    """``script`` with comments set apart, and `$(`, `&&` and the `&` of redirections hidden,
    ready to be split."""
    return replaced_all(commented(script), HIDDEN)


def unmarked_ampersands(text: Expr) -> Expr:
    return text.replace(AMPERSAND_MARK, "&")


def unquote(word: Expr) -> Expr:
    return word.find(UNQUOTE_RE)


def basename(word: Expr) -> Expr:
    return word.find(BASENAME_RE)


def script_index(argv: Expr) -> Expr:
    """segments.shell_script_index: the index of the script in ``sh [-e] -c SCRIPT``, or -1."""

    def shell_flag(word: Expr) -> Expr:
        return all_of(word.starts_with("-"), not_(word.starts_with("--")),
                      word.substring(1).contains("c"))

    positions = argv.transform_list(
        "position", "word",
        lambda position, word: cond(shell_flag(word), add(position, 1), -1),
        where=lambda position, word: all_of(
            position.ge(1), position.lt(sub(argv.size(), 1)),
            any_of(not_(word.starts_with("-")), shell_flag(word))),
    )
    first = let(positions, "script_positions",
                lambda found: cond(found.size().gt(0), found[0], -1))
    return cond(all_of(argv.size().ge(3), basename(argv[0]).is_in(strings(SHELLS))), first, -1)


# --- one simple command ---------------------------------------------------------------------


def word_class(word: Expr) -> Expr:
    """The class of one word (KEYWORD_CLASS...), as segments.command_index treats it."""

    def classed(unquoted: Expr) -> Expr:
        keyword = any_of(unquoted.is_in(strings(SHELL_KEYWORDS)), unquoted.matches(ASSIGNMENT_RE),
                         unquoted.matches(REDIRECTION_RE))
        wrapper = basename(unquoted).is_in(strings(WRAPPERS | SHELLS))
        option = any_of(word.starts_with("-"), word.matches(WRAPPER_OPTION_RE))
        return cond(keyword, KEYWORD_CLASS,
                    cond(wrapper, WRAPPER_CLASS, cond(option, OPTION_CLASS, OTHER_CLASS)))

    return let(unquote(word), "unquoted", classed)


def command_record(words: Expr) -> Expr:
    """The CommandRecord of one simple command's ``words``, as segments.command_index finds
    its command word."""
    prefix = words.map("word", word_class).join("").find(COMMAND_PREFIX_RE).size()
    nothing = map_of({"command": "", "arguments": EMPTY_LIST, "written": EMPTY_LIST,
                      "words": words})

    def at(command_index: Expr) -> Expr:
        def after(position: Expr, _: Expr) -> Expr:
            return position.gt(command_index)

        def found(command_word: Expr) -> Expr:
            record = map_of({
                "command": basename(command_word),
                "arguments": words.transform_list(
                    "position", "argument", lambda _, argument: unquote(argument), where=after),
                "written": words.transform_list(
                    "position", "argument", lambda _, argument: argument, where=after),
                "words": words,
            })
            return cond(command_word.is_in(strings(LOOP_HEADERS)), nothing, record)

        return cond(command_index.lt(words.size()),
                    let(unquote(words[command_index]), "command_word", found), nothing)

    return let(prefix, "command_index", at)


def is_comment(record: CommandRecord) -> Expr:
    return all_of(record.words.size().gt(0), record.words[0].starts_with(COMMENT))


def is_probe(record: CommandRecord) -> Expr:
    """commands.classify says "probe": a probe command, `/dev/tcp/...`, or a client's liveness
    check; never a comment, nor dockerize rendering files."""
    other = any_of(
        record.command.is_in(strings(PROBE_COMMANDS)),
        record.words.exists("word", lambda word: any_of(
            *(word.contains(marker) for marker in DEV_TCP_MARKERS))),
    )
    return all_of(not_(is_comment(record)), not_(dockerize_works(record)),
                  cond(record.command.is_in(strings(CLIENTS)), client_probes(record), other))


def probed_words(record: CommandRecord) -> Expr:
    return cond(record.command.is_in(strings(PROBE_COMMANDS | CLIENTS)), record.arguments,
                record.words)


def normalised_query(text: Expr) -> Expr:
    """commands._normalised_query(commands._first_shell_word(text))."""
    first = cond(
        any_of(text.starts_with("'"), text.starts_with('"')),
        text.substring(1).split(text.substring(0, 1))[0],
        text.split(" ")[0],
    )
    return let(first, "first_word", lambda first_word: first_word.find_all(WORD_RE).join(" ")
               .find(WITHOUT_TRAILING_SEMICOLON_RE).trim().lower_ascii())


def client_probes(record: CommandRecord) -> Expr:
    """A client probes its host when it runs a liveness check (commands.classify)."""
    written, arguments = record.written, record.arguments
    verdict = FALSE
    for name, flags in reversed(QUERY_CLIENTS.items()):
        long_flags = [flag for flag in flags if flag.startswith("--")]

        def query(flag_position: Expr, flag: Expr, long_flags: list[str] = long_flags,
                  flags: tuple[str, ...] = flags) -> Expr:
            # `-c QUERY` or `--command=QUERY`: the query is what follows the flag.
            attached: Expr = EMPTY_LIST
            for long_flag in reversed(long_flags):
                attached = cond(flag.starts_with(long_flag + "="),
                                list_of(flag.substring(len(long_flag) + 1)), attached)
            following = written.transform_list(
                "position", "word", lambda _, word: word,
                where=lambda position, _: position.gt(flag_position))
            text = add(cond(flag.is_in(strings(flags)), EMPTY_LIST, attached), following)
            return let(text.join(" "), "query_text", normalised_query)

        def is_flag(_: Expr, word: Expr, long_flags: list[str] = long_flags,
                    flags: tuple[str, ...] = flags) -> Expr:
            return any_of(word.is_in(strings(flags)),
                          *(word.starts_with(flag + "=") for flag in long_flags))

        queries = written.transform_list("flag_position", "flag", query, where=is_flag)
        live = let(queries, "queries", lambda found: all_of(
            found.size().gt(0),
            found.all("query", lambda query: query.is_in(strings(LIVENESS_QUERIES)))))
        verdict = cond(record.command.eq(name), live, verdict)
    verbs = arguments.map("argument", lambda argument: argument.lower_ascii()).filter(
        "verb", lambda verb: verb.is_in(strings(MYSQLADMIN_COMMANDS)))
    mysqladmin = let(verbs, "verbs", lambda found: all_of(
        found.size().gt(0), found.all("verb", lambda verb: verb.is_in(
            strings(MYSQLADMIN_LIVENESS)))))
    redis = all_of(arguments.size().gt(0),
                   arguments.last().lower_ascii().is_in(strings(REDIS_LIVENESS)))
    return cond(record.command.eq(MYSQLADMIN), mysqladmin,
                cond(record.command.eq(REDIS_CLI), redis, verdict))


def stripped_option(word: Expr) -> Expr:
    """An option's name without its leading dashes."""
    return word.substring(word.find(OPTION_DASHES_RE).size())


def runs_command(record: CommandRecord) -> Expr:
    """segments._command_cut found a command: after `--` for the wait tools that take one, or
    dockerize's first word that is neither an option nor an option's value."""
    arguments = record.arguments

    def positional(position: Expr, argument: Expr) -> Expr:
        value_option = let(arguments[sub(position, 1)], "previous", lambda previous: all_of(
            previous.starts_with("-"), not_(previous.contains("=")),
            stripped_option(previous).is_in(strings(DOCKERIZE_VALUE_OPTIONS))))
        return all_of(not_(argument.starts_with("-")),
                      any_of(position.eq(0), not_(value_option)))

    has_positional = arguments.transform_list(
        "position", "argument", lambda _, argument: argument, where=positional).size().gt(0)
    double_dash = arguments.index_of("--")
    return any_of(
        all_of(record.command.is_in(strings(COMMAND_AFTER_DOUBLE_DASH)), double_dash.ge(0),
               double_dash.lt(sub(arguments.size(), 1))),
        all_of(record.command.eq(DOCKERIZE), has_positional),
    )


def dockerize_works(record: CommandRecord) -> Expr:
    """dockerize with an option that renders files: work, not a probe (commands.classify)."""
    return all_of(record.command.eq(DOCKERIZE), record.arguments.exists(
        "argument", lambda argument: all_of(
            argument.starts_with("-"),
            stripped_option(argument).split("=")[0].is_in(strings(DOCKERIZE_WORK_OPTIONS)))))


def port_apart(record: CommandRecord) -> Expr:
    """The probe's port may be given apart from its host: a port option or the last word."""
    return any_of(
        record.command.is_in(strings(PORT_LAST_TOOLS)),
        record.words.exists("word", lambda word: any_of(*(
            test for option in PORT_OPTIONS
            for test in (word.eq(option), word.starts_with(option + "="))))),
    )


# --- hosts in words -------------------------------------------------------------------------


def names_external_host(word: Expr, external_hosts: Sequence[str]) -> Expr:
    """ProgramReader.names_external_host: an external host found in the word, quoted or not
    (the quotes at its ends count as boundaries either way, so the word is not unquoted)."""
    if not external_hosts:
        return FALSE
    return word.matches(external_search_re(external_hosts))


def names_some_host(word: Expr) -> Expr:
    """commands._host_of(word) is not None."""
    return any_of(word.matches(DEV_TCP_RE), word.find(RSTRIP_RE).matches(URL_HOST_RE))


def word_tags(word: Expr, services: Sequence[Service]) -> Expr:
    """The service tags of every managed service the word probes, in the order of the
    services, each followed by FACT_SEPARATOR; else EXTERNAL_TAG for the external address;
    else "" (as ProgramReader.managed_services_in and names_external_host)."""
    external = cond(names_external_host(word, external_hosts_of(services)), EXTERNAL_TAG, "")
    if not services:
        return external
    named = add(*(
        cond(word.matches(host_search_re(service)), service_tag(index) + FACT_SEPARATOR, "")
        for index, service in enumerate(services)
    ))
    return let(named, "service_tags", lambda tags: cond(tags.ne(""), tags, external))


# --- variables ------------------------------------------------------------------------------


def literal_values(env: Expr, name: Operand) -> Expr:
    """The literal values of the variable ``name`` in ``env``, in order."""
    return env.filter("entry", lambda entry: all_of(
        entry.field("name").eq(name), function("has", entry.field("value")))).map(
        "entry", lambda entry: entry.field("value"))


def resolution(token: Expr, env: Expr) -> Expr:
    """What a reference token stands for: the last literal value of its variable when that is
    not empty, else its default; "" for neither (variables._resolved, where None and "" both
    leave the reference as written)."""

    def chosen(name: Expr) -> Expr:
        # Only a braced reference can hold a `-`, and then it starts the default.
        default = cond(token.contains("-"), token.find(VARIABLE_DEFAULT_RE).substring(1), "")
        return let(literal_values(env, name), "values", lambda values: let(
            cond(values.size().gt(0), values.last(), ""), "value",
            lambda value: cond(value.ne(""), value, default)))

    return let(token.find(VARIABLE_NAME_RE), "variable_name", chosen)


def kubelet_expanded(element: Expr, env: Expr) -> Expr:
    """variables.expand_kubelet for one element of command + args: `$(NAME)` replaced by the
    last literal value of NAME (`$$(` escapes it), any other reference left as written."""

    def value(token: Expr) -> Expr:
        name = token.substring(2, sub(token.size(), 1))
        return let(literal_values(env, name), "values",
                   lambda values: cond(values.size().gt(0), values.last(), token))

    tokens = element.find_all(KUBELET_TOKENS_RE).map(
        "token", lambda token: cond(token.matches(KUBELET_WHOLE_RE), value(token), token)
    ).join("")
    return cond(element.contains("$("), tokens, element)


def expanded_word(word: Expr, in_script: Expr, env: Expr) -> Expr:
    """variables.expand_word in a script: each reference resolved, unresolved ones as written."""

    def value(token: Expr) -> Expr:
        return let(resolution(token, env), "resolved",
                   lambda resolved: cond(resolved.ne(""), resolved, token))

    tokens = word.find_all(READ_TOKENS_RE).map(
        "token", lambda token: cond(token.matches(VARIABLE_WHOLE_RE), value(token), token)
    ).join("")
    return cond(all_of(in_script, word.contains("$")), tokens, word)


def expanded_text(text: Expr, env: Expr) -> Expr:
    """variables.expand_in_probe: each reference (with the quotes around it) replaced by its
    value where that is one plain word."""

    def value(token: Expr) -> Expr:
        return let(resolution(token, env), "resolved", lambda resolved: cond(
            all_of(resolved.ne(""), resolved.matches(SAFE_VALUE_RE)), resolved, token))

    def is_reference(token: Expr) -> Expr:
        return any_of(token.matches(VARIABLE_WHOLE_RE), token.matches(QUOTED_VARIABLE_WHOLE_RE))

    tokens = text.find_all(TEXT_TOKENS_RE).map(
        "token", lambda token: cond(is_reference(token), value(token), token)).join("")
    return cond(text.contains("$"), tokens, text)


# --- what a command says --------------------------------------------------------------------


def command_facts(record: CommandRecord, services: Sequence[Service], in_script: Expr,
                  env: Expr) -> Expr:
    """The facts of one simple command: the twin of probes.ProgramReader._read_segment.

    A variable in a script's probe may stand for any host: it is resolved against the init
    container's literal env and the default, as the rules do; one that stays unresolved
    counts as another host, so the container is kept.
    """
    other_candidates = cond(record.arguments.size().gt(0), record.arguments, record.words)
    # A wait tool that runs a command of its own counts as work (the rules reads that command
    # apart); a port given apart from the host is tagged: the policy cannot retarget it.
    apart = add(cond(runs_command(record), list_of(WORK_TAG), EMPTY_LIST),
                cond(port_apart(record), list_of(PORT_APART_TAG), EMPTY_LIST))

    def of_words(expanded: Expr) -> Expr:
        unresolved = all_of(in_script, expanded.exists("word", lambda word: all_of(
            not_(word.starts_with("-")), word.matches(SHELL_VARIABLE_RE))))
        names_other = other_candidates.exists("word", lambda word: all_of(
            not_(word.starts_with("-")), names_some_host(word)))

        def with_tags(tags: Expr) -> Expr:
            tagged = tags.exists("tag", lambda tag: tag.ne(""))
            other = cond(any_of(tagged, not_(any_of(unresolved, names_other))), EMPTY_LIST,
                         list_of(OTHER_HOST_TAG))
            return add(tags.filter("tag", lambda tag: tag.ne("")), other, apart)

        return let(expanded.map("word", lambda word: word_tags(word, services)), "tags",
                   with_tags)

    probe = let(probed_words(record).map("word", lambda word: expanded_word(word, in_script,
                                                                             env)),
                "expanded_words", of_words)
    work = cond(all_of(not_(is_comment(record)), record.command.ne(""),
                       not_(record.command.is_in(strings(IDLE_COMMANDS)))),
                list_of(WORK_TAG), EMPTY_LIST)
    return cond(is_probe(record), probe, work)


def retargetable_probe(record: CommandRecord) -> Expr:
    """A probe the policy can retarget: not one whose port or command it cannot follow."""
    return all_of(is_probe(record), not_(runs_command(record)), not_(port_apart(record)))


# --- retargeting ----------------------------------------------------------------------------


def retarget_text(text: Expr, services: Sequence[Service]) -> Expr:
    """ProgramReader.retarget_text for every service with an external address, without
    re.sub: the text is cut into tokens, host tokens are rewritten, and the tokens joined."""
    retargetable = [s for s in services if s.external is not None]
    hosts = [host for s in retargetable for host in s.hosts]
    distinct_hosts = sorted(set(hosts))

    def replaced(token: Expr, tokens: Expr, position: Expr) -> Expr:
        # [the host as matched, the external host, the external port], for the service whose
        # host starts the token.
        choice: Expr = EMPTY_LIST
        for service in reversed(retargetable):
            assert service.external is not None
            choice = cond(token.matches(service_start_re(service)), list_of(
                token.find(host_prefix_re(service)), service.external.host,
                str(service.external.port)), choice)
        # The characters before the token, as the rules looks back for `://`: tokens are at
        # least one character long, so as many tokens back reach far enough.
        before = add(*(cond(position.ge(back), tokens[sub(position, back)], "")
                       for back in range(len(URL_SCHEME_END), 0, -1)))
        after_url = before.ends_with(URL_SCHEME_END)

        def rewrite(replacement: Expr, rest: Expr) -> Expr:
            host, port = replacement[1], replacement[2]
            next_word = let(rest.find(LEADING_SPACE_RE), "gap", lambda gap: add(
                host, gap, port, rest.substring(add(
                    gap.size(), rest.substring(gap.size()).find(LEADING_PORT_RE).size()))))
            return cond(
                rest.matches(ATTACHED_PORT_START_RE),
                add(host, rest.substring(0, 1), port,
                    rest.substring(rest.find(ATTACHED_PORT_RE).size())),
                # A variable port: the token ends with it (see host_token_re), all of it goes.
                cond(rest.matches(VARIABLE_PORT_START_RE), add(host, rest.substring(0, 1), port),
                     cond(after_url, add(host, ":", port, rest),
                          cond(rest.matches(NEXT_WORD_PORT_START_RE), next_word,
                               add(host, rest)))))

        return let(choice, "replacement", lambda replacement: let(
            token.substring(replacement[0].size()), "rest",
            lambda rest: rewrite(replacement, rest)))

    # Cheap tests first: most tokens are not hosts, and most texts name none.
    def is_host(token: Expr) -> Expr:
        return all_of(any_of(*(token.starts_with(host) for host in distinct_hosts)),
                      token.matches(whole_host_token_re(hosts)))

    tokens = let(text.find_all(retarget_token_re(hosts)), "tokens", lambda tokens: (
        tokens.transform_list("position", "token", lambda position, token: cond(
            is_host(token), replaced(token, tokens, position), token)).join("")))
    return cond(not_(any_of(*(text.contains(host) for host in distinct_hosts))), text, tokens)

