"""The local technician dashboard and its JSON API (Flask).

The runtime starts it next to the appliance::

    from web.app import create_app
    from web.server import serve
    handle = serve(create_app(appliance, store_path), cfg.web.host, cfg.web.port)
    ...
    handle.stop()

Everything the page needs ships in this package (no CDN, no build step), so the
dashboard works on a gateway that never sees the internet. This file imports
nothing, so reading ``web.config`` (the ``[web]`` section) does not load Flask.
"""
