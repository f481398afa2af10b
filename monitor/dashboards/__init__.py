"""specwatch's Grafana dashboard (specwatch.json) and the code that writes it (build.py)."""
