"""The rules: a pod (a plain dict) and the settings in, JSON Patch operations out.

Pure: no I/O, no framework, no logging. The patch is built from the changes themselves, by
index, rather than by diffing two whole pods (measured fifty times slower). Operations are
ordered so that every index is valid when it is applied:

1. init containers that stay: env replaced in place, probes retargeted (original indexes);
2. init containers that go: removed from the back (or the whole list, when all go);
3. app containers: env replaced in place, duplicates removed from the back, absent ones added
   (native sidecars, init containers with ``restartPolicy: Always``, get absent ones too);
4. the safety net's ``/etc/hosts`` entries (``host_aliases``), for what was not read;
5. the status annotation.

What counts as a waiter, and what happens to it, is decided per init container:

* named in ``waiter_names`` (name wins over content), or its program only probes managed
  hosts: a *waiter*. ``remove`` drops it. ``rewrite`` retargets its probes, unless one of them
  is a service without an external address (postgres) or it has no probe to retarget, in
  which case it is dropped as well. A waiter already pointed at the external address is left.
* it probes a managed host but also waits for other hosts or does work (a migration): it is
  kept, and its probes of managed hosts are retargeted whatever the action, since that is the
  only change that lets it finish without losing its other work.
* anything else is kept as it is; only its env is managed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.rules.host_aliases import host_alias_operations
from webhook.rules.programs import (
    MAX_PROGRAM_CHARS,
    NOT_READ,
    ProgramReader,
    ProgramReading,
    program_length,
)
from webhook.rules.status import (
    STATUS_KEY,
    STATUS_LISTS,
    read_status,
    status_operation,
)
from webhook.settings import (
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    Action,
    CredentialMode,
    EnvScope,
    Settings,
    known_addresses,
)

INJECT_KEY = "backend-injector/inject"
# Shared with the native policy (webhook/policy/objects.py), so the two twins read one list.
OPT_OUT_VALUES = frozenset({"false", "disabled", "off", "no"})

# The init container programs of one pod read together, at most: a few charts' worth. What
# lies beyond is kept unread, so that no pod can cost more than a bounded time to review.
MAX_POD_PROGRAM_CHARS = 32 * 1024
# Containers and init containers of one pod, at most; a pod with more is left unchanged, with
# a warning. Real pods have a handful; the bound keeps a review's time small whatever the pod.
MAX_CONTAINERS = 512

Operation = dict[str, Any]


class PodShapeError(ValueError):
    """The object is not shaped like a pod where the rules must read or change it.

    (Objects are checked against ``dict`` and ``list``, the types JSON and YAML decode to,
    rather than the abstract Mapping: the abstract check is the slowest step of a review.)

    The webhook then admits it unchanged with a warning: the apiserver's own validation is
    the right place to reject a malformed pod, and a guess here could corrupt a valid one.
    """


@dataclass(slots=True)
class Mutation:
    """What the rules decided for one pod: the patch and a names-only account of it."""

    operations: list[Operation] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # init containers dropped
    rewritten: list[str] = field(default_factory=list)  # init containers whose probes moved
    # Containers whose command or args had only URLs of their work retargeted.
    retargeted: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # managed variables set anywhere
    containers: list[str] = field(default_factory=list)  # containers whose env changed
    kept_waiting: list[str] = field(default_factory=list)  # kept, still probing a service
    aliased: list[str] = field(default_factory=list)  # host names given /etc/hosts entries
    notices: list[str] = field(default_factory=list)  # what was left alone, and why
    _env_set: set[str] = field(default_factory=set, repr=False)  # `env` as a set, for speed
    skipped: str | None = None  # why nothing was considered (opt-out)

    @property
    def changed(self) -> bool:
        return bool(self.operations)

    def describe(self, *, most: int | None = None) -> list[str]:
        """What changed, one phrase per kind of change; names only, at most ``most`` each."""
        lines = []
        if self.removed:
            lines.append(f"removed init containers {_listed(self.removed, most)}")
        if self.rewritten:
            lines.append(f"retargeted init containers {_listed(self.rewritten, most)}")
        if self.retargeted:
            lines.append(f"retargeted URLs in the programs of {_listed(self.retargeted, most)}")
        if self.env:
            # Containers first: a long list of variable names is what a length limit cuts.
            lines.append(f"set {len(self.env)} variables in {_listed(self.containers, most)}: "
                         f"{_listed(self.env, most)}")
        if self.kept_waiting:
            lines.append(f"init containers {_listed(self.kept_waiting, most)} still wait for a "
                         "service without an external address")
        if self.aliased:
            lines.append(f"hostAliases point {_listed(self.aliased, most)} at the external "
                         "addresses")
        lines += self.notices if most is None else self.notices[:most]
        return lines

    def note_env_changed(self, container: str, names: list[str]) -> None:
        """Record that ``container``'s variables ``names`` were set; each name is listed once."""
        self.containers.append(container)
        for name in names:
            if name not in self._env_set:
                self._env_set.add(name)
                self.env.append(name)


