"""What the service counts, below everything that reads or writes it: the server records its
Prometheus series here, ``GET /metrics`` exports them and the console's rates read them, so
neither the console nor protect has to import the server."""
