"""The e2e harness: what the tests beside this folder stand on.

- ``controlplane``: etcd, kube-apiserver and kube-controller-manager built from the Kubernetes Go
  modules and run on loopback; ``pki`` its certificates and kubeconfigs, ``processes`` how every
  harness process is started, waited on and stopped;
- ``node``: a real node beside them (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS), one
  part per module; ``node_host`` the machine-level pieces it and its tests use;
- ``webhook_host``: the webhook as a host of its own in a network namespace;
- ``host_lock``: the machine-wide locks that keep two sessions off the node's and the webhook
  host's fixed names;
- ``backend``: a real MLflow and S3 server as the external backend;
- ``images`` (what to build), ``buildah`` (building and packing), ``oci``: the images the node
  runs, built without a registry;
- ``buildcache``, ``kubectl``: the build cache under ``~/.cache/backend-injector``, and kubectl.
"""
