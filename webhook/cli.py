"""The command line: ``backend-injector serve | review | inject | policy | config | certs |
install | dev | doctor | label | credentials | restart``.

Settings are built here, once, from flags, environment, file and the embedded default (see
``webhook.settings`` for which wins), and passed down; logging is set up here and nowhere else.

Every failure a user can cause or fix (a bad flag, a broken file, a stopped cluster) is
reported as one line, ``backend-injector COMMAND: what failed: what to do``, with a non-zero
exit, never as a traceback: exit 2 for a bad command line or configuration, 1 for a failure
met while doing the work (and, as ``diff`` does, for ``inject --diff`` that shows changes).
Abbreviated long options are refused, so that a flag added later can never change what an
existing command line means.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from webhook import __version__
from webhook.serving.logs import LOG_FORMATS, configure_logging
from webhook.settings import (
    ACCESS_KEY_ENV,
    ENV_PREFIX,
    PLATFORMS,
    SECRET_KEY_ENV,
    ConfigError,
    CredentialMode,
    Settings,
    describe,
    load_settings,
)

if TYPE_CHECKING:
    from webhook.cluster.client import Cluster
    from webhook.cluster.connectivity import ConnectivityOptions
    from webhook.cluster.credentials import CredentialValues
    from webhook.inject import InjectReport

logger = logging.getLogger("webhook.cli")

USAGE_ERROR = 2
FAILURE = 1
DIFFERENCES = 1  # `inject --diff` showed changes, as diff(1) exits
PROG = "backend-injector"
VALUE_MODE_EXPOSURE = (
    "credentials.mode is value: the S3 credentials are written into every changed pod and "
    "into {where}; the default, secretKeyRef, sends none (pods read a Secret of their own "
    "namespace)"
)


class CommandError(Exception):
    """A failure met while doing the work, already phrased for the user (exit 1)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and which never guesses abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Reported by the command's own parser, so the line names the command and its --help.
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.log_level.upper(), args.log_format)
    command = f"{PROG} {args.command}"
    try:
        result: int = args.run(args)
        return result
    except ConfigError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return USAGE_ERROR
    except CommandError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        return 130


def version_text() -> str:
    """The version, and the AdmissionReview versions the webhook answers."""
    from webhook.serving.admission import API_VERSIONS

    return f"{PROG} {__version__}\nadmission API versions served: {', '.join(sorted(API_VERSIONS))}"


