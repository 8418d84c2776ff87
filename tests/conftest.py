import os

from hypothesis import HealthCheck, settings

# "ci" runs thousands of examples per property in CI; "long" is for local soak
# runs (KVMAP_HYPOTHESIS=long pytest); "dev" is quick.
settings.register_profile("ci", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("KVMAP_HYPOTHESIS", "ci"))

# The loopback S3 API server and HTTP Range server, started once per session on first use.
from tests.servers import http_server, s3_server  # noqa: E402

__all__ = ["http_server", "s3_server"]
