-- dramatiq's dispatch.lua "enqueue" command without its worker-side preamble (heartbeat,
-- maintenance). KEYS: <ns>:<queue>.msgs, <ns>:<queue>. ARGV: redis message id, encoded
-- message. dramatiq's private layout: held by tests/integration/test_dramatiq_layout.py.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
