"""Ray Serve: the policy and the identifiers as deployments behind one HTTP ingress.

Imports ``actors.cluster`` and ``pipeline`` (the request schemas, chat templating and the page live
in ``pipeline.serving``).
"""
