"""The MutatingAdmissionPolicy twin: its shape, its selectors, its regexes.

What the CEL does to pods (opt-outs, idempotency, the status merge, every service and word
of the grammar) is proven against the real apiserver in tests/e2e/test_policy_equivalence.py,
which sends the same pods through both twins and compares them field by field. Here, what
Python can check: the objects are what Kubernetes expects, every regex the expressions use is
RE2-shaped, and the RE2 stand-ins for the rules' look-arounds, shell splitting and re.sub
agree with the rules (Python's `re` runs both; for these constructs its leftmost-first
matching is RE2's).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from webhook.policy import cel
from webhook.policy import layout as cel_layout
from webhook.policy import objects as policy
from webhook.policy import regex as policy_regex
from webhook.policy.mutation import policy_regexes
from webhook.rules.grammar import CONNECTING_SCHEMES, JDBC_PREFIX, host_form
from webhook.rules.mutate import INJECT_KEY
from webhook.rules.programs import (
    HostPattern,
    ProgramReader,
    segments,
    unquote,
)
from webhook.settings import Action, CredentialMode, Service, Settings, load_settings

DEFAULT = make_settings()
REWRITE = dataclasses.replace(DEFAULT, action=Action.REWRITE)
SECRET_REF = dataclasses.replace(
    DEFAULT,
    credentials=dataclasses.replace(DEFAULT.credentials, mode=CredentialMode.SECRET_KEY_REF),
)


def built(settings: Settings = DEFAULT, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    policy_object, binding = policy.build_policy(settings, **options)
    return policy_object, binding


def variables(settings: Settings = DEFAULT) -> dict[str, str]:
    return {v["name"]: v["expression"] for v in built(settings)[0]["spec"]["variables"]}


def squashed(expression: str) -> str:
    """The expression without layout: white space outside string literals removed."""
    out, index = [], 0
    while index < len(expression):
        char = expression[index]
        if char in "\"'":
            end = index + 1
            while expression[end] != char:
                end += 2 if expression[end] == "\\" else 1
            out.append(expression[index : end + 1])
            index = end + 1
        else:
            if not char.isspace():
                out.append(char)
            index += 1
    return "".join(out)


def decode(literal: str) -> str:
    """A CEL double-quoted literal as written by cel.string, decoded."""
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        kind = body[index + 1]
        if kind == "u":
            out.append(chr(int(body[index + 2 : index + 6], 16)))
            index += 6
        elif kind == "U":
            out.append(chr(int(body[index + 2 : index + 10], 16)))
            index += 10
        else:
            out.append({"n": "\n"}.get(kind, kind))
            index += 2
    return "".join(out)


# --- structure ------------------------------------------------------------------------------


def test_a_policy_and_its_binding() -> None:
    policy_object, binding = built(name="injector")
    assert policy_object["apiVersion"] == binding["apiVersion"] == (
        "admissionregistration.k8s.io/v1")
    assert policy_object["kind"] == "MutatingAdmissionPolicy"
    assert binding["kind"] == "MutatingAdmissionPolicyBinding"
    assert policy_object["metadata"]["name"] == binding["metadata"]["name"] == "injector"
    assert binding["spec"]["policyName"] == "injector"
    spec = policy_object["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["reinvocationPolicy"] == "IfNeeded"
    assert "paramKind" not in spec
    assert [m["patchType"] for m in spec["mutations"]] == ["JSONPatch"]


def test_v1beta1_on_request_and_nothing_else() -> None:
    policy_object, binding = built(api_version="admissionregistration.k8s.io/v1beta1")
    assert policy_object["apiVersion"] == binding["apiVersion"] == (
        "admissionregistration.k8s.io/v1beta1")
    with pytest.raises(ValueError, match="api_version"):
        built(api_version="admissionregistration.k8s.io/v1alpha1")


def test_pod_create_only() -> None:
    constraints = built()[0]["spec"]["matchConstraints"]
    assert constraints["resourceRules"] == [{
        "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
    }]
    assert constraints["matchPolicy"] == "Equivalent"


def test_variables_are_named_once_and_defined_before_use() -> None:
    names = [v["name"] for v in built(REWRITE)[0]["spec"]["variables"]]
    assert len(names) == len(set(names))
    for position, variable in enumerate(built(REWRITE)[0]["spec"]["variables"]):
        used = set(re.findall(r"variables\.([A-Za-z]+)", variable["expression"]))
        assert used <= set(names[:position]), variable["name"]
    patch = built(REWRITE)[0]["spec"]["mutations"][0]["jsonPatch"]["expression"]
    used_by_patch = set(re.findall(r"variables\.([A-Za-z]+)", patch))
    assert used_by_patch <= set(names)


# --- selectors ------------------------------------------------------------------------------


def test_binding_selects_opted_in_namespaces_minus_the_excluded_ones() -> None:
    binding = built()[1]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {"matchExpressions": [
        {"key": INJECT_KEY, "operator": "In", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["backend-injector", "kube-node-lease", "kube-public", "kube-system"]},
    ]}
    assert binding["spec"]["matchResources"]["objectSelector"] == {"matchExpressions": [
        {"key": INJECT_KEY, "operator": "NotIn", "values": ["false"]},
    ]}


def test_policy_itself_never_reaches_the_excluded_namespaces() -> None:
    constraints = built()[0]["spec"]["matchConstraints"]
    assert constraints["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": sorted(DEFAULT.excluded_namespaces)},
    ]


def test_no_exclusions_means_no_empty_not_in(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, excluded_namespaces=[])
    policy_object, binding = built(settings)
    assert "namespaceSelector" not in policy_object["spec"]["matchConstraints"]
    expressions = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expressions == [{"key": INJECT_KEY, "operator": "In", "values": ["enabled"]}]


# --- regexes --------------------------------------------------------------------------------

RE2_UNSUPPORTED = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?>|\\[1-9]|[*+?}]\+")


@pytest.mark.parametrize("settings", [DEFAULT, REWRITE, SECRET_REF], ids=["remove", "rewrite",
                                                                          "secret-ref"])
def test_every_regex_in_the_policy_is_re2_shaped_and_compiles(settings: Settings) -> None:
    found = policy_regexes(settings)
    assert len(found) > 20
    for regex in found:
        assert not RE2_UNSUPPORTED.search(regex), regex
        re.compile(regex)  # Python's syntax as a proxy; the e2e has the apiserver compile them


def test_the_regexes_of_the_policy_are_the_builders_record_of_them() -> None:
    """Every regex literal in the generated expressions is one the builder recorded, so the
    check above sees all of them."""
    found = policy_regexes(REWRITE)
    for expression in policy.expressions(built(REWRITE)):
        for match in re.finditer(r'\.(?:matches|find|findAll)\(("(?:[^"\\]|\\.)*")', expression):
            assert decode(match.group(1)) in found


WORD = st.text(alphabet="mlflowinopstgrkafcd.-_:/'\"@x0159 $", max_size=24)


@settings(max_examples=400, deadline=None)
@given(WORD)
def test_host_search_twin_agrees_with_probes(word: str) -> None:
    for service in DEFAULT.services:
        expected = bool(HostPattern.for_service(service).regex.search(unquote(word)))
        assert bool(re.search(policy_regex.host_search_re(service), word)) == expected


def connects_twin(prefix: str) -> bool:
    """policy_urls.connects run in Python."""
    scheme = prefix.split("://")[0]
    name = (scheme[len(JDBC_PREFIX):] if scheme.startswith(JDBC_PREFIX) else scheme).lower()
    return name.split("+")[0] in CONNECTING_SCHEMES and not name.endswith("+srv")


def address_twin(text: str) -> tuple[str, str, str] | None:
    """policy_urls.with_address run by Python's `re` on the same regexes: the address, its
    prefix and its host when ``text`` starts with an address whose host is a host."""
    found = re.search(policy_regex.ADDRESS_RE, text)
    address = found.group(0) if found else ""
    if not address or not (len(text) == len(address)
                           or re.search(policy_regex.ADDRESS_END_RE, text[len(address):])):
        return None
    prefix_match = re.search(policy_regex.ADDRESS_PREFIX_RE, address)
    assert prefix_match is not None
    prefix = prefix_match.group(0)
    host_match = re.search(policy_regex.ADDRESS_HOST_RE, address[len(prefix):])
    host = host_match.group(0) if host_match else ""
    names_host = connects_twin(prefix) if "://" in prefix else (
        len(prefix) + len(host) < len(address))
    return (address, prefix, host) if names_host else None


def retargeted_address_twin(text: str, services: tuple[Service, ...]) -> str:
    """policy_urls.retargeted_address run in Python."""
    parts = address_twin(text)
    if parts is None:
        return text
    address, prefix, host = parts
    service = next((s for s in services if s.external is not None
                    and re.search(policy_regex.whole_host_re(s), host)), None)
    if service is None or service.external is None:
        return text
    return prefix + str(service.external) + text[len(address):]


def is_url_twin(token: str) -> bool:
    return ":" in token and bool(re.search(policy_regex.WHOLE_URL_RE, token))


def word_services_twin(word: str, services: tuple[Service, ...]) -> list[str]:
    """policy_program.word_tags' services, run by Python's `re` on the same regexes."""
    may_hold_url = ":" in word and any(start in word for start in "/?#")
    hosts = [host for s in services for host in s.hosts]
    tokens = re.findall(policy_regex.retarget_token_re(hosts), word) if may_hold_url else [word]
    outside = "".join(" " if is_url_twin(token) else token for token in tokens)
    url_hosts = [parts[2] if (parts := address_twin(token)) else ""
                 for token in tokens if is_url_twin(token)]
    return [s.name for s in services
            if re.search(policy_regex.host_search_re(s), outside)
            or any(re.search(policy_regex.whole_host_re(s), host) for host in url_hosts)]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(["mlflow", "postgres", "minio", "fastapi", "fastapi-app", "http://",
                                 ":5000", "/ready", "?db=", ".flts", ".svc", "'", "-", "_", "x",
                                 ".", "s3://", "tcp://", "@", ",", ":", "/", "$P", "#"]),
                max_size=8).map("".join))
def test_a_word_counts_every_service_it_names_as_in_probes(word: str) -> None:
    """The twin names every service the word names as a host, in the order of the services,
    as ProgramReader.managed_services_in does (not only the first one; a URL by its
    authority only)."""
    reader = ProgramReader(DEFAULT.services)
    twin = word_services_twin(word, DEFAULT.services)
    assert twin == [s.name for s in reader.managed_services_in(word)]


EXTERNAL_WORD = st.lists(
    st.sampled_from(["host.docker.internal", "HOST.DOCKER.INTERNAL", "ho\u017ft.do\u212aker."
                     "\u0130nternal", "host", ".docker", ".internal", ".", "_x", "-", "x", "0", ":",
                     "5000", "/", "@", "'", '"', "/dev/tcp/", "http://", "\u0131", "\u017f",
                     "\u212a", ")", ";", "mlflow"]),
    max_size=8,
).map("".join)


@settings(max_examples=600, deadline=None)
@given(EXTERNAL_WORD)
def test_external_host_twin_agrees_with_probes(word: str) -> None:
    reader = ProgramReader(DEFAULT.services)
    hosts = sorted({s.external.host for s in DEFAULT.services if s.external is not None})
    twin = bool(re.search(policy_regex.external_search_re(hosts), word))
    assert twin == reader.names_external_host(word)


def test_external_hosts_are_found_inside_quotes_and_urls() -> None:
    regex = policy_regex.external_search_re(["host.docker.internal"])
    for word in ('"host.docker.internal":5000', "host.docker.internal._x",
                 "user@'host.docker.internal'", "/dev/tcp/HOST.DOCKER.INTERNAL/9000",
                 "http://host.docker.internal:5000:${MLFLOW_PORT}/health"):
        assert re.search(regex, word), word
    for word in ("xhost.docker.internal", "host.docker.internal.x", "host.docker.internals"):
        assert not re.search(regex, word), word


def test_the_case_folding_table_is_pythons() -> None:
    """Every non-ASCII character that re.IGNORECASE matches with an ASCII letter is listed,
    with the letters it matches: the RE2 twin spells them out instead of using (?i)."""
    letters = re.compile("[a-z]", re.IGNORECASE)
    folded = {chr(code) for code in range(128, 0x110000) if letters.fullmatch(chr(code))}
    table = {char: letter for letter, chars in policy_regex.PYTHON_IGNORECASE_EXTRAS.items()
             for char in chars}
    assert folded == set(table)
    for char, letter in table.items():
        assert [c for c in "abcdefghijklmnopqrstuvwxyz"
                if re.fullmatch(c, char, re.IGNORECASE)] == [letter]


SCRIPT = st.lists(
    st.sampled_from(["nc -z mlflow 5000", " ", ";", "&&", "&", "||", "|", "\n", "(", ")", "`",
                     "$(", "2>&1", ">&2", "&>/dev/null", ">&-", "&1", "<&0", "sleep 1", "'",
                     "x", "\t", "#", "# wait; for (mlflow)", "x#y"]),
    max_size=12,
).map("".join)


def marked(script: str) -> str:
    """script_text.marked run by Python's `re` on the same regexes: continuations taken out,
    comments set apart, then the separators that need it hidden."""
    lines = []
    for line in script.replace("\\\n", policy_regex.CONTINUATION_MARK).split("\n"):
        prefix = re.search(policy_regex.COMMENT_PREFIX_RE, line)
        assert prefix is not None
        comment = line[prefix.end():]
        for char, stand_in in policy_regex.IN_COMMENT.items():
            comment = comment.replace(char, stand_in)
        lines.append(line if not comment else prefix.group(0) + policy_regex.COMMENT_MARK + comment)
    script = "\n".join(lines)
    for old, new in policy_regex.HIDDEN:
        script = script.replace(old, new)
    return script


@settings(max_examples=400, deadline=None)
@given(SCRIPT)
def test_script_splitting_twin_agrees_with_the_separators(script: str) -> None:
    """The policy splits a script at the separators segments.py knows (the shapes of the
    grammar; white space is the shell parser's, ASCII, which the alphabet keeps to)."""
    expected = [list(s.words) for s in segments(["sh", "-c", script]) if s.words]
    tokens = re.findall(policy_regex.SEGMENT_RE, marked(script))
    assert "".join(tokens) == marked(script)
    twin = [
        [word.replace(policy_regex.AMPERSAND_MARK, "&")
         for word in re.findall(policy_regex.SEGMENT_WORD_RE, token)]
        for token in tokens
    ]
    # A comment is a segment of its own, starting with `#`, which reads as nothing.
    assert [words for words in twin if words and not words[0].startswith("#")] == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="mlflowinfastpi-app.svcluter:/ 5080x\x1f'", max_size=30))
