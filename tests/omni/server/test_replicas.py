"""`omni serve --replicas 2` on a local Ray instance: two replicas of the tiny checkpoint behind Ray's
HTTP proxy answer the official openai client (streamed speech included), share the work, keep
multi-turn conversations consistent across replicas (the transcripts of spoken replies live in one
shared actor), aggregate /stats and /metrics, and survive a replica killed mid-load.

Slow (Ray and two model replicas start in about a minute): marked `slow`, part of the default suite."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from omni.cli import build_parser
from omni.errors import InputError
from omni.server.replicas import TRANSCRIPTS_ACTOR, plan_from_args
from tests.omni.server.conftest import greedy

pytestmark = pytest.mark.slow
MODEL = "omni-tiny"


def _serve_args(checkpoint, *extra: str):
    return build_parser().parse_args(["serve", str(checkpoint), "--served-model-name", MODEL, "--dtype", "fp32",
                                      "--default-max-tokens", "8", "--max-batch", "4", "--kv-gb", "1",
                                      "--cache-gb", "0.25", *extra])


def test_replica_plan_checks_its_flags(tiny_checkpoint):
    assert plan_from_args(_serve_args(tiny_checkpoint)) is None  # no flags: one uvicorn process
    plan = plan_from_args(_serve_args(tiny_checkpoint, "--replicas", "3", "--replica-cpus", "2",
                                      "--max-concurrent", "5", "--realtime-max-sessions", "2"))
    options = plan.deployment_options()
    assert options["num_replicas"] == 3 and plan.threads == 2
    assert options["max_ongoing_requests"] == 7  # running replies + realtime sessions: Ray routes away when full
    assert options["ray_actor_options"]["num_cpus"] == 2
    scaled = plan_from_args(_serve_args(tiny_checkpoint, "--autoscale", "1:4")).deployment_options()
    assert scaled["autoscaling_config"]["min_replicas"] == 1 and scaled["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in scaled
    for bad, message in ((("--autoscale", "4"), "MIN:MAX"), (("--autoscale", "3:1"), "MIN <= MAX"),
                         (("--replicas", "0"), ">= 1"), (("--replicas", "2", "--autoscale", "1:2"), "not both"),
                         (("--replicas", "2", "--replica-cpus", "0"), "replica-cpus")):
        with pytest.raises(InputError, match=message):
            plan_from_args(_serve_args(tiny_checkpoint, *bad))


def test_the_deployment_files_are_valid_serve_configs(tiny_checkpoint):
    """deploy/serve.yaml and the RayService's serveConfigV2 pass Ray's own schema, and their
    application builder makes omni's deployment from their args (here on the tiny checkpoint)."""
    from pathlib import Path

    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from omni.server.replicas import application

    deploy = Path(__file__).resolve().parents[3] / "deploy"
    serve_file = yaml.safe_load((deploy / "serve.yaml").read_text())
    service = yaml.safe_load((deploy / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    for config in (serve_file, yaml.safe_load(service["spec"]["serveConfigV2"])):
        schema = ServeDeploySchema.model_validate(config)
        app = schema.applications[0]
        assert app.import_path == "omni.server.replicas:application"
        assert "--autoscale" in app.args["serve_args"] and app.args["model"]
        built = application({"model": str(tiny_checkpoint), "serve_args": ["--autoscale", "1:4"]})
        assert isinstance(built, Application)
    with pytest.raises(InputError, match="model"):
        application({"serve_args": []})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(tiny_checkpoint):
    import ray
    from ray import serve

    from omni.server.replicas import DEPLOYMENT, NAMESPACE, build_application

    ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = _serve_args(tiny_checkpoint, "--replicas", "2", "--replica-cpus", "1", "--max-concurrent", "4",
                       "--replica-pin-cores")
    serve.run(build_application(args, plan_from_args(args)), name=DEPLOYMENT, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _openai(base: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=120, max_retries=0)


def _spoken(client, messages, max_tokens=6):
    """A streamed spoken reply: (audio id, transcript, pcm16 bytes)."""
    import base64

    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
                                            modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "pcm16"},
                                            seed=3, **greedy())
    audio_id, transcript, pcm = None, "", b""
    for chunk in stream:
        audio = chunk.choices[0].delta.audio if chunk.choices else None
        if audio is not None:
            audio_id = audio.id or audio_id
            transcript += audio.transcript or ""
            pcm += base64.b64decode(audio.data) if audio.data else b""
    return audio_id, transcript, pcm


def _per_replica(base: str) -> list[dict]:
    body = httpx.get(f"{base}/stats", timeout=30).json()
    assert body["cluster"]["replicas"] == len(body["cluster"]["per_replica"])
    return body["cluster"]["per_replica"]


def test_two_replicas_answer_the_openai_client_and_share_the_work(deployment):
    client = _openai(deployment)
    audio_id, transcript, pcm = _spoken(client, [{"role": "user", "content": "Say hello."}])
    assert audio_id and transcript and len(pcm) > 0 and len(pcm) % 2 == 0
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6, **greedy()),
            range(8)))
    assert all(r.choices[0].message.content for r in replies)
    replicas = _per_replica(deployment)
    assert len(replicas) == 2 and len({r["replica"] for r in replicas}) == 2
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:  # --replica-pin-cores: one core each (local ranks 0 and 1), never the same
        assert sorted(tuple(r["cores"]) for r in replicas) == [(allowed[0],), (allowed[1],)], replicas
    # both replicas finished replies: Ray spread the concurrent requests
    assert all(sum(r["finished"].values()) >= 1 for r in replicas), replicas
    assert sum(sum(r["finished"].values()) for r in replicas) >= 9
    assert httpx.get(f"{deployment}/health", timeout=30).json()["status"] == "ok"


