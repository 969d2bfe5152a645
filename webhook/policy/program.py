"""One simple command of a program in the policy twin, as CEL built with ``webhook.policy.cel``.

The twin of ``programs.ProgramReader`` for one command (``commands.classify`` and what it
reads): its command word is found past keywords, assignments, redirections and wrappers,
probes and liveness queries are told from work and idle glue (with
``webhook.policy.command_kinds``), and the words of probes are matched against the managed
hosts (``webhook.policy.regex``). What one command says is a list of *facts* (see the tags
below) and a *kind*; retargeting rewrites the host tokens of a probe's text, or the URLs in
the text of a command that does work.

Each function here takes and returns ``Expr`` values; the programs are cut into commands in
``webhook.policy.container_programs``, and the policy's variables that hold the
per-container results are assembled in ``webhook.policy.mutation``.
"""

from __future__ import annotations

from collections.abc import Sequence

from webhook.policy.cel import (
    EMPTY_LIST,
    FALSE,
    Expr,
    add,
    all_of,
    any_of,
    cond,
    let,
    list_of,
    map_of,
    not_,
    strings,
    sub,
)
from webhook.policy.command_kinds import http_sends, is_idle, redirection_flags
from webhook.policy.regex import (
    ASSIGNMENT_RE,
    ATTACHED_PORT_RE,
    ATTACHED_PORT_START_RE,
    COMMAND_PREFIX_RE,
    DEV_TCP_RE,
    KEYWORD_CLASS,
    LEADING_PORT_RE,
    LEADING_SPACE_RE,
    NEXT_WORD_PORT_START_RE,
    OPTION_CLASS,
    OPTION_DASHES_RE,
    OTHER_CLASS,
    REDIRECTION_RE,
    RSTRIP_RE,
    SHELL_VARIABLE_RE,
    SUBSTITUTION_OPENERS,
    TRAILING_SPACE_RE,
    URL_HOST_RE,
    VARIABLE_PORT_AT_START_RE,
    VARIABLE_PORT_START_RE,
    WITHOUT_TRAILING_SEMICOLON_RE,
    WORD_RE,
    WORK_TOKENS_RE,
    WRAPPER_CLASS,
    WRAPPER_OPTION_RE,
    external_hosts_of,
    external_search_re,
    host_prefix_re,
    host_search_re,
    retarget_token_re,
    service_start_re,
    whole_host_re,
    whole_host_token_re,
)
from webhook.policy.script_text import basename, unquote
from webhook.policy.urls import is_url, named_host, retargeted_address
from webhook.policy.variables import expanded_word
from webhook.rules.grammar import (
    CLIENTS,
    COMMAND_AFTER_DOUBLE_DASH,
    COMMENT,
    DEV_TCP_MARKERS,
    DOCKERIZE,
    DOCKERIZE_VALUE_OPTIONS,
    DOCKERIZE_WORK_OPTIONS,
    LIVENESS_QUERIES,
    LOOP_HEADERS,
    MYSQLADMIN,
    MYSQLADMIN_COMMANDS,
    MYSQLADMIN_LIVENESS,
    PATH_STARTS,
    PORT_LAST_TOOLS,
    PORT_OPTIONS,
    PROBE_COMMANDS,
    QUERY_CLIENTS,
    REDIS_CLI,
    REDIS_LIVENESS,
    SHELL_KEYWORDS,
    SHELLS,
    WRAPPERS,
)
from webhook.settings import Service

# --- facts ----------------------------------------------------------------------------------
#
# What the simple commands of one program say is gathered as a list of strings: the
# lists of all its commands are joined with commas and split again, which is how CEL here
# flattens a list of lists (the lists library's flatten() only arrived in Kubernetes 1.34,
# and the v1beta1 policy must also run there at CEL compatibility level 1.33). A fact is:
SERVICE_TAG_PREFIX = "s"  # "s<i>": a probe of the i-th managed service (service_tag)
EXTERNAL_TAG = "@"  # a probe of an external address (a pass before retargeted it)
OTHER_HOST_TAG = "!o"  # a probe of a host that is not managed (kafka), or cannot be known
WORK_TAG = "!w"  # a command that does work
PORT_APART_TAG = "!p"  # a probe whose port is given apart from its host (not retargeted)
FACT_SEPARATOR = ","