def _listed(names: list[str], most: int | None) -> str:
    if most is None or len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} (+{len(names) - most} more)"


class Rules:
    """The rules for one configuration; build once, call ``mutate_pod`` per review."""

    def __init__(self, settings: Settings, *, host_addresses: Mapping[str, str] | None = None
                 ) -> None:
        """``host_addresses``: the IP of each external host (lower case) for the safety net's
        entries, as serving found them; by default those known without asking DNS."""
        self._settings = settings
        self._host_addresses = (
            {} if not settings.safety_net.host_aliases
            else known_addresses(settings) if host_addresses is None else dict(host_addresses)
        )
        self._reader = ProgramReader(settings.services)
        # Env values and app containers' programs are only searched for managed hosts.
        self._hosts = self._reader.hosts
        self._external_of = {s.name: s.external for s in settings.services}
        self._managed_env = managed_env_entries(settings)
        self._managed_names = frozenset(self._managed_env)

    @property
    def settings(self) -> Settings:
        return self._settings

    def mutate_pod(self, pod: Any, *, namespace: str | None = None) -> Mutation:
        """Decide the changes for ``pod``. Raises PodShapeError for an unreadable pod.

        ``namespace``: where the pod will run when its metadata does not say (a template's)."""
        if not isinstance(pod, dict):
            raise PodShapeError("the object is not a mapping")
        metadata = _optional_mapping(pod, "metadata", "metadata")
        spec = _optional_mapping(pod, "spec", "spec")
        mutation = Mutation()
        if opt_out := _opt_out_reason(metadata):
            mutation.skipped = opt_out
            return mutation
        init_containers = _container_list(spec, "initContainers")
        containers = _container_list(spec, "containers")
        _check_container_count(len(init_containers) + len(containers))
        budget = _ProgramBudget()
        readings = self._read_init_containers(init_containers, mutation, budget)
        leaving = [self._should_remove(name, argv, env, reading)
                   for name, argv, env, reading in readings]
        earlier = read_status(metadata)
        waited = _waited(earlier, leaving, readings)
        self._mutate_init_containers(init_containers, readings, leaving, waited, mutation)
        for index, container in enumerate(containers):
            path = f"/spec/containers/{index}"
            self._retarget_work(container, path, mutation, budget)
            self._set_env(container, path, mutation,
                          add_absent=self._uses_backend(container, path, waited))
        aliases = host_alias_operations(pod, metadata.get("namespace") or namespace,
                                        self._settings.services, self._host_addresses)
        mutation.operations += aliases.operations
        mutation.aliased = aliases.hosts
        if mutation.operations:
            _record_status(metadata, pod.get("metadata") is not None, earlier, mutation)
        return mutation

    def _read_init_containers(
        self, init_containers: Sequence[Mapping[str, Any]], mutation: Mutation,
        budget: _ProgramBudget,
    ) -> list[tuple[str, list[str], dict[str, str], ProgramReading]]:
        readings = []
        unread: list[str] = []
        for index, container in enumerate(init_containers):
            path = f"/spec/initContainers/{index}"
            name = _name_of(container, path)
            argv = _program_of(container, path)
            # Only a program that refers to variables reads the env.
            env = _literal_env(container) if any("$" in part for part in argv) else {}
            length = program_length(argv)
            if not budget.take(length):
                # Not read, so neither a waiter nor retargeted: kept exactly as it is.
                reading = NOT_READ
                unread.append(name)
            else:
                reading = self._reader.read(argv, env, length=length)
            readings.append((name, argv, env, reading))
        if unread:
            mutation.notices.append(
                f"init containers {_listed(unread, 4)} were not read and are kept as they are: "
                f"a program may have {MAX_PROGRAM_CHARS} characters, the pod's together "
                f"{MAX_POD_PROGRAM_CHARS}"
            )
        return readings

    def _mutate_init_containers(
        self,
        init_containers: Sequence[Mapping[str, Any]],
        readings: list[tuple[str, list[str], dict[str, str], ProgramReading]],
        removals: list[bool],
        waited: bool,
        mutation: Mutation,
    ) -> None:
        leaving: list[int] = []
        for index, container in enumerate(init_containers):
            name, argv, env, reading = readings[index]
            path = f"/spec/initContainers/{index}"
            if removals[index]:
                leaving.append(index)
                mutation.removed.append(name)
                continue
            if reading.managed or (reading.does_work and not reading.not_read):
                self._retarget(container, path, argv, env, reading, mutation)
            # A native sidecar (restartPolicy Always) runs beside the app for the pod's whole
            # life, so it is served like an app container.
            sidecar = container.get("restartPolicy") == "Always"
            self._set_env(container, path, mutation,
                          add_absent=sidecar and self._uses_backend(container, path, waited))
        if leaving and len(leaving) == len(init_containers):
            # An empty list would be legal, but dropping the field is what a person would write.
            mutation.operations.append({"op": "remove", "path": "/spec/initContainers"})
        else:
            mutation.operations.extend(
                {"op": "remove", "path": f"/spec/initContainers/{index}"}
                for index in reversed(leaving)
            )

    def _uses_backend(self, container: Mapping[str, Any], path: str, waited: bool) -> bool:
        """Whether ``container`` gets the managed variables it lacks (``add_env_to``).

        It uses the backend when its pod waited for a managed service, when it carries a
        managed variable, or when its env, command or args name a managed host.
        """
        if waited or self._settings.add_env_to is EnvScope.ALL:
            return True
        env = container.get("env")
        entries = env if isinstance(env, list) else []
        if any(isinstance(e, dict) and e.get("name") in self._managed_names for e in entries):
            return True
        return any(self._hosts.names_managed_host(text)
                   for text in [*_program_of(container, path), *_literal_values(entries)])

    def _should_remove(
        self, name: str, argv: list[str], env: dict[str, str], reading: ProgramReading
    ) -> bool:
        named = name in self._settings.waiter_names
        if not named and not reading.only_waits_for_managed:
            return False
        if self._settings.action is Action.REMOVE:
            return True
        if not reading.managed:
            # A named waiter with nothing managed to retarget: leave one that already points
            # at the external address (a second pass in rewrite mode), drop the rest.
            return not reading.probes_external
        if any(self._external_of.get(service) is None for service in reading.managed):
            return True
        # A pure waiter whose probes cannot all be rewritten where they stand (a host given to
        # a function, a command held in a variable) would go on waiting for in-cluster names.
        return not self._reader.retargets_fully(argv, env)

    def _retarget(
        self,
        container: Mapping[str, Any],
        path: str,
        argv: list[str],
        env: dict[str, str],
        reading: ProgramReading,
        mutation: Mutation,
        *,
        app: bool = False,
    ) -> None:
        """A kept container's probes and the URLs of its work pointed at the external
        addresses; ``app``: an app container (recorded apart from the init containers, whose
        names the status annotation keeps)."""
        name = str(container["name"])
        retargeted = self._reader.retarget(argv, env)
        if not app and any(self._external_of.get(service) is None
                           for service in reading.managed):
            mutation.kept_waiting.append(name)
        if reading.does_work:
            self._note_unreachable_work(name, argv, env, mutation)
        if retargeted is None:
            return
        command = _string_list(container, "command", path)
        split = len(command)
        if retargeted[:split] != command:
            mutation.operations.append(
                {"op": "replace", "path": f"{path}/command", "value": retargeted[:split]}
            )
        if retargeted[split:] != _string_list(container, "args", path):
            mutation.operations.append(
                {"op": "replace", "path": f"{path}/args", "value": retargeted[split:]}
            )
        # Only a container that probed a managed service is recorded as rewritten: the status
        # annotation's names say the pod waited, which work alone does not.
        (mutation.rewritten if reading.managed and not app else mutation.retargeted).append(name)

    def _retarget_work(
        self, container: Mapping[str, Any], path: str, mutation: Mutation,
        budget: _ProgramBudget,
    ) -> None:
        """An app container's command and args with the URLs of managed hosts that have an
        external address pointed at it, as its env values are (`--tracking-uri
        http://mlflow:5000`), within the pod's budget of program text."""
        argv = _program_of(container, path)
        if not argv or not any(self._hosts.names_managed_host(part) for part in argv):
            return
        if not budget.take(program_length(argv)):
            mutation.notices.append(f"container {container['name']} was not read: the pod's "
                                    f"programs together may have {MAX_POD_PROGRAM_CHARS} "
                                    "characters")
            return
        env = _literal_env(container) if any("$" in part for part in argv) else {}
        reading = self._reader.read(argv, env)
        if reading.does_work:
            self._retarget(container, path, argv, env, reading, mutation, app=True)

    def _note_unreachable_work(
        self, name: str, argv: list[str], env: dict[str, str], mutation: Mutation
    ) -> None:
        unreachable = self._reader.unreachable_in_work(argv, env)
        if unreachable:
            mutation.notices.append(
                f"container {name} works against {_listed(unreachable, 4)}, which "
                "has no external address: its URLs are left as written"
            )

    def _set_env(
        self, container: Mapping[str, Any], path: str, mutation: Mutation, *, add_absent: bool
    ) -> None:
        """The managed variables of ``container`` made what they should be, other variables
        that are addresses of managed hosts retargeted, and, with ``add_absent``, the managed
        variables it lacks added."""
        changed: list[str] = []
        seen = self._replace_env(container, path, mutation, changed)
        if add_absent:
            self._add_absent_env(container, path, seen, mutation, changed)
        if changed:
            mutation.note_env_changed(str(container["name"]), changed)

    def _replace_env(
        self, container: Mapping[str, Any], path: str, mutation: Mutation, changed: list[str]
    ) -> set[str]:
        """Each entry of the env in place: a managed one replaced by the wanted entry (its
        duplicates removed), another retargeted when its value is an address. Returns the
        managed names found."""
        env = _env_list(container, path)
        seen: set[str] = set()
        duplicates: list[int] = []
        for index, entry in enumerate(env):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise PodShapeError(f"{path}/env/{index} has no name")
            variable = entry["name"]
            if variable not in self._managed_names:
                value = entry.get("value")
                # Addresses only, tested cheaply: most values are not.
                if isinstance(value, str) and ":" in value and "valueFrom" not in entry:
                    self._retarget_value(entry, value, f"{path}/env/{index}", container,
                                         mutation, changed)
            elif variable in seen:
                # Kubernetes lets the last duplicate win; one managed entry leaves no doubt.
                duplicates.append(index)
            else:
                seen.add(variable)
                wanted = self._managed_env[variable]
                if entry != wanted:
                    # In place, so that later `$(VAR)` references still see the variable first.
                    mutation.operations.append(
                        {"op": "replace", "path": f"{path}/env/{index}", "value": wanted}
                    )
                    changed.append(variable)
        _remove_duplicates(env, duplicates, path, mutation, changed)
        return seen

    def _add_absent_env(
        self,
        container: Mapping[str, Any],
        path: str,
        seen: set[str],
        mutation: Mutation,
        changed: list[str],
    ) -> None:
        """The managed variables not ``seen`` in the env, added at its end."""
        absent = [entry for name, entry in self._managed_env.items() if name not in seen]
        if not absent:
            return
        if container.get("env") is None:
            mutation.operations.append({"op": "add", "path": f"{path}/env", "value": absent})
        else:
            mutation.operations.extend(
                {"op": "add", "path": f"{path}/env/-", "value": entry} for entry in absent
            )
        changed.extend(entry["name"] for entry in absent)

    def _retarget_value(
        self,
        entry: Mapping[str, Any],
        value: str,
        path: str,
        container: Mapping[str, Any],
        mutation: Mutation,
        changed: list[str],
    ) -> None:
        """Another variable whose value is the address of a managed host, retargeted in place
        (`FASTAPI_URL=http://fastapi-app:8000/api`); a host with no external address stays."""
        retargeted, unreachable = self._hosts.retarget_value(value)
        if retargeted is not None:
            mutation.operations.append(
                {"op": "replace", "path": path, "value": {**entry, "value": retargeted}}
            )
            changed.append(entry["name"])
        if unreachable:
            mutation.notices.append(
                f"{entry['name']} in {container['name']} names {', '.join(unreachable)}, which "
                "has no external address; left as it is"
            )


