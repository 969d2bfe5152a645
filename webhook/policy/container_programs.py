"""The programs of a group of containers in the policy twin (CEL): read, and retargeted.

The init containers and the app containers go through the same steps, as ``mutate.Rules``
reads both with one ``ProgramReader``: each program as the kubelet runs it (``$(NAME)``
expanded from the container's literal env), its script cut into segments (pieces of text, one
per simple command) and words, each segment's command record and kind
(``webhook.policy.program``), whether the script can be read at all, and, for the containers
whose programs are retargeted, each segment's text with its probes' hosts and its work's URLs
pointed at the external addresses, the pieces joined again.

A ``ProgramGroup`` names the policy variables of one group; each function here builds the
expression for one container of it (``index``), read by ``transformList`` in
``webhook.policy.mutation``'s variables, and refers to the variables before its own by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    not_,
    string,
    strings,
    sub,
    variable,
)
from webhook.policy.command_kinds import segment_writes
from webhook.policy.env import args_of, command_of, env_of
from webhook.policy.program import (
    PROBE_KIND,
    WORK_KIND,
    CommandRecord,
    command_kind,
    command_record,
    does_work,
    retarget_text,
    retarget_urls,
    runs_substitution,
)
from webhook.policy.regex import (
    AFTER_FIRST_WORD_RE,
    BALANCED_QUOTES_RE,
    COMMAND_LEAD_RE,
    COMMAND_TAIL_RE,
    COMPUTED_RE,
    EXEC_JOINER,
    MARKS,
    SEGMENT_BODY_RE,
    SEGMENT_RE,
    UNPARSED_OPERATOR,
)
from webhook.policy.script_text import marked, piece_text, segment_words, unmarked, unquote
from webhook.policy.variables import expanded_text, kubelet_expanded
from webhook.rules.grammar import (
    COMMENT,
    CONTINUATION_MASK,
    DEV_TCP_CONNECTION,
    LINE_CONTINUATION,
)
from webhook.settings import Service


@dataclass(frozen=True)
class ProgramGroup:
    """The policy variables of one group of containers' programs: ``containers`` is the
    variable holding the containers; the group's own variables are named with ``prefix``
    (the init containers' have none: ``argvs``, ``scriptIndex``...)."""

    containers: str
    prefix: str = ""

    def name(self, name: str) -> str:
        return self.prefix + name[:1].upper() + name[1:] if self.prefix else name

    def var(self, name: str) -> Expr:
        return variable(self.name(name))

    def env(self, index: Expr) -> Expr:
        """The literal env of the group's container ``index``."""
        return env_of(variable(self.containers)[index])

    def script_index(self, index: Expr) -> Expr:
        return self.var("scriptIndex")[index]

    def in_script(self, index: Expr) -> Expr:
        return self.script_index(index).ge(0)


INIT_PROGRAMS = ProgramGroup("inits")
APP_PROGRAMS = ProgramGroup("containers", "app")


# --- reading --------------------------------------------------------------------------------


def written_programs(group: ProgramGroup) -> Expr:
    """Each container's command + args as written."""
    return variable(group.containers).map("container", lambda container: add(
        command_of(container), args_of(container)))


def expanded_programs(group: ProgramGroup, read: Expr | None = None) -> Expr:
    """Each program as the kubelet runs it; with ``read`` (a test of the container's index),
    only the programs it holds for, the others empty (never read)."""
    written = group.var("written")

    def expanded(index: Expr, _: Expr) -> Expr:
        return written[index].map("element", lambda element: kubelet_expanded(
            element, group.env(index)))

    if read is None:
        return variable(group.containers).transform_list("index", "container", expanded)
    return variable(group.containers).transform_list(
        "index", "container", lambda index, container: cond(
            read[index], expanded(index, container), EMPTY_LIST))


def program_pieces(group: ProgramGroup, index: Expr, argv: Expr) -> Expr:
    """A script's segments as text, each with the separator that ends it (a host match sees
    it as the end of the text, as the rules see a command's end); [] in exec form."""
    return cond(group.in_script(index), marked(argv[group.script_index(index)]).find_all(
        SEGMENT_RE), EMPTY_LIST)


def program_segments(group: ProgramGroup, index: Expr, argv: Expr) -> Expr:
    """The program as simple commands, each a list of words: a script's segments, any other
    form one command (none for an empty program)."""
    return cond(group.in_script(index),
                group.var("pieces")[index].map("piece", segment_words),
                cond(argv.size().gt(0), list_of(argv), EMPTY_LIST))


def program_records(group: ProgramGroup, index: Expr, segments: Expr) -> Expr:
    return segments.map("words", lambda words: command_record(words, group.in_script(index)))


def program_kinds(group: ProgramGroup, index: Expr, records: Expr) -> Expr:
    """Each command's kind (program.command_kind); in a script, a command substitution that
    stands where a command word goes is work (program.runs_substitution)."""
    pieces = group.var("pieces")[index]
    return records.transform_list("position", "record", lambda position, record: cond(
        all_of(group.in_script(index),
               runs_substitution(CommandRecord(record), pieces[position])),
        WORK_KIND, command_kind(CommandRecord(record))))


# Keywords that open and close a block, each pair as many times in a script that parses.
BLOCKS = (("do", "done"), ("if", "fi"), ("case", "esac"), ("{", "}"))
_BLOCK_WORDS = frozenset(word for pair in BLOCKS for word in pair)


def block_words(record: CommandRecord) -> Expr:
    """The block keywords a command starts with (in its prefix of keywords, or `case` as its
    command word), unquoted."""
    words, head = record.words, record.head
    keywords = words.transform_list(
        "position", "word", lambda _, word: unquote(word),
        where=lambda position, word: all_of(position.lt(head),
                                            unquote(word).is_in(strings(_BLOCK_WORDS))))
    opens_case = all_of(head.lt(words.size()), unquote(words[head]).eq("case"))
    return add(keywords, cond(opens_case, list_of("case"), EMPTY_LIST))


def count(words: Expr, word: str) -> Expr:
    """How many of ``words`` are ``word``."""
    return words.filter("keyword", lambda keyword: keyword.eq(word)).size()


def is_unreadable(group: ProgramGroup, index: Expr, records: Expr) -> Expr:
    """Whether the rules' shell parser would reject the script, as far as the policy can tell:
    a quote that does not close, `<>` (comments set aside), or a block keyword without its
    partner (`do` without `done`, `if` without `fi`...). The rules count such a script as
    work and leave it as written; other parse errors (a parenthesis that does not close) are
    not seen here, and the script is read as far as its separators go."""
    code = group.var("pieces")[index].filter(
        "piece", lambda piece: not_(piece.starts_with(COMMENT))).join("")
    keywords = records.map("record", lambda record: block_words(CommandRecord(record)).join(
        " ")).join(" ").split(" ")

    def unbalanced(found: Expr) -> Expr:
        return any_of(*(count(found, opening).ne(count(found, closing))
                        for opening, closing in BLOCKS))

    return all_of(group.in_script(index), any_of(
        let(code, "code", lambda code: any_of(code.contains(UNPARSED_OPERATOR),
                                               not_(code.matches(BALANCED_QUOTES_RE)))),
        let(keywords, "block_keywords", unbalanced)))


def is_computed(argv: Expr) -> Expr:
    """A host part computed at run time (`mlflow.$(...)`): the policy splits the script there,
    so it cannot tell the host; such a program is never retargeted."""
    return argv.exists("element", lambda element: element.matches(COMPUTED_RE))


def program_writes(group: ProgramGroup, index: Expr, records: Expr) -> Expr:
    """For each command, whether it writes a file with a redirection (only a script has
    redirections)."""
    return cond(group.in_script(index), group.var("pieces")[index].map(
        "piece", lambda piece: segment_writes(piece, group.env(index))),
        records.map("record", lambda _: FALSE))


def works(group: ProgramGroup, index: Expr, records: Expr) -> Expr:
    """Whether any command of the program does work (does_work)."""
    kinds, writes = group.var("kinds")[index], group.var("writes")[index]
    return records.transform_list(
        "position", "record", lambda position, _: position,
        where=lambda position, record: does_work(CommandRecord(record), kinds[position],
                                                 writes[position]),
    ).size().gt(0)


# --- retargeting ------------------------------------------------------------------------------


def retarget_input(group: ProgramGroup, index: Expr, retargeted: Expr) -> Expr:
    """What to retarget when ``retargeted`` holds, as [text, kind] pieces: the segments of the
    script, or the exec-form words joined into one text (when its command is a probe or
    work); [] for nothing. A script that already holds one of the marks is not retargeted."""
    kinds = group.var("kinds")[index]
    argv = group.var("argvs")[index]
    exec_form = cond(
        all_of(kinds.size().gt(0), any_of(kinds[0].eq(PROBE_KIND), kinds[0].eq(WORK_KIND)),
               not_(argv.exists("element", lambda element: element.contains(EXEC_JOINER)))),
        list_of(list_of(argv.join(EXEC_JOINER), kinds[0])), EMPTY_LIST)
    pieces = group.var("pieces")[index].transform_list(
        "position", "piece", lambda position, piece: list_of(piece, kinds[position]))
    script = argv[group.script_index(index)]
    script_form = cond(list_of(*(string(mark) for mark in MARKS)).exists(
        "mark", lambda mark: script.contains(mark)), EMPTY_LIST, pieces)
    return cond(not_(retargeted), EMPTY_LIST,
                cond(group.in_script(index), script_form, exec_form))


def retargeted_piece(group: ProgramGroup, services: Sequence[Service], index: Expr,
                     piece: Expr) -> Expr:
    """One piece retargeted as programs.ProgramReader._retarget_shell_form (or the exec form)
    does it: a probe's hosts (its variables resolved first) or a work's URLs, in the
    command's own text, written back so only when something changed.

    In a script, the command's own text is what the rules' parse tree spans: past the
    separator that ends the segment, the keywords, assignments and redirections before the
    command and the redirections after it (a bash connection, `> /dev/tcp/h/p`, stays: the
    rules make it a word of the command), with continuations standing as two white-space
    characters (grammar.CONTINUATION_MASK)."""
    raw, kind = piece[0], piece[1]
    in_script = group.in_script(index)

    def rewritten(core: Expr, done: Callable[[Expr], Expr]) -> Expr:
        expanded = cond(all_of(in_script, kind.eq(PROBE_KIND)),
                        expanded_text(core, group.env(index)), core)
        return let(expanded, "expanded", lambda expanded: let(
            cond(kind.eq(PROBE_KIND), retarget_text(expanded, services),
                 retarget_urls(expanded, services)),
            "retargeted", lambda retargeted: cond(retargeted.eq(expanded), raw,
                                                  done(retargeted))))

    def of_body(body: Expr) -> Expr:
        def of_lead(text: Expr, lead: Expr) -> Expr:
            def of_tail(rest: Expr, found_tail: Expr) -> Expr:
                # A connection among the redirections stays, with what goes before it.
                after_connection = found_tail.substring(found_tail.last_index_of(
                    DEV_TCP_CONNECTION)).find(AFTER_FIRST_WORD_RE)
                return let(cond(found_tail.contains(DEV_TCP_CONNECTION), after_connection,
                                found_tail),
                           "tail", lambda tail: rewritten(
                               rest.substring(0, sub(rest.size(), tail.size())),
                               lambda retargeted: add(
                                   add(lead, retargeted, tail).replace(CONTINUATION_MASK,
                                                                       LINE_CONTINUATION),
                                   raw.substring(body.size()))))

            return let(text.substring(lead.size()), "rest", lambda rest: let(
                rest.find(COMMAND_TAIL_RE), "found_tail",
                lambda found_tail: of_tail(rest, found_tail)))

        return let(piece_text(body, CONTINUATION_MASK), "text", lambda text: let(
            text.find(COMMAND_LEAD_RE), "lead", lambda lead: of_lead(text, lead)))

    script_form = let(raw.find(SEGMENT_BODY_RE), "body", of_body)
    exec_form = rewritten(raw, lambda retargeted: retargeted)
    return cond(any_of(all_of(kind.ne(PROBE_KIND), kind.ne(WORK_KIND)),
                       raw.contains(CONTINUATION_MASK)),
                raw, cond(in_script, script_form, exec_form))


def retarget_output(group: ProgramGroup, services: Sequence[Service], index: Expr,
                    pieces: Expr) -> Expr:
    """The pieces joined again, the probes and work among them retargeted."""
    return pieces.map("piece", lambda piece: retargeted_piece(group, services, index, piece)
                      ).join("")


def retargeted_argv(group: ProgramGroup, index: Expr, argv: Expr) -> Expr:
    """The program with the retargeted text in place: the exec-form words split again, or
    the script put back at its position with the marks undone."""
    output = group.var("retargetOutput")[index]
    return cond(not_(group.in_script(index)), output.split(EXEC_JOINER),
                argv.transform_list("position", "element", lambda position, element: cond(
                    position.eq(group.script_index(index)), unmarked(output), element)))


def new_argv(group: ProgramGroup, index: Expr, argv: Expr) -> Expr:
    """The program to write. Only a retargeted probe or URL writes it out (with the kubelet's
    expansion in it); otherwise it stays as written."""
    written = group.var("written")[index]
    return cond(group.var("retargetInput")[index].size().eq(0), written,
                let(retargeted_argv(group, index, argv), "new_argv", lambda new: cond(
                    new.eq(argv), written, new)))


def argv_words(group: ProgramGroup, index: Expr, container: Expr, *, of_command: bool) -> Expr:
    """The new program's words where the written command was (``of_command``), or the rest:
    a container's new command or its new args."""
    command_size = command_of(container).size()
    return group.var("newArgvs")[index].transform_list(
        "position", "element", lambda _, element: element,
        where=lambda position, _: (position.lt(command_size) if of_command
                                   else position.ge(command_size)))


__all__ = [
    "APP_PROGRAMS", "INIT_PROGRAMS", "ProgramGroup", "argv_words", "expanded_programs",
    "is_computed", "is_unreadable", "new_argv", "program_kinds", "program_pieces",
    "program_records", "program_segments", "program_writes", "retarget_input",
    "retarget_output",
    "retargeted_argv", "retargeted_piece", "works", "written_programs",
]
