"""The embedded AIOS stack: every process the product needs, started and stopped as one supervised group.

    python -m deploy.devstack run                 PostgreSQL, Redis, the inference server, the catch-all SMTP
                                                  server, migrate, seed, the worker fleet (workers/fleet.py)
                                                  and the web server (`make run`)
    python -m deploy.devstack services            PostgreSQL, Redis, the inference server and the SMTP server only
    python -m deploy.devstack test -- CMD [ARG…]  the same services on test ports and data, then CMD (`make test`)

Each service can be replaced by an external one: with DATABASE_URL, REDIS_URL, AIOS_INFERENCE_URL or EMAIL_URL
set, that part is not started. Ports and the data directory are in deploy/.env.example; a `.env` file at the
repository root is read as well (variables already in the environment win).

Nothing from Django is imported here: migrate, seed_demo, the workers and the web server run as child
processes, so a broken settings module shows up as a failed child with its log rather than a launcher traceback.

The modules are also the house's one process toolkit: tests, benchmarks and the development inference server's
runner start their processes with `processes.ManagedProcess`, probe them with `probes`, and run PostgreSQL and
Redis with `postgres` and `services`.
"""

from __future__ import annotations

import sys

try:
    import psutil  # noqa: F401
except ImportError:  # pragma: no cover - only without the project's virtualenv
    sys.exit("deploy.devstack needs the project's virtualenv: start it with `make run` or `make test`.")
