"""Hypothesis profiles shared by the whole suite.

``dev`` is quick for the edit-test loop, ``ci`` is what `.ci/run` uses (CI=true
selects it), ``thorough`` explores far more fault schedules and is run by hand:
``HYPOTHESIS_PROFILE=thorough python -m pytest tests/proto_sansio``.
Simulation tests scale their example counts from these profiles.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK)
# CI explores a fixed set of examples (derandomized) so that a run is
# reproducible and a green main stays green; exploring new schedules is what
# ``thorough`` (random, far larger) is for.  Failures it finds become @examples.
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=_SLOW_OK, derandomize=True
)
settings.register_profile(
    "thorough", max_examples=5000, deadline=None, suppress_health_check=_SLOW_OK
)

_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))