class _VersionAction(argparse.Action):
    """``--version``, printed as written (argparse's own action re-wraps the text)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def _positive_days(text: str) -> int:
    days = _whole_number(text)
    if days < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, not {days}")
    return days


def _days_or_zero(text: str) -> int:
    days = _whole_number(text)
    if days < 0:
        raise argparse.ArgumentTypeError(f"may not be negative, not {days}")
    return days


def _port(text: str) -> int:
    port = _whole_number(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, not {port}")
    return port


def _host(text: str) -> str:
    from webhook.certs import host_problem

    problem = host_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _connectivity_seconds(text: str) -> int:
    from webhook.cluster.connectivity import MAX_TIMEOUT_SECONDS, MIN_TIMEOUT_SECONDS

    seconds = _whole_number(text)
    if not MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from {MIN_TIMEOUT_SECONDS} to "
                                         f"{MAX_TIMEOUT_SECONDS} seconds, not {seconds}")
    return seconds


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Mutating admission webhook that points pods at an external "
        "MLflow/MinIO/FastAPI backend.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and the admission API versions served")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="auto", choices=LOG_FORMATS,
                        help="auto: readable lines on a terminal, JSON otherwise (default)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    serve = _command(commands, "serve", "serve the webhook over HTTPS")
    _add_config_arguments(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; "
                       "0.0.0.0 in a container or pod, as the image and manifests pass)")
    serve.add_argument("--port", type=_port, help="port to listen on (default 8443)")
    serve.add_argument("--tls-cert", type=Path, help="serving certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    serve.add_argument("--client-ca", type=Path,
                       help="require client certificates signed by this CA (the apiserver's)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--shutdown-delay", type=float, dest="shutdown_delay_seconds",
                       help="seconds to keep serving, not ready, after SIGTERM (default 0)")
    serve.set_defaults(run=_serve)

    review = _command(
        commands, "review", "answer one AdmissionReview from stdin on stdout (as the server would)"
    )
    _add_config_arguments(review)
    review.set_defaults(run=_review)

    inject = _command(
        commands, "inject",
        "mutate every pod and pod template in rendered manifests or a KRM ResourceList",
    )
    inject.epilog = (
        "Without -f it reads stdin, so it is a Helm post-renderer: helm install RELEASE CHART "
        "--post-renderer backend-injector --post-renderer-args inject. Given a ResourceList "
        "(config.kubernetes.io/v1) it answers one, as a KRM function for kustomize and kpt, "
        "configured by the list's functionConfig."
    )
    _add_config_arguments(inject)
    inject.add_argument("-f", "--filename", default="-",
                        help="YAML file, or - for stdin (the default)")
    inject.add_argument("--diff", action="store_true",
                        help="print only what the webhook changed, as a unified diff; "
                        "exit 1 when there is any, as diff does")
    inject.set_defaults(run=_inject)

    policy = _command(
        commands, "policy",
        "print the same rules as a native MutatingAdmissionPolicy and its binding",
    )
    _add_config_arguments(policy)
    policy.add_argument(
        "--api-version",
        default="admissionregistration.k8s.io/v1",
        choices=["admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1"],
        help="API version of the policy objects (v1 from Kubernetes 1.36, v1beta1 from 1.34)",
    )
    policy.set_defaults(run=_policy)

    config = _command(
        commands, "config",
        "print the effective configuration as a file, or write one from a docker compose file",
    )
    config.epilog = (
        "The output is a valid --config file. Credentials are never printed: comments name the "
        "variables they are read from. With --from-compose the external ports are those the "
        "compose file publishes for MLflow, MinIO and the gateway (found by image and name); "
        "${VAR} in the compose file is read from this environment, then the .env beside it."
    )
    _add_config_arguments(config)
    config.add_argument("--from-compose", type=Path, metavar="FILE",
                        help="take the external ports from this docker compose file")
    for role, what in (("mlflow", "MLflow"), ("minio", "MinIO"), ("gateway", "the gateway")):
        config.add_argument(f"--{role}-service", metavar="NAME",
                            help=f"the compose service that is {what} (default: found by its "
                            "image or name)")
    config.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write the file here instead of to stdout")
    config.set_defaults(run=_config)

    certs = _command(commands, "certs", "write a CA and a serving certificate")
    _add_service_arguments(certs)
    certs.add_argument("--out", type=Path, default=Path("certs"), help="directory (certs/)")
    certs.add_argument("--days", type=_positive_days, default=365,
                       help="validity in days (365)")
    certs.add_argument("--san", action="append", default=[], type=_host,
                       help="an extra DNS name or IP address (repeatable)")
    certs.add_argument("--force", action="store_true",
                       help="replace a CA already in --out (what trusts the old one will not "
                       "trust certificates of the new one)")
    certs.set_defaults(run=_certs)

    install = _command(
        commands, "install",
        "create or renew the TLS Secret and put its CA into the webhook configuration",
    )
    _add_service_arguments(install)
    install.add_argument("--secret", default="backend-injector-tls", help="TLS Secret name")
    install.add_argument("--webhook-config", default="backend-injector",
                         help="MutatingWebhookConfiguration name")
    install.add_argument("--days", type=_positive_days, default=365,
                         help="validity of a new certificate")
    install.add_argument("--renew-within-days", type=_days_or_zero, default=30,
                         help="re-issue when the certificate expires within this many days")
    _add_cluster_arguments(install)
    install.set_defaults(run=_install)

    dev = _command(
        commands, "dev",
        "serve the webhook here and register it with the current cluster until stopped",
    )
    _add_config_arguments(dev)
    dev.add_argument("--url",
                     help="where the cluster calls this machine (default "
                     "https://HOST:8443/mutate, HOST the platform's name for this machine: "
                     "host.docker.internal for Docker Desktop)")
    dev.add_argument("--listen", dest="listen_host",
                     help="address to listen on (default: loopback for host.docker.internal "
                     "and loopback URLs, the address itself for an IP, else 0.0.0.0); the port "
                     "is the URL's")
    dev.add_argument("--certs-dir", type=Path,
                     help="keep the dev CA and certificate here (default: a temporary "
                     "directory, removed on exit)")
    _add_cluster_arguments(dev)
    dev.set_defaults(run=_dev)

    doctor = _command(
        commands, "doctor", "check, one line each, why pods in a namespace are or are not changed"
    )
    doctor.add_argument("-n", "--namespace",
                        help="the namespace of the workloads (default: the context's)")
    doctor.add_argument("--webhook-config", default="backend-injector",
                        help="MutatingWebhookConfiguration name of the installed webhook")
    doctor.add_argument("--secret", default="backend-injector-tls",
                        help="its TLS Secret, read when the endpoints are not reachable from here")
    doctor.add_argument("--connectivity", action="store_true",
                        help="also run a short-lived pod in the namespace that connects to each "
                        "external service of the configuration, one line each; the pod is "
                        "deleted afterwards")
    doctor.add_argument("--connectivity-image", metavar="IMAGE",
                        help="the image of that pod, with a shell and nc (default busybox:1.36)")
    doctor.add_argument("--connectivity-timeout", type=_connectivity_seconds, metavar="SECONDS",
                        help="how long that pod may take, start included (10 to 600; default 60)")
    # The configuration the checks of it judge by (the platform's host, the stuck pods, the
    # addresses --connectivity tries): as serve would find it here unless given.
    _add_config_arguments(doctor)
    _add_cluster_arguments(doctor)
    doctor.set_defaults(run=_doctor)

    label = _command(
        commands, "label",
        "opt namespaces in: put the credentials Secret their pods read in each, then label it",
    )
    _add_config_arguments(label)
    label.add_argument("namespaces", nargs="+", metavar="NAMESPACE")
    label.add_argument("--remove", action="store_true",
                       help="opt out instead: remove the label and this tool's Secret copy")
    _add_source_argument(label)
    _add_cluster_arguments(label)
    label.set_defaults(run=_label)

    credentials = _command(
        commands, "credentials",
        "copy the credentials into every opted-in namespace again (after they changed)",
    )
    _add_config_arguments(credentials)
    credentials.add_argument("-n", "--namespace", dest="namespaces", action="append",
                             help="only this namespace (repeatable; default: every namespace "
                             "labelled backend-injector/inject=enabled)")
    credentials.add_argument("--dry-run", action="store_true",
                             help="say what would change, change nothing")
    _add_source_argument(credentials)
    _add_cluster_arguments(credentials)
    credentials.set_defaults(run=_credentials)

    restart = _command(
        commands, "restart",
        "create anew the pods stuck in Init that the webhook never changed (after label)",
    )
    restart.epilog = (
        "Deployments and DaemonSets get a rollout restart; StatefulSets that, and their stuck "
        "pods deleted; a ReplicaSet's stuck pods are deleted; a Job is recreated from its own "
        "spec. Nothing is done unless the namespace is opted in and the webhook changes a "
        "dry-run pod there."
    )
    _add_config_arguments(restart)
    restart.add_argument("-n", "--namespace",
                         help="the namespace of the stuck pods (default: the context's)")
    restart.add_argument("--dry-run", action="store_true",
                         help="print the plan, change nothing")
    restart.add_argument("--yes", action="store_true",
                         help="do it without asking (needed when stdin is not a terminal)")
    restart.add_argument("--bare-pods", choices=["keep", "delete"], default="keep",
                         help="stuck pods without an owner: keep them (the default) or delete "
                         "them (nothing makes them again)")
    _add_cluster_arguments(restart)
    restart.set_defaults(run=_restart)
    for command_parser in commands.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--action", choices=["remove", "rewrite"],
                        help="what to do with init containers that wait for a managed service")
    parser.add_argument("--external-host",
                        help="host of every external service (default: the platform's name "
                        "for this machine, host.docker.internal on docker-desktop)")
    parser.add_argument("--platform", metavar="NAME",
                        help="the local Kubernetes the pods run on, which names the external "
                        "host of every service the configuration names none for: "
                        f"{', '.join(platform.name for platform in PLATFORMS)} "
                        "(default docker-desktop; kind needs --external-host)")


def _add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=_secret_reference, metavar="NAMESPACE/NAME",
                        help="the Secret the values are copied from (default: the installed "
                        "webhook's credentials Secret; BACKEND_INJECTOR_ACCESS_KEY_ID and "
                        "..._SECRET_ACCESS_KEY, or their _FILE forms, win when set)")


def _secret_reference(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default="backend-injector", help="Service name")
    parser.add_argument("--namespace", default="backend-injector", help="its namespace")


def _command(commands: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose summary is both its line in ``--help`` and the opening of its own
    ``COMMAND --help``, so each command says what it does where its options are listed."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.")
    return parser


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then "
                        "$KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=args.config, overrides=_flags(args))


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name, None)
        for name in ("action", "external_host", "platform", "host", "port", "workers", "tls_cert",
                     "tls_key", "client_ca", "shutdown_delay_seconds")
    }


def _announce(settings: Settings) -> None:
    logger.info("configuration", extra={"fields": describe(settings)})
    if settings.credentials.mode is CredentialMode.VALUE:
        logger.warning(VALUE_MODE_EXPOSURE.format(
            where="every answer of /mutate, to anything that can reach this port"))
    if (warning := _development_credentials_warning(settings)) is not None:
        logger.warning(warning)


def _development_credentials_warning(settings: Settings) -> str | None:
    """What serve says at start, and inject when it replaced a chart's own credentials, while
    the credentials are MinIO's development default."""
    if not settings.credentials.is_development_default:
        return None
    return (
        "the S3 credentials are MinIO's development default; set "
        "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE and BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE "
        "(or the variables without _FILE) for anything but a local cluster"
    )


