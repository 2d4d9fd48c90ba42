"""Coverage-guided fuzzing of the request decoder with atheris (needs the `fuzz` extra).

    python tests/property/fuzz_request_decoder.py tests/property/corpus/request_decoder \
        -max_total_time=300

New inputs that reach new code are written into the corpus directory; keep the ones worth
keeping (`-merge=1` into a fresh directory minimises it) and commit them: every test run
replays the corpus (`test_request_decoder_corpus.py`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["vigil"]):
    from request_decoder import Decoder, check

_DECODER = Decoder()


def _one(data: bytes) -> None:
    check(_DECODER, data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, _one)
    atheris.Fuzz()
