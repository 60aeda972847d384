"""The local technician dashboard and its JSON API (Flask).

The runtime starts it next to the appliance (``appliance.runtime.start_web``)::

    from web.app import create_app
    from web.server import serve
    app = create_app(appliance, store_path, config=cfg.web, data_dir=cfg.path("."))
    handle = serve(app, cfg.web.host, cfg.web.port)   # waitress, on its own threads
    ...
    handle.stop()

Nobody gets in without an account (``appliance user add``); see :mod:`web.auth`
for sessions, roles, CSRF and the Host check, :mod:`web.api` for who may call what.

Everything the page needs ships in this package (no CDN, no build step), so the
dashboard works on a gateway that never sees the internet. This file imports
nothing, so reading ``web.config`` (the ``[web]`` section) does not load Flask.
"""
