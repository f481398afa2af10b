"""The shared base: config models, tables, statistics, failure classes, the HTTP server thread and the
result queries several layers read. The only part of monitor/ that alerts/ and retrain/ import."""
