"""The rules: a pod (a plain dict) and the settings in, the patch operations out. Pure: no I/O,
no HTTP, no logging of values.

A *probe*, here, is a command in an init container's program that checks whether a host
answers (``nc -z mlflow 5000``, ``wget``, ``pg_isready``, a wait tool).

- ``grammar``: the words, host forms and separators of a waiter's program, one list read by
  the webhook and compiled into the native policy;
- ``programs``: `ProgramReader`, the reading of an init container's program: which managed
  hosts it probes, whether it does anything else, and its probes retargeted. It reads
  through ``segments`` (the program cut into simple commands), ``variables`` (references
  resolved from the container's literal env), ``commands`` (what each simple command does),
  ``hosts`` (managed host names found and retargeted, in probes and env values) and
  ``cache`` (readings remembered by program, bounded by bytes);
- ``mutate``: `Rules`, which decides what happens to each init container and env entry and
  writes the JSON Patch operations;
- ``status``: the status annotation, the names of what was done, read back and merged.

Contract: rules import only ``webhook.settings``. Serving, the policy twin and the offline
``inject`` call them; they call nothing back.
"""
