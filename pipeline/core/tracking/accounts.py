"""Accounts on a server started by ``pipeline.tracking_server`` (MLflow's basic-auth app)."""

from __future__ import annotations

import contextlib
import logging

from pipeline.core.errors import TrackingError
from pipeline.core.tracking.store import connect, error_line

log = logging.getLogger(__name__)


def add_user(
    username: str, password: str, permission: str, *, experiment: str, model_name: str
) -> None:
    """Create an account (or keep the existing one) with ``permission`` (READ, EDIT or
    MANAGE) on the experiment and the registered model; the caller must be an admin."""
    import mlflow
    from mlflow.server import get_app_client

    experiment_id = connect(experiment)  # created by the admin if it does not exist yet
    client = get_app_client("basic-auth", tracking_uri=mlflow.get_tracking_uri())
    try:
        try:
            client.create_user(username, password)
            log.info("created user %s", username)
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            log.info("user %s exists; setting its permission", username)
        # Granted on the model's name, so it holds for the model registered later, too.
        for kind, resource in (("experiment", experiment_id), ("registered_model", model_name)):
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.revoke_user_permission(username, kind, resource)  # none yet: fine
            client.grant_user_permission(username, kind, resource, permission)
            log.info("%s: %s on %s %s", username, permission, kind, resource)
    except mlflow.exceptions.MlflowException as e:
        if "users/create failed with error code 404" in str(e):  # no basic-auth app there
            raise TrackingError(
                f"cannot set up user {username}: the tracking server has no accounts "
                "(start it with python -m pipeline.tracking_server)"
            ) from None
        raise TrackingError(f"cannot set up user {username}: {error_line(e)}") from None
