"""Shell scripts read as shell: the simple commands a script runs, with their words resolved.

A script (``sh -c SCRIPT``) is parsed by tree-sitter's bash grammar and its tree is walked in
the order the shell would run it, so that every way of writing the same commands reads the
same: continuation lines, ``if``/``while``/``until``/``for``/``case``, subshells, pipelines,
command substitutions, ``!``, redirections and heredocs. Along the way:

- script-local variables are followed: a constant assigned once (``ADDRESS=minio``, ``local
  host=$1``) is substituted where it is used, including a whole command held in a variable
  (``until $PG_READY``, split into words as the shell does); a variable assigned in several
  ways, by ``read`` or ``for``, stays unresolved (``$NAME`` in the word), so a probe of it is
  never taken for a probe of a managed host;
- functions defined in the script are followed into their bodies at each call, with the
  call's arguments as ``$1``, ``$2``...; a nested shell (``timeout 60 sh -c '...'``), ``eval``,
  ``trap`` handlers and Bitnami's ``retry_while "CMD"`` have their command text read the same
  way;
- a redirection that writes a file (``> /shared/ready``) is work.

What cannot be read makes the whole script unreadable (None), which the rules treat as work:
a parse error (the grammar does not know ``<>``, for one), a node type the walk does not know,
calls nested deeper than ``MAX_DEPTH`` or more than ``MAX_COMMANDS`` commands in all.

Each command knows where its text lies in the script when its words are written there (in the
script itself, in a function's body, in a command substitution), so that a probe can be
retargeted where it stands; commands whose words come from a variable or a string (``$CMD``,
``sh -c "..."`` inside the script, ``retry_while "..."``) have no place (``span`` None).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import tree_sitter_bash
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from webhook.rules.grammar import (
    COMMAND_STRING_RUNNERS,
    DEV_TCP_CONNECTION,
    FILE_WRITE_REDIRECTS,
    HARMLESS_WRITE_TARGETS,
    KUBELET_VARIABLE,
    LINE_CONTINUATION,
    SHELLS,
    WRAPPERS,
)
from webhook.rules.segments import basename, past_wrapper_options, shell_script_index

# How many times a script is parsed again after a known misreading of the grammar.
MAX_REPAIRS = 8
# Calls (functions, nested shells, eval) nested deeper than this are not followed.
MAX_DEPTH = 8
# Simple commands read in one script, all calls followed: a bound on the work of a script
# whose functions call each other many times over.
MAX_COMMANDS = 2000

_LANGUAGE = Language(tree_sitter_bash.language())
# Found in one pass of the C library before the walk: names given values (with `for`'s loop
# variables), and the assignments that prefix a command (see _parsed).
_SURVEY = Query(
    _LANGUAGE,
    "(variable_assignment name: (variable_name) @assigned)"
    "(for_statement variable: (variable_name) @looped)"
    "(command (variable_assignment) @prefix)",
)
_PARSERS = threading.local()  # a tree-sitter Parser is not to be shared between threads
_SPACE = re.compile(r"\s")
_OPTION_WITH_VALUE = re.compile(r"(--?[A-Za-z][-A-Za-z0-9]*=)(.*)\Z", re.DOTALL)
_KUBELET_REFERENCE = re.compile(rf"{KUBELET_VARIABLE}\Z")
# `${NAME}`, `${NAME:-default}`, `${NAME-default}` (also `:=`/`=`), `${NAME:?message}` and
# `${ARRAY[@]}`: the forms read here.
_BRACED = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*|[0-9]+)(?P<all>\[[@*]\])?"
    r"(?:(?P<op>:?[-=?])(?P<default>[^}]*))?\}\Z"
)
_SPECIAL_ALL_ARGUMENTS = frozenset({"@", "*"})
# Node types that only group statements: their named children are walked in order.
_GROUPS = frozenset({
    "program", "compound_statement", "do_group", "subshell", "list", "pipeline",
    "negated_command", "if_statement", "elif_clause", "else_clause", "while_statement",
})
_IGNORED = frozenset({"comment", "heredoc_start", "heredoc_end", "heredoc_content"})
_RESERVED_WORDS = frozenset({"if", "then", "elif", "else", "fi", "while", "until", "do", "done",
                             "for", "in", "case", "esac", "{", "}", "!", "[[", "]]"})


class Unreadable(Exception):
    """The script holds something the reader does not follow."""


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """One simple command as it runs: its words resolved, and where it is written.

    ``words`` are the words after expansion (a word with white space in it is quoted, as
    it would be written); ``span`` the character offsets of the command's text in the
    script as written, when its words are written there (not taken from a variable or a
    string); ``variables`` the script's constants that the text may refer to there (in a
    function's body: not its arguments or locals, which differ from call to call).
    """

    words: tuple[str, ...]
    span: tuple[int, int] | None
    variables: Mapping[str, str]


@dataclass(slots=True)
class ShellReading:
    """A script read: its commands in the order they run, and whether it writes files."""

    commands: list[ShellCommand] = field(default_factory=list)
    writes_files: bool = False
    # A command whose name is computed (`` `...` `` or `$(...)` where a command goes): what it
    # runs is the output of another command, which the rules cannot know.
    runs_computed_command: bool = False


def read_script(
    script: str, env: Mapping[str, str], *, in_place: bool = True
) -> ShellReading | None:
    """The commands ``script`` runs, with ``env`` the container's literal variables; None when
    it cannot be read. ``in_place``: the script is written as it is in the program (not
    built from words), so its commands have spans."""
    try:
        walker = _Walker()
        walker.walk_script(_Source(script), dict(env), in_place=in_place)
    except (Unreadable, RecursionError):
        return None
    return walker.reading


def _parsed(source: _Source) -> tuple[Node, dict[str, list[Node]]]:
    """The script's tree and its survey (``_SURVEY``'s captures); raises Unreadable when it
    does not parse.

    tree-sitter's grammar takes a line of two or more assignments followed by blank or comment
    lines for the prefix of a command on a later line (`A=1 B=2`, a comment, `until ...`
    becomes a command named `until`). Such a line ends at its newline for the shell, so the
    white space after its last assignment is made a `;` (same length, so offsets hold) and the
    script parsed again.
    """
    for _ in range(MAX_REPAIRS + 1):
        root = _parser().parse(source.data).root_node
        if root.has_error:
            raise Unreadable("the script does not parse")
        survey = QueryCursor(_SURVEY).captures(root)
        ends = _assignment_prefixes_across_lines(source.data, survey.get("prefix", []))
        if not ends:
            return root, survey
        source.patch(ends, b";")
    raise Unreadable("too many assignment lines taken for command prefixes")


def _assignment_prefixes_across_lines(data: bytes, prefixes: list[Node]) -> list[int]:
    """Where the last assignment ends, for each command whose assignment prefix and name are
    on different lines (see _parsed)."""
    last: dict[int, Node] = {}
    commands: dict[int, Node] = {}
    for assignment in prefixes:
        command = assignment.parent
        if command is not None and (command.id not in last
                                    or assignment.end_byte > last[command.id].end_byte):
            last[command.id] = assignment
            commands[command.id] = command
    ends = []
    for key, assignment in last.items():
        name = commands[key].child_by_field_name("name")
        end = assignment.end_byte
        if name is not None and b"\n" in data[end : name.start_byte]:
            if data[end : end + 1] not in (b" ", b"\t", b"\n"):
                raise Unreadable("an assignment line the parser misreads")
            ends.append(end)
    return ends


def _parser() -> Parser:
    parser: Parser | None = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = Parser(_LANGUAGE)
        _PARSERS.parser = parser
    return parser


class _Source:
    """A script prepared for the parser: continuation lines joined, as the shell joins them
    before it reads words (tree-sitter would split `mlflow\\⏎5000` in two), and the offsets
    of the bytes the parser sees mapped back to characters of the script as written."""

    def __init__(self, script: str) -> None:
        self.script = script
        joined = script.replace(LINE_CONTINUATION, "")
        # Offsets in `joined` at which a continuation was taken out.
        self._cuts: list[int] = []
        if len(joined) != len(script):
            position = 0
            removed = 0
            while (found := script.find(LINE_CONTINUATION, position)) >= 0:
                self._cuts.append(found - removed)
                removed += len(LINE_CONTINUATION)
                position = found + len(LINE_CONTINUATION)
        self.data = joined.encode()
        self._ascii = len(self.data) == len(joined)
        self._char_of_byte: list[int] = []
        if not self._ascii:
            for index, character in enumerate(joined):
                self._char_of_byte.extend([index] * len(character.encode()))
            self._char_of_byte.append(len(joined))

    def patch(self, offsets: Sequence[int], replacement: bytes) -> None:
        """One byte at each of ``offsets`` replaced (the same length: offsets stay valid)."""
        data = bytearray(self.data)
        for offset in offsets:
            data[offset : offset + 1] = replacement
        self.data = bytes(data)

    def text(self, node: Node) -> str:
        return self.data[node.start_byte : node.end_byte].decode()

    def joined_span(self, node: Node) -> tuple[int, int]:
        """The node's offsets in the joined script (characters)."""
        if self._ascii:
            return node.start_byte, node.end_byte
        return self._char_of_byte[node.start_byte], self._char_of_byte[node.end_byte]

    def written_offset(self, offset: int, *, end: bool = False) -> int:
        """An offset in the joined script, as an offset in the script as written (the end of
        a span stays before a continuation that follows it)."""
        count = (bisect.bisect_left if end else bisect.bisect_right)(self._cuts, offset)
        return offset + len(LINE_CONTINUATION) * count


