"""Accounts against a real `mlflow server`: one without MLflow's basic-auth app has no
accounts to set up, and says so in one line."""

import mlflow
import pytest

from pipeline.core import tracking
from pipeline.core.errors import TrackingError
from pipeline.testing.project import tracking_server

pytestmark = pytest.mark.slow


@pytest.fixture
def server_uri(tmp_path, monkeypatch):
    server = tracking_server(tmp_path)
    with server:
        # set first, so monkeypatch restores what mlflow.set_tracking_uri exports
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        yield server.uri
        mlflow.set_tracking_uri(None)


def test_add_user_on_a_server_without_accounts_fails_in_one_line(server_uri):
    with pytest.raises(TrackingError) as e:
        tracking.add_user("u", "pw-12345678", "READ", experiment="exp", model_name="m")
    message = str(e.value)
    assert message.startswith("cannot set up user u: "), message
    assert "\n" not in message
    assert "pw-12345678" not in message
    # the server has no users/create endpoint (HTTP 404): said as what it means
    expected = (
        "the tracking server has no accounts (start it with python -m pipeline.tracking_server)"
    )
    assert expected in message, message
    # connect() ran first: the experiment exists, the server itself worked
    assert mlflow.MlflowClient(tracking_uri=server_uri).get_experiment_by_name("exp")
