"""`python -m bench [B1 B2 B3 B6 B7 B8 B9 B10 B11 B12]`: start the services, a fresh bench database, workers; run;
stop."""

from __future__ import annotations

import os
import socket
import sys
import time

from bench import stack
from bench.common import eager_env

ALL = ("B1", "B2", "B3", "B6", "B7", "B8", "B9", "B10", "B11", "B12")


def main(argv: list[str]) -> int:
    selected = [name.upper() for name in argv] or list(ALL)
    unknown = [name for name in selected if name not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    began = time.monotonic()
    with stack.services() as svc:
        stack.database_recreate(svc)
        os.environ.update(svc.env())
        import django

        django.setup()

        import psycopg

        import bench.steps  # noqa: F401  (the bench process validates and publishes bench.cpu workflows)
        from bench.peer import PEER_RUN_TABLE_SQL, PEER_TABLE_SQL

        # The peers' tables belong to the database's owner, like the product's; the owner's default privileges
        # let the application's role (the workers, this process) write them.
        with psycopg.connect(svc.owner_url, autocommit=True) as owner:
            owner.execute(PEER_TABLE_SQL)
            owner.execute(PEER_RUN_TABLE_SQL)
        settings = stack.postgres_settings(svc)
        origin = (
            "its own stack (deploy.devstack services)" if svc.launched else "DATABASE_URL/REDIS_URL from the caller"
        )
        print(f"\nServices: {origin}; database {stack.BENCH_DATABASE} migrated fresh; 2 CPUs: {os.cpu_count()}")
        print("PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        if settings["fsync"] == "off" or settings["synchronous_commit"] == "off":
            print("NOTE: durability is off on this server, which flatters every commit (see bench/README.md).")
        lines: list[str] = []
        b1_result = None
        serial = [name for name in selected if name in ("B1", "B2", "B8")]
        if "B1" in serial:
            from bench import b1

            # Off first, so that the eager block's commit counts feed B8 below.
            for eager in (False, True):
                with stack.workers(svc, [stack.ALL_QUEUES_WORKER], "b1", env=eager_env(eager)):
                    print(
                        f"\nWorker: celery -A bench.worker worker {' '.join(stack.ALL_QUEUES_WORKER)}"
                        f" ({eager_env(eager)})",
                        flush=True,
                    )
                    b1_result = b1.run(svc, eager=eager)
                    lines += [g.line() for g in b1_result.goals]
        if "B2" in serial or "B8" in serial:
            with stack.workers(svc, [stack.ALL_QUEUES_WORKER], "b2"):
                print(f"\nWorker: celery -A bench.worker worker {' '.join(stack.ALL_QUEUES_WORKER)}", flush=True)
                if "B2" in serial:
                    from bench import b2

                    lines += [g.line() for g in b2.run(svc)]
                if "B8" in serial:
                    from bench import b8

                    goals = b8.run(
                        svc,
                        b1_step_ms=b1_result.product_step_ms if b1_result else None,
                        product_commits=b1_result.product_commits if b1_result else None,
                    )
                    lines += [g.line() for g in goals]
        if "B3" in selected:
            with stack.workers(svc, stack.DEFAULT_DEPLOYMENT, "b3"):
                print("\nWorkers: the default deployment (engine prefork -c2, inference threads -c16)", flush=True)
                from bench import b3

                lines += [g.line() for g in b3.run(svc, f"engine@{socket.gethostname()}")]
        if "B6" in selected:
            from bench import b6

            # B6 starts its own inference server and, pointed at it, its own two workers.
            lines += [g.line() for g in b6.run(svc)]
        if "B9" in selected:
            from bench import b9

            # B9 drives the builder in this process; it starts no runs, so it needs no workers.
            lines += [g.line() for g in b9.run(svc)]
        if "B10" in selected:
            from bench import b10

            # B10 claims and lists approval items in this process; the runs stay parked, so no workers.
            lines += [g.line() for g in b10.run(svc)]
        if "B11" in selected:
            from bench import b11

            # B11 reads the rollups and rebuilds raw days in this process; it starts no runs, so no workers.
            lines += [g.line() for g in b11.run(svc)]
        if "B12" in selected:
            from bench import b12

            # B12 starts its own scripted inference server and, pointed at it, the default deployment's workers.
            lines += [g.line() for g in b12.run(svc)]
        # --- B7 (retrieval on pgvector) ---
        if "B7" in selected:
            from bench import b7

            # B7 loads 100,000 passages and queries them in this process; its ingest starts the engine worker.
            lines += [g.line() for g in b7.run(svc)]
        # --- end B7 ---
        print(f"\n=== summary ({time.monotonic() - began:.0f} s) ===")
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
