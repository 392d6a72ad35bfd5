"""Exchange adapters: each turns one exchange's REST and websocket APIs into our typed values."""
