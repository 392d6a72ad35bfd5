"""The Binance spot adapter: signing, the account and trade REST calls, the user data stream."""
