"""Where runs go: the default store resolves to the main workspace, also from DVC's copies."""

from pathlib import Path

from pipeline.core.tracking import connect, tracking_uri


def test_default_uri_is_sqlite_at_the_root_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri(env={})
    assert uri.startswith(f"sqlite:///{Path(tmp_path).resolve() / 'mlflow.db'}")
    assert "timeout=" in uri  # wait for a concurrent writer instead of "database is locked"
    assert tracking_uri(env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == (
        "http://127.0.0.1:5000"
    )


def test_connect_marks_new_and_existing_experiments_as_model_training(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(env={}))
    old = client.create_experiment("made-before-the-tag")  # a store from an older version
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags

    assert connect("made-before-the-tag") == old
    new = connect("brand-new")
    for exp_id in (old, new):
        tags = client.get_experiment(exp_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_store_label_is_the_same_on_every_checkout_and_hides_credentials(tmp_path, monkeypatch):
    from pipeline.core.tracking import store_label

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_label() == "the local store mlflow.db"
    assert store_label("http://bob:pw@team:5000") == "http://***@team:5000"
    assert store_label("sqlite:////srv/x.db?timeout=60") == "sqlite:////srv/x.db"


def test_the_probe_signs_in_with_the_uris_decoded_credentials_as_mlflow_does(monkeypatch):
    """``http://al%40ce:p%40ss@host``: the probe sends ``al@ce:p@ss``, as requests does."""
    import base64
    import http.server
    import threading

    from pipeline.core.tracking import store

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)  # a server without accounts
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        store._probe(f"http://al%40ce:p%40ss@127.0.0.1:{server.server_port}")
    finally:
        server.server_close()
    assert seen == ["Basic " + base64.b64encode(b"al@ce:p@ss").decode()]
    assert store.username("http://al%40ce:x@h") == "al@ce"
