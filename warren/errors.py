"""warren's one exception hierarchy.

Every failure a client, an operator or a worker can cause is one of these classes. Each dialect maps
the tree once, at its boundary (``warren/api/errors.py``), to its own error body; the CLI maps it to
``error: …`` + a hint + exit status 2. Nothing else turns exceptions into responses.

::

    WarrenError                      status  meaning
    ├── InvalidRequest                 400   a request field is wrong (range, type, grammar …)
    │   ├── PromptTooLong              400   the prompt does not fit the context window
    │   ├── GrammarRejected            400   a grammar or JSON schema llama.cpp must not be given
    │   ├── RequestRefused             400   this exact request crashed a worker before
    │   ├── RequestTimeout             408   the client sent its body too slowly
    │   └── BodyTooLarge               413   the body is over the request-size limit
    ├── Unauthorized                   401   missing or wrong Bearer key
    ├── Forbidden                      403   the key does not allow it, or a browser's cross-site request
    ├── NotFound                       404   unknown route or resource
    │   ├── ModelNotFound              404   no catalog entry with that name
    │   └── MethodNotAllowed           405   the route exists, not with this method
    ├── HandleGone                     410   the instance a handle named was unloaded
    ├── ClientGone                     499   the client disconnected; its work was cancelled (nobody reads this)
    ├── Busy                           503   the model's queue is full, or no room came free in time
    │   └── ServerStopping             503   the server is shutting down (SIGTERM)
    ├── DoesNotFit                     507   the model alone needs more than the memory budget
    ├── Quarantined                    503   the model failed to load or crash-looped; fix it first
    ├── ConfigError                    400   a flag, config file or model file breaks a rule (CLI: exit 2)
    │   └── ModelFileError             400   the GGUF file itself is missing, unreadable or malformed
    └── WorkerError                    503   the worker process could not serve
        ├── WorkerClosed               503   we stopped it (unload, swap, shutdown): retry is fine
        ├── WorkerCrashed              502   it died under us (signal or exit code)
        ├── WorkerLoadFailed           502   it could not load the model
        ├── WorkerNotPlaced            503   no node took the worker (a cluster's node left, or had no room)
        └── RequestNotStarted          503   the worker a request queued for died before the request
                                             reached it: nothing ran, so it is safe to serve it again

Errors cross the worker boundary as tagged frames (``to_wire`` / ``from_wire``). The registry that
rebuilds them is derived from the subclasses themselves, so adding a class needs no table edit.
"""

from __future__ import annotations

import signal as _signal
from typing import Any, ClassVar


