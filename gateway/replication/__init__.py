"""Beyond one host: the journal carried through Redis to mirrors (``docs/replication.md``).

The gateway publishes (``--replicate``): :mod:`.publisher` tails the durable
journal files into one Redis stream and serves commands mirrors forward;
:mod:`.mirror` (``gateway mirror``) applies the stream to a local store with the
gateway's own reducer and forwards its clients' commands. :mod:`.redis` holds
what both sides agree on: key names, entry ids, the fenced scripts.
"""
