"""The grammar of waiting: the one description of what an init container's program says.

Both twins read it: the program reader (``programs.py`` and the modules it reads through)
matches programs with it at review time, and the policy twin (``webhook.policy``) compiles the
same parts into CEL for the MutatingAdmissionPolicy. A rule changes here, once.

Everything below is data: sets of command words, and regular-expression *fragments* written
in the syntax that Python's ``re`` and RE2 (the apiserver's CEL) share: character classes,
groups, alternation and counted repetition, no look-around and no back-references. Where a
twin needs a boundary, it adds its own (the reader as look-arounds, the policy twin as a
consumed character), around these fragments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# --- words -------------------------------------------------------------------------------

SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh"})
# Commands whose only purpose in an init container is to see whether a host answers, the
# wait tools among them (Bitnami's `wait-for-port`, `wait-port`, `wait-for-it[.sh]`,
# `wait-for`, `dockerize -wait`).
WAIT_TOOLS = frozenset(
    {"wait-for-port", "wait-port", "wait-for-it", "wait-for-it.sh", "wait-for", "wait-for.sh",
     "dockerize"}
)
PROBE_COMMANDS = frozenset(
    {"nc", "ncat", "netcat", "telnet", "wget", "curl", "nslookup", "host", "dig", "getent",
     "pg_isready", "ping"}
) | WAIT_TOOLS
# HTTP clients change something when they send a method other than GET/HEAD or a body:
# `curl -X POST`, `curl -d @f`, `wget --post-data=...`. Such a call is work, not a probe.
HTTP_CLIENTS = frozenset({"curl", "wget"})
HTTP_SENDING_OPTIONS = frozenset(
    {"-X", "--request", "-d", "--data", "--data-raw", "--data-binary", "--data-urlencode",
     "--json", "-F", "--form", "-T", "--upload-file", "--post-data", "--post-file",
     "--method", "--body-data", "--body-file"}
)
HTTP_READ_METHODS = frozenset({"GET", "HEAD"})
# The options that name the method (`-X POST`, `-XPOST`, `--request=PUT`, `--method=GET`),
# among HTTP_SENDING_OPTIONS: with a read method they send nothing.
HTTP_METHOD_OPTIONS = frozenset({"-X", "--request", "--method"})
# Wait tools that run a command of their own after `--` (`wait-for-it db:5432 -- ./migrate`):
# what follows is read as a command in its own right.
COMMAND_AFTER_DOUBLE_DASH = frozenset(
    {"wait-for-it", "wait-for-it.sh", "wait-for", "wait-for.sh", "wait-port"}
)
# dockerize runs its first word that is not an option (or an option's value) as a command.
DOCKERIZE = "dockerize"
DOCKERIZE_VALUE_OPTIONS = frozenset(
    {"wait", "timeout", "wait-retry-interval", "wait-http-header", "template", "stdout",
     "stderr", "delims"}
)
# dockerize options that do work (render files), so its invocation is not a pure wait.
DOCKERIZE_WORK_OPTIONS = frozenset({"template"})
# Tools whose port is their last word rather than next to the host:
# `wait-for-port --host=db --state=inuse --timeout=120 5432`.
PORT_LAST_TOOLS = frozenset({"wait-for-port"})
# Options that give a probe's port apart from its host: `-p 5432`, `--port=5432`.
PORT_OPTIONS = ("-p", "--port")

# Database and cache clients. They probe their host when what they run is a liveness check
# (`psql -c 'SELECT 1'`, `mysql -e 'select 1'`, `mysqladmin ping`, `redis-cli ping`); any
# other query or command is work.
QUERY_CLIENTS = {"psql": ("-c", "--command"), "mysql": ("-e", "--execute")}
# Compared in lower case, with white space squeezed and a trailing `;` dropped.
LIVENESS_QUERIES = frozenset({"select 1", "\\q"})
# mysqladmin takes commands from a closed set: it probes when all it runs are these...
MYSQLADMIN = "mysqladmin"
MYSQLADMIN_LIVENESS = frozenset({"ping", "status", "version"})
MYSQLADMIN_COMMANDS = MYSQLADMIN_LIVENESS | frozenset(
    {"create", "debug", "drop", "extended-status", "flush-hosts", "flush-logs",
     "flush-privileges", "flush-status", "flush-tables", "flush-threads", "kill", "password",
     "old-password", "processlist", "reload", "refresh", "shutdown", "start-replica",
     "start-slave", "stop-replica", "stop-slave", "variables"}
)
# ...and redis-cli names its command last; `ping` is the only liveness check.
REDIS_CLI = "redis-cli"
REDIS_LIVENESS = frozenset({"ping"})
CLIENTS = frozenset(QUERY_CLIENTS) | {MYSQLADMIN, REDIS_CLI}
# Commands that neither probe nor change anything: the glue of a readiness loop.
IDLE_COMMANDS = frozenset(
    {"sleep", "echo", "printf", "true", "false", ":", "exit", "date", "test", "[", "[[", "let",
     "expr", "seq", "break", "continue", "set", "cat", "wait", "return", "read", "shift"}
)
# Words that only steer the shell, stripped from the front of a simple command.
SHELL_KEYWORDS = frozenset(
    {"until", "while", "do", "done", "if", "then", "else", "elif", "fi", "!", "{", "}", "exec",
     "time", "esac"}
)
# `for i in 1 2 3` and `case $x in` only name the loop; the body is elsewhere.
LOOP_HEADERS = frozenset({"for", "case", "select"})
# Commands that run the rest of the words as a command: `timeout 5 nc -z mlflow 5000`.
WRAPPERS = frozenset({"timeout", "env", "nice", "nohup", "command", "busybox"})

# Installing a probe tool before probing (`apk add --no-cache netcat-openbsd`, `apt-get
# install -y curl`) is setup: an init container's own file system goes with it. Installing
# anything else, or any other use of a package manager, is work.
PACKAGE_MANAGERS = {
    "apk": frozenset({"add", "update"}),
    "apt-get": frozenset({"install", "update"}),
    "apt": frozenset({"install", "update"}),
    "yum": frozenset({"install"}),
    "dnf": frozenset({"install"}),
    "microdnf": frozenset({"install"}),
}
PROBE_TOOL_PACKAGES = frozenset(
    {"netcat-openbsd", "netcat-traditional", "netcat", "nmap-ncat", "ncat", "nc",
     "busybox-extras", "curl", "wget", "ca-certificates", "bind-tools", "dnsutils",
     "iputils", "iputils-ping", "postgresql-client", "redis", "redis-tools", "bash"}
)
# Reading a shell library only defines functions (Bitnami's `. /opt/bitnami/scripts/libos.sh`,
# which brings `retry_while`); the functions it defines are not followed.
SHELL_LIBRARIES = ("/opt/bitnami/scripts/lib",)
SOURCE_COMMANDS = frozenset({".", "source"})
# Filters that read what a probe printed (`redis-cli ping | grep -q PONG`) and change nothing.
OUTPUT_FILTERS = frozenset({"grep", "egrep", "fgrep", "head", "tail", "wc", "tr"})

# Commands that run a command given as a string: `eval "$CMD"`, a `trap` handler, and
# Bitnami's `retry_while "check_host db 5432"` (from its libos.sh); the string is read as a
# script of its own.
COMMAND_STRING_RUNNERS = frozenset({"eval", "trap", "retry_while"})
# Redirections that write where they point (`> f`, `>> f`, `&> f`, `>| f`, `>& f`)...
FILE_WRITE_REDIRECTS = frozenset({">", ">>", "&>", "&>>", ">|", ">&"})
# ...and the targets where writing leaves nothing behind.
HARMLESS_WRITE_TARGETS = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/fd/",
                          "/proc/self/fd/")
# A redirection to bash's `/dev/tcp/HOST/PORT` connects rather than writes: the probe
# `echo > /dev/tcp/db/5432` (its target is a word of the command it belongs to).
DEV_TCP_CONNECTION = "/dev/tcp/"

# A word starting with this begins a comment, which runs to the end of its line.
COMMENT = "#"
# A line continuation: taken out before a script is read, as the shell does, so that
# `pg_isready \⏎ -h db` is one command. While a command's text is retargeted it stands as the
# mask, two white-space characters, so that a port on the next line is still the next word.
LINE_CONTINUATION = "\\\n"
CONTINUATION_MASK = "\x1f\n"

# --- separators --------------------------------------------------------------------------

# Tokens that end a simple command, longest first where one starts another. A lone `&` is
# one too, except inside a redirection (`2>&1`, `>&2`, `&>/dev/null`, `>&-`): see
# REDIRECTION_AMPERSAND_BEFORE / _AFTER.
SEPARATOR_TOKENS = ("&&", "||", "$(", ";", "|", "\n", "(", ")", "`", "&")
# An `&` right after one of these characters, or right before one of these, is part of a
# redirection, not a separator.
# (Both are character-class fragments.)
REDIRECTION_AMPERSAND_AFTER = "<>"
REDIRECTION_AMPERSAND_BEFORE = ">0-9\\-"

# --- word shapes -------------------------------------------------------------------------

ASSIGNMENT = "^[A-Za-z_][A-Za-z0-9_]*="  # `PGPASSWORD=x psql ...`: skipped before a command
REDIRECTION = "^(?:[0-9]*[<>]|&>)"  # `>/dev/null`, `2>&1`, `&>f`: skipped before a command
# What `timeout` and friends take before the command: `-s`, `5`, `30s`.
WRAPPER_NUMBER = "^[0-9]+[smhd]*$"
QUOTES = "'\""  # stripped from both ends of a word before it is compared

# --- hosts and ports ---------------------------------------------------------------------

# Characters that continue a host name on either side: a managed host must not be part of
# a longer name (`mlflow-db`, `xmlflow`). The `-` is escaped, so the fragment can be put
# anywhere in a class.
LABEL_CHARS = "A-Za-z0-9_\\-"
# A command substitution (`$(...)` or backticks) right after a host's dot is part of that word,
# not a separator (`mlflow.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc`);
# any other than the namespace file's keeps the word from naming a managed host.
COMPUTED_PART = "\\$\\([^()\\n]*\\)|`[^`\\n]*`"
# A host followed by `.` and one of these goes on: into a longer name (`mlflow.example.com`)
# or into a part computed at run time (`mlflow.$NS`, `mlflow.$(...)`) that the rules cannot
# know, so it is not that host. (A character-class fragment.)
CONTINUES_AFTER_DOT = "A-Za-z0-9$`"
# One DNS label of a namespace (lower case, as Kubernetes names are).
NAMESPACE_LABEL = "[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
# After NAME.NS: nothing, `.svc` or `.svc.cluster.local`.
SERVICE_SUFFIX = "(?:\\.svc(?:\\.cluster\\.local)?)?"
PORT_NUMBER = "[0-9]{1,5}"
# A variable standing for a port (`mlflow:${MLFLOW_PORT}`), which names the in-cluster port
# just the same and is replaced with the external one.
VARIABLE_PORT = "\\$\\{?[A-Za-z_][A-Za-z0-9_]*\\}?"
# The namespace part of NAME.NS.svc may be computed: the service account's namespace file
# read by command substitution (the Kubernetes documentation's own init container example),
# or a variable followed by `.svc` (`minio.${POD_NAMESPACE}.svc`). Whole, these are one word
# part: a script is not split inside them.
NAMESPACE_FILE_SUBSTITUTION = (
    "\\$\\([ \\t]*cat[ \\t]+/var/run/secrets/kubernetes\\.io/serviceaccount/namespace[ \\t]*\\)"
    "|`[ \\t]*cat[ \\t]+/var/run/secrets/kubernetes\\.io/serviceaccount/namespace[ \\t]*`"
)
NAMESPACE_VARIABLE = "\\$\\{?[A-Za-z_][A-Za-z0-9_]*\\}?|\\$\\([A-Za-z_][A-Za-z0-9_]*\\)"
# Between a host and its port: `mlflow:5000`, `/dev/tcp/mlflow/5000`.
PORT_SEPARATORS = ":/"
# `/dev/tcp/HOST/` and `/dev/udp/HOST/`: bash's built-in connections.
DEV_TCP_HOST = "/dev/(?:tcp|udp)/(?P<host>[A-Za-z][-A-Za-z0-9.]*)/"
DEV_TCP_MARKERS = ("/dev/tcp/", "/dev/udp/")
# Any host a probe argument may name: `h`, `h:p`, `scheme://[user@]h[:p]/...`.
URL_HOST = (
    "^(?:[a-z][a-z0-9+.-]*://)?(?:[^@/]*@)?(?P<host>[A-Za-z][-A-Za-z0-9.]*)(?::[0-9]+)?(?:/|$)"
)
# Shell punctuation glued to the end of a probe argument is not part of its host.
TRAILING_PUNCTUATION = ";,&|)'\""


def literal(text: str) -> str:
    """``text`` as a fragment matching it literally, in both dialects."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def host_names(hosts: Iterable[str]) -> str:
    """The in-cluster names, longest first, so that `fastapi-app` is tried before `fastapi`."""
    return "|".join(literal(host) for host in sorted(hosts, key=len, reverse=True))


