"""A local stand-in for the OpenAI Files and Batches REST API.

The official `openai` SDK talks to it unchanged (`OpenAI(base_url=server.url, api_key="any")`),
so tests and the demo exercise the real client code over real HTTP. Batches move through
OpenAI's statuses on a sandbox clock that tests can advance instead of sleeping, produce
deterministic output and error files in OpenAI's exact line format, and can be told to
misbehave (per-line errors, expiry, validation failures, HTTP faults, slow or dropped replies).

Out of process it is steered over HTTP (no auth, not recorded in `calls`):
GET|POST /_sandbox/config, POST /_sandbox/reset, POST /_sandbox/advance {"seconds": N}, GET /_sandbox/state.

Pure standard library on purpose: no Django, so it also runs standalone
(`python -m jobs.providers.sandbox --port 8787`).
"""

from __future__ import annotations

import argparse
import dataclasses
import email.message
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socketserver
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import parse_qs, unquote

__all__ = ["SandboxConfig", "SandboxServer"]

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions")
UPLOAD_PURPOSES = ("batch", "batch_output")
COMPLETION_WINDOW_SECONDS = 24 * 3600
CANCELLABLE_STATUSES = ("validating", "in_progress", "finalizing")

_CHUNK = 256 * 1024
_MAX_JSON_BODY = 10 * 1024 * 1024
_MAX_FORM_FIELD = 64 * 1024
_MAX_PART_HEADERS = 16 * 1024
_DRAIN_LIMIT = 8 * 1024 * 1024  # unread request bytes worth reading to keep the connection alive
_MAX_REPORTED_ERRORS = 100  # validation errors listed in batch.errors, like OpenAI's truncated list
_POLL_SECONDS = 0.05  # how soon stop() takes effect (socketserver's default of 0.5 s slows test teardown)
_EMBEDDING_DIMENSIONS = 8
_WORDS = (
    "batch", "sandbox", "result", "token", "summary", "answer", "detail", "value",
    "signal", "context", "review", "record", "output", "request", "model", "note",
)
_FAULT_KEYS = {"method", "path", "status", "count", "apply"}


# --- configuration -------------------------------------------------------------------------


@dataclass
class SandboxConfig:
    """How the sandbox behaves; every field can be changed at runtime with `configure()`.

    Durations are read whenever a batch is looked at, so they also speed up or slow down batches
    already running. What a batch's lines do (line_error_rate, line_error_codes, seed, all_fail,
    expire_fraction) is fixed when its validation ends, as are fail_validation and the limits.
    """

    validating_seconds: float = 1.0
    in_progress_seconds: float = 3.0
    finalizing_seconds: float = 1.0
    cancelling_seconds: float = 1.0
    line_error_rate: float = 0.0
    line_error_codes: tuple[str, ...] = ("rate_limit_exceeded", "server_error", "token_limit_exceeded")
    seed: int = 0
    expire_fraction: float | None = None
    all_fail: bool = False
    fail_validation: bool = False
    http_faults: list[dict[str, Any]] = field(default_factory=list)
    slow_seconds: float = 0.0
    slow_path: str | None = None
    drop_path: str | None = None
    drop_count: int = 1
    max_lines: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        """Normalise values (JSON gives lists and ints) and refuse nonsense early, not mid-batch."""
        for name in ("validating_seconds", "in_progress_seconds", "finalizing_seconds",
                     "cancelling_seconds", "slow_seconds"):
            setattr(self, name, _number(name, getattr(self, name), 0.0, math.inf))
        self.line_error_rate = _number("line_error_rate", self.line_error_rate, 0.0, 1.0)
        if self.expire_fraction is not None:
            self.expire_fraction = _number("expire_fraction", self.expire_fraction, 0.0, 1.0)
        if isinstance(self.line_error_codes, str) or not self.line_error_codes:
            raise ValueError("line_error_codes must be a non-empty list of error codes")
        self.line_error_codes = tuple(str(code) for code in self.line_error_codes)
        self.seed = int(self.seed)
        self.all_fail = bool(self.all_fail)
        self.fail_validation = bool(self.fail_validation)
        self.http_faults = [_normalize_fault(fault) for fault in self.http_faults]
        self.drop_count = int(_number("drop_count", self.drop_count, 0, math.inf))
        self.max_lines = int(_number("max_lines", self.max_lines, 1, math.inf))
        self.max_file_bytes = int(_number("max_file_bytes", self.max_file_bytes, 1, math.inf))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number between {low} and {high}, not {value!r}")
    return float(value)


def _normalize_fault(fault: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(fault, dict) or set(fault) - _FAULT_KEYS:
        raise ValueError(f"an http fault is a dict with keys {sorted(_FAULT_KEYS)}, not {fault!r}")
    status = int(fault.get("status", 500))
    if not 400 <= status <= 599:
        raise ValueError(f"http fault status must be 4xx or 5xx, not {status}")
    method = fault.get("method")
    return {
        "method": method.upper() if method else None,  # None matches every method
        "path": str(fault.get("path", "/")),
        "status": status,
        "count": int(fault.get("count", 1)),
        "apply": bool(fault.get("apply", False)),
    }


# --- errors and replies --------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's `{"error": {...}}` shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {
                "message": message,
                "type": type or ("server_error" if status >= 500 else "invalid_request_error"),
                "param": param,
                "code": code,
            }
        }
        self.headers = headers or {}

    def reply(self) -> _Reply:
        return _json_reply(self.status, self.body, self.headers)


