"""The one error a request can cause: an HTTP status, the request field at fault, and a message naming it."""

from __future__ import annotations

from r3v_ray.serving.schemas import ErrorDetail, ErrorResponse


class RequestError(ValueError):
    """A bad request. `param` is the field at fault (dotted, e.g. `sampling.top_p` or `messages[0].content`)."""

    def __init__(self, param: str | None, message: str, status: int = 400, code: str = "invalid_request"):
        self.param, self.message, self.status, self.code = param, message, status, code
        super().__init__(f"{param}: {message}" if param else message)

    def __reduce__(self):  # pickled whole (Ray moves exceptions between processes), not from the one message
        return (type(self), (self.param, self.message, self.status, self.code))

    def body(self) -> dict:
        """The OpenAI error shape, so the `openai` client raises its usual exception with this message."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return ErrorResponse(error=ErrorDetail(message=str(self), type=kind, param=self.param, code=self.code)).model_dump()


def unauthorized() -> RequestError:
    return RequestError(None, "missing or invalid API key; send it as `Authorization: Bearer <key>`", 401,
                        "invalid_api_key")


def internal(what: str) -> RequestError:
    """A failure that is not the request's fault (a bug, or an engine failure): 500 for this request alone."""
    return RequestError(None, f"internal error while {what}; the server log has the details", 500, "internal_error")
