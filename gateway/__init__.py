"""The balance gateway: the single writer of one exchange account's balances."""
