"""Storage proven by challenges (docs/protocol.md §10): the gateway streams each
device a plot derived from a seed only it knows, then challenges random blocks.

core: sans-I/O plot, commands, answers and their check; standing: a device's
proven storage and challenge counts over its audit window; stage: the I/O
(MQTT, timeouts, the database) run by the gateway.
"""
