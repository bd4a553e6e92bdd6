"""Claude Code (`claude -p`, Anthropic's agent CLI) as the gateway's client, offline: a tool round trip through real Envoy.

Opt-in (`make e2e-claude-code` installs the CLI with npm and runs this file). Claude Code is the strictest Anthropic
client there is: a 115 KB request of 24 tools, betas in `anthropic-beta` and the body's `context_management`
under them, `?beta=true` on the path, a streamed answer read event by event, then a second request carrying the
tool's result. Each provider mock refuses what its cloud refuses, so a run that ends with the file's secret word
proves the round trip in that provider's own API.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from extproc.mock.bedrock import BedrockState

from .harness import gateway_config, provider

pytestmark = pytest.mark.claude_code

ROOT = Path(__file__).resolve().parents[2]
#: The CLI this lane is pinned to, installed by the fixture with npm (or `CLAUDE_CODE_BIN`: one already installed).
VERSION = "2.1.197"
PREFIX = ROOT / ".cache" / "claude-code"
CLIENT_KEY = "sk-ant-client-not-forwarded"
SECRET = "pelican"
AWS_KEYS = {"aws_access_key_id": "AKIAMOCKMOCKMOCK0001", "aws_secret_access_key": "mock-secret-access-key", "aws_region_name": "us-east-1"}


@pytest.fixture(scope="module")
def claude_code() -> Path:
    """Claude Code's CLI, installed here on first use (npm; the package carries its own native binary)."""
    given = os.environ.get("CLAUDE_CODE_BIN")
    binary = Path(given) if given else PREFIX / "node_modules" / ".bin" / "claude"
    if not binary.exists() and not given:
        npm = shutil.which("npm")
        assert npm, "this lane needs Node.js and npm to install Claude Code's CLI"
        command = [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--loglevel=error", f"@anthropic-ai/claude-code@{VERSION}"]
        subprocess.run(command, check=True, timeout=600)
    assert binary.exists(), f"no Claude Code CLI at {binary}"
    return binary


def ask(binary: Path, port: int, model: str, workdir: Path, prompt: str) -> dict:
    """One `claude -p` run against the gateway, as a user runs it with ANTHROPIC_BASE_URL; its JSON result."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    environment = {
        "PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": CLIENT_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
    }  # fmt: skip
    command = [str(binary), "-p", prompt, "--model", model, "--allowedTools", "Read", "--output-format", "json"]
    done = subprocess.run(command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture
def notes(tmp_path) -> Path:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "notes.txt").write_text(f"secret-word: {SECRET}\n")
    return workdir


def read_notes(workdir: Path) -> tuple[str, dict]:
    return "Read", {"file_path": str(workdir / "notes.txt")}


def test_claude_code_reads_a_file_through_an_anthropic_provider(mocks, gateway, claude_code, notes):
    claude = mocks.start("claude", api="anthropic", use_tool=read_notes(notes))
    gw = gateway(gateway_config(provider("claude", "anthropic/claude-sonnet-4", claude, access_key="sk-ant-provider-0001")))

    result = ask(claude_code, gw.port, "anthropic/claude-sonnet-4", notes, "What is the secret word in notes.txt?")

    assert SECRET in result["result"] and result["is_error"] is False
    calls = [request for request in claude.received if request.json().get("tools")]
    assert len(calls) == 2, "the tool_use answer, then the request carrying its result"
    for request in calls:
        assert request.path == "/v1/messages?beta=true", "the path and its query as Claude Code sent them"
        assert request.header("x-api-key") == "sk-ant-provider-0001" and request.header("authorization") is None
        assert "context-management-2025-06-27" in (request.header("anthropic-beta") or ""), "the client's betas reach Anthropic"
    [result_block] = [block for block in calls[1].json()["messages"][-1]["content"] if block["type"] == "tool_result"]
    assert result_block["tool_use_id"] == "toolu_claude_1" and SECRET in json.dumps(result_block["content"])
    assert all(value != CLIENT_KEY for request in claude.received for _, value in request.headers)


def test_claude_code_reads_a_file_through_an_openai_provider_translated_both_ways(mocks, gateway, claude_code, notes):
    """Claude Code's model fails over from a rate-limited Anthropic provider to an OpenAI one: its stream, its tool call and its mid-conversation system turns, translated."""
    limited = mocks.start("limited", api="anthropic", status=429, retry_after="30")
    openai = mocks.start("openai", strict=True, use_tool=read_notes(notes))
    gw = gateway(
        gateway_config(
            provider("limited", "anthropic/claude-sonnet-4", limited, access_key="sk-ant-provider-0001", retry_policy={"fallback_models": ["openai/gpt-4o"]}),
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-provider-0002"),
        )
    )

    result = ask(claude_code, gw.port, "anthropic/claude-sonnet-4", notes, "What is the secret word in notes.txt?")

    assert SECRET in result["result"] and result["is_error"] is False
    assert limited.served == 1, "after its 429 the Anthropic provider cools down: the tool's round goes straight to OpenAI"
    calls = [request for request in openai.received if request.json().get("tools")]
    assert len(calls) == 2
    for request in calls:
        assert request.path == "/v1/chat/completions" and request.json()["model"] == "gpt-4o" and request.json()["stream"] is True
        assert request.header("authorization") == "Bearer sk-openai-provider-0002" and request.header("x-api-key") is None
        assert request.header("anthropic-beta") is None and request.header("anthropic-version") is None
        assert {"Read", "Bash"} <= {tool["function"]["name"] for tool in request.json()["tools"]}
    [tool_message] = [message for message in calls[1].json()["messages"] if message["role"] == "tool"]
    assert tool_message["tool_call_id"] == "call_openai_1" and SECRET in tool_message["content"]
    assert all(value != CLIENT_KEY for request in [*openai.received, *limited.received] for _, value in request.headers)


def test_claude_code_reads_a_file_through_claude_on_bedrock_with_its_betas_in_the_body(mocks, gateway, claude_code, notes):
    model = "bedrock/anthropic.claude-sonnet-4-20250514-v1:0"
    bedrock = mocks.start("bedrock", api="bedrock", bedrock=BedrockState(), use_tool=read_notes(notes))
    gw = gateway(gateway_config(provider("bedrock", model, bedrock, **AWS_KEYS)))

    result = ask(claude_code, gw.port, model, notes, "What is the secret word in notes.txt?")

    assert SECRET in result["result"] and result["is_error"] is False
    calls = [request for request in bedrock.received if request.json().get("tools")]
    assert [request.path for request in calls] == ["/model/anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream"] * 2
    for request in calls:
        assert request.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIAMOCKMOCKMOCK0001/")
        assert request.header("anthropic-beta") is None and request.header("x-api-key") is None
        assert "claude-code-20250219" not in request.json().get("anthropic_beta", []), "a beta Bedrock refuses is left out"
    assert SECRET in json.dumps(calls[1].json()["messages"][-1])
