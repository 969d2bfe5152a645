"""The commands that talk to a live cluster.

- ``client``: the one API client (`Cluster`, its protocol, `connected`) and its errors;
- ``install``: the CA bundle into the live MutatingWebhookConfiguration;
- ``dev``: the webhook on this machine, registered by URL while it runs; owns that registration
  (`DevRegistration`: who made it, and whether it is still live);
- ``doctor``: the checks that say whether pods of a namespace will be changed, and what to fix,
  with what they read beside it: ``checks`` (a check's verdict, one printed line), ``served``
  (the certificate and /metrics the webhook serves), ``endpoints`` (the webhook Service's ready
  endpoints and pods), ``pods`` (the pods dry-run) and ``selectors`` (label selectors);
- ``stuck``: the pods waiting in Init that the webhook never changed, and their owners (doctor
  names them); ``restart``: those pods created anew, one step per owner.

Contract: only this wing talks to the Kubernetes API. It may use serving (``dev`` runs the
server) and the rules (their keys; ``stuck`` asks them which pods the webhook would change);
nothing outside the CLI imports it.
"""
