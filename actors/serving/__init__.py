"""Ray Serve: the policy and the identifiers as deployments behind one HTTP ingress.

``deployments`` (the model replicas), ``guard`` (API key, body size, timeout), ``errors`` (422/503,
OpenAI's error shape), ``streaming`` (the chat stream), ``api`` (the ingress and its routes), ``app``
(Serve options, ``build_app``, ``start_serve``). Request schemas and the page live in ``pipeline.serving``.
"""
