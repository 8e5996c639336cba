"""The OpenAI Batch API (or any compatible one, such as the sandbox) through the official SDK.

Every SDK error that could be a passing fault (429, 5xx, timeouts, dropped connections,
replies that do not parse) becomes ProviderFault, which the lifecycle answers with backoff;
none of them ever marks a batch failed.
"""

from contextlib import contextmanager
from functools import lru_cache

import openai
from django.conf import settings

from metrics.points import timed_call

# OpenAI sends a file's lines in this many bytes per read; lines are re-assembled across reads.
STREAM_CHUNK_BYTES = 1 << 20


class ProviderFault(Exception):
    """The provider could not be reached or answered with an error; try again later."""

    def __init__(self, message, status_code=None):
        super().__init__(message)
        self.status_code = status_code


@contextmanager
def _faults_as_provider_fault(call):
    """One provider call: timed as a `worker_requests` point, its SDK errors turned into ProviderFault."""
    try:
        with timed_call(call):
            yield
    except openai.APIStatusError as exc:
        raise ProviderFault(f"{exc.status_code}: {exc.message}", exc.status_code) from exc
    except openai.APIError as exc:  # connection, timeout, malformed reply
        raise ProviderFault(f"{type(exc).__name__}: {exc}") from exc


class BatchProvider:
    """The few Files and Batches calls the lifecycle needs, each a real HTTP call."""

    def __init__(self, base_url, api_key, timeout):
        self.base_url = base_url
        # The SDK retries 429/5xx/timeouts itself with backoff; creates must not be retried
        # blindly (the Batch API has no idempotency key), so they go through `_once`.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)
        self._once = self.client.with_options(max_retries=0)

    def upload_input(self, path):
        with _faults_as_provider_fault("files.create"), open(path, "rb") as fh:
            return self._once.files.create(file=fh, purpose="batch").id

    def create_batch(self, input_file_id, endpoint, metadata):
        with _faults_as_provider_fault("batches.create"):
            return self._once.batches.create(
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=settings.BATCH_COMPLETION_WINDOW,
                metadata=metadata,
            )

    def retrieve_batch(self, batch_id):
        with _faults_as_provider_fault("batches.retrieve"):
            return self.client.batches.retrieve(batch_id)

    def cancel_batch(self, batch_id):
        """Ask for cancellation; a batch that already ended answers 409, then its state is returned."""
        with _faults_as_provider_fault("batches.cancel"):
            try:
                return self.client.batches.cancel(batch_id)
            except openai.ConflictError:
                return self.client.batches.retrieve(batch_id)

    def find_batch(self, metadata_key, value, created_after):
        """The batch whose metadata[key] == value, looking back to `created_after` (a Unix time)."""
        with _faults_as_provider_fault("batches.list"):
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < created_after:
                    return None
                if (batch.metadata or {}).get(metadata_key) == value:
                    return batch
        return None

    def iter_file_lines(self, file_id):
        """Yield the lines of a provider file as bytes, streamed: never the whole file in memory."""
        with _faults_as_provider_fault("files.content"):
            with self.client.files.with_streaming_response.content(file_id) as response:
                tail = b""
                for chunk in response.iter_bytes(STREAM_CHUNK_BYTES):
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield line
                if tail.strip():
                    yield tail


@lru_cache(maxsize=4)
def _provider(base_url, api_key, timeout):
    return BatchProvider(base_url, api_key, timeout)


def get_provider():
    """The provider configured in settings (cached per configuration, so tests can swap it)."""
    return _provider(settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY, settings.OPENAI_TIMEOUT_SECONDS)
