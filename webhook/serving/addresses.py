"""The safety net's IPs as the pods will see them: external host names asked of the cluster's DNS.

The rules' ``/etc/hosts`` entries (``webhook.rules.host_aliases``) need the IP of each external
host. The settings know those written as IP addresses or configured in
``safety_net.addresses`` (``webhook.settings.addresses``); any other name is asked here, but
only when ``serve`` runs in a pod of the cluster (the kubelet sets ``KUBERNETES_SERVICE_HOST``
in every pod): the cluster's DNS then gives the answer the pods will get. Outside the cluster
(``dev`` on a laptop, a server on the host registered by URL) a name such as
``host.docker.internal`` resolves differently or not at all, so nothing is asked there.

Each worker asks as it starts, before it builds its rules and so before its review processes
are spawned with them: all names at once, in threads of their own, for at most
``RESOLVE_TIMEOUT_SECONDS`` together. A review never waits for DNS. A name that did not
answer (a cluster DNS still starting) is asked again in the background (`AddressRetry`),
after a second, then twice as long each time up to ``RETRY_INTERVAL_SECONDS``; when it
answers, the worker builds its rules anew.
An answer is kept for the life of the process: the address of the machine that runs the
backend does not move under a running cluster, and every pod of a workload should get the
same entries.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from webhook.settings import Settings, hosts_without_address, known_addresses, literal_ip

logger = logging.getLogger(__name__)

# Set by the kubelet in every container of every pod (whatever enableServiceLinks says).
IN_CLUSTER_VARIABLE = "KUBERNETES_SERVICE_HOST"
# All names together, at start and at each retry. A cluster DNS answers in milliseconds; one
# that takes longer is not ready, and the retry asks again.
RESOLVE_TIMEOUT_SECONDS = 2.0
# The first retry comes soon (pods created meanwhile get no entries); later ones less often.
FIRST_RETRY_SECONDS = 1.0
RETRY_INTERVAL_SECONDS = 30.0

Lookup = Callable[[str], str | None]
Addresses = dict[str, str]


def in_cluster(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in a pod, where DNS answers as it does for the pods."""
    return bool(environ.get(IN_CLUSTER_VARIABLE))


def lookup_ip(host: str) -> str | None:
    """The IP ``host`` resolves to, IPv4 first (what a pod's client tries first when both
    answer), as canonical text; None when it does not resolve."""
    try:
        answers = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    ordered = sorted(answers, key=lambda answer: answer[0] != socket.AF_INET)
    for _family, _type, _protocol, _name, address in ordered:
        if (ip := literal_ip(str(address[0]))) is not None:
            return ip
    return None


def resolve(hosts: Sequence[str], *, timeout: float = RESOLVE_TIMEOUT_SECONDS,
            lookup: Lookup = lookup_ip) -> Addresses:
    """The IP of each of ``hosts`` that answers within ``timeout`` (all asked at once).

    Each lookup runs in a daemon thread: one that overruns is left to finish on its own (the
    resolver's own timeouts end it) and can keep neither the caller nor the process waiting.
    """
    answers: dict[str, str | None] = {}
    finished = threading.Condition()

    def ask(host: str) -> None:
        address = lookup(host)
        with finished:
            answers[host] = address
            finished.notify_all()

    for host in hosts:
        threading.Thread(target=ask, args=(host,), name=f"resolve-{host}", daemon=True).start()
    deadline = time.monotonic() + timeout
    with finished:
        while len(answers) < len(hosts) and (left := deadline - time.monotonic()) > 0:
            finished.wait(left)
        return {host: address for host, address in answers.items() if address is not None}


def starting_addresses(
    settings: Settings, environ: Mapping[str, str], *, lookup: Lookup = lookup_ip,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
) -> tuple[Addresses, list[str]]:
    """The IPs a worker starts with (the known ones, and in the cluster what DNS answered
    within ``timeout``), and the hosts to ask again."""
    addresses = known_addresses(settings)
    missing = hosts_without_address(settings)
    if not missing:
        return addresses, []
    if not in_cluster(environ):
        # `dev` says so in its own words; any other server outside a cluster says it here.
        logger.debug("safety net: not in a cluster, external host names not resolved",
                     extra={"fields": {"hosts": missing}})
        return addresses, []
    found = resolve(missing, timeout=timeout, lookup=lookup)
    addresses.update(found)
    unresolved = [host for host in missing if host not in found]
    _log_answers(found, unresolved)
    return addresses, unresolved


class AddressRetry:
    """Asks the hosts that did not answer again, in the background, until all have; each time
    one more answers, ``renew`` gets every IP known so far (on the event loop)."""

    def __init__(
        self,
        unresolved: Sequence[str],
        addresses: Mapping[str, str],
        renew: Callable[[Addresses], None],
        *,
        first_interval: float = FIRST_RETRY_SECONDS,
        interval: float = RETRY_INTERVAL_SECONDS,
        timeout: float = RESOLVE_TIMEOUT_SECONDS,
        lookup: Lookup = lookup_ip,
    ) -> None:
        self._unresolved = list(unresolved)
        self._addresses = dict(addresses)
        self._renew = renew
        self._first_interval = first_interval
        self._interval = interval
        self._timeout = timeout
        self._lookup = lookup

    async def run(self) -> None:
        wait = self._first_interval
        while self._unresolved:
            await asyncio.sleep(wait)
            wait = min(wait * 2, self._interval)
            found = await asyncio.to_thread(resolve, self._unresolved, timeout=self._timeout,
                                            lookup=self._lookup)
            if not found:
                continue
            self._addresses.update(found)
            self._unresolved = [host for host in self._unresolved if host not in found]
            _log_answers(found, self._unresolved)
            self._renew(dict(self._addresses))


def _log_answers(found: Mapping[str, str], unresolved: Sequence[str]) -> None:
    if found:
        logger.info("safety net: external hosts resolved; pods get hostAliases for them",
                    extra={"fields": {"addresses": dict(found)}})
    if unresolved:
        logger.warning(
            "safety net: external hosts did not resolve; asked again in the background (or "
            "set safety_net.addresses)", extra={"fields": {"hosts": list(unresolved)}},
        )
