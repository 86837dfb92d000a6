"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the gateway answers goes through ``APIError``, so clients written for the
OpenAI API (the official SDKs raise typed exceptions from the status and this body) read
ours the same way.
"""

from __future__ import annotations

import re

import msgspec
from starlette.responses import Response


class ErrorBody(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message, type, param, code)
        self.headers = headers or {}

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(self.body)

    def response(self) -> Response:
        return Response(
            msgspec.json.encode(self.envelope()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def forbidden(message: str, param: str | None = None) -> APIError:
    return APIError(403, message, "permission_error", param, "forbidden")


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, "not_found_error", param, code)


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body is over this key's limit of {limit} bytes", "invalid_request_error", None, "request_too_large")


def rate_limited(retry_after_s: float) -> APIError:
    wait = max(1, int(retry_after_s + 0.999))
    return APIError(
        429,
        f"rate limit of this API key exceeded; retry in {wait} s",
        "rate_limit_error",
        None,
        "rate_limit_exceeded",
        {"Retry-After": str(wait)},
    )


def timed_out(seconds: float) -> APIError:
    return APIError(504, f"no reply from the pipeline within {seconds:g} s", "timeout_error", None, "timeout")


def upstream_failed(message: str) -> APIError:
    return APIError(502, f"the assistant's model failed: {message}", "api_error", None, "upstream_error")


# msgspec: "Expected `str`, got `int` - at `$.messages[0].role`", and for a missing
# field "Object missing required field `role` - at `$.messages[0]`".
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def from_validation(exc: msgspec.ValidationError | msgspec.DecodeError | RecursionError) -> APIError:
    """A 400 whose message and ``param`` name the offending field (``messages[0].role``)."""
    if isinstance(exc, RecursionError):  # arrays or objects nested past the decoder's limit
        return bad_request("request body is not valid JSON: nested too deeply")
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        match = _AT.match(text)
        what = match["what"] if match else text
        path = (match["path"] or "") if match else ""
        missing = _MISSING.search(what)
        if missing:
            path = f"{path}.{missing['field']}"
        param = path.lstrip(".") or None
        where = f" at `{param}`" if param else ""
        return bad_request(f"invalid request body{where}: {what}", param)
    return bad_request(f"request body is not valid JSON: {text}")