@dataclass(frozen=True, slots=True)
class _Place:
    """The script a node is read from, and whether its commands stand where they are written
    in the top script (a command string's do not)."""

    source: _Source
    in_place: bool

    def locate(self, nodes: Sequence[Node]) -> tuple[int, int] | None:
        """Where the text of ``nodes`` lies in the script as written; None for a script that
        is not the top one."""
        if not self.in_place or not nodes:
            return None
        start = self.source.joined_span(nodes[0])[0]
        end = self.source.joined_span(nodes[-1])[1]
        return (self.source.written_offset(start), self.source.written_offset(end, end=True))


class _Walker:
    """Walks a parse tree in run order and collects the commands it runs."""

    def __init__(self) -> None:
        self.reading = ShellReading()
        self._functions: dict[str, tuple[_Place, Node]] = {}
        # `/dev/tcp/...` redirections, and arguments the grammar put in a redirection,
        # waiting for the command they belong to, by node id.
        self._connections: dict[int, Sequence[Node]] = {}
        self._arguments: dict[int, list[Node]] = {}
        self._depth = 0

    # --- scripts and statements ------------------------------------------------------------

    def walk_script(
        self, source: _Source, variables: dict[str, str | None], *, in_place: bool = True
    ) -> None:
        """Reads one script: the top one, or one a command runs from a string."""
        root, survey = _parsed(source)
        scope = _Scope(variables, _assigned_more_than_once(source, survey))
        self._statement(root, _Place(source, in_place), scope)

    def _statement(self, node: Node, place: _Place, scope: _Scope) -> None:
        kind = node.type
        if kind in _GROUPS:
            for child in node.named_children:
                self._statement(child, place, scope)
        elif kind == "command":
            self._command(node, place, scope)
        elif kind == "redirected_statement":
            self._redirected(node, place, scope)
        elif kind in ("variable_assignment", "variable_assignments"):
            self._assignments(node, place, scope)
        elif kind == "declaration_command":
            if place.source.text(node).startswith("local"):
                scope.localise(_declared_names(place.source, node))
            self._assignments(node, place, scope)
        elif kind == "unset_command":
            for child in node.named_children:
                scope.forget(place.source.text(child))
        elif kind == "function_definition":
            name = node.child_by_field_name("name")
            body = node.child_by_field_name("body")
            if name is None or body is None:
                raise Unreadable("a function without a name or body")
            self._functions[place.source.text(name)] = (place, body)
        elif kind == "for_statement" or kind == "c_style_for_statement":
            self._for(node, place, scope)
        elif kind == "case_statement":
            self._case(node, place, scope)
        elif kind == "test_command":
            self._substitutions_in(node, place, scope)
        elif kind in _IGNORED:
            return
        else:
            raise Unreadable(f"a {kind} is not read")

    def _for(self, node: Node, place: _Place, scope: _Scope) -> None:
        """A loop's words and header read for what they run; its body walked once (what
        runs once or a hundred times is the same kind of thing)."""
        variable = node.child_by_field_name("variable")
        if variable is not None:
            scope.forget(place.source.text(variable))
        for child in node.named_children:
            if child.type in ("do_group", "compound_statement"):
                self._statement(child, place, scope)
            elif child.type != "comment":
                self._substitutions_in(child, place, scope)

    def _case(self, node: Node, place: _Place, scope: _Scope) -> None:
        """A ``case``: its value read for what it runs, each branch walked; the patterns
        run nothing."""
        for index, child in enumerate(node.named_children):
            if child.type == "case_item":
                for item_index, part in enumerate(child.children):
                    if part.is_named and child.field_name_for_child(item_index) != "value":
                        self._statement(part, place, scope)
            elif node.field_name_for_child(index) == "value" or child.type != "comment":
                self._substitutions_in(child, place, scope)

    def _redirected(self, node: Node, place: _Place, scope: _Scope) -> None:
        """A statement with redirections. A redirection to ``/dev/tcp/HOST/PORT`` is bash's
        own probe, so it counts as a word of the command it belongs to."""
        connections: list[Node] = []
        arguments: list[Node] = []
        for redirect in node.children_by_field_name("redirect"):
            destination = redirect.child_by_field_name("destination")
            if destination is not None and DEV_TCP_CONNECTION in place.source.text(destination):
                connections.append(redirect)
            else:
                self._redirect(redirect, place, scope)
                arguments.extend(_arguments_after_target(redirect))
        body = node.child_by_field_name("body")
        if body is None:
            return
        if arguments and body.type == "command":
            self._arguments[body.id] = arguments
        if connections:
            # The grammar hangs a redirection after `a && b`, `a | b` or `! a` on the whole;
            # the shell gives it to the last command.
            last = body
            while last.type in ("list", "pipeline", "negated_command") and last.named_child_count:
                last = last.named_children[-1]
            if last.type != "command":
                raise Unreadable("a connection redirected around a compound statement")
            self._connections[last.id] = connections
        self._statement(body, place, scope)

    def _redirect(self, node: Node, place: _Place, scope: _Scope) -> None:
        if node.type == "file_redirect":
            operator = next((c.type for c in node.children if not c.is_named), "")
            destination = node.child_by_field_name("destination")
            if operator in FILE_WRITE_REDIRECTS and destination is not None:
                target = " ".join(self._words(destination, place, scope))
                if not (target.isdigit() or target == "-"
                        or target.startswith(HARMLESS_WRITE_TARGETS)):
                    self.reading.writes_files = True
            return
        for child in node.named_children:
            if child.type in ("file_redirect", "heredoc_redirect"):
                self._redirect(child, place, scope)
            else:
                self._substitutions_in(child, place, scope)

    def _assignments(self, node: Node, place: _Place, scope: _Scope) -> None:
        for child in ([node] if node.type == "variable_assignment" else node.named_children):
            if child.type == "variable_assignment":
                name = child.child_by_field_name("name")
                value = child.child_by_field_name("value")
                if name is None:
                    raise Unreadable("an assignment without a name")
                resolved = self._word(value, place, scope) if value is not None else ""
                scope.assign(place.source.text(name), resolved)
            elif child.type == "variable_assignments":
                self._assignments(child, place, scope)

    # --- commands -----------------------------------------------------------------------------

    def _command(self, node: Node, place: _Place, scope: _Scope) -> None:
        connections = self._connections.pop(node.id, ())
        name = node.child_by_field_name("name")
        word_nodes = node.children_by_field_name("argument")
        word_nodes += self._arguments.pop(node.id, [])
        if name is not None:
            word_nodes.insert(0, name)
        here_string: Node | None = None
        for child in node.named_children:
            kind = child.type
            if kind == "herestring_redirect" and child.named_child_count:
                here_string = child.named_children[-1]
            elif kind in ("file_redirect", "heredoc_redirect"):
                self._redirect(child, place, scope)
                word_nodes.extend(_arguments_after_target(child))
            elif kind == "variable_assignment":
                # `PGPASSWORD=x psql ...`: the command's own environment.
                value = child.child_by_field_name("value")
                if value is not None:
                    self._words(value, place, scope)
        word_nodes.sort(key=lambda n: n.start_byte)
        words: list[str] = []
        for word_node in word_nodes:
            words.extend(self._words(word_node, place, scope))
        if name is not None and name.named_child_count == 1 and name.named_children[0].type in (
                "command_substitution", "process_substitution"):
            self.reading.runs_computed_command = True
            return
        for redirect in connections:
            destination = redirect.child_by_field_name("destination")
            if destination is not None:
                words.append(self._word(destination, place, scope))
        if not words:
            return
        if here_string is not None:
            fed = self._word(here_string, place, scope)
            if words[0] == "read" and not words[-1].startswith("-"):
                # `read [-r] [-a] NAME <<< WORD`: NAME gets WORD (an array: its words).
                scope.assign(words[-1], fed)
        nodes = [*word_nodes, *connections]
        if connections:
            nodes.sort(key=lambda n: n.start_byte)
        self._run(words, place.locate(nodes), scope)

    def _run(self, words: list[str], span: tuple[int, int] | None, scope: _Scope) -> None:
        """One simple command: a call of a function of the script, a command that runs a
        command string, or a command of its own."""
        self._count()
        if words[0] in _RESERVED_WORDS:
            # Only a misreading of the parser puts a reserved word where a command goes.
            raise Unreadable(f"{words[0]} read as a command")
        function = self._functions.get(words[0])
        if function is not None:
            self._call(function, words[1:], scope)
            return
        nested = command_string(words)
        if nested is not None:
            # The runner itself (`timeout 60 sh -c`, `retry_while`) only waits around it.
            self._nested(nested, scope)
            return
        self.reading.commands.append(
            ShellCommand(tuple(_quoted(word) for word in words), span, scope.constants())
        )

    def _call(self, function: tuple[_Place, Node], arguments: list[str], scope: _Scope) -> None:
        """A function's body run with ``arguments``; its commands stand where the body is
        written."""
        place, body = function
        self._enter()
        self._statement(body, place, scope.for_call(arguments))
        self._depth -= 1

    def _nested(self, script: str, scope: _Scope) -> None:
        self._enter()
        self.walk_script(_Source(script), dict(scope.values), in_place=False)
        self._depth -= 1

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise Unreadable("calls nested too deep")

    def _count(self) -> None:
        if len(self.reading.commands) >= MAX_COMMANDS:
            raise Unreadable("too many commands")

    # --- words ----------------------------------------------------------------------------

    def _words(self, node: Node, place: _Place, scope: _Scope) -> list[str]:
        """A word node expanded: unquoted variables split into words as the shell splits
        them (an empty one gives none)."""
        if node.type == "command_name" and node.named_child_count == 1:
            return self._words(node.named_children[0], place, scope)
        if node.type in ("simple_expansion", "expansion"):
            value = self._expansion(node, place, scope)
            if value is not None:
                return value.split()
        elif node.type == "string" and _is_whole_array(place.source.text(node)):
            # `"${ARRAY[@]}"`: one word per element, quotes or not.
            value = self._expansion(node.named_children[0], place, scope)
            if value is not None:
                return value.split()
        return [self._word(node, place, scope)]

    def _word(self, node: Node, place: _Place, scope: _Scope) -> str:
        """A word node as one string: variables resolved where known (written as they are
        where not), command substitutions read for the commands they run and kept as
        written."""
        kind = node.type
        source = place.source
        if kind in ("word", "number", "command_name", "variable_name", "special_variable_name",
                    "ansi_c_string", "arithmetic_expansion", "heredoc_content"):
            if kind == "command_name" and node.named_child_count == 1:
                return self._word(node.named_children[0], place, scope)
            if kind == "arithmetic_expansion":
                self._substitutions_in(node, place, scope)
            return source.text(node)
        if kind == "raw_string":
            return source.text(node)[1:-1]
        if kind in ("simple_expansion", "expansion"):
            value = self._expansion(node, place, scope)
            return value if value is not None else _expansion_text(source.text(node))
        if kind in ("command_substitution", "process_substitution"):
            if _KUBELET_REFERENCE.match(source.text(node)):
                # `$(POD_NAMESPACE)`: the kubelet's reference to a variable whose value is not
                # written in the pod (a fieldRef), expanded before the shell runs.
                return source.text(node)
            for child in node.named_children:
                self._statement(child, place, scope)
            return source.text(node)
        if kind in ("string", "concatenation", "heredoc_body", "array"):
            return self._joined(node, place, scope, strip_quotes=kind == "string")
        raise Unreadable(f"a {kind} word is not read")

    def _joined(self, node: Node, place: _Place, scope: _Scope, *, strip_quotes: bool) -> str:
        """A word made of parts, the text between them kept as written."""
        data = place.source.data
        pieces: list[str] = []
        position = node.start_byte + (1 if strip_quotes else 0)
        end = node.end_byte - (1 if strip_quotes else 0)
        for child in node.named_children:
            start = child.start_byte
            if child.type == "expansion":
                # tree-sitter may start a `${...}` inside a string at the space before it.
                start = data.index(b"$", start, child.end_byte)
            pieces.append(data[position:start].decode())
            if child.type == "string_content":
                pieces.append(place.source.text(child))
            elif child.type == "expansion":
                value = self._expansion(child, place, scope)
                pieces.append(value if value is not None
                              else data[start : child.end_byte].decode())
            else:
                pieces.append(self._word(child, place, scope))
            position = child.end_byte
        pieces.append(data[position:end].decode())
        return "".join(pieces)

    def _expansion(self, node: Node, place: _Place, scope: _Scope) -> str | None:
        """The value of `$NAME` / `${NAME...}`, or None when it is not known."""
        text = _expansion_text(place.source.text(node))
        if node.type == "simple_expansion":
            return scope.value(text[1:])
        braced = _BRACED.match(text)
        if braced is None:
            return None
        value = scope.value(braced.group("name"))
        if braced.group("op") is None or value or braced.group("op").endswith("?"):
            return value  # `${NAME:?message}` stops the script when NAME is not set
        if value is None and scope.is_set(braced.group("name")):
            return None  # set to something the rules cannot know: no default applies
        default = braced.group("default") or ""
        return None if "$" in default or "`" in default else default

    def _substitutions_in(self, node: Node, place: _Place, scope: _Scope) -> None:
        """The commands run by command substitutions anywhere under ``node``."""
        for child in _descendants(node):
            if child.type in ("command_substitution", "process_substitution"):
                self._word(child, place, scope)


