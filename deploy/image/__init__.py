"""The production image: its build script (build.sh) and its entrypoint (entrypoint.py, `python -m deploy.image`)."""
