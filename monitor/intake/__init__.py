"""Traffic intake: parse, validate, redact, segment, sample, store — losing nothing."""
