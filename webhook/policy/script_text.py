"""A script's text in the policy twin: marked to be split, cut into words, and given back.

CEL has no regex replace and no loop with state, so a script is split by tokenizing it over
separator characters. Before that, what must not split it, or must split it though it is two
characters, is *marked* with literal replacements (``webhook.policy.regex``): line
continuations taken out (as the rules' reader takes them out), comments set apart with their
separators hidden, and `$(`, `&&`, the `&` of redirections and the `|` of `>|` hidden. The
words of a segment, and the text of a command that is retargeted, are given back as written.
"""

from __future__ import annotations

from webhook.policy.cel import Expr, add, cond, let, replaced_all, string
from webhook.policy.regex import (
    AMPERSAND_MARK,
    AND_MARK,
    BASENAME_RE,
    COMMENT_MARK,
    COMMENT_PREFIX_RE,
    CONTINUATION_MARK,
    HIDDEN,
    IN_COMMENT,
    PIPE_MARK,
    SEGMENT_WORD_RE,
    SUBSTITUTION_MARK,
    UNQUOTE_RE,
)
from webhook.rules.grammar import LINE_CONTINUATION

# The separators hidden while a script is split, given back in a piece of it.
_SEPARATORS_BACK = ((SUBSTITUTION_MARK, "$("), (AND_MARK, "&&"), (AMPERSAND_MARK, "&"),
                    (PIPE_MARK, "|"), (COMMENT_MARK, ""))


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


def marked(script: Expr) -> Expr:
    """``script`` with its continuations taken out, comments set apart, and `$(`, `&&` and
    the `&` and `|` of redirections hidden, ready to be split. The continuations go first:
    the rules' reader joins the lines before anything else, comments included."""
    return replaced_all(commented(script.replace(LINE_CONTINUATION, CONTINUATION_MARK)),
                        HIDDEN)


def unmarked(text: Expr) -> Expr:
    """The inverse of ``marked``: the text as written."""
    text = replaced_all(text, _SEPARATORS_BACK).replace(CONTINUATION_MARK, LINE_CONTINUATION)
    return replaced_all(text, ((stand_in, char) for char, stand_in in IN_COMMENT.items()))


def piece_text(piece: Expr, continuation: str) -> Expr:
    """A segment of a marked script (never a comment) as written, but for its continuations,
    written as ``continuation``, and the mark of a comment that ends it, left out."""
    return replaced_all(piece, _SEPARATORS_BACK).replace(CONTINUATION_MARK, continuation)


def restored_word(word: Expr) -> Expr:
    """A word of a marked script as the shell reads it: its `&` and `|` back, continuations
    gone."""
    return replaced_all(word, ((AMPERSAND_MARK, "&"), (PIPE_MARK, "|"), (CONTINUATION_MARK, "")))


def segment_words(segment: Expr) -> Expr:
    """The words of a segment of a marked script, split at white space; a continuation
    joins what stands on either side of it (`mlflow \\⏎ 5000` is two words, `a\\⏎b` one)."""
    words = segment.find_all(SEGMENT_WORD_RE).map("word", restored_word)
    return cond(segment.contains(CONTINUATION_MARK),
                words.filter("word", lambda word: word.ne("")), words)


def unquote(word: Expr) -> Expr:
    """segments.unquote: without the quote characters at its ends."""
    return word.find(UNQUOTE_RE)


def basename(word: Expr) -> Expr:
    """segments.basename: the last part of a path."""
    return word.find(BASENAME_RE)


__all__ = [
    "basename", "commented", "marked", "piece_text", "restored_word", "segment_words",
    "unmarked", "unquote",
]
