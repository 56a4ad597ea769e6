"""`ksdiff-runtime serve`: the runtime server, its audio inputs and sources."""
