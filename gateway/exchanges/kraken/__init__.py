"""The Kraken adapter: REST (signing, balances, tokens, trades), WS v2 executions, asset codes."""
