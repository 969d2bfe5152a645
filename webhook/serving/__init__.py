"""Serving: the webhook as an HTTPS server for the kube-apiserver.

- ``server``: ``serve``: the listening socket, the workers, the certificate watcher;
- ``app``: the ASGI app (``/mutate``, ``/healthz``, ``/readyz``, ``/metrics``);
- ``admission``: the AdmissionReview envelope: read it, call the rules, answer with the uid;
- ``review_cache``, ``offload``: answers kept for bodies seen before, and big reviews answered
  in a review process of their own;
- ``connections``, ``coalescing``, ``tls``, ``certificate_reload``, ``workers``: the
  transport, its bounds, TLS and the worker processes;
- ``metrics``, ``logs``: the Prometheus exposition and the JSON log lines;
- ``reachability``: whether the external backend answers a TCP connect from where the
  webhook runs (the ``backend_injector_external_*`` metrics, read by ``doctor`` too).

Contract: serving imports rules, settings and ``webhook.certs``; it never imports the cluster
wing, the policy twin or the CLI.
"""
