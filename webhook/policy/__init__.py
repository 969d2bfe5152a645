"""The native twin: a MutatingAdmissionPolicy and its binding that make the same changes as
the webhook, written in CEL, for clusters that run policies instead of webhooks.

- ``objects``: the two objects and the ``policy`` command's output;
- ``mutation``: the policy's variables, its JSON Patch and its match condition;
- ``init_programs``: per init container, what its program does, whether it goes, its retarget;
- ``program``, ``env``, ``operations``: how a program is read, how env is set, the patch's lines;
- ``regex``: the RE2 twins of the rules' regular expressions;
- ``cel``, ``layout``: a typed builder for CEL expressions, and their layout on lines.

Contract: the policy reads the rules' grammar and the settings; it never imports serving.
"""