def _serve(args: argparse.Namespace) -> int:
    from webhook.serving.server import serve  # uvicorn is only needed here

    settings = _settings(args)
    _announce(settings)
    return _listening_or_error(serve)(settings)


def _review(args: argparse.Namespace) -> int:
    from webhook.rules.mutate import Rules
    from webhook.serving.admission import AdmissionHandler, EnvelopeError

    settings = _settings(args)
    handler = AdmissionHandler(Rules(settings))
    try:
        outcome = handler.review(sys.stdin.buffer.read())
    except EnvelopeError as error:
        raise CommandError(f"stdin: {error}") from error
    sys.stdout.buffer.write(outcome.body + b"\n")
    return 0


def _inject(args: argparse.Namespace) -> int:
    from webhook import krm
    from webhook.inject import ManifestError, inject_manifests
    from webhook.rules.mutate import Rules

    name, text = _read_manifests(args.filename)
    diff_name = name if args.diff else None
    try:
        resource_list = krm.read_resource_list(text)
        if resource_list is not None:
            return _inject_resource_list(args, resource_list, diff_name)
        settings = _settings(args)
        injected, report = inject_manifests(text, Rules(settings), diff_name=diff_name)
    except ManifestError as error:
        raise CommandError(error.located(name)) from error
    sys.stdout.write(report.diff if args.diff else injected)
    _tell_notes(report, settings)
    return DIFFERENCES if report.diffs else 0


