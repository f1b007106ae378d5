-- Keep a new dead letter and index it, all at once (a MULTI on a Redis Cluster client
-- fails when it is the client's first command). KEYS[1] entries hash, KEYS[2] the index
-- of all, KEYS[3] the vendor's index; ARGV[1] id, ARGV[2] entry.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
