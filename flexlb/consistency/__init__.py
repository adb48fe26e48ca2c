"""High availability: master election on ZooKeeper and what replicas tell each other."""