def _inject_resource_list(args: argparse.Namespace, resource_list: dict[str, Any],
                          diff_name: str | None) -> int:
    """inject as a KRM function: the answer is a ResourceList, a bad configuration included
    (as an error result, items unchanged), since the orchestrator reads stdout either way."""
    from webhook import krm
    from webhook.rules.mutate import Rules

    try:
        settings = krm.load_function_settings(krm.configuration_of(resource_list),
                                              config_file=args.config, overrides=_flags(args))
    except ConfigError as error:
        krm.add_configuration_error(resource_list, error)
        sys.stdout.write(krm.render(resource_list))
        raise
    report = krm.answer(resource_list, Rules(settings), diff_name=diff_name)
    warning = _development_credentials_warning(settings)
    if report.replaced_credentials and warning is not None:
        krm.add_result(resource_list, warning, "warning")
    sys.stdout.write(report.diff if diff_name is not None else krm.render(resource_list))
    _tell_notes(report, settings)
    return DIFFERENCES if report.diffs else 0


def _read_manifests(filename: str) -> tuple[str, str]:
    """(the name errors give it, the text) of a file, or of stdin for ``-``."""
    if filename != "-":
        try:
            return filename, Path(filename).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise CommandError(f"cannot read {filename}: {reason}") from error
    if sys.stdin.isatty():
        # Run by hand with nothing piped in, it would otherwise seem to hang.
        print(f"{PROG} inject: reading manifests from stdin (end with Ctrl-D; -f FILE reads a "
              "file)", file=sys.stderr)
    try:
        return "stdin", sys.stdin.read()
    except UnicodeDecodeError as error:
        raise CommandError(f"cannot read stdin: {error}") from error


