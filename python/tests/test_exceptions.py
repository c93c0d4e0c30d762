"""The CompoxError family and failure payloads (runtime.md §8.6)."""

from __future__ import annotations

import pytest

from compox import exceptions as ex


@pytest.mark.parametrize(
    "cls, code, status",
    [
        (ex.CompoxError, "compox_error", 500),
        (ex.CompoxClientError, "client_error", 400),
        (ex.CompoxValidationError, "validation_error", 400),
        (ex.CompoxNotFoundError, "not_found", 404),
        (ex.CompoxConflictError, "conflict", 409),
        (ex.CompoxConfigurationError, "configuration_error", 500),
        (ex.CompoxTaskError, "task_error", 500),
        (ex.CompoxAlgorithmError, "algorithm_error", 500),
        (ex.CompoxDeploymentError, "deployment_error", 500),
        (ex.CompoxAssetError, "asset_error", 500),
        (ex.CompoxFileError, "file_error", 500),
        (ex.CompoxCheckpointError, "checkpoint_error", 500),
        (ex.CompoxImportError, "import_error", 500),
        (ex.CompoxBundleError, "bundle_error", 500),
        (ex.CompoxTrainingError, "training_error", 500),
        (ex.CompoxExecutionError, "execution_error", 500),
        (ex.CompoxStateError, "state_error", 500),
        (ex.TaskStoppedException, "task_stopped", 409),
    ],
)
def test_defaults(cls, code, status):
    error = cls("m")
    assert (error.code, error.http_status, error.retryable) == (code, status, False)
    assert isinstance(error, ex.CompoxError) and isinstance(error, Exception)


def test_stop_exception_defaults():
    error = ex.TaskStoppedException()
    assert str(error) == "Task has been stopped." and isinstance(error, ex.CompoxTaskError)


def test_compox_payload_with_cause_and_json_safe_details():
    error = ex.CompoxAssetError(
        "Failed", code="asset_fetch_failed", retryable=True,
        details={"ids": ("a", "b"), 3: {1, }, "obj": object, "n": None},
        cause=OSError("disk"),
    )
    payload = ex.error_failure_payload(error)
    assert payload == {
        "type": "CompoxAssetError", "message": "Failed", "code": "asset_fetch_failed",
        "details": {"ids": ["a", "b"], "3": [1], "obj": repr(object), "n": None},
        "retryable": True, "http_status": 500,
        "cause": {"type": "OSError", "message": "disk"},
    }


def test_plain_and_string_payloads():
    assert ex.error_failure_payload(ValueError("v")) == {"type": "ValueError", "message": "v", "code": "ValueError"}
    assert ex.error_failure_payload("s") == {"type": "error", "message": "s", "code": "error"}