# What one simple command is, for its facts and for retargeting (command_kind):
PROBE_KIND = "p"  # a probe, retargeted where it stands
HELD_PROBE_KIND = "q"  # a probe whose port or own command the policy does not follow: as written
WORK_KIND = "w"  # work: the URLs in it are retargeted (hosts.retarget_urls)
NO_KIND = ""  # glue, a comment, nothing


def service_tag(index: int) -> str:
    return f"{SERVICE_TAG_PREFIX}{index}"


class CommandRecord:
    """One simple command as a CEL map: ``command`` (its command word's base name, "" when
    there is none), ``arguments`` (the words after it that are not redirections, unquoted),
    ``written`` (the same as written, quotes and all), ``words`` (all its words) and ``plain``
    (its words that are not redirections; a bash connection, `>/dev/tcp/h/p`, is one of
    them, as the rules' reader makes its target a word of the command), and ``head``."""

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

    @property
    def plain(self) -> Expr:
        return self.record.field("plain")

    @property
    def head(self) -> Expr:
        """The index of its command word (the number of words when there is none)."""
        return self.record.field("head")


# --- the program ------------------------------------------------------------------------


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


def command_record(words: Expr, in_script: Expr) -> Expr:
    """The CommandRecord of one simple command's ``words``, as segments.command_index finds
    its command word; in a script, redirections are not its arguments (the parse tree keeps
    them apart)."""
    prefix = words.map("word", word_class).join("").find(COMMAND_PREFIX_RE).size()

    def with_flags(redirections: Expr) -> Expr:
        def not_redirection(position: Expr, _: Expr) -> Expr:
            return not_(redirections[position])

        def at(command_index: Expr, plain: Expr) -> Expr:
            nothing = map_of({"command": "", "arguments": EMPTY_LIST, "written": EMPTY_LIST,
                              "words": words, "plain": plain, "head": command_index})

            def argument(position: Expr, word: Expr) -> Expr:
                return all_of(position.gt(command_index), not_redirection(position, word))

            def found(command_word: Expr) -> Expr:
                record = map_of({
                    "command": basename(command_word),
                    "arguments": words.transform_list(
                        "position", "argument", lambda _, word: unquote(word), where=argument),
                    "written": words.transform_list(
                        "position", "argument", lambda _, word: word, where=argument),
                    "words": words,
                    "plain": plain,
                    "head": command_index,
                })
                return cond(command_word.is_in(strings(LOOP_HEADERS)), nothing, record)

            return cond(command_index.lt(words.size()),
                        let(unquote(words[command_index]), "command_word", found), nothing)

        plain = words.transform_list("position", "word", lambda _, word: word,
                                     where=not_redirection)
        return let(plain, "plain_words", lambda plain_words: let(
            prefix, "command_index", lambda command_index: at(command_index, plain_words)))

    return let(redirection_flags(words, in_script), "redirections", with_flags)


def is_comment(record: CommandRecord) -> Expr:
    return all_of(record.words.size().gt(0), record.words[0].starts_with(COMMENT))


