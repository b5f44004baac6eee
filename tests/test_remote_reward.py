"""Issue 21, item 4: a reward served apart from training (rewards/remote.py, vader/serve_reward.py),
against servers the tests start on 127.0.0.1: our own serve command, and fake VideoAlign and
OpenAI-compatible (VLM) endpoints; and the failures that must never become a made-up score."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rewards.colorfulness import Colorfulness
from rewards.remote import RemoteReward, RemoteRewardError
from tests.conftest import ROOT, free_port

FRAMES = torch.rand(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a red car", "a cat", "a boat"]


@pytest.fixture(scope="module")
def served():
    """`python -m vader.serve_reward reward_fn=colorfulness`, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vader.serve_reward", "reward_fn=colorfulness", "--port", str(port)],
                            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                health = json.loads(r.read())
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read())
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the reward server did not start in 30 s")
    yield url, health
    proc.terminate()
    proc.wait(10)


def fake_server(answer):
    """A server on 127.0.0.1 that answers each POST with `answer(body) -> (code, text)`."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            code, text = answer(body)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_our_served_reward_scores_what_the_in_process_one_does(served):
    url, health = served
    assert health["reward"] == "colorfulness"
    local, _ = Colorfulness()(FRAMES, PROMPTS)
    exact, info = RemoteReward(f"{url}/score", encoding="float32")(FRAMES, PROMPTS)
    torch.testing.assert_close(exact, local, rtol=0, atol=1e-6)
    assert info["remote_retries"] == 0 and info["colorfulness_mean"] == pytest.approx(float(local.mean()), abs=1e-6)
    rounded, _ = RemoteReward(f"{url}/score")(FRAMES, PROMPTS)  # uint8, the default: a saved video's precision
    torch.testing.assert_close(rounded, local, rtol=0, atol=5e-3)
    # mp4 (lossy, padded to 16-pixel blocks, cut back by the server) on frames a codec keeps well.
    from tests.video_data import square_video

    smooth = torch.stack([square_video(c, 4, 20) for c in ("red", "green", "blue")])
    coded, _ = RemoteReward(f"{url}/score", encoding="mp4")(smooth, PROMPTS)
    torch.testing.assert_close(coded, Colorfulness()(smooth, PROMPTS)[0], rtol=0.1, atol=0.02)
    with pytest.raises(RemoteRewardError, match="HTTP 400: .*2 videos for 3 prompts"):
        RemoteReward(f"{url}/score")._post({"prompts": PROMPTS, "videos": ["x", "y"]})


def test_grpo_trains_against_the_served_reward_with_the_in_process_scores(served, make_trainer, tmp_path):
    url, _ = served
    grpo = ["algorithm=grpo", "algorithm.eta=1.0", "algorithm.group_size=2", "algorithm.groups_per_step=2",
            "train_batch_size=2", "num_steps=2"]
    plans = {}
    for name, reward in (("local", ["reward_fn=colorfulness"]),
                         ("remote", ["reward_fn=remote", f"reward_fn.url={url}/score", "reward_fn.encoding=float32"])):
        trainer = make_trainer(*grpo, *reward, run_dir=tmp_path / name)
        trainer.setup()
        plans[name] = trainer.algorithm.plan(0).numbers
        if name == "remote":
            before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
            trainer.train()
            assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())
    for key in ("reward", "reward_std", "advantage_max"):
        assert plans["remote"][key] == pytest.approx(plans["local"][key], rel=1e-5, abs=1e-7), key


def test_videoalign_and_chat_endpoints_are_read_as_they_answer():
    server, url = fake_server(lambda body: (200, json.dumps({"rewards": [
        {"VQ": 1.0, "MQ": 2.0, "TA": 3.0, "Overall": 10.0 + i} for i in range(len(body["videos"]))]})))
    values, info = RemoteReward(url, protocol="videoalign")(FRAMES, PROMPTS)
    assert values.tolist() == [10.0, 11.0, 12.0] and info["videoalign_MQ"] == 2.0
    assert RemoteReward(url, protocol="videoalign", score_key="TA")(FRAMES, PROMPTS)[0].tolist() == [3.0] * 3
    server.shutdown()
    seen = []

    def chat(body):  # a VLM that counts the frames it was shown and names the prompt
        content = body["messages"][0]["content"]
        seen.append((body["model"], content[0]["text"], sum(c["type"] == "image_url" for c in content)))
        return 200, json.dumps({"choices": [{"message": {"content": f"Looks fine. Final Score: {len(seen)}.5"}}]})

    server, url = fake_server(chat)
    values, _ = RemoteReward(url, protocol="openai", model="unified-reward", max_frames=3)(FRAMES, PROMPTS)
    assert values.tolist() == [1.5, 2.5, 3.5]
    assert seen[0][0] == "unified-reward" and '"a red car"' in seen[0][1] and seen[0][2] == 3
    server.shutdown()


@pytest.mark.parametrize("answer, match", [
    (lambda body: (200, "<html>not json</html>"), "not JSON"),
    (lambda body: (200, json.dumps({"rewards": [1.0]})), "1 scores for 3 videos"),
    (lambda body: (200, json.dumps({"rewards": [1.0, float("nan"), 2.0]})), "non-finite"),
    (lambda body: (200, json.dumps({"rewards": [1.0, "high", 2.0]})), "scores"),
    (lambda body: (200, json.dumps({"scores": [1, 2, 3]})), "a list 'rewards'"),
    (lambda body: (404, "no such route"), "refused the request: HTTP 404"),
])
def test_garbage_is_an_error_never_a_score(answer, match):
    server, url = fake_server(answer)
    with pytest.raises(RemoteRewardError, match=match):
        RemoteReward(url, backoff=0.0)(FRAMES, PROMPTS)
    server.shutdown()


def test_a_server_that_is_down_or_slow_is_retried_with_backoff_then_named():
    url = f"http://127.0.0.1:{free_port()}/score"  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match=f"{url} gave no answer after 3 tries.*serve_reward"):
        RemoteReward(url, retries=2, backoff=0.1)(FRAMES, PROMPTS)
    assert 0.3 <= time.perf_counter() - start < 5  # waited 0.1 + 0.2 s between the tries
    calls = []

    def flaky(body):  # fails twice, then answers
        calls.append(1)
        if len(calls) < 3:
            return 503, "busy"
        return 200, json.dumps({"rewards": [1.0, 2.0, 3.0]})

    server, url = fake_server(flaky)
    values, info = RemoteReward(url, retries=3, backoff=0.0)(FRAMES, PROMPTS)
    assert values.tolist() == [1.0, 2.0, 3.0] and info["remote_retries"] == 2
    server.shutdown()
    server, url = fake_server(lambda body: (time.sleep(1.0), (200, json.dumps({"rewards": [1, 2, 3]})))[1])
    with pytest.raises(RemoteRewardError, match="gave no answer after 2 tries .timeout 0.2 s"):
        RemoteReward(url, timeout=0.2, retries=1, backoff=0.0)(FRAMES, PROMPTS)
    server.shutdown()


def test_bad_settings_are_refused_before_any_request():
    with pytest.raises(ValueError, match="reward_fn.url"):
        RemoteReward("rewardhost:8008")
    with pytest.raises(ValueError, match="reward_fn.protocol='grpc'"):
        RemoteReward("http://x/score", protocol="grpc")
    with pytest.raises(ValueError, match="needs reward_fn.model"):
        RemoteReward("http://x/v1/chat/completions", protocol="openai")
