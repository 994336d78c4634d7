"""Pictures: 2-D embedding maps (plots) and TensorBoard's embedding projector (projector)."""
