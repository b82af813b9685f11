"""atheris target: job JSON bodies as the API receives them.

Run: ``python fuzz/fuzz_job_json.py [corpus_dir]`` (needs the ``fuzz`` extra).
The module imports without atheris so that the test suite can drive
:func:`TestOneInput` over Hypothesis inputs.

Contract under test: decoding, validating, merging and re-encoding any body
raises nothing but :class:`dkron.model.ValidationError` (``PayloadError`` is
a subclass), and an accepted job survives the state machine's CBOR round trip
and JSON output.
"""

from __future__ import annotations

import json
import sys

from dkron.model import (
    ValidationError,
    job_from_json,
    job_from_json_bytes,
    job_to_json,
    merge_job,
    validate_job,
)
from dkron.state import UpsertJob, decode_command, encode_command


def TestOneInput(data: bytes) -> None:
    try:
        job = job_from_json_bytes(data)
        validate_job(job)
    except ValidationError:
        return
    out = job_to_json(merge_job(job, job))
    json.dumps(out)
    again = job_from_json(json.loads(json.dumps(out)))
    assert job_to_json(again) == out
    cmd = decode_command(encode_command(UpsertJob(job)))
    assert isinstance(cmd, UpsertJob) and cmd.job == job


def main() -> None:
    import atheris

    atheris.instrument_all()  # the dkron modules are already imported above
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