def test_metrics_give_every_replica_once_per_family(deployment):
    text = httpx.get(f"{deployment}/metrics", timeout=30).text
    assert text.count("# TYPE omni_requests_finished_total counter") == 1
    replicas = {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("omni_requests_running{")}
    assert len(replicas) == 2
    assert 'omni_time_to_first_audio_seconds_bucket{replica="' in text and "le=\"+Inf\"" in text


def test_a_conversation_through_two_replicas_equals_one_process(deployment, served_model):
    """Turn 2 cites turn 1's spoken reply by its audio id; sent several times at once it lands on
    both replicas, and every answer equals the one-process server's: the replica that did not speak
    turn 1 read its transcript from the shared actor (without it that replica answers 400)."""
    from omni.server.app import ServerConfig
    from tests.omni.server.conftest import start_server

    client = _openai(deployment)
    first = [{"role": "user", "content": "Tell me about the sea."}]
    audio_id, transcript, _ = _spoken(client, first)
    second = first + [{"role": "assistant", "audio": {"id": audio_id}},
                      {"role": "user", "content": "And the sky?"}]
    before = {r["replica"]: sum(r["finished"].values()) for r in _per_replica(deployment)}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(
            model=MODEL, messages=second, max_tokens=6, **greedy()).choices[0].message.content, range(6)))
    after = {r["replica"]: sum(r["finished"].values()) for r in _per_replica(deployment)}
    assert all(after[replica] > before[replica] for replica in before), (before, after)  # both served turn 2

    alone = start_server(served_model, ServerConfig(model_name=MODEL, default_max_tokens=8))
    try:
        single = alone.openai()
        audio_id_alone, transcript_alone, _ = _spoken(single, first)
        assert transcript_alone == transcript
        second_alone = first + [{"role": "assistant", "audio": {"id": audio_id_alone}},
                                {"role": "user", "content": "And the sky?"}]
        expected = single.chat.completions.create(model=MODEL, messages=second_alone, max_tokens=6,
                                                  **greedy()).choices[0].message.content
    finally:
        alone.stop()
    assert answers == [expected] * 6