def test_retarget_tokens_cover_the_text(text: str) -> None:
    hosts = [host for s in DEFAULT.services if s.external for host in s.hosts]
    tokens = re.findall(policy_regex.retarget_token_re(hosts), text)
    assert "".join(tokens) == text


def retarget_twin(text: str, services: tuple[Service, ...]) -> str:
    """policy_program.retarget_text run by Python's `re` on the same regexes, step for
    step."""
    retargetable = [s for s in services if s.external is not None]
    hosts = [host for s in retargetable for host in s.hosts]
    if not any(host in text for host in hosts):
        return text
    space = f"[{policy_regex.SPACE_CLASS}]"
    tokens = re.findall(policy_regex.retarget_token_re(hosts), text)
    out = []
    for token in tokens:
        if is_url_twin(token):
            out.append(retargeted_address_twin(token, services))
            continue
        if not (any(token.startswith(host) for host in hosts)
                and re.search(f"^(?:{policy_regex.host_token_re(hosts)})$", token)):
            out.append(token)
            continue
        service = next(s for s in retargetable
                       if re.search(policy_regex.service_start_re(s), token))
        assert service.external is not None
        host, port = service.external.host, str(service.external.port)
        found = re.search("^" + host_form(service.hosts), token)
        assert found is not None
        rest = token[len(found.group()):]
        if re.search("^[:/][0-9]", rest):
            number = re.search("^[:/][0-9]{1,5}", rest)
            assert number is not None
            out.append(host + rest[0] + port + rest[len(number.group()):])
        elif re.search("^[:/][$]", rest):
            variable = re.search(policy_regex.VARIABLE_PORT_AT_START_RE, rest)
            assert variable is not None
            out.append(host + rest[0] + port + rest[len(variable.group()):])
        elif re.search(f"^{space}+[0-9]", rest):
            gap = re.search(f"^{space}+", rest)
            assert gap is not None
            number = re.search("^[0-9]{1,5}", rest[len(gap.group()):])
            assert number is not None
            out.append(host + gap.group() + port + rest[len(gap.group()) + len(number.group()):])
        else:
            out.append(host + rest)
    return "".join(out)