def is_probe(record: CommandRecord) -> Expr:
    """commands.classify says "probe": a probe command, `/dev/tcp/...` among its words (or a
    redirection to it, which the rules' reader makes a word of the command), or a client's
    liveness check; never a comment, dockerize rendering files nor an HTTP client sending."""
    other = any_of(
        record.command.is_in(strings(PROBE_COMMANDS)),
        record.plain.exists("word", lambda word: any_of(
            *(word.contains(marker) for marker in DEV_TCP_MARKERS))),
    )
    return all_of(not_(is_comment(record)), not_(dockerize_works(record)),
                  not_(http_sends(record.command, record.arguments)),
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
    else "" (as ProgramReader.managed_services_in and names_external_host).

    A URL in the word names the service of its authority only: a word that may hold one is
    cut into the tokens of the retarget (URLs first, as the rules' scanner reads them), the
    hosts are looked for outside the URLs, and each URL's host is judged whole.
    """
    external = cond(names_external_host(word, external_hosts_of(services)), EXTERNAL_TAG, "")
    if not services:
        return external
    may_hold_url = all_of(word.contains(":"), any_of(*(word.contains(start)
                                                       for start in PATH_STARTS)))
    all_hosts = [host for service in services for host in service.hosts]

    def names(service: Service, outside: Expr, url_hosts: Expr) -> Expr:
        regex = whole_host_re(service)
        return any_of(outside.matches(host_search_re(service)),
                      url_hosts.exists("url_host", lambda host: host.matches(regex)))

    def tags_of(outside: Expr, url_hosts: Expr) -> Expr:
        named = add(*(
            cond(names(service, outside, url_hosts), service_tag(index) + FACT_SEPARATOR, "")
            for index, service in enumerate(services)
        ))
        return let(named, "service_tags", lambda tags: cond(tags.ne(""), tags, external))

    def of_tokens(tokens: Expr) -> Expr:
        return let(
            tokens.map("token", lambda token: cond(is_url(token), " ", token)).join(""),
            "outside", lambda outside: let(
                tokens.filter("token", is_url).map("token", named_host), "url_hosts",
                lambda url_hosts: tags_of(outside, url_hosts)))

    return let(cond(may_hold_url, word.find_all(retarget_token_re(all_hosts)), list_of(word)),
               "word_tokens", of_tokens)


# --- what a command says --------------------------------------------------------------------


def command_kind(record: CommandRecord) -> Expr:
    """What one simple command is, as commands.classify says and as the policy can retarget
    it: PROBE_KIND, HELD_PROBE_KIND (a probe whose port or own command the policy does not
    follow), WORK_KIND or NO_KIND (idle glue, a comment, nothing)."""
    probe = cond(any_of(runs_command(record), port_apart(record)), HELD_PROBE_KIND, PROBE_KIND)
    work = all_of(not_(is_comment(record)), record.command.ne(""),
                  not_(is_idle(record.command, record.arguments)))
    return cond(is_probe(record), probe, cond(work, WORK_KIND, NO_KIND))


def runs_substitution(record: CommandRecord, piece: Expr) -> Expr:
    """Whether the command substitution that the segment ``piece`` opens (`$(` or a backtick,
    which end the segment) stands where the command word goes: `until $(nc -z db 5432)`,
    ``X=1 `cmd` ``, `until "$(cmd)"`. Its output is run as a command, which the rules' reader
    counts as work, whatever the substitution runs."""
    words, head = record.words, record.head

    def of_before(before: Expr) -> Expr:
        spaced = any_of(before.size().eq(0), before.matches(TRAILING_SPACE_RE))
        return any_of(
            all_of(head.eq(words.size()), spaced),
            all_of(head.eq(sub(words.size(), 1)), unquote(words.last()).eq(""), not_(spaced)))

    opens = any_of(*(piece.ends_with(opener) for opener in SUBSTITUTION_OPENERS))
    return all_of(opens, let(piece.substring(0, sub(piece.size(), 1)), "before_substitution",
                             of_before))


def is_probe_kind(kind: Expr) -> Expr:
    return any_of(kind.eq(PROBE_KIND), kind.eq(HELD_PROBE_KIND))


def does_work(record: CommandRecord, kind: Expr, writes: Expr) -> Expr:
    """Whether a command does work, as the facts say WORK_TAG: a command that is no probe or
    glue, a wait tool running a command of its own, or one that ``writes`` a file."""
    return any_of(kind.eq(WORK_KIND), all_of(kind.eq(HELD_PROBE_KIND), runs_command(record)),
                  writes)


def command_facts(record: CommandRecord, kind: Expr, writes: Expr,
                  services: Sequence[Service], in_script: Expr, env: Expr) -> Expr:
    """The facts of one simple command of ``kind`` (command_kind) that ``writes`` a file or
    not: the twin of programs.ProgramReader.read for one step.

    A variable in a script's probe may stand for any host: it is resolved against the
    container's literal env and the default, as the rules do; one that stays unresolved
    counts as another host, so the container is kept.
    """
    other_candidates = cond(record.arguments.size().gt(0), record.arguments, record.plain)
    # A wait tool that runs a command of its own counts as work (the rules read that command
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
    work = cond(kind.eq(WORK_KIND), list_of(WORK_TAG), EMPTY_LIST)
    return add(cond(is_probe_kind(kind), probe, work),
               cond(writes, list_of(WORK_TAG), EMPTY_LIST))


# --- retargeting ----------------------------------------------------------------------------


def retarget_text(text: Expr, services: Sequence[Service]) -> Expr:
    """ProgramReader.retarget_text for every service with an external address, without
    re.sub: the text is cut into tokens, URL tokens have their authority retargeted and host
    tokens are rewritten, and the tokens joined."""
    retargetable = [s for s in services if s.external is not None]
    hosts = [host for s in retargetable for host in s.hosts]
    distinct_hosts = sorted(set(hosts))

    def replaced(token: Expr) -> Expr:
        # [the host as matched, the external host, the external port], for the service whose
        # host starts the token.
        choice: Expr = EMPTY_LIST
        for service in reversed(retargetable):
            assert service.external is not None
            choice = cond(token.matches(service_start_re(service)), list_of(
                token.find(host_prefix_re(service)), service.external.host,
                str(service.external.port)), choice)

        def rewrite(replacement: Expr, rest: Expr) -> Expr:
            host, port = replacement[1], replacement[2]
            next_word = let(rest.find(LEADING_SPACE_RE), "gap", lambda gap: add(
                host, gap, port, rest.substring(add(
                    gap.size(), rest.substring(gap.size()).find(LEADING_PORT_RE).size()))))
            return cond(
                rest.matches(ATTACHED_PORT_START_RE),
                add(host, rest.substring(0, 1), port,
                    rest.substring(rest.find(ATTACHED_PORT_RE).size())),
                # A variable port goes; what the token took after it stays.
                cond(rest.matches(VARIABLE_PORT_START_RE),
                     add(host, rest.substring(0, 1), port,
                         rest.substring(rest.find(VARIABLE_PORT_AT_START_RE).size())),
                     cond(rest.matches(NEXT_WORD_PORT_START_RE), next_word, add(host, rest))))

        return let(choice, "replacement", lambda replacement: let(
            token.substring(replacement[0].size()), "rest",
            lambda rest: rewrite(replacement, rest)))

    # Cheap tests first: most tokens are not hosts, and most texts name none.
    def is_host(token: Expr) -> Expr:
        return all_of(any_of(*(token.starts_with(host) for host in distinct_hosts)),
                      token.matches(whole_host_token_re(hosts)))

    tokens = text.find_all(retarget_token_re(hosts)).map("token", lambda token: cond(
        is_url(token), retargeted_address(token, retargetable),
        cond(is_host(token), replaced(token), token))).join("")
    return cond(not_(any_of(*(text.contains(host) for host in distinct_hosts))), text, tokens)


def retarget_urls(text: Expr, services: Sequence[Service]) -> Expr:
    """ManagedHosts.retarget_urls for the text of a command that does work: the URLs in it
    whose authority names a service with an external address pointed at it, bare host names
    left (in work they may name anything: a bucket, an alias)."""
    retargetable = [s for s in services if s.external is not None]
    distinct_hosts = sorted({host for s in retargetable for host in s.hosts})
    tokens = text.find_all(WORK_TOKENS_RE).map("token", lambda token: cond(
        is_url(token), retargeted_address(token, retargetable), token)).join("")
    return cond(not_(any_of(*(text.contains(host) for host in distinct_hosts))), text, tokens)
