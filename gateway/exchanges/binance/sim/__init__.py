"""A Binance-compatible spot simulator on loopback (REST and the WebSocket API), for tests,
the demo and benchmarks; the gateway's service code never imports it."""
