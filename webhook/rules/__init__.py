"""The rules: a pod (a plain dict) and the settings in, the patch operations out. Pure: no I/O,
no HTTP, no logging of values.

A *probe*, here, is a command in an init container's program that checks whether a host
answers (``nc -z mlflow 5000``, ``wget``, ``pg_isready``, a wait tool).

- ``grammar``: the words, host forms and separators of a waiter's program, one list read by
  the webhook and compiled, as far as CEL can follow it, into the native policy;
- ``programs``: `ProgramReader`, the reading of a container's program: which managed hosts it
  probes, whether it does anything else, and its probes (and the URLs of its work)
  retargeted. It reads through ``shell`` (a script parsed as shell, its commands in run
  order with their words resolved), ``segments`` (a command cut where a wait tool runs one of
  its own; the exec form), ``variables`` (the kubelet's `$(NAME)`), ``commands`` (what each
  simple command does), ``hosts`` and ``urls`` (managed host names and URL authorities found
  and retargeted, in probes, work and env values) and ``cache`` (readings remembered by
  program, bounded by bytes);
- ``mutate``: `Rules`, which decides what happens to each init container and env entry and
  writes the JSON Patch operations;
- ``host_aliases``: the safety net, ``spec.hostAliases`` entries that point the managed names
  at the external IPs, for the waiters no reader understands;
- ``status``: the status annotation, the names of what was done, read back and merged.

Contract: rules import only ``webhook.settings``. Serving, the policy twin and the offline
``inject`` call them; they call nothing back.
"""
