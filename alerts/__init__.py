"""Alert lifecycle and notifiers; knows nothing of torch or the decoder."""