class _Scope:
    """The variables of a script at one point: known values, and names that are set to
    something the rules cannot know (None)."""

    def __init__(
        self, values: dict[str, str | None], unstable: frozenset[str],
        call_local: frozenset[str] = frozenset(),
    ) -> None:
        self.values = values
        self._unstable = unstable
        # Names whose values belong to one call of a function (its arguments and locals):
        # they are not written into the function's text when a probe there is retargeted.
        self._call_local = call_local
        self._constants: dict[str, str] | None = None

    def assign(self, name: str, value: str) -> None:
        known = name not in self._unstable and "$" not in value and "`" not in value
        self.values[name] = value if known else None
        self._constants = None

    def forget(self, name: str) -> None:
        self.values[name] = None
        self._constants = None

    def value(self, name: str) -> str | None:
        return self.values.get(name)

    def is_set(self, name: str) -> bool:
        return name in self.values

    def for_call(self, arguments: list[str]) -> _Scope:
        values = {k: v for k, v in self.values.items() if not k.isdigit()}
        positional = {str(i): a for i, a in enumerate(arguments, start=1)}
        values.update(positional)
        values.update(dict.fromkeys(_SPECIAL_ALL_ARGUMENTS, " ".join(arguments)))
        values["#"] = str(len(arguments))
        call_local = frozenset(positional) | _SPECIAL_ALL_ARGUMENTS | {"#"}
        return _Scope(values, self._unstable, self._call_local | call_local)

    def localise(self, names: Sequence[str]) -> None:
        self._call_local = self._call_local | frozenset(names)
        self._constants = None

    def constants(self) -> Mapping[str, str]:
        if self._constants is None:
            self._constants = {k: v for k, v in self.values.items()
                               if v is not None and k not in self._call_local}
        return self._constants