class _ProgramBudget:
    """The program text the rules read in one pod: each program up to MAX_PROGRAM_CHARS, all
    together up to MAX_POD_PROGRAM_CHARS, so that a pod of many long programs costs a
    bounded time."""

    def __init__(self) -> None:
        self._left = MAX_POD_PROGRAM_CHARS

    def take(self, length: int) -> bool:
        """Whether a program of ``length`` characters may be read (and then counts)."""
        if length > min(self._left, MAX_PROGRAM_CHARS):
            return False
        self._left -= length
        return True


def managed_env_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each managed variable as the env entry that pods should carry, in the order added."""
    entries: dict[str, dict[str, Any]] = {
        name: {"name": name, "value": value} for name, value in settings.env
    }
    credentials = settings.credentials
    if credentials.mode is CredentialMode.SECRET_KEY_REF:
        for name, key in (
            (ACCESS_KEY_ENV, credentials.access_key_id_key),
            (SECRET_KEY_ENV, credentials.secret_access_key_key),
        ):
            entries[name] = {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": credentials.secret_name, "key": key}},
            }
    elif credentials.mode is CredentialMode.VALUE:
        entries[ACCESS_KEY_ENV] = {"name": ACCESS_KEY_ENV, "value": credentials.access_key_id}
        entries[SECRET_KEY_ENV] = {"name": SECRET_KEY_ENV, "value": credentials.secret_access_key}
    return entries


def _opt_out_reason(metadata: Mapping[str, Any]) -> str | None:
    for where in ("annotations", "labels"):
        values = _optional_mapping(metadata, where, f"metadata/{where}")
        value = values.get(INJECT_KEY)
        if isinstance(value, str) and value.strip().lower() in OPT_OUT_VALUES:
            return f"{where[:-1]} {INJECT_KEY}={value}"
    return None


def _check_container_count(count: int) -> None:
    if count > MAX_CONTAINERS:
        raise PodShapeError(
            f"the pod has {count} containers; the rules read pods of at most {MAX_CONTAINERS}"
        )


def _waited(
    earlier: Mapping[str, list[str]],
    leaving: list[bool],
    readings: list[tuple[str, list[str], dict[str, str], ProgramReading]],
) -> bool:
    """Whether the pod waited for a managed service (now, or before an earlier pass removed
    the waiter): then every container of it uses the backend."""
    return bool(earlier["removed"] or earlier["rewritten"]) or any(leaving) or any(
        reading.managed for _, _, _, reading in readings
    )


def _record_status(
    metadata: Mapping[str, Any],
    has_metadata: bool,
    earlier: Mapping[str, list[str]],
    mutation: Mutation,
) -> None:
    """Add or merge the status annotation: names of what was done, never values."""
    operation = status_operation(metadata, has_metadata, earlier, removed=mutation.removed,
                                 rewritten=mutation.rewritten, env=mutation.env,
                                 aliased=mutation.aliased)
    if operation is not None:
        mutation.operations.append(operation)


def _optional_mapping(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PodShapeError(f"{where} is not a mapping")
    return value


def _container_list(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodShapeError(f"spec/{key} is not a list")
    for index, container in enumerate(value):
        if not isinstance(container, dict):
            raise PodShapeError(f"spec/{key}/{index} is not a mapping")
        _name_of(container, f"spec/{key}/{index}")
    return value


def _name_of(container: Mapping[str, Any], path: str) -> str:
    name = container.get("name")
    if not isinstance(name, str) or not name:
        raise PodShapeError(f"{path} has no name")
    return name


def _remove_duplicates(
    env: list[Any], duplicates: list[int], path: str, mutation: Mutation, changed: list[str]
) -> None:
    """The env entries at ``duplicates`` removed, from the back so each index stays valid."""
    mutation.operations.extend(
        {"op": "remove", "path": f"{path}/env/{index}"} for index in reversed(duplicates)
    )
    changed.extend(env[index]["name"] for index in duplicates)


def _env_list(container: Mapping[str, Any], path: str) -> list[Any]:
    env = container.get("env")
    if env is None:
        return []
    if not isinstance(env, list):
        raise PodShapeError(f"{path}/env is not a list")
    return env


def _program_of(container: Mapping[str, Any], path: str) -> list[str]:
    return _string_list(container, "command", path) + _string_list(container, "args", path)


def _literal_values(entries: list[Any]) -> list[str]:
    """The literal values of env entries (any shape: the env is checked where it is set)."""
    return [e["value"] for e in entries if isinstance(e, dict) and isinstance(e.get("value"), str)]


def _literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's variables that have a literal value (the last of duplicates wins, as
    in Kubernetes): what `$(NAME)` and `$NAME` in its program resolve to."""
    env = container.get("env")
    if not isinstance(env, list):
        return {}
    return {
        entry["name"]: entry["value"] for entry in env
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
        and isinstance(entry.get("value"), str)
    }


def _string_list(container: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PodShapeError(f"{path}/{key} is not a list of strings")
    return value


# STATUS_KEY and STATUS_LISTS live in ``status``; they are named here too, beside INJECT_KEY,
# for the wings that read the pod's keys.
__all__ = [
    "INJECT_KEY",
    "MAX_CONTAINERS",
    "MAX_POD_PROGRAM_CHARS",
    "OPT_OUT_VALUES",
    "STATUS_KEY",
    "STATUS_LISTS",
    "Mutation",
    "Operation",
    "PodShapeError",
    "Rules",
    "managed_env_entries",
]