def test_a_realtime_connection_through_the_proxy_speaks_and_stays_on_its_replica(deployment):
    """The Realtime WebSocket through Ray's proxy: two spoken turns on one connection, the second
    continuing the first's conversation (its cache lives on the replica the connection stays on)."""
    from openai import AsyncOpenAI

    async def scenario():
        client = AsyncOpenAI(base_url=f"{deployment}/v1", websocket_base_url=f"{deployment.replace('http', 'ws')}/v1",
                             api_key="unused", max_retries=0)
        turns = []
        async with client.realtime.connect(model=MODEL) as connection:
            assert (await connection.recv()).type == "session.created"
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 4})
            for text in ("Hello there.", "Tell me more."):
                await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                                "content": [{"type": "input_text", "text": text}]})
                await connection.response.create()
                events = []
                while not events or events[-1].type != "response.done":
                    events.append(await asyncio.wait_for(connection.recv(), 120))
                turns.append(events)
        return turns

    turns = asyncio.run(asyncio.wait_for(scenario(), 300))
    for events in turns:
        assert any(e.type == "response.output_audio.delta" for e in events)
        assert events[-1].response.status in ("completed", "incomplete")
    # the second turn continued the first's session and cache on the same replica: only its own new
    # tokens were read (a fresh session elsewhere would read the system prompt and both turns)
    assert turns[1][-1].response.usage.input_tokens < turns[0][-1].response.usage.input_tokens


def _replica_actors():
    import ray

    return [actor for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::") and "omni" in actor["name"]]


def test_a_replica_killed_mid_load_loses_no_unstarted_request(deployment):
    import ray
    from ray import serve

    async def one(client: httpx.AsyncClient, i: int) -> tuple[bool, int | None, bool]:
        """(had a first byte, status, completed)"""
        started = False
        try:
            async with client.stream("POST", "/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": f"Story {i}."}], "max_tokens": 8,
                    "temperature": 0, "stream": True}) as response:
                if response.status_code != 200:
                    return False, response.status_code, False
                body = b""
                async for piece in response.aiter_bytes():
                    started = True
                    body += piece
                return started, 200, body.rstrip().endswith(b"data: [DONE]")
        except httpx.HTTPError:
            return started, None, False

    async def load() -> list:
        async with httpx.AsyncClient(base_url=deployment, timeout=httpx.Timeout(120.0)) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(8)]
            await asyncio.sleep(0.3)
            victim = _replica_actors()[0]
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)

    outcomes = asyncio.run(load())
    for started, status, completed in outcomes:
        if not started:  # never streamed: retried elsewhere (complete) or told clearly (503)
            assert completed or status == 503, outcomes
    assert sum(completed for _, _, completed in outcomes) >= 4, outcomes  # the other replica kept serving
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # Ray replaces the killed replica
        status = serve.status().applications["omni"].deployments["omni"]
        if status.replica_states.get("RUNNING", 0) == 2 and len(_replica_actors()) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the killed replica was not replaced: {serve.status()}")
    assert _openai(deployment).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi."}],
                                                       max_tokens=4, **greedy()).choices[0].message.content
    assert ray.get_actor(TRANSCRIPTS_ACTOR, namespace="omni") is not None  # shared state outlived the replica


def test_stopping_the_deployment_lets_a_running_reply_finish(deployment):
    """Graceful shutdown: the deployment is deleted while a spoken reply streams; the reply still
    ends with [DONE]. (Last in this module: it takes the deployment down.)"""
    import threading

    from ray import serve

    from omni.server.replicas import DEPLOYMENT

    lines: list[str] = []
    first_byte = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{deployment}/v1/chat/completions", timeout=120, json={
                "model": MODEL, "messages": [{"role": "user", "content": "A long story."}], "max_tokens": 16,
                "temperature": 0, "stream": True, "modalities": ["text", "audio"],
                "audio": {"voice": "Chelsie", "format": "pcm16"}}) as response:
            for line in response.iter_lines():
                first_byte.set()
                if line.strip():
                    lines.append(line)

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_byte.wait(60)
    serve.delete(DEPLOYMENT)  # blocks until the replicas are gone: they drain first
    reader.join(timeout=120)
    assert not reader.is_alive() and lines and lines[-1] == "data: [DONE]", lines[-3:]