class WarrenError(Exception):
    """Base of every error warren raises on purpose.

    ``message`` is safe to show to a client: it names what went wrong and, where it helps, what to do.
    ``hint`` is a second line for humans (CLI and logs).
    """

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    _registry: ClassVar[dict[str, type[WarrenError]]] = {}

    def __init__(self, message: str, *, hint: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        WarrenError._registry[cls.__name__] = cls

    def to_wire(self) -> dict[str, Any]:
        """The error as a plain dict for an IPC frame."""
        return {"kind": type(self).__name__, "message": self.message, "hint": self.hint, "details": self.details}

    @staticmethod
    def from_wire(data: dict[str, Any]) -> WarrenError:
        """Rebuild an error sent by ``to_wire``; an unknown kind becomes a plain ``WarrenError``."""
        cls = WarrenError._registry.get(str(data.get("kind")), WarrenError)
        err = cls.__new__(cls)
        WarrenError.__init__(err, str(data.get("message", "")), hint=str(data.get("hint", "")),
                             **dict(data.get("details") or {}))
        return err


class InvalidRequest(WarrenError):
    http_status = 400
    code = "invalid_request"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class GrammarRejected(InvalidRequest):
    """A grammar or JSON schema that is malformed, or that could crash, hang or stall llama.cpp
    (``warren/grammar``). ``details["param"]`` names the request field it came from."""

    code = "invalid_grammar"


class RequestRefused(InvalidRequest):
    """The same request (by content fingerprint, ``warren/pool/culprits.py``) crashed this model's
    worker earlier; it is refused instead of being allowed to crash it again."""

    code = "request_refused"


class RequestTimeout(InvalidRequest):
    http_status = 408
    code = "request_timeout"


class BodyTooLarge(InvalidRequest):
    http_status = 413
    code = "payload_too_large"


class Unauthorized(WarrenError):
    http_status = 401
    code = "unauthorized"


class Forbidden(WarrenError):
    http_status = 403
    code = "forbidden"


class NotFound(WarrenError):
    http_status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(NotFound):
    http_status = 405
    code = "method_not_allowed"


class HandleGone(WarrenError):
    http_status = 410
    code = "handle_gone"


class Busy(WarrenError):
    """The model's queue is full. ``retry_after`` (seconds) becomes the Retry-After header."""

    http_status = 503
    code = "busy"

    def __init__(self, message: str = "Server is busy; please try again later.", *, retry_after: int = 1,
                 **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)

    @property
    def retry_after(self) -> int:
        return int(self.details.get("retry_after", 1))


class ServerStopping(Busy):
    """The server is shutting down: queued requests end at once, running ones when the grace runs out."""

    code = "shutting_down"

    def __init__(self, message: str = "the server is shutting down", **details: Any) -> None:
        super().__init__(message, retry_after=5, **details)


class ClientGone(WarrenError):
    """The client disconnected before its answer was ready; its work was cancelled. The status is nginx's
    "client closed request": nobody is left to read it, and it is not a server error."""

    http_status = 499
    code = "client_gone"


class DoesNotFit(WarrenError):
    http_status = 507
    code = "does_not_fit_budget"


class Quarantined(WarrenError):
    http_status = 503
    code = "model_quarantined"


class ConfigError(WarrenError):
    """A start-up or load-time rule was broken. The CLI prints it and exits 2; the API answers 4xx."""

    http_status = 400
    code = "invalid_config"


class ModelFileError(ConfigError):
    code = "invalid_model_file"


class WorkerError(WarrenError):
    http_status = 503
    code = "worker_unavailable"


class WorkerClosed(WorkerError):
    """We stopped the worker on purpose (unload, swap, shutdown); a retry will get a fresh one."""

    code = "worker_closed"


class WorkerCrashed(WorkerError):
    """The worker died under us. ``describe_exit`` words the exit the same way everywhere."""

    http_status = 502
    code = "worker_crashed"


class WorkerLoadFailed(WorkerError):
    http_status = 502
    code = "worker_load_failed"


class WorkerNotPlaced(WorkerError):
    """A placing launcher (Ray) could not start the worker on the node the pool chose: the node left, or
    the cluster would not place it in time. Nothing about the model: no quarantine; the next request places
    it again."""

    http_status = 503
    code = "worker_not_placed"


class RequestNotStarted(WorkerError):
    """The worker this request waited for died (crashed, killed as frozen or hung) before the request
    was sent to it. Unlike ``WorkerCrashed`` for the request that was running, nothing of this
    one ran, so acquiring the model again — a replacement worker — and starting it there is safe; the
    pool does that once (``warren/pool/retry.py``). ``cause`` is the worker's own exit error."""

    code = "request_not_started"
    cause: WarrenError | None = None

    def __init__(self, message: str, *, cause: WarrenError | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.cause = cause


ENGINE_REBUILD = "./dev.sh rebuild-engine"
# Signals that mean the engine itself cannot run here, whatever the request: the worker is not restarted.
UNRUNNABLE_SIGNALS = {int(_signal.SIGILL): "the llama.cpp build uses CPU instructions this machine cannot run; "
                                           f"rebuild it with {ENGINE_REBUILD}",
                      int(_signal.SIGBUS): "a bus error: the model file was truncated or replaced while mapped, "
                                           "or the llama.cpp build cannot run on this machine (rebuild it with "
                                           f"{ENGINE_REBUILD})"}


def unrunnable_cause(returncode: int | None) -> str:
    """The likely cause when a process died of a signal that no request can provoke (SIGILL, SIGBUS):
    the engine cannot run on this machine. Empty for any other exit."""
    if returncode is None or returncode >= 0:
        return ""
    return UNRUNNABLE_SIGNALS.get(-returncode, "")


def describe_exit(returncode: int | None) -> str:
    """Word a process exit for humans: ``killed by SIGKILL`` or ``exited with status 3``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = _signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"
