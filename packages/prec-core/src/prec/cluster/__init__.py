"""Process-group plumbing under the strategies: the launch environment, rendezvous, cluster detection, data
sharding across ranks and DTensor shards."""
