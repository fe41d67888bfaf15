"""`pcam-jax label`: the local labelling page, served by Flask.

Why Flask: the page needs a handful of JSON and PNG routes for one clinician on one machine, no
async, no database. Flask (Pallets) is the best-kept small Python web library, its server
(Werkzeug) is already installed with TensorBoard, and its static-file route refuses paths that
leave its folder. The page itself is plain HTML + JavaScript in ``static/`` (no build step, no
network: nothing is fetched from a CDN).

Routes (``index`` is the image's position in the list; no route takes a file path, so only the
listed images can be read):

    GET /                          the page (static/label.html)
    GET /api/state                 {items: [{index, path, height, width, status, shapes}], progress, suggestion}
    GET /image/<index>.png         the image as the model reads it (`pcam_jax.labelling.images`)
    GET /suggestion/<index>.png    the run's map over it, RGBA (404 without --workdir)
    PUT /api/labels/<index>        {status, shapes}: saved at once (`pcam_jax.labelling.store`); 400 + {error}
"""

from __future__ import annotations

import pathlib
import threading

import flask
import numpy as np

STATIC = pathlib.Path(__file__).resolve().parent / "static"


def create_app(store, images, *, suggest=None, method: str | None = None) -> flask.Flask:
    """The Flask app over a `store.LabelStore` and an image source (`images.DatasetImages` or
    `images.FileImages`). ``suggest(pixels uint8 (H, W)) -> map (H, W) in [0, 1]`` draws the
    model's suggestion (None: no suggestion)."""
    from pcam_jax.labelling.images import suggestion_png

    app = flask.Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.json.sort_keys = False
    cache, cache_lock = {}, threading.Lock()

    def item(index: int) -> dict:
        if not 0 <= index < len(store.items):
            flask.abort(404)
        return store.items[index]

    @app.get("/")
    def page():
        return flask.send_from_directory(STATIC, "label.html")

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.get("/api/state")
    def state():
        return {"items": [dict(index=i, **it) for i, it in enumerate(store.items)], "progress": store.progress(),
                "suggestion": suggest is not None, "method": method, "file": str(store.path)}

    @app.get("/image/<int:index>.png")
    def image(index: int):
        return flask.Response(images.png(item(index)["path"]), mimetype="image/png",
                              headers={"Cache-Control": "no-store"})

    @app.get("/suggestion/<int:index>.png")
    def suggestion(index: int):
        path = item(index)["path"]
        if suggest is None:
            flask.abort(404)
        with cache_lock:  # one map at a time: the model runs on this process's devices
            if path not in cache:
                cache[path] = suggestion_png(suggest(images.pixels(path)))
        return flask.Response(cache[path], mimetype="image/png")

    @app.put("/api/labels/<int:index>")
    def put_labels(index: int):
        item(index)
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("shapes", []), list):
            return {"error": "send JSON {status, shapes: [...]}"}, 400
        try:
            saved = store.set(index, body.get("status"), body.get("shapes", []))
        except ValueError as error:
            return {"error": str(error)}, 400
        return {"item": dict(index=index, **saved), "progress": store.progress()}

    return app


def run_suggester(run, method: str):
    """``suggest(pixels uint8 (H, W)) -> (H, W)`` in [0, 1]: ``run.maps`` (the public map API) for ``method``."""
    def suggest(pixels: np.ndarray) -> np.ndarray:
        return run.maps(np.asarray(pixels, np.float32) / 255.0, method=method)[0]
    return suggest


def serve(app, host: str, port: int, *, on_ready=None) -> None:
    """Serve ``app`` until Ctrl-C / SIGTERM; ``on_ready(url)`` once the socket listens."""
    import logging
    import signal

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on the console
    server = make_server(host, port, app, threaded=True)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}/"
    main = threading.current_thread() is threading.main_thread()  # signals are for the main thread only
    previous = (signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
                if main else None)
    try:
        if on_ready:
            on_ready(url)
        server.serve_forever()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
