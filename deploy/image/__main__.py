"""`python -m deploy.image ROLE [ARGS]`: the image's entrypoint (see entrypoint.py)."""

from deploy.image.entrypoint import main

if __name__ == "__main__":
    main()