def _tell_notes(report: InjectReport, settings: Settings) -> None:
    """Each note on stderr; where the pods' credentials come from when they were changed;
    and serve's warning about development credentials when a chart's own were replaced by
    them."""
    for line in report.warnings:
        print(f"{PROG}: {line}", file=sys.stderr)
    if report.mutated and settings.credentials.mode is CredentialMode.SECRET_KEY_REF:
        print(f"{PROG}: the changed pods read {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} from the "
              f"Secret {settings.credentials.secret_name} of their own namespace; "
              f"`{PROG} label NAMESPACE` puts it there", file=sys.stderr)
    elif report.mutated and settings.credentials.mode is CredentialMode.VALUE:
        print(f"{PROG}: warning: " + VALUE_MODE_EXPOSURE.format(where="these manifests"),
              file=sys.stderr)
    warning = _development_credentials_warning(settings)
    if report.replaced_credentials and warning is not None:
        print(f"{PROG}: {warning}", file=sys.stderr)


def _policy(args: argparse.Namespace) -> int:
    from webhook.policy.objects import run_policy_command

    sys.stdout.write(run_policy_command(_settings(args), args.api_version))
    return 0


def _config(args: argparse.Namespace) -> int:
    import os

    from webhook import config_view

    chosen = {key: name for key, name in (("mlflow", args.mlflow_service),
                                          ("minio", args.minio_service),
                                          ("fastapi", args.gateway_service)) if name}
    if chosen and args.from_compose is None:
        args.command_parser.error("--mlflow-service, --minio-service and --gateway-service "
                                  "go with --from-compose")
    settings = _settings(args)
    flags = [f"--{name.replace('_', '-')}" for name, value in _flags(args).items()
             if value is not None]
    comments = config_view.header(settings, os.environ, config_file=args.config, flags=flags)
    document = config_view.effective_document(settings)
    if args.from_compose is not None:
        from webhook.compose import configuration_from_compose

        composed = configuration_from_compose(args.from_compose, document, environ=os.environ,
                                              chosen=chosen)
        for warning in composed.warnings:
            print(f"{PROG} config: warning: {warning}", file=sys.stderr)
        document, comments = composed.document, [*comments, *composed.comments]
    text = config_view.render(document, comments)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot write {args.output}: {error.strerror or error}; "
                           "choose a writable path with -o") from error
    return 0


def _certs(args: argparse.Namespace) -> int:
    from webhook import certs

    started = time.perf_counter()
    existing = [path for path in (args.out / certs.CA_CERT_FILE, args.out / certs.CA_KEY_FILE)
                if path.exists()]
    if existing and not args.force:
        raise CommandError(
            f"{existing[0]} exists: a new CA would not be trusted where this one is; keep it, "
            "pass --force to replace it, or choose another --out"
        )
    hostnames = certs.service_hostnames(args.service, args.namespace, args.san)
    ca = certs.build_ca(common_name=f"{args.service} CA", days=args.days)
    serving = certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=args.days)
    try:
        paths = certs.write_bundle(args.out, ca=ca, serving=serving)
    except OSError as error:
        where = error.filename or args.out
        raise CommandError(
            f"cannot write to {where}: {error.strerror or error}; "
            "choose a writable directory with --out"
        ) from error
    fields: dict[str, Any] = {
        "ca": str(paths.ca_cert),
        "cert": str(paths.cert),
        "key": str(paths.key),
        "hostnames": hostnames,
        "seconds": round(time.perf_counter() - started, 4),
    }
    logger.info("certificates written", extra={"fields": fields})
    return 0