def _fault_error(status: int) -> ApiError:
    """The error OpenAI would send for this status, as injected by `http_faults`."""
    if status == 429:
        return ApiError(429, "Rate limit reached for requests (sandbox fault).", type="requests",
                        code="rate_limit_exceeded", headers={"retry-after": "0"})
    if status >= 500:
        return ApiError(status, "The server had an error while processing your request (sandbox fault).",
                        code="server_error")
    return ApiError(status, f"Sandbox fault {status}.")


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None  # streamed from disk instead of `body`


def _json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), headers=headers or {})


# --- deterministic fake model output --------------------------------------------------------


def _rng(*parts: Any) -> random.Random:
    """A generator seeded from the parts, so every derived value is reproducible."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _hex(*parts: Any, length: int = 32) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:length]


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of parts carrying `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _completion_tokens(body: dict[str, Any], limit_keys: tuple[str, ...], rng: random.Random) -> int:
    """Deterministic in [16, min(requested limit, 256)]."""
    cap = 256
    for key in limit_keys:
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > 0:
            cap = min(cap, body[key])
            break
    return rng.randint(min(16, cap), cap)


def _reply_text(prompt: str, tokens: int, rng: random.Random) -> str:
    """About four characters per completion token, starting with an echo of the prompt."""
    snippet = " ".join(prompt.split())[:60]
    words = [f"Sandbox reply to: {snippet}" if snippet else "Sandbox reply."]
    length = len(words[0])
    while length < tokens * 4:
        words.append(rng.choice(_WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)


# Each responder answers (response body, input tokens, output tokens) for one request line.
_Answer = tuple[dict[str, Any], int, int]


def _chat_completion(body: dict[str, Any], rid: str, seed: int, custom_id: str, created: int) -> _Answer:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    texts = [_text_of(m.get("content")) for m in messages]
    prompt_tokens = _tokens(sum(map(len, texts))) + 4 * len(messages)
    user_texts = [t for m, t in zip(messages, texts) if m.get("role") == "user"]
    prompt = (user_texts or texts or [""])[-1]
    rng = _rng(seed, "completion", custom_id, prompt)
    completion_tokens = _completion_tokens(body, ("max_completion_tokens", "max_tokens"), rng)
    return {
        "id": f"chatcmpl-{rid[:24]}",
        "object": "chat.completion",
        "created": created,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _reply_text(prompt, completion_tokens, rng),
                            "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_sandbox",
    }, prompt_tokens, completion_tokens


def _text_completion(body: dict[str, Any], rid: str, seed: int, custom_id: str, created: int) -> _Answer:
    raw = body.get("prompt")
    prompt = raw if isinstance(raw, str) else " ".join(p for p in raw or [] if isinstance(p, str))
    prompt_tokens = max(1, _tokens(len(prompt)))
    rng = _rng(seed, "completion", custom_id, prompt)
    completion_tokens = _completion_tokens(body, ("max_tokens",), rng)
    return {
        "id": f"cmpl-{rid[:24]}",
        "object": "text_completion",
        "created": created,
        "model": body["model"],
        "choices": [{"text": _reply_text(prompt, completion_tokens, rng), "index": 0,
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, prompt_tokens, completion_tokens


def _embedding(body: dict[str, Any], rid: str, seed: int, custom_id: str, created: int) -> _Answer:
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    data, prompt_tokens = [], 0
    for index, item in enumerate(inputs):
        prompt_tokens += _tokens(len(item)) if isinstance(item, str) else len(item or [])
        rng = _rng(seed, "embedding", custom_id, index, json.dumps(item))
        vector = [round(rng.uniform(-1.0, 1.0), 6) for _ in range(_EMBEDDING_DIMENSIONS)]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }, prompt_tokens, 0


def _response(body: dict[str, Any], rid: str, seed: int, custom_id: str, created: int) -> _Answer:
    raw = body.get("input")
    items = [{"content": raw}] if isinstance(raw, str) else [i for i in raw or [] if isinstance(i, dict)]
    texts = [_text_of(item.get("content")) for item in items]
    instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else ""
    input_tokens = _tokens(sum(map(len, texts)) + len(instructions)) + 4 * len(items)
    prompt = (texts or [""])[-1]
    rng = _rng(seed, "completion", custom_id, prompt)
    output_tokens = _completion_tokens(body, ("max_output_tokens",), rng)
    text = _reply_text(prompt, output_tokens, rng)
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": body["model"],
        "output": [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "output_text": text,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }, input_tokens, output_tokens


_RESPONDERS: dict[str, Callable[..., _Answer]] = {
    "/v1/chat/completions": _chat_completion,
    "/v1/completions": _text_completion,
    "/v1/embeddings": _embedding,
    "/v1/responses": _response,
}

_LINE_ERRORS = {  # code -> (HTTP status, error type, message)
    "rate_limit_exceeded": (429, "requests", "Rate limit reached for requests."),
    "server_error": (500, "server_error", "The server had an error while processing your request."),
    "token_limit_exceeded": (400, "invalid_request_error", "Enqueued token limit reached for this model."),
}
_OTHER_LINE_ERROR = (400, "invalid_request_error", "The request failed.")
_NOT_RUN = {  # end status -> error for the lines it never ran
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


def _line_error(plan: dict[str, Any], custom_id: str) -> str | None:
    """The error code this line fails with, or None: fixed by the plan (seed, rate) and custom_id."""
    seed = plan["seed"]
    if plan["all_fail"] or _rng(seed, "error", custom_id).random() < plan["line_error_rate"]:
        return _rng(seed, "code", custom_id).choice(plan["line_error_codes"])
    return None


def _portion(fraction: float, total: int) -> int:
    """floor(fraction * total), immune to binary rounding such as 0.29 * 100 = 28.999..."""
    return min(total, math.floor(fraction * total + 1e-9))


# --- input validation ----------------------------------------------------------------------


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) for every non-blank line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw


def _check_line(raw: bytes, endpoint: str) -> tuple[dict | None, str | None, str]:
    """(request, None, "") if the line is a valid batch request, else (None, param, reason)."""
    try:
        request = json.loads(raw)
    except ValueError:
        return None, None, "the line is not valid JSON"
    if not isinstance(request, dict):
        return None, None, "the line must be a JSON object"
    if not isinstance(request.get("custom_id"), str) or not request["custom_id"]:
        return None, "custom_id", "custom_id must be a non-empty string"
    if request.get("method") != "POST":
        return None, "method", f"method must be 'POST', not {request.get('method')!r}"
    if request.get("url") != endpoint:
        return None, "url", f"url {request.get('url')!r} does not match the batch endpoint {endpoint!r}"
    if not isinstance(request.get("body"), dict):
        return None, "body", "body must be a JSON object"
    if not isinstance(request["body"].get("model"), str) or not request["body"]["model"]:
        return None, "body.model", "body.model must be a non-empty string"
    return request, None, ""


def _validate_input(path: Path, endpoint: str, config: SandboxConfig) -> tuple[list[str], str | None, list[dict]]:
    """(custom_ids, model, errors) for a batch input file, checked the way OpenAI does."""

    def error(message: str, param: str | None = None, line: int | None = None) -> dict:
        return {"code": "invalid_request", "message": message, "param": param, "line": line}

    size = path.stat().st_size
    if size > config.max_file_bytes:
        return [], None, [error(f"The input file is {size} bytes; the limit is {config.max_file_bytes}.")]
    custom_ids: list[str] = []
    seen: set[str] = set()
    model: str | None = None
    errors: list[dict] = []
    count = 0
    for lineno, raw in _iter_lines(path):
        count += 1
        if count > config.max_lines:
            errors.append(error(f"The input file has more than {config.max_lines} requests.", None, lineno))
            break
        request, param, reason = _check_line(raw, endpoint)
        if request is not None:
            custom_id, line_model = request["custom_id"], request["body"]["model"]
            model = model or line_model
            if custom_id in seen:
                param, reason = "custom_id", f"custom_id {custom_id!r} is not unique within the file"
            elif line_model != model:
                param, reason = "body.model", f"all requests must share one model, not {line_model!r} and {model!r}"
            else:
                seen.add(custom_id)
                custom_ids.append(custom_id)
                continue
        errors.append(error(f"Line {lineno}: {reason}.", param, lineno))
    if count == 0:
        errors.append(error("The input file contains no requests."))
    return custom_ids, model, errors[:_MAX_REPORTED_ERRORS]


# --- state ---------------------------------------------------------------------------------


@dataclass
class _Batch:
    """One batch. Times are sandbox-clock floats; the API shows them as integer seconds."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    seq: int
    times: dict[str, float]  # "created", "in_progress", "finalizing", "completed", ...
    status: str = "validating"
    model: str | None = None
    total: int = 0
    processed: int = 0  # lines run before the batch stopped (frozen at cancel and at the end)
    completed: int = 0
    failed: int = 0
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None  # outcome settings frozen when validation ends