def _assigned_more_than_once(source: _Source, survey: dict[str, list[Node]]) -> frozenset[str]:
    """Names given a value in more than one place of a script (outside functions'
    ``local``), and loop variables: a counter, a flag; the rules do not follow which value
    holds where."""
    seen: set[str] = set()
    twice = {source.text(variable) for variable in survey.get("looped", [])}
    for name_node in survey.get("assigned", []):
        assignment = name_node.parent
        declaration = assignment.parent if assignment is not None else None
        if declaration is not None and declaration.type == "declaration_command" \
                and source.text(declaration).startswith("local"):
            continue
        name = source.text(name_node)
        (twice if name in seen else seen).add(name)
    return frozenset(twice)


def _arguments_after_target(redirect: Node) -> list[Node]:
    """`nc 2>&1 -z db 5432`: the grammar takes the words after a redirection's target for
    more targets; they are the command's arguments."""
    if redirect.type != "file_redirect":
        return []
    return redirect.children_by_field_name("destination")[1:]


def _declared_names(source: _Source, node: Node) -> list[str]:
    """The names a declaration (`local -r a=1 b`) declares."""
    names = []
    for child in node.named_children:
        if child.type == "variable_assignment":
            name = child.child_by_field_name("name")
            if name is not None:
                names.append(source.text(name))
        elif child.type == "variable_name":
            names.append(source.text(child))
    return names


def _is_whole_array(text: str) -> bool:
    """Whether a quoted word is one `${NAME[@]}` and nothing else."""
    braced = _BRACED.match(text[1:-1]) if len(text) > 2 else None
    return braced is not None and braced.group("all") is not None


def _descendants(node: Node) -> Iterator[Node]:
    """Every node under ``node``, depth first, without recursion."""
    stack = list(reversed(node.children))
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def _expansion_text(text: str) -> str:
    """`$NAME`/`${...}` without what tree-sitter may put before it inside a string."""
    return text[text.index("$"):] if "$" in text else text


def command_string(words: Sequence[str]) -> str | None:
    """The command text a command runs, for commands that run one: a shell with ``-c``
    (behind wrappers such as ``timeout 60``), ``eval``, ``trap`` and ``retry_while``."""
    index = 0
    while index < len(words) and basename(words[index]) in WRAPPERS:
        index = past_wrapper_options(words, index + 1)
    if index >= len(words):
        return None
    name = basename(words[index])
    rest = words[index + 1 :]
    if name in SHELLS:
        script = shell_script_index(words[index:])
        return words[index + script] if script is not None else None
    if name in COMMAND_STRING_RUNNERS and rest:
        return " ".join(rest) if name == "eval" else rest[0]
    return None


def _quoted(word: str) -> str:
    """A word with white space in it, quoted as a script would write it (an option's value
    after its `=`: `--command='select 1'`)."""
    if _SPACE.search(word) is None:
        return word
    option = _OPTION_WITH_VALUE.match(word)
    prefix, value = (option.group(1), option.group(2)) if option else ("", word)
    return prefix + (f"'{value}'" if "'" not in value else f'"{value}"')


__all__ = [
    "MAX_COMMANDS",
    "MAX_DEPTH",
    "ShellCommand",
    "ShellReading",
    "command_string",
    "read_script",
]