def host_form(hosts: Iterable[str]) -> str:
    """NAME, NAME.NS, NAME.NS.svc and NAME.NS.svc.cluster.local for any of ``hosts``, where NS
    may also be the namespace file's substitution, or a variable when `.svc` follows."""
    namespace = (
        f"{NAMESPACE_LABEL}{SERVICE_SUFFIX}"
        f"|(?:{NAMESPACE_FILE_SUBSTITUTION}){SERVICE_SUFFIX}"
        f"|(?:{NAMESPACE_VARIABLE})\\.svc(?:\\.cluster\\.local)?"
    )
    return f"(?:{host_names(hosts)})(?:\\.(?:{namespace}))?"


# --- URLs --------------------------------------------------------------------------------

# Schemes whose authority (`scheme://[user@]host[:port]`) is a host the client connects to,
# so pointing it elsewhere points the client elsewhere: the web, raw sockets (dockerize and
# the wait tools take `tcp://`), RPC, the databases, caches and brokers a chart waits for,
# file transfer, directories, and MLflow's artifact proxy (`mlflow-artifacts://host:port/`,
# served by the tracking server it names). A scheme not listed is never retargeted: the
# storage schemes name a bucket, container or path there (`s3://mlflow/artifacts` is the
# bucket `mlflow`), `unix://` a socket file, and an unknown scheme (Kafka's listener names,
# `PLAINTEXT://kafka:9092`) may mean anything; leaving it keeps a value that worked working.
CONNECTING_SCHEMES = frozenset(
    {"http", "https", "ws", "wss",
     "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "tls",
     "grpc", "grpcs",
     "postgres", "postgresql", "mysql", "mariadb", "mssql", "sqlserver", "oracle",
     "cockroachdb", "clickhouse", "cassandra", "mongodb",
     "redis", "rediss", "memcached",
     "amqp", "amqps", "kafka", "nats", "mqtt", "mqtts", "stomp",
     "ftp", "ftps", "sftp", "ssh", "hdfs", "webhdfs", "swebhdfs",
     "ldap", "ldaps",
     "mlflow-artifacts"}
)
# `dialect+driver` connects as its dialect (SQLAlchemy's `postgresql+psycopg2://`)...
SCHEME_DRIVER_SEPARATOR = "+"
# ...except `+srv` (`mongodb+srv://name`), whose name is looked up for DNS SRV records that
# an external address does not have.
SRV_SCHEME_SUFFIX = "+srv"
# JDBC writes a URL behind a prefix of its own: `jdbc:postgresql://postgres:5432/db`.
JDBC_PREFIX = "jdbc:"
# A scheme is short; bounding it keeps a scan for URLs linear in a word of scheme characters.
URL_SCHEME = "[A-Za-z][A-Za-z0-9+.\\-]{0,31}"
URL_SCHEME_END = "://"
# Character-class fragments; white space ends all of them too, which each twin spells in its
# own dialect. An authority ends where its path starts, and at a comma (a list of addresses,
# `kafka-0:9092,kafka-1:9092`), a quote or shell punctuation (`wget http://mlflow:5000;`).
PATH_STARTS = "/?#"
ADDRESS_SEPARATOR = ","
AUTHORITY_STOPS = PATH_STARTS + ADDRESS_SEPARATOR + "'\"`;|&<>()"
# Path, query and fragment run to the end of the address: a comma, a quote, white space.
PATH_STOPS = ADDRESS_SEPARATOR + "'\"`"
# The host of an address starts like a DNS label (never with `$`: a host that starts with a
# variable cannot be known) and may hold a namespace variable or a computed part
# (`mlflow.${NS}.svc`, `mlflow.$(cat .../namespace).svc`), which grammar.host_form judges.
ADDRESS_HOST = f"[{LABEL_CHARS}.](?:{COMPUTED_PART}|[{LABEL_CHARS}.${{}}])*"
ADDRESS_PORT = f"(?:{PORT_NUMBER}|{VARIABLE_PORT})"


