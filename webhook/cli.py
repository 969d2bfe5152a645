"""The command line: ``backend-injector serve | review | inject | certs | install``.

Settings are built here, once, from flags, environment, file and the embedded default (see
``webhook.config`` for which wins), and passed down; logging is set up here and nowhere else.
Errors the user can fix are reported on one line with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from webhook import __version__
from webhook.config import ConfigError, Settings, describe, load_settings
from webhook.logs import configure_logging

logger = logging.getLogger("webhook.cli")

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        result: int = args.run(args)
        return result
    except ConfigError as error:
        print(f"backend-injector: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backend-injector",
        description="Mutating admission webhook that points pods at an external "
        "MLflow/MinIO/FastAPI backend.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the webhook over HTTPS")
    _add_config_arguments(serve)
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8443)")
    serve.add_argument("--tls-cert", type=Path, help="serving certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    serve.add_argument("--client-ca", type=Path,
                       help="require client certificates signed by this CA (the apiserver's)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--shutdown-delay", type=float, dest="shutdown_delay_seconds",
                       help="seconds to keep serving, not ready, after SIGTERM (default 0)")
    serve.set_defaults(run=_serve)

    review = commands.add_parser(
        "review", help="answer one AdmissionReview from stdin on stdout (as the server would)"
    )
    _add_config_arguments(review)
    review.set_defaults(run=_review)

    inject = commands.add_parser(
        "inject", help="mutate every pod and pod template in rendered manifests"
    )
    _add_config_arguments(inject)
    inject.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    inject.add_argument("--diff", action="store_true",
                        help="print a unified diff instead of the manifests")
    inject.set_defaults(run=_inject)

    policy = commands.add_parser(
        "policy",
        help="print the same rules as a native MutatingAdmissionPolicy and its binding",
    )
    _add_config_arguments(policy)
    policy.add_argument(
        "--api-version",
        default="admissionregistration.k8s.io/v1",
        choices=["admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1"],
        help="API version of the policy objects (v1 from Kubernetes 1.36, v1beta1 from 1.34)",
    )
    policy.set_defaults(run=_policy)

    certs = commands.add_parser("certs", help="write a CA and a serving certificate")
    _add_service_arguments(certs)
    certs.add_argument("--out", type=Path, default=Path("certs"), help="directory (certs/)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (365)")
    certs.add_argument("--san", action="append", default=[],
                       help="an extra DNS name or IP address (repeatable)")
    certs.set_defaults(run=_certs)

    install = commands.add_parser(
        "install",
        help="create or renew the TLS Secret and put its CA into the webhook configuration",
    )
    _add_service_arguments(install)
    install.add_argument("--secret", default="backend-injector-tls", help="TLS Secret name")
    install.add_argument("--webhook-config", default="backend-injector",
                         help="MutatingWebhookConfiguration name")
    install.add_argument("--days", type=int, default=365, help="validity of a new certificate")
    install.add_argument("--renew-within-days", type=int, default=30,
                         help="re-issue when the certificate expires within this many days")
    install.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then "
                         "$KUBECONFIG or ~/.kube/config)")
    install.add_argument("--context", help="kubeconfig context")
    install.set_defaults(run=_install)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--action", choices=["remove", "rewrite"],
                        help="what to do with init containers that wait for a managed service")
    parser.add_argument("--external-host",
                        help="host of every external service (default host.docker.internal)")


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default="backend-injector", help="Service name")
    parser.add_argument("--namespace", default="backend-injector", help="its namespace")


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in ("action", "external_host", "host", "port", "workers", "tls_cert", "tls_key",
                     "client_ca", "shutdown_delay_seconds")
    }
    return load_settings(config_file=args.config, overrides=flags)


def _announce(settings: Settings) -> None:
    logger.info("configuration", extra={"fields": describe(settings)})
    if settings.credentials.is_development_default:
        logger.warning(
            "the S3 credentials are MinIO's development default; set "
            "BACKEND_INJECTOR_ACCESS_KEY_ID_FILE and BACKEND_INJECTOR_SECRET_ACCESS_KEY_FILE "
            "(or the variables without _FILE) for anything but a local cluster"
        )


def _serve(args: argparse.Namespace) -> int:
    from webhook.server import serve  # uvicorn is only needed here

    settings = _settings(args)
    _announce(settings)
    return serve(settings)


def _review(args: argparse.Namespace) -> int:
    from webhook.admission import AdmissionHandler, EnvelopeError
    from webhook.mutate import Rules

    settings = _settings(args)
    handler = AdmissionHandler(Rules(settings), excluded_namespaces=settings.excluded_namespaces)
    try:
        outcome = handler.review(sys.stdin.buffer.read())
    except EnvelopeError as error:
        print(f"backend-injector: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(outcome.body + b"\n")
    return 0


def _inject(args: argparse.Namespace) -> int:
    from webhook.inject import ManifestError, inject_manifests, unified_diff
    from webhook.mutate import Rules

    settings = _settings(args)
    name = "stdin" if args.filename == "-" else args.filename
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(name).read_text("utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {name}: {error.strerror}") from error
    try:
        injected, report = inject_manifests(text, Rules(settings))
    except ManifestError as error:
        print(f"backend-injector: {name}: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(unified_diff(text, injected, name) if args.diff else injected)
    for warning in report.warnings:
        print(f"backend-injector: {warning}", file=sys.stderr)
    return 0


def _policy(args: argparse.Namespace) -> int:
    from webhook.policy import run_policy_command

    sys.stdout.write(run_policy_command(_settings(args), args.api_version))
    return 0


def _certs(args: argparse.Namespace) -> int:
    from webhook import certs

    started = time.perf_counter()
    hostnames = certs.service_hostnames(args.service, args.namespace, args.san)
    ca = certs.build_ca(common_name=f"{args.service} CA", days=args.days)
    serving = certs.build_serving_certificate(ca=ca, hostnames=hostnames, days=args.days)
    paths = certs.write_bundle(args.out, ca=ca, serving=serving)
    fields: dict[str, Any] = {
        "ca": str(paths.ca_cert),
        "cert": str(paths.cert),
        "key": str(paths.key),
        "hostnames": hostnames,
        "seconds": round(time.perf_counter() - started, 4),
    }
    logger.info("certificates written", extra={"fields": fields})
    return 0


def _install(args: argparse.Namespace) -> int:
    from webhook.install import InstallError, install

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
    except InstallError as error:
        print(f"backend-injector: install: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
