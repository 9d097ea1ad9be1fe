"""``python -m pipeline.cli``: the skysieve command line (batch jobs run it this way)."""

from pipeline.cli import main

main()