PROBE_TEXT = st.lists(
    st.sampled_from(["mlflow", "minio", "fastapi-app", "fastapi", "postgres", ".flts", ".svc",
                     ".cluster.local", ":", "/", " ", "\t", "\x1f", "5000", "123456", "80x",
                     "$", "${", "}", "P", "_x", ".", "-", "'", '"', "http://", "@", "x", "9",
                     "s3://", "tcp://", "?", "#", ",", ";", "/minio"]),
    max_size=10,
).map("".join)


@settings(max_examples=600, deadline=None)
@given(PROBE_TEXT)
def test_retarget_twin_agrees_with_probes(text: str) -> None:
    expected = ProgramReader(DEFAULT.services).retarget_text(text)
    assert retarget_twin(text, DEFAULT.services) == expected


def test_variable_ports_are_replaced_with_the_external_port() -> None:
    for text, expected in (
        ("curl -sf http://mlflow:${MLFLOW_PORT}/health", "curl -sf http://host.docker.internal:5000/health"),
        ("echo > /dev/tcp/minio/$MINIO_PORT", "echo > /dev/tcp/host.docker.internal/9000"),
        ("nc -z fastapi:$P}x", "nc -z host.docker.internal:8000x"),
    ):
        assert ProgramReader(DEFAULT.services).retarget_text(text) == expected
        assert retarget_twin(text, DEFAULT.services) == expected


