"""The operator console: dashboard, JSON API (``/api/v1``), probes and metrics over HTTP.

=============  ==============================================================================
``app``        the ASGI app: routers, error pages, security headers
``context``    :class:`Console`, what the node hands in (config, ledger, status and probes)
``auth``       API tokens, browser sessions, and the checks the routers depend on
``public``     ``/healthz``, ``/readyz``, ``/metrics``, ``/login``: the only open routes
``api``        ``/api/v1`` (and ``/status``): JSON documents from ``views``
``pages``      the HTML pages (Jinja2 templates in ``templates/``), plain forms, no script
``views``      the read model: worklist, study, series, problems
``actions``    retrying dead deliveries and drawing key images, audited
``keyimage``   the key image rendered from the SEG and its source slice
``identifiers`` accession number and patient identifiers, read from the spool when shown
``health``     readiness: ledger, queue and model
``server``     uvicorn on a thread of the node process
=============  ==============================================================================
"""
