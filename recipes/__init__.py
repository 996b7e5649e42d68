"""Training and evaluation entry points, YAML recipes and accelerate configs."""