# --- credentials and env --------------------------------------------------------------------


def test_value_mode_puts_the_credentials_in_the_policy_and_says_so() -> None:
    settings = load_settings(environ={"BACKEND_INJECTOR_ACCESS_KEY_ID": "AKIDVISIBLE",
                                      "BACKEND_INJECTOR_SECRET_ACCESS_KEY": "SECRETVISIBLE"})
    settings = dataclasses.replace(settings, credentials=dataclasses.replace(
        settings.credentials, mode=CredentialMode.VALUE))
    text = policy.run_policy_command(settings)
    assert "AKIDVISIBLE" in text and "SECRETVISIBLE" in text
    assert "WARNING" in text.split("---")[0]


def test_the_default_mode_keeps_credential_values_out() -> None:
    settings = load_settings(environ={"BACKEND_INJECTOR_ACCESS_KEY_ID": "AKIDHIDDEN",
                                      "BACKEND_INJECTOR_SECRET_ACCESS_KEY": "SECRETHIDDEN"})
    assert settings.credentials.mode is CredentialMode.SECRET_KEY_REF
    text = policy.run_policy_command(settings)
    assert "AKIDHIDDEN" not in text and "SECRETHIDDEN" not in text
    assert "WARNING" not in text


def test_without_external_addresses_the_policy_has_no_retargeting_step(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path,
        services={"mlflow": {"external": None}, "minio": {"external": None},
                  "fastapi": {"external": None}},
        env={"MLFLOW_TRACKING_URI": None, "MLFLOW_S3_ENDPOINT_URL": None, "GATEWAY_URL": None},
    )
    names = set(variables(settings))
    assert "newArgvs" in names
    assert not names & {"retargetInput", "retargetOutput"}
    assert {"retargetInput", "retargetOutput"} <= set(variables(DEFAULT))


