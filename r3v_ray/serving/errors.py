"""The one error a request can cause: an HTTP status, the request field at fault, and a message naming it."""

from __future__ import annotations


class RequestError(ValueError):
    """A bad request. `param` is the field at fault (dotted, e.g. `sampling.top_p` or `messages[0].content`)."""

    def __init__(self, param: str | None, message: str, status: int = 400, code: str = "invalid_request"):
        self.param, self.message, self.status, self.code = param, message, status, code
        super().__init__(f"{param}: {message}" if param else message)

    def body(self) -> dict:
        """The OpenAI error shape, so the `openai` client raises its usual exception with this message."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
