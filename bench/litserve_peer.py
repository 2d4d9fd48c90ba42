"""The LitServe peer of the serving benchmark: POST /predict {"image": base64 frame}.

`python litserve_peer.py PORT WORKERS MAX_BATCH BATCH_TIMEOUT_S`; the model and thread count
come from the environment as for every peer (see peers.py). LitServe starts its inference
workers with spawn, so the API class lives at module level.
"""

from __future__ import annotations

import base64
import sys

import litserve as ls
import numpy as np
import peers


class ResNet(ls.LitAPI):  # type: ignore[misc]
    """One onnxruntime session per inference worker; LitServe forms the batches."""

    def setup(self, device: str) -> None:
        model, threads, fp16 = peers.env()
        self.session = peers.session(model, threads)
        self.prep = peers.Preprocess(fp16)

    def decode_request(self, request: dict[str, str]) -> np.ndarray:
        data = base64.b64decode(request["image"])
        return np.frombuffer(data, np.uint8).reshape(peers.SIZE, peers.SIZE, 3)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.prep(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict[str, float | int]:
        return peers.top1(logits)


def main(argv: list[str]) -> int:
    port, workers, max_batch, timeout_s = int(argv[0]), int(argv[1]), int(argv[2]), float(argv[3])
    api = ResNet(max_batch_size=max_batch, batch_timeout=timeout_s)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
