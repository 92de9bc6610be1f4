"""One module per endpoint: each parses its request and hands it to the serving code."""
