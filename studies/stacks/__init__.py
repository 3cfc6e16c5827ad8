"""maml.py on other stacks: Flax NNX with optax, and Equinox with optax (docs/stack.md)."""