class _Store:
    """All files and batches, the sandbox clock, and the batch lifecycle, behind one lock."""

    def __init__(self, config: SandboxConfig, state_dir: str | os.PathLike | None) -> None:
        self.lock = threading.RLock()
        self.default_config = config
        self.config = dataclasses.replace(config)
        self.calls: list[tuple[str, str, int]] = []
        self._state_file: Path | None = None
        if state_dir is None:
            self._root = Path(tempfile.mkdtemp(prefix="batchmon-sandbox-"))
            self._owns_root = True
        else:
            self._root = Path(state_dir)
            self._owns_root = False
            self._state_file = self._root / "state.json"
        self.files_dir = self._root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.offset = 0.0
        self._seq = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, _Batch] = {}
        self._line_codes: dict[str, list[str | None]] = {}  # per batch, rebuilt from disk after a restart
        self._load()

    # clock and persistence

    def now(self) -> float:
        return time.time() + self.offset

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        state = json.loads(self._state_file.read_text())
        self.offset = state["clock_offset"]
        self._seq = state["seq"]
        self.files = {f["id"]: f for f in state["files"]}
        self.batches = {b["id"]: _Batch(**b) for b in state["batches"]}

    def _save(self) -> None:
        """Write the whole state atomically, so a killed server never leaves a torn file."""
        if self._state_file is None:
            return
        state = {
            "clock_offset": self.offset,
            "seq": self._seq,
            "files": list(self.files.values()),
            "batches": [dataclasses.asdict(b) for b in self.batches.values()],
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._state_file)

    def close(self) -> None:
        if self._owns_root:
            shutil.rmtree(self._root, ignore_errors=True)

    def reset(self) -> None:
        with self.lock:
            shutil.rmtree(self.files_dir, ignore_errors=True)
            self.files_dir.mkdir(parents=True)
            self.files, self.batches, self._line_codes = {}, {}, {}
            self.config = dataclasses.replace(self.default_config)  # fresh copies of the fault dicts
            self.offset, self._seq = 0.0, 0
            self.calls.clear()
            self._save()

    def configure(self, changes: dict[str, Any]) -> SandboxConfig:
        known = {f.name for f in dataclasses.fields(SandboxConfig)}
        if unknown := sorted(set(changes) - known):
            raise ValueError(f"unknown sandbox config field(s): {', '.join(unknown)}")
        with self.lock:
            self.config = dataclasses.replace(self.config, **changes)
            return self.config

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self.lock:
            self.offset += seconds
            self._save()

    # fault injection (consumed as they fire)

    def take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.config.http_faults:
                if fault["method"] in (None, method) and path.startswith(fault["path"]) and fault["count"] > 0:
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self.config.http_faults.remove(fault)
                    return dict(fault)
        return None

    def take_drop(self, path: str) -> bool:
        with self.lock:
            cfg = self.config
            if cfg.drop_path is not None and path.startswith(cfg.drop_path) and cfg.drop_count > 0:
                cfg.drop_count -= 1
                return True
        return False

    def slow_delay(self, path: str) -> float:
        cfg = self.config
        return cfg.slow_seconds if cfg.slow_path is not None and path.startswith(cfg.slow_path) else 0.0

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.calls.append((method, path, status))

    # files

    def upload_path(self) -> Path:
        return self.files_dir / f"upload-{uuid.uuid4().hex}.part"

    def _add_file(self, path: Path, filename: str, purpose: str, created: float) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        os.replace(path, self.files_dir / file_id)
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": (self.files_dir / file_id).stat().st_size,
            "created_at": int(created),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        return self.files[file_id]

    def add_upload(self, path: Path, filename: str, purpose: str) -> dict[str, Any]:
        with self.lock:
            file = self._add_file(path, filename, purpose, self.now())
            self._save()
            return file

    def get_file(self, file_id: str) -> dict[str, Any]:
        with self.lock:
            if file_id not in self.files:
                raise ApiError(404, f"No such File object: {file_id}", param="id")
            return self.files[file_id]

    def file_path(self, file_id: str) -> Path:
        self.get_file(file_id)
        return self.files_dir / file_id

    def list_files(self, purpose: str | None) -> list[dict[str, Any]]:
        with self.lock:
            files = [f for f in self.files.values() if purpose in (None, f["purpose"])]
            return list(reversed(files))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self.lock:
            self.get_file(file_id)
            del self.files[file_id]
            (self.files_dir / file_id).unlink(missing_ok=True)
            self._save()
            return {"id": file_id, "object": "file", "deleted": True}

    # batches

    def create_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        input_file_id = params.get("input_file_id")
        endpoint = params.get("endpoint")
        window = params.get("completion_window")
        metadata = params.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"Invalid endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}.",
                           param="endpoint")
        if window != "24h":
            raise ApiError(400, f"Invalid completion_window {window!r}; only '24h' is supported.",
                           param="completion_window")
        _check_metadata(metadata)
        with self.lock:
            file = self.files.get(input_file_id)
            if file is None:
                raise ApiError(404, f"No such File object: {input_file_id}", param="input_file_id")
            if file["purpose"] != "batch":
                raise ApiError(400, f"File {input_file_id} has purpose {file['purpose']!r}, not 'batch'.",
                               param="input_file_id")
            self._seq += 1
            batch = _Batch(
                id=f"batch_{uuid.uuid4().hex}",
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=window,
                metadata=metadata,
                seq=self._seq,
                times={"created": self.now()},
            )
            # The batch keeps its own link to the input, readable even if the client deletes the file.
            try:
                os.link(self.files_dir / input_file_id, self._input_path(batch))
            except OSError:  # a filesystem without hard links
                shutil.copyfile(self.files_dir / input_file_id, self._input_path(batch))
            self.batches[batch.id] = batch
            self._save()
            return self._api(batch, self.now())

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            now = self.now()
            return self._api(self._refreshed(batch_id, now), now)

    def list_batches(self) -> list[dict[str, Any]]:
        """Every batch, oldest first, each brought up to date with the clock."""
        with self.lock:
            now = self.now()
            batches = sorted(self.batches.values(), key=lambda b: b.seq)
            changed = [self._refresh(b, now) for b in batches]  # refresh every batch, not just up to the first
            if any(changed):
                self._save()
            return [self._api(b, now) for b in batches]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            now = self.now()
            batch = self._refreshed(batch_id, now)
            if batch.status == "cancelling":
                return self._api(batch, now)
            if batch.status not in CANCELLABLE_STATUSES:
                raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
            batch.processed, batch.completed, batch.failed = self._progress(batch, now)
            batch.status = "cancelling"
            batch.times["cancelling"] = now
            self._save()
            return self._api(batch, now)

    def _refreshed(self, batch_id: str, now: float) -> _Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        if self._refresh(batch, now):
            self._save()
        return batch

    # lifecycle

    def _refresh(self, b: _Batch, now: float) -> bool:
        """Play the batch's status forward to `now`; returns whether anything changed.

        Durations are read from the current config at each step, while every reached status
        keeps the time it was reached, so reconfiguring never moves a batch backwards.
        """
        cfg = self.config
        changed = False
        while True:
            if b.status == "validating":
                t = b.times["created"] + cfg.validating_seconds
                if now < t:
                    break
                self._end_validation(b, t)
            elif b.status == "in_progress":
                start = b.times["in_progress"]
                done = start + cfg.in_progress_seconds
                expiry, fraction = self._expiry(b, start, cfg.in_progress_seconds)
                if expiry <= done and now >= expiry:
                    self._finish(b, "expired", expiry, _portion(fraction, b.total))
                elif now >= done:
                    b.status = "finalizing"
                    b.times["finalizing"] = done
                else:
                    break
            elif b.status == "finalizing":
                t = b.times["finalizing"] + cfg.finalizing_seconds
                if now < t:
                    break
                self._finish(b, "completed", t, b.total)
            elif b.status == "cancelling":
                t = b.times["cancelling"] + cfg.cancelling_seconds
                if now < t:
                    break
                self._finish(b, "cancelled", t, b.processed)
            else:
                break
            changed = True
        return changed

    def _expiry(self, b: _Batch, start: float, duration: float) -> tuple[float, float]:
        """(when, progress fraction) at which the batch expires: expire_fraction or the 24 h window."""
        window_end = b.times["created"] + COMPLETION_WINDOW_SECONDS
        candidates = [(window_end, _fraction(window_end - start, duration))]
        if b.plan["expire_fraction"] is not None:
            candidates.append((start + b.plan["expire_fraction"] * duration, b.plan["expire_fraction"]))
        return min(candidates)

    def _progress(self, b: _Batch, now: float) -> tuple[int, int, int]:
        """(processed, completed, failed) lines at `now`; lines run in file order."""
        if b.status == "in_progress":
            processed = _portion(_fraction(now - b.times["in_progress"], self.config.in_progress_seconds), b.total)
        elif b.status == "finalizing":
            processed = b.total
        else:
            return b.processed, b.completed, b.failed
        failed = sum(1 for code in self._codes(b)[:processed] if code)
        return processed, processed - failed, failed

    def _end_validation(self, b: _Batch, t: float) -> None:
        cfg = self.config
        custom_ids, model, errors = _validate_input(self._input_path(b), b.endpoint, cfg)
        if cfg.fail_validation and not errors:
            errors = [{"code": "invalid_request", "message": "Line 1: validation failure forced by the sandbox.",
                       "param": None, "line": 1}]
        b.model = model
        if errors:
            b.status = "failed"
            b.times["failed"] = t
            b.errors = {"object": "list", "data": errors}
            self._input_path(b).unlink(missing_ok=True)
            return
        b.plan = {
            "seed": cfg.seed,
            "line_error_rate": cfg.line_error_rate,
            "line_error_codes": list(cfg.line_error_codes),
            "all_fail": cfg.all_fail,
            "expire_fraction": cfg.expire_fraction,
        }
        self._line_codes[b.id] = [_line_error(b.plan, cid) for cid in custom_ids]
        b.total = len(custom_ids)
        b.status = "in_progress"
        b.times["in_progress"] = t

    def _codes(self, b: _Batch) -> list[str | None]:
        if b.id not in self._line_codes:
            ids = [json.loads(raw)["custom_id"] for _, raw in _iter_lines(self._input_path(b))]
            self._line_codes[b.id] = [_line_error(b.plan, cid) for cid in ids]
        return self._line_codes[b.id]

    def _finish(self, b: _Batch, status: str, t: float, processed: int) -> None:
        """Enter an end state and write the output and error files, once and for all."""
        b.status = status
        b.times[status] = t
        b.processed = processed
        if b.plan is not None:  # a batch cancelled while validating never ran a line
            self._write_results(b, int(t))
        self._line_codes.pop(b.id, None)
        self._input_path(b).unlink(missing_ok=True)

    def _write_results(self, b: _Batch, created: int) -> None:
        codes = self._codes(b)
        respond = _RESPONDERS[b.endpoint]
        seed = b.plan["seed"]
        out_path, err_path = self.upload_path(), self.upload_path()
        completed = failed = input_tokens = output_tokens = 0
        with open(out_path, "w", encoding="utf-8") as out, open(err_path, "w", encoding="utf-8") as err:
            for index, (_, raw) in enumerate(_iter_lines(self._input_path(b))):
                request = json.loads(raw)
                custom_id = request["custom_id"]
                rid = _hex(b.id, index)
                line: dict[str, Any] = {"id": f"batch_req_{rid}", "custom_id": custom_id,
                                        "response": None, "error": None}
                if index >= b.processed:
                    code, message = _NOT_RUN[b.status]
                    line["error"] = {"code": code, "message": message}
                elif codes[index]:
                    failed += 1
                    status_code, kind, message = _LINE_ERRORS.get(codes[index], _OTHER_LINE_ERROR)
                    error = {"message": message, "type": kind, "param": None, "code": codes[index]}
                    line["response"] = {"status_code": status_code, "request_id": _hex("req", rid),
                                        "body": {"error": error}}
                else:
                    completed += 1
                    body, used_in, used_out = respond(request["body"], rid, seed, custom_id, created)
                    input_tokens += used_in
                    output_tokens += used_out
                    line["response"] = {"status_code": 200, "request_id": _hex("req", rid), "body": body}
                    out.write(json.dumps(line) + "\n")
                    continue
                err.write(json.dumps(line) + "\n")
        b.completed, b.failed = completed, failed
        b.output_file_id = self._keep_result(out_path, f"{b.id}_output.jsonl", created)
        b.error_file_id = self._keep_result(err_path, f"{b.id}_error.jsonl", created)
        b.usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }

    def _keep_result(self, path: Path, filename: str, created: int) -> str | None:
        """Register a result file, or drop it when empty (OpenAI then answers a null id)."""
        if path.stat().st_size == 0:
            path.unlink()
            return None
        return self._add_file(path, filename, "batch_output", created)["id"]

    def _input_path(self, b: _Batch) -> Path:
        return self.files_dir / f"{b.id}.input"

    def _api(self, b: _Batch, now: float) -> dict[str, Any]:
        """The batch exactly as OpenAI answers it (every key present, null when unset)."""
        _, completed, failed = self._progress(b, now)

        def at(key: str) -> int | None:
            return int(b.times[key]) if key in b.times else None

        return {
            "id": b.id,
            "object": "batch",
            "endpoint": b.endpoint,
            "model": b.model,
            "errors": b.errors,
            "input_file_id": b.input_file_id,
            "completion_window": b.completion_window,
            "status": b.status,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": at("created"),
            "in_progress_at": at("in_progress"),
            "expires_at": int(b.times["created"] + COMPLETION_WINDOW_SECONDS),
            "finalizing_at": at("finalizing"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelling_at": at("cancelling"),
            "cancelled_at": at("cancelled"),
            "request_counts": {"total": b.total, "completed": completed, "failed": failed},
            "usage": b.usage,
            "metadata": b.metadata,
        }

    def state(self) -> dict[str, Any]:
        batches = self.list_batches()
        with self.lock:
            return {"now": int(self.now()), "batches": batches, "files": list(self.files)}


def _fraction(elapsed: float, duration: float) -> float:
    if duration <= 0:
        return 1.0
    # Rounding to microseconds keeps advance(4) on a 10 s run at exactly 0.4, not 0.3999999.
    return min(1.0, max(0.0, round(elapsed, 6) / duration))


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiError(400, "metadata must be an object with at most 16 keys.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise ApiError(400, f"metadata[{key!r}]: keys are at most 64 characters and values strings "
                                "of at most 512 characters.", param="metadata")


# --- HTTP ------------------------------------------------------------------------------------


class _Body:
    """Reads one request body (Content-Length or chunked) without ever reading past it."""

    def __init__(self, rfile: BinaryIO, headers: Any) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        if not self._chunked and length is not None and not length.strip().isdigit():
            raise ApiError(400, "Invalid Content-Length header.")
        self._left = 0 if self._chunked else int(length or 0)
        self.done = not self._chunked and self._left == 0

    def read(self, size: int) -> bytes:
        if self.done:
            return b""
        if self._chunked and self._left == 0:
            try:
                self._left = int(self._rfile.readline(1024).split(b";")[0], 16)
            except ValueError:
                raise ApiError(400, "Malformed chunked request body.") from None
            if self._left == 0:
                while self._rfile.readline(1024).strip():  # trailers
                    pass
                self.done = True
                return b""
        data = self._rfile.read(min(size, self._left))
        self._left -= len(data)
        if not data:  # the client went away mid-body
            self.done = True
        elif self._left == 0:
            if self._chunked:
                self._rfile.readline(1024)
            else:
                self.done = True
        return data

    def read_all(self, limit: int) -> bytes:
        data = bytearray()
        while chunk := self.read(_CHUNK):
            data.extend(chunk)
            if len(data) > limit:
                raise ApiError(413, "Request body too large.")
        return bytes(data)

    def drain(self, limit: int) -> bool:
        """Discard what is left (up to `limit` bytes); True if the body was fully consumed."""
        drained = 0
        while drained <= limit and (chunk := self.read(_CHUNK)):
            drained += len(chunk)
        return self.done


def _parse_multipart(body: _Body, boundary: bytes, sink_path: Path) -> tuple[dict[str, str], str | None]:
    """Stream multipart/form-data: small fields into memory, the `file` part straight to disk.

    Returns (fields, uploaded filename or None if no `file` part).
    """
    buf = bytearray()

    def fill() -> None:
        chunk = body.read(_CHUNK)
        if not chunk:
            raise ApiError(400, "The multipart body ended early.", param="file")
        buf.extend(chunk)

    def copy_until(marker: bytes, sink: BinaryIO | None, limit: float = math.inf) -> None:
        written = 0
        while (end := buf.find(marker)) < 0:
            cut = max(0, len(buf) - len(marker) + 1)  # keep a possible partial marker
            written += cut
            if written > limit:
                raise ApiError(400, "A multipart form field is too large.")
            if sink is not None:
                sink.write(buf[:cut])
            del buf[:cut]
            fill()
        if written + end > limit:
            raise ApiError(400, "A multipart form field is too large.")
        if sink is not None:
            sink.write(buf[:end])
        del buf[: end + len(marker)]

    delimiter = b"--" + boundary
    fields: dict[str, str] = {}
    filename: str | None = None
    copy_until(delimiter, None)  # preamble
    while True:
        while len(buf) < 2:
            fill()
        if buf[:2] == b"--":  # closing delimiter
            break
        if buf[:2] != b"\r\n":
            raise ApiError(400, "Malformed multipart body.", param="file")
        del buf[:2]
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_PART_HEADERS:
                raise ApiError(400, "Malformed multipart part headers.", param="file")
            fill()
        part = email.message.Message()
        for line in bytes(buf[:end]).decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            part[name.strip()] = value.strip()
        del buf[: end + 4]
        name = part.get_param("name", header="content-disposition")
        if name == "file" and filename is None:
            filename = part.get_filename() or "upload"
            with open(sink_path, "wb") as sink:
                copy_until(b"\r\n" + delimiter, sink)
        else:
            value = io.BytesIO()
            copy_until(b"\r\n" + delimiter, value, _MAX_FORM_FIELD)
            if isinstance(name, str):
                fields[name] = value.getvalue().decode("utf-8", "replace")
    body.drain(_DRAIN_LIMIT)  # epilogue
    return fields, filename


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern + r"\Z"), handler)
    for method, pattern, handler in [
        ("POST", r"/v1/files", "create_file"),
        ("GET", r"/v1/files", "list_files"),
        ("GET", r"/v1/files/(?P<file_id>[^/]+)", "retrieve_file"),
        ("DELETE", r"/v1/files/(?P<file_id>[^/]+)", "delete_file"),
        ("GET", r"/v1/files/(?P<file_id>[^/]+)/content", "file_content"),
        ("POST", r"/v1/batches", "create_batch"),
        ("GET", r"/v1/batches", "list_batches"),
        ("GET", r"/v1/batches/(?P<batch_id>[^/]+)", "retrieve_batch"),
        ("POST", r"/v1/batches/(?P<batch_id>[^/]+)/cancel", "cancel_batch"),
        ("GET", r"/_sandbox/config", "get_config"),
        ("POST", r"/_sandbox/config", "set_config"),
        ("POST", r"/_sandbox/reset", "reset"),
        ("POST", r"/_sandbox/advance", "advance"),
        ("GET", r"/_sandbox/state", "state"),
    ]
]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: _Store) -> None:
        self.store = store
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """Transport only: faults, auth, routing; the store does the work."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server_version = "batchmon-sandbox"
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't wait for ACKs
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        store = self.server.store
        method = self.command
        path, _, query = self.path.partition("?")
        self.query = {k: v[-1] for k, v in parse_qs(query).items()}
        is_api = not path.startswith("/_sandbox/")
        self.body: _Body | None = None
        try:
            self.body = _Body(self.rfile, self.headers)
        except ApiError as exc:
            self.close_connection = True
            return self._send(exc.reply(), method, path, is_api)
        if store.take_drop(path):
            self.body.drain(_DRAIN_LIMIT)
            self.close_connection = True
            store.record(method, path, 0)
            return
        if delay := store.slow_delay(path):
            time.sleep(delay)
        try:
            reply = self._dispatch(method, path)
        except ApiError as exc:
            reply = exc.reply()
        except Exception:
            log.exception("sandbox failed on %s %s", method, path)
            reply = ApiError(500, "The sandbox failed unexpectedly.", code="server_error").reply()
        self._send(reply, method, path, is_api)

    def _dispatch(self, method: str, path: str) -> _Reply:
        if path.startswith("/v1/") and not self._authorized():
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        fault = self.server.store.take_fault(method, path) if path.startswith("/v1/") else None
        if fault and not fault["apply"]:
            return _fault_error(fault["status"]).reply()
        try:
            reply = self._route(method, path)
        except ApiError as exc:
            reply = exc.reply()
        # An applied fault acts, then loses the reply, like a provider whose answer never arrives.
        return _fault_error(fault["status"]).reply() if fault else reply

    def _route(self, method: str, path: str) -> _Reply:
        for route_method, pattern, handler in _ROUTES:
            if route_method == method and (match := pattern.match(path)):
                args = {k: unquote(v) for k, v in match.groupdict().items()}
                return getattr(self, f"_{handler}")(**args)
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _send(self, reply: _Reply, method: str, path: str, is_api: bool) -> None:
        if self.body is not None and not self.body.done and not self.body.drain(_DRAIN_LIMIT):
            self.close_connection = True  # too much left unread to keep the connection in step
        if is_api:
            self.server.store.record(method, path, reply.status)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.file_path is None:
                self.send_header("Content-Length", str(len(reply.body)))
                self._end_headers()
                self.wfile.write(reply.body)
            else:
                with open(reply.file_path, "rb") as fh:
                    self.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
                    self._end_headers()
                    shutil.copyfileobj(fh, self.wfile, _CHUNK)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)

    def _end_headers(self) -> None:
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _json_body(self) -> dict[str, Any]:
        raw = self.body.read_all(_MAX_JSON_BODY)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return data

    # /v1/files

    def _create_file(self) -> _Reply:
        ctype = email.message.Message()
        ctype["Content-Type"] = self.headers.get("Content-Type", "")
        boundary = ctype.get_param("boundary")
        if ctype.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
            raise ApiError(400, "Uploads must be multipart/form-data.", param="file")
        store = self.server.store
        sink_path = store.upload_path()
        try:
            fields, filename = _parse_multipart(self.body, boundary.encode(), sink_path)
            purpose = fields.get("purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise ApiError(400, f"Invalid purpose {purpose!r}; expected one of {', '.join(UPLOAD_PURPOSES)}.",
                               param="purpose")
            if filename is None:
                raise ApiError(400, "Missing required parameter: 'file'.", param="file")
            return _json_reply(200, store.add_upload(sink_path, filename, purpose))
        finally:
            sink_path.unlink(missing_ok=True)

    def _list_files(self) -> _Reply:
        files = self.server.store.list_files(self.query.get("purpose"))
        if self.query.get("order") == "asc":
            files.reverse()
        return _json_reply(200, _page(files, self.query, default_limit=10_000, max_limit=10_000))

    def _retrieve_file(self, file_id: str) -> _Reply:
        return _json_reply(200, self.server.store.get_file(file_id))

    def _delete_file(self, file_id: str) -> _Reply:
        return _json_reply(200, self.server.store.delete_file(file_id))

    def _file_content(self, file_id: str) -> _Reply:
        return _Reply(200, content_type="application/octet-stream", file_path=self.server.store.file_path(file_id))

    # /v1/batches

    def _create_batch(self) -> _Reply:
        return _json_reply(200, self.server.store.create_batch(self._json_body()))

    def _list_batches(self) -> _Reply:
        newest_first = list(reversed(self.server.store.list_batches()))
        return _json_reply(200, _page(newest_first, self.query, default_limit=20, max_limit=100))

    def _retrieve_batch(self, batch_id: str) -> _Reply:
        return _json_reply(200, self.server.store.get_batch(batch_id))

    def _cancel_batch(self, batch_id: str) -> _Reply:
        return _json_reply(200, self.server.store.cancel_batch(batch_id))

    # /_sandbox (control; no auth, not recorded in `calls`)

    def _get_config(self) -> _Reply:
        return _json_reply(200, self.server.store.config.to_json())

    def _set_config(self) -> _Reply:
        try:
            config = self.server.store.configure(self._json_body())
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
        return _json_reply(200, config.to_json())

    def _reset(self) -> _Reply:
        self.server.store.reset()
        return _json_reply(200, self.server.store.state())

    def _advance(self) -> _Reply:
        seconds = self._json_body().get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ApiError(400, "seconds must be a non-negative number.", param="seconds")
        self.server.store.advance(seconds)
        return _json_reply(200, self.server.store.state())

    def _state(self) -> _Reply:
        return _json_reply(200, self.server.store.state())


def _page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int, max_limit: int) -> dict:
    """OpenAI's cursor page: `limit` items after the item whose id is `after`."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"limit must be an integer between 1 and {max_limit}.", param="limit")
    ids = [item["id"] for item in items]
    after = query.get("after")
    start = ids.index(after) + 1 if after in ids else 0 if after is None else len(ids)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }


# --- public API ------------------------------------------------------------------------------


class SandboxServer:
    """The sandbox over HTTP, plus direct control for in-process tests.

    The socket is bound on construction, so `url` is known (and connections queue) at once.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: SandboxConfig | None = None,
                 state_dir: str | os.PathLike | None = None) -> None:
        self._store = _Store(config or SandboxConfig(), state_dir)
        self._httpd = _HTTPServer((host, port), self._store)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False

    @property
    def url(self) -> str:
        """The SDK's base_url."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def config(self) -> SandboxConfig:
        return self._store.config

    @property
    def calls(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every API call answered, in order; status 0 when dropped.

        The live list: tests may clear() it between phases.
        """
        return self._store.calls

    def start(self) -> SandboxServer:
        """Serve in a daemon thread and return at once."""
        self._serving = True  # before the thread runs, so an immediate stop() still shuts it down
        self._thread = threading.Thread(target=self.serve_forever, name=f"sandbox:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() or KeyboardInterrupt."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=_POLL_SECONDS)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._serving:
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._httpd.server_close()
        self._store.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change config fields at runtime; unknown fields or bad values raise ValueError."""
        return self._store.configure(changes)

    def reset(self) -> None:
        """Forget every file, batch and call, rewind the clock and restore the initial config."""
        self._store.reset()

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward, so tests never sleep through durations."""
        self._store.advance(seconds)

    def batches(self) -> list[dict[str, Any]]:
        """Every batch as the API would return it now, oldest first."""
        return self._store.list_batches()


def main(argv: list[str] | None = None) -> None:
    """Standalone entry point, the same flags as the `sandbox_provider` management command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(vars(args), lambda line: print(line, flush=True))


def add_arguments(parser: Any) -> None:
    """Shared by the standalone entry point and the Django management command."""
    defaults = SandboxConfig()
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8787, help="Port to listen on; 0 picks a free one (default 8787).")
    parser.add_argument("--state-dir", default=None,
                        help="Keep files and batch state in this directory so a restart keeps them "
                             "(default: a temporary directory, removed on exit).")
    parser.add_argument("--validating-seconds", type=float, default=defaults.validating_seconds,
                        help=f"How long a batch stays 'validating' (default {defaults.validating_seconds}).")
    parser.add_argument("--in-progress-seconds", type=float, default=defaults.in_progress_seconds,
                        help=f"How long a batch stays 'in_progress' (default {defaults.in_progress_seconds}).")
    parser.add_argument("--finalizing-seconds", type=float, default=defaults.finalizing_seconds,
                        help=f"How long a batch stays 'finalizing' (default {defaults.finalizing_seconds}).")
    parser.add_argument("--cancelling-seconds", type=float, default=defaults.cancelling_seconds,
                        help=f"How long a batch stays 'cancelling' (default {defaults.cancelling_seconds}).")
    parser.add_argument("--line-error-rate", type=float, default=defaults.line_error_rate,
                        help="Share of request lines (0..1) answered with a per-line error (default 0).")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="Seed for which lines fail and for the generated content (default 0).")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(options: dict[str, Any], write: Callable[[str], Any]) -> None:
    """Build the server from parsed options, announce its base URL, serve until Ctrl-C."""
    config = SandboxConfig(
        validating_seconds=options["validating_seconds"],
        in_progress_seconds=options["in_progress_seconds"],
        finalizing_seconds=options["finalizing_seconds"],
        cancelling_seconds=options["cancelling_seconds"],
        line_error_rate=options["line_error_rate"],
        seed=options["seed"],
    )
    server = SandboxServer(options["host"], options["port"], config, options["state_dir"])
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    write(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