def _dev(args: argparse.Namespace) -> int:
    from webhook.cluster.client import ClusterError, connected
    from webhook.cluster.dev import DevError, parse_url, run_dev
    from webhook.serving.server import serve

    settings = _settings(args)
    try:
        target = parse_url(args.url or _dev_url(settings), listen_host=args.listen_host)
    except DevError as error:
        raise ConfigError(str(error)) from error
    try:
        with connected(kubeconfig=args.kubeconfig, context=args.context) as cluster:
            cluster.version()  # a stopped cluster is reported before anything else is said
            _announce(settings)
            _copy_credentials_for_dev(cluster, settings)
            return run_dev(settings, cluster, target, serve=_listening_or_error(serve),
                           certs_dir=args.certs_dir)
    except (ClusterError, DevError) as error:
        raise CommandError(str(error)) from error


def _dev_url(settings: Settings) -> str:
    """Where the cluster calls dev by default: the platform's own name for this machine."""
    from webhook.settings import platform_named

    host = platform_named(settings.platform, "platform").host
    if host is None:
        raise ConfigError(f"platform {settings.platform} has no host name the cluster can use "
                          "for this machine: give --url https://ADDRESS:8443/mutate (the "
                          "address its nodes reach this machine at)")
    return f"https://{host}:8443/mutate"


def _copy_credentials_for_dev(cluster: Cluster, settings: Settings) -> None:
    """Namespaces opted in before dev started get the Secret their pods will reference, as
    `label` gives it to those opted in later."""
    import os

    from webhook.cluster.credentials import CredentialsError
    from webhook.cluster.optin import credential_values, refresh

    try:
        values = credential_values(cluster, settings, os.environ, None)
    except CredentialsError as error:
        raise CommandError(str(error)) from error
    if values is None:
        return
    _warn_development_copy(values)
    for step in refresh(cluster, settings, values, None, dry_run=False):
        logger.info("credentials for pods", extra={"fields": {"namespace": step.namespace,
                                                              "result": step.text}})


def _listening_or_error(serve: Callable[[Settings], int]) -> Callable[[Settings], int]:
    """`serve`, with a port that cannot be listened on reported as one line."""

    def serve_or_explain(settings: Settings) -> int:
        try:
            return serve(settings)
        except OSError as error:
            raise CommandError(
                f"cannot listen on {settings.serving.host}:{settings.serving.port}: "
                f"{error.strerror or error}; stop what uses it or choose another port"
            ) from error

    return serve_or_explain


def _doctor(args: argparse.Namespace) -> int:
    from webhook.cluster.client import ClusterError, connected
    from webhook.cluster.doctor import Doctor, Status

    settings = _settings(args)
    connectivity = _connectivity_options(args, settings)
    failures = 0
    try:
        with connected(kubeconfig=args.kubeconfig, context=args.context) as cluster:
            doctor = Doctor(cluster, namespace=args.namespace or cluster.namespace,
                            webhook_configuration=args.webhook_config, tls_secret=args.secret,
                            connectivity=connectivity, settings=settings)
            for check in doctor.run():
                print(check.line(), flush=True)
                failures += check.status is Status.FAIL
    except ClusterError as error:
        raise CommandError(str(error)) from error
    return FAILURE if failures else 0


def _connectivity_options(args: argparse.Namespace,
                          settings: Settings) -> ConnectivityOptions | None:
    """What ``doctor --connectivity`` tries: the external addresses of the configuration
    (file, environment and flags, as serve reads them), with which image and bound."""
    from webhook.cluster.connectivity import (
        DEFAULT_IMAGE,
        DEFAULT_TIMEOUT_SECONDS,
        ConnectivityOptions,
    )
    from webhook.serving.reachability import targets

    if not args.connectivity:
        given = [flag for flag, value in (
            ("--connectivity-image", args.connectivity_image),
            ("--connectivity-timeout", args.connectivity_timeout))
            if value is not None]
        if given:
            args.command_parser.error(f"{', '.join(given)} go{'es' if len(given) == 1 else ''}"
                                      " with --connectivity")
        return None
    return ConnectivityOptions(
        targets=targets(settings),
        image=args.connectivity_image or DEFAULT_IMAGE,
        timeout_seconds=args.connectivity_timeout or DEFAULT_TIMEOUT_SECONDS)


