"""The rules: a pod (a plain dict) and the settings in, the patch operations out. Pure: no I/O,
no HTTP, no logging of values.

- ``grammar``: the words, host forms and separators of a waiter's program, one list read by
  the webhook and compiled into the native policy;
- ``programs``: the reading of an init container's program: which managed hosts it probes, whether
  it does anything else, and its probes retargeted;
- ``mutate``: `Rules`, which decides what happens to each init container and env entry and
  writes the JSON Patch operations and the status annotation.

Contract: rules import only ``webhook.settings``. Serving, the policy twin and the offline
``inject`` call them; they call nothing back.
"""