def _authority_char(space: str) -> str:
    return f"(?:{COMPUTED_PART}|[^{space}{AUTHORITY_STOPS}])"


def _path(space: str) -> str:
    return f"[{PATH_STARTS}][^{space}{PATH_STOPS}]*"


def url_in_text(space: str) -> str:
    """A URL as it stands in a probe's text, ``space`` being the twin's white-space class
    contents: `scheme://authority` with its path, or `host:port` followed by a path
    (`minio:9000/minio/health/live`, as curl and wget take it), its host one plain run of
    label characters, so that a scan stays linear. A bare `host:port` is not one: the host
    patterns read it, with its port."""
    authority = _authority_char(space)
    return (
        f"(?:{literal(JDBC_PREFIX)})?{URL_SCHEME}{literal(URL_SCHEME_END)}{authority}*"
        f"(?:{_path(space)})?"
        f"|[{LABEL_CHARS}.]+:{ADDRESS_PORT}{_path(space)}"
    )


def address_prefix(space: str) -> str:
    """What comes before an address's host: an optional scheme (named group ``scheme``) and
    optional user info, which runs to the last `@` of the authority (a password may hold
    one)."""
    scheme = f"(?:{literal(JDBC_PREFIX)})?(?P<scheme>{URL_SCHEME}){literal(URL_SCHEME_END)}"
    return f"(?:{scheme})?(?:{_authority_char(space)}*@)?"


def address_pattern(space: str) -> str:
    """An address, which each twin anchors at the start of a text (an env value's item, a URL
    found in a probe): its prefix, its host and an optional port (named groups ``host`` and
    ``port``; RE2 accepts named groups too). It is one only where the end of the text or a
    path follows."""
    return f"{address_prefix(space)}(?P<host>{ADDRESS_HOST})(?::(?P<port>{ADDRESS_PORT}))?"


# --- variables ---------------------------------------------------------------------------

# A reference to a variable: `$NAME`, `${NAME}`, `${NAME:-default}` / `${NAME-default}`, and
# `$(NAME)`, which the kubelet expands in command and args from the container's env before
# any shell sees it. A reference is resolved against the container's own literal env (and
# the default); one that cannot be resolved names no host the rules can know.
SHELL_VARIABLE = (
    "\\$(?:(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    "|\\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\\})"
)
# (`$$(NAME)` is the kubelet's escape for a literal `$(NAME)`: not a reference.)
KUBELET_VARIABLE = "\\$\\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\\)"
# A resolved value is written into a probe only when it is one plain word of these.
SAFE_VALUE = "^[A-Za-z0-9._:/@-]+$"