def _label(args: argparse.Namespace) -> int:
    import os

    from webhook.cluster.client import ClusterError, connected
    from webhook.cluster.credentials import CredentialsError
    from webhook.cluster.optin import (
        OptInError,
        check_namespaces,
        credential_values,
        opt_in,
        opt_out,
    )

    settings = _settings(args)
    try:
        with connected(kubeconfig=args.kubeconfig, context=args.context) as cluster:
            if args.remove:
                for namespace in args.namespaces:
                    for step in opt_out(cluster, settings, namespace):
                        print(step.line(), flush=True)
                return 0
            check_namespaces(cluster, settings, args.namespaces)
            values = credential_values(cluster, settings, os.environ, args.source)
            _warn_development_copy(values)
            for namespace in args.namespaces:
                for step in opt_in(cluster, settings, namespace, values):
                    print(step.line(), flush=True)
    except (ClusterError, CredentialsError, OptInError) as error:
        raise CommandError(str(error)) from error
    return 0


def _credentials(args: argparse.Namespace) -> int:
    import os

    from webhook.cluster.client import ClusterError, connected
    from webhook.cluster.credentials import CredentialsError
    from webhook.cluster.optin import credential_values, refresh

    settings = _settings(args)
    try:
        with connected(kubeconfig=args.kubeconfig, context=args.context) as cluster:
            values = credential_values(cluster, settings, os.environ, args.source)
            if values is None:
                raise ConfigError(f"credentials.mode is {settings.credentials.mode.value}: "
                                  "pods read no Secret, so there is nothing to copy")
            _warn_development_copy(values)
            for step in refresh(cluster, settings, values, args.namespaces,
                                dry_run=args.dry_run):
                print(step.line(), flush=True)
    except (ClusterError, CredentialsError) as error:
        raise CommandError(str(error)) from error
    return 0


def _restart(args: argparse.Namespace) -> int:
    from webhook.cluster.client import ClusterError, connected
    from webhook.cluster.restart import BarePods, RestartRefused, restart
    from webhook.rules.mutate import Rules

    if not (args.dry_run or args.yes or sys.stdin.isatty()):
        raise CommandError("stdin is not a terminal to ask on: pass --yes to restart without "
                           "asking, or --dry-run to see the plan")
    rules = Rules(_settings(args))
    try:
        with connected(kubeconfig=args.kubeconfig, context=args.context) as cluster:
            for line in restart(cluster, args.namespace or cluster.namespace, rules,
                                bare_pods=BarePods(args.bare_pods), dry_run=args.dry_run,
                                confirm=None if args.yes else _confirmed):
                print(line, flush=True)
    except (ClusterError, RestartRefused) as error:
        raise CommandError(str(error)) from error
    return 0


def _confirmed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _warn_development_copy(values: CredentialValues | None) -> None:
    if values is not None and values.is_development_default:
        print(f"{PROG}: warning: copying MinIO's development credentials (from "
              f"{values.source}); set {ENV_PREFIX}ACCESS_KEY_ID_FILE and "
              f"{ENV_PREFIX}SECRET_ACCESS_KEY_FILE, or install the webhook with credentials of "
              "its own, for anything but a local cluster", file=sys.stderr)


def _install(args: argparse.Namespace) -> int:
    from webhook.cluster.client import ClusterError
    from webhook.cluster.install import InstallError, install

    try:
        result = install(
            namespace=args.namespace,
            service=args.service,
            secret_name=args.secret,
            webhook_config_name=args.webhook_config,
            days=args.days,
            renew_within_days=args.renew_within_days,
            kubeconfig=args.kubeconfig,
            context=args.context,
        )
    except (InstallError, ClusterError) as error:
        raise CommandError(str(error)) from error
    print(result.summary())
    return 0
