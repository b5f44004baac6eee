"""Serve any of our rewards over HTTP, for `reward_fn=remote` (rewards/remote.py) on other machines:

    python -m vader.serve_reward reward_fn=aesthetic --host 0.0.0.0 --port 8008
    python -m vader.serve_reward reward_fn=hps reward_fn.frames=4 --port 8009 --device cuda:1

POST /score  {"prompts": [...], "encoding": "uint8", "size": [H, W], "videos": [...]}  (vader.io.wire)
          -> {"rewards": [...], "info": {...}}; a bad request gets HTTP 400 with the reason.
GET /health -> {"reward": <name>, "frames": ..., "device": ...}

The reward is composed from conf/reward_fn/ as train.py composes it (so its keys are checked the
same way) and scores one request at a time, under no_grad. The standard library's HTTP server:
nothing to install, one request at a time; run several servers behind a balancer to scale out.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from vader.io.wire import ENCODINGS, decode_video
from vader.protocols import info_numbers


def load_reward(overrides: list[str]) -> tuple[str, Any]:
    """The reward `reward_fn=<name> reward_fn.<key>=...` names, built as train.py builds it."""
    from hydra import compose, initialize_config_dir

    from vader.build import build
    from vader.config import CONF_DIR, check_targets, register_configs

    if not any(o.startswith("reward_fn=") for o in overrides):
        raise SystemExit("name the reward to serve: python -m vader.serve_reward reward_fn=<name> [--port N]")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    check_targets(cfg.reward_fn, "reward_fn")
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("reward_fn="))
    return name, build(cfg.reward_fn)


def score(reward: Any, body: Any, device: torch.device) -> dict[str, Any]:
    """One request's rewards; ValueError for a request that is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("videos"), list) or not isinstance(body.get("prompts"), list):
        raise ValueError("expected an object with lists 'prompts' and 'videos'")
    encoding = body.get("encoding", "uint8")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r}: choose one of {ENCODINGS}")
    if len(body["videos"]) != len(body["prompts"]) or not body["videos"]:
        raise ValueError(f"{len(body['videos'])} videos for {len(body['prompts'])} prompts")
    size = body.get("size")  # an mp4's frames come back padded to whole 16-pixel blocks
    if size is not None and (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) for v in size)):
        raise ValueError(f"size {size!r}: expected [height, width]")
    videos = [decode_video(v, encoding, tuple(size) if size else None) for v in body["videos"]]
    if len({tuple(v.shape) for v in videos}) != 1:
        raise ValueError(f"videos of different shapes {sorted({tuple(v.shape) for v in videos})}")
    with torch.no_grad():
        values, info = reward(torch.stack(videos).to(device), [str(p) for p in body["prompts"]])
    numbers = {k: float(v) for k, v in info_numbers(info).items()}
    return {"rewards": values.detach().float().cpu().tolist(), "info": numbers}


def make_server(reward: Any, name: str, host: str, port: int, device: torch.device) -> ThreadingHTTPServer:
    lock = threading.Lock()  # a reward model is not assumed thread-safe: one request at a time

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802  (the standard library's name)
            if self.path.rstrip("/") != "/health":
                return self._send(404, {"error": "GET /health or POST /score"})
            self._send(200, {"reward": name, "frames": getattr(reward, "frames", "all"), "device": str(device)})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/score":
                return self._send(404, {"error": "POST /score"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    self._send(200, score(reward, body, device))
            except (ValueError, json.JSONDecodeError) as err:
                self._send(400, {"error": str(err)})

        def log_message(self, fmt: str, *args: Any) -> None:  # one quiet line per request on stderr
            sys.stderr.write(f"serve_reward: {self.address_string()} {fmt % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+", help="reward_fn=<name> and reward_fn.<key>=<value>")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    name, reward = load_reward(args.overrides)
    # The frames go to the serving device; the reward moves its models to them, as in training.
    device = torch.device(args.device)
    server = make_server(reward, name, args.host, args.port, device)
    print(f"serve_reward: {name} on http://{args.host}:{server.server_address[1]}/score", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
