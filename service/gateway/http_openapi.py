"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Written by hand next to the routes (`service/gateway/http.py`); `tests/service/gateway/test_http.py`
checks that it names exactly the routes the app serves, with the same methods.
"""

from __future__ import annotations

from typing import Any

from service.bus.jobs import MAX_IDEMPOTENCY_KEY

_ERROR = {"$ref": "#/components/responses/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in codes}


_FILE = {"type": "string", "format": "binary"}


def _body(ref: str, *, multipart: dict[str, Any]) -> dict[str, Any]:
    raw = {"schema": _FILE}  # the image itself; the multipart fields go in the query string
    return {
        "required": True,
        "description": "proto3 JSON; or multipart/form-data; or the image itself as the body (image/* or "
        "application/octet-stream) with the multipart form's other fields in the query string",
        "content": {
            "application/json": {"schema": {"$ref": ref}},
            "multipart/form-data": {"schema": {"type": "object", "properties": multipart}},
            "image/*": raw,
            "application/octet-stream": raw,
        },
    }


_HINT_FIELD = {
    "type": "string",
    "description": "repeatable: x,y,#rrggbb[,patch_size] (as the command line's --hint), "
    "or `hints` as a JSON list",
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
    "description": "SubmitRestore's idempotency_key (printable ASCII): a retry with the same key, by the "
    "same client, returns the first submission's job (202, no `queued`, Idempotent-Replayed: true) "
    "instead of queueing another, until that job's result expires. Or `idempotency_key` in the body.",
}
_OPEN: list[dict[str, list[str]]] = []  # an operation that needs no token even with tokens on


def openapi_document() -> dict[str, Any]:
    colorize_form = {
        "image": _FILE,
        "model": {"type": "string"},
        "temperature": {"type": "number"},
        "working_size": {"type": "integer"},
        "output_format": {"enum": ["png", "jpeg", "webp"]},
        "quality": {"type": "integer"},
        "hint": _HINT_FIELD,
        "hints": {"type": "string"},
        "hue_decode": {"type": "string"},
        "chroma_decode": {"type": "string"},
    }
    suggest_form = {
        "image": _FILE,
        "x": {"type": "integer"},
        "y": {"type": "integer"},
        "k": {"type": "integer"},
        "hint": _HINT_FIELD,
        "hints": {"type": "string"},
        "working_size": {"type": "integer"},
        "seed": {"type": "integer"},
    }
    restore_form = {
        "image": _FILE,
        "task": {"enum": ["denoise", "inpaint", "super_resolve", "jpeg"]},
        "sigma": {"type": "number"},
        "mask": _FILE,
        "style": {"enum": ["text", "large_hole", "region", "pixels"]},
        "mask_missing_white": {"type": "boolean"},
        "factor": {"enum": [2, 4, 8]},
        "iterations": {"type": "integer", "description": "fixed iteration count"},
        "max_iterations": {"type": "integer", "description": "cap of the automatic stop"},
        "seed": {"type": "integer"},
        "priority": {"type": "integer"},
        "progress_every": {"type": "integer"},
        "preview": {"type": "boolean"},
    }
    image_or_json = {
        "image/png": {"schema": _FILE},
        "image/jpeg": {"schema": _FILE},
        "image/webp": {"schema": _FILE},
        "application/json": {"schema": {"$ref": "#/components/schemas/ColorizeResponse"}},
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "The web page",
                "security": _OPEN,
                "responses": {"200": {"description": "HTML"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": _OPEN,
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Health of the Colorizer (or ?service=priorlab.v1.Restorer)",
                "security": _OPEN,
                "parameters": [{"name": "service", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "SERVING"}, "503": {"description": "NOT_SERVING"}},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The public models, their checkpoints and defaults",
                "responses": {"200": {"description": "models"}, **_errors(401)},
            }
        },
        "/v1/colorize": {
            "post": {
                "summary": "Colorize (the gRPC ColorizeRequest as proto3 JSON, or a multipart upload)",
                "description": "Answers the image itself with X-Priorlab-* and Server-Timing headers, or "
                "the ColorizeResponse as JSON (image in base64) with Accept: application/json.",
                "requestBody": _body("#/components/schemas/ColorizeRequest", multipart=colorize_form),
                "responses": {
                    "200": {"description": "the colorized image", "content": image_or_json},
                    **_errors(400, 401, 404, 413, 429, 499, 500, 503, 504),
                },
            }
        },
        "/v1/suggest": {
            "post": {
                "summary": "SuggestColors at one pixel",
                "requestBody": _body("#/components/schemas/SuggestColorsRequest", multipart=suggest_form),
                "responses": {
                    "200": {"description": "suggested colours (each with hex)"},
                    **_errors(400, 401, 413, 429, 499, 500, 503, 504),
                },
            }
        },
        "/v1/restore": {
            "post": {
                "summary": "SubmitRestore: queue a Deep Image Prior job",
                "description": "JSON: the gRPC RestoreRequest as proto3 JSON. Multipart: flat fields.",
                "parameters": [
                    _IDEMPOTENCY_KEY,
                    {
                        "name": "X-Client-Id",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "the quota key without tokens (with tokens: the token's client)",
                    },
                ],
                "requestBody": _body("#/components/schemas/RestoreRequest", multipart=restore_form),
                "responses": {
                    "202": {
                        "description": "job_id, queue position (`queued`, absent for a replayed key), links",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {
                                "schema": {"const": "true"},
                                "description": "this is the job of an earlier submission with the same key",
                            },
                        },
                    },
                    **_errors(400, 401, 413, 429, 500, 503),
                },
            }
        },
        "/v1/restore/{job_id}": {
            "get": {
                "summary": "The job's result PNG (JSON with Accept: application/json), or 202 while it runs",
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "maximum": 60},
                        "description": "seconds to wait for the result",
                    },
                ],
                "responses": {
                    "200": {"description": "the result"},
                    "202": {"description": "not done yet"},
                    **_errors(400, 401, 404, 409, 499, 500, 503, 504),
                },
            }
        },
        "/v1/restore/{job_id}/events": {
            "get": {
                "summary": "WatchRestore as Server-Sent Events",
                "description": "Events queued, started, progress (iteration, loss, eta_s, preview), result; "
                "or failure {code, status, message}. Each id is the event's index (Last-Event-ID resumes).",
                "parameters": [_JOB_ID],
                "responses": {"200": {"description": "text/event-stream"}, **_errors(400, 401, 404, 503)},
            }
        },
        "/v1/restore/{job_id}/cancel": {
            "post": {
                "summary": "CancelRestore",
                "parameters": [_JOB_ID],
                "responses": {"200": {"description": "{cancelled}"}, **_errors(400, 401, 404, 503)},
            }
        },
    }
    proto = "the gRPC message (protos/priorlab/v1) in the proto3 JSON mapping; bytes in base64"
    return {
        "openapi": "3.1.0",
        "info": {"title": "priorlab", "version": "1", "description": "HTTP/JSON beside the gRPC API"},
        "paths": paths,
        # With PRIORLAB_AUTH_TOKENS_FILE set; without it the gateway asks for nothing.
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": 'a token of the gateway\'s token file (README "Security"), if it has '
                    "one; its client id owns the jobs it submits. A missing or unknown token: 401.",
                }
            },
            "schemas": {
                name: {"type": "object", "description": proto}
                for name in ("ColorizeRequest", "ColorizeResponse", "SuggestColorsRequest", "RestoreRequest")
            },
            "responses": {
                "Error": {
                    "description": "the gRPC status and message; Retry-After on 429, "
                    'WWW-Authenticate: Bearer realm="priorlab" on 401',
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "properties": {
                                            "code": {"type": "string"},
                                            "status": {"type": "integer"},
                                            "message": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }
