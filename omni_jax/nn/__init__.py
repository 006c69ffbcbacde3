"""Pure-function neural-network primitives shared by every model."""
