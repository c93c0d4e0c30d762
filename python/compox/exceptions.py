"""The ``CompoxError`` family and the failure payload stored in task records.

Every error the framework raises on purpose is a :class:`CompoxError` carrying a stable
``code``, an HTTP status the server would answer with, a retry hint and JSON-safe
``details``. :func:`error_failure_payload` turns any exception (or a plain message) into the
``error`` object written into a FAILED record (``runtime.md`` section 8.6).
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class CompoxError(Exception):
    """Base of all compox errors; subclasses only change the defaults."""

    default_code: str = "compox_error"
    default_http_status: int = 500
    default_retryable: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[str] = None,
        http_status: Optional[int] = None,
        retryable: Optional[bool] = None,
        details: Optional[Dict[str, Any]] = None,
        cause: Optional[BaseException] = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: str = code if code is not None else self.default_code
        self.http_status: int = (
            http_status if http_status is not None else self.default_http_status
        )
        self.retryable: bool = retryable if retryable is not None else self.default_retryable
        self.details: Optional[Dict[str, Any]] = details
        self.cause: Optional[BaseException] = cause

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-safe description used in failure payloads."""
        return error_failure_payload(self)


class CompoxClientError(CompoxError):
    default_code = "client_error"
    default_http_status = 400


class CompoxValidationError(CompoxClientError):
    default_code = "validation_error"
    default_http_status = 400


class CompoxNotFoundError(CompoxClientError):
    default_code = "not_found"
    default_http_status = 404


class CompoxConflictError(CompoxClientError):
    default_code = "conflict"
    default_http_status = 409


class CompoxConfigurationError(CompoxError):
    default_code = "configuration_error"


class CompoxTaskError(CompoxError):
    default_code = "task_error"


class CompoxAlgorithmError(CompoxError):
    default_code = "algorithm_error"


class CompoxDeploymentError(CompoxError):
    default_code = "deployment_error"


class CompoxAssetError(CompoxError):
    default_code = "asset_error"


class CompoxFileError(CompoxError):
    default_code = "file_error"


class CompoxCheckpointError(CompoxError):
    default_code = "checkpoint_error"


class CompoxImportError(CompoxError):
    default_code = "import_error"


class CompoxBundleError(CompoxError):
    default_code = "bundle_error"


class CompoxTrainingError(CompoxError):
    default_code = "training_error"


class CompoxExecutionError(CompoxError):
    default_code = "execution_error"


class CompoxStateError(CompoxError):
    default_code = "state_error"


class TaskStoppedException(CompoxTaskError):
    """Raised out of the record write that noticed a stop request.

    It derives from ``Exception`` like every compox error, so algorithm code can catch it; the
    handler therefore raises it again on every later record write (see ``TaskHandler``).
    """

    default_code = "task_stopped"
    default_http_status = 409
    default_retryable = False

    def __init__(self, message: str = "Task has been stopped.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


def json_safe(value: Any) -> Any:
    """Convert ``value`` into something ``json.dumps`` accepts, using ``repr`` as last resort."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return repr(value)


def _cause_of(error: BaseException) -> Optional[BaseException]:
    if isinstance(error, CompoxError) and error.cause is not None:
        return error.cause
    if isinstance(error, CompoxError):
        return None
    return error.__cause__


def error_failure_payload(error: Any) -> Dict[str, Any]:
    """Build the ``error`` field of a FAILED record from an exception or a message."""
    if isinstance(error, str):
        return {"type": "error", "message": error, "code": "error"}

    if isinstance(error, CompoxError):
        payload: Dict[str, Any] = {
            "type": type(error).__name__,
            "message": error.message,
            "code": error.code,
            "details": json_safe(error.details),
            "retryable": error.retryable,
            "http_status": error.http_status,
        }
    else:
        payload = {
            "type": type(error).__name__,
            "message": str(error),
            "code": type(error).__name__,
        }

    cause = _cause_of(error)
    if cause is not None:
        payload["cause"] = {"type": type(cause).__name__, "message": str(cause)}
    return payload


__all__ = [
    "CompoxError",
    "CompoxClientError",
    "CompoxValidationError",
    "CompoxNotFoundError",
    "CompoxConflictError",
    "CompoxConfigurationError",
    "CompoxTaskError",
    "CompoxAlgorithmError",
    "CompoxDeploymentError",
    "CompoxAssetError",
    "CompoxFileError",
    "CompoxCheckpointError",
    "CompoxImportError",
    "CompoxBundleError",
    "CompoxTrainingError",
    "CompoxExecutionError",
    "CompoxStateError",
    "TaskStoppedException",
    "error_failure_payload",
    "json_safe",
]