# --- output ---------------------------------------------------------------------------------


def test_yaml_output_is_the_built_objects() -> None:
    text = policy.run_policy_command(DEFAULT, "admissionregistration.k8s.io/v1beta1")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert documents == policy.build_policy(
        DEFAULT, api_version="admissionregistration.k8s.io/v1beta1")
    assert text.startswith("# backend-injector as a MutatingAdmissionPolicy")


def test_layout_changes_only_white_space_outside_strings() -> None:
    expression = ('[a.find("(,[x]") + b, {"k": dyn("v, (w)")}, c.map(x_, '
                  + ", ".join(f'"{n}"' for n in range(40)) + ")]")
    laid_out = cel_layout.pretty(expression, width=40)
    assert "\n" in laid_out
    assert squashed(laid_out) == squashed(expression)
    for expression in policy.expressions(built(REWRITE)):
        assert squashed(cel_layout.pretty(expression)) == squashed(expression)


def test_cel_string_escapes_what_cel_needs() -> None:
    assert cel.string('a"b\\c\nd\ue000\x1f').text == '"a\\"b\\\\c\\nd\\ue000\\u001f"'
    assert decode(cel.string("[^'\"]\u2028").text) == "[^'\"]\u2028"


def value_twin(value: str, services: tuple[Service, ...]) -> str | None:
    """policy_env.retarget_value run by Python's `re` on the same regexes, step for step."""
    if ":" not in value or re.search(f"[{policy_regex.SPACE_CLASS}]", value):
        return None
    rewritten = ",".join(retargeted_address_twin(item, services) for item in value.split(","))
    return rewritten if rewritten != value else None


value_parts = st.lists(
    st.sampled_from(["http://", "tcp://", "s3://", "", "user@", "u:p@", "mlflow", "minio",
                     "fastapi-app", "postgres", "kafka", "mlflow.flts.svc", "mlflowx", ":5000",
                     ":9", ":123456", "/api", "?q=mlflow", "#x", ",", " ", "@", "/", ":",
                     "jdbc:", "postgresql+psycopg2://", "mongodb+srv://", "HTTP://", "gs://",
                     "${P}", "$"]),
    max_size=8,
).map("".join)


@settings(deadline=None)
@given(value_parts)
def test_env_value_twin_agrees_with_probes(value: str) -> None:
    reader = ProgramReader(DEFAULT.services)
    assert value_twin(value, DEFAULT.services) == reader.retarget_value(value)[0]
