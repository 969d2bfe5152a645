"""The e2e harness: what the tests beside this folder stand on.

- ``controlplane``: etcd, kube-apiserver and kube-controller-manager built from the Kubernetes Go
  modules and run on loopback;
- ``node``: a real node beside them (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS);
- ``webhook_host``: the webhook as a host of its own in a network namespace;
- ``backend``: a real MLflow and S3 server as the external backend;
- ``images``, ``oci``: the images the node runs, built without a registry;
- ``buildcache``, ``kubectl``: the build cache under ``~/.cache/backend-injector``, and kubectl.
"""
