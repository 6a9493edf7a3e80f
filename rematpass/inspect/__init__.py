"""Reading a plan: per-graph reports, dumps on disk, the HTML page and the ``rematpass`` console script."""
