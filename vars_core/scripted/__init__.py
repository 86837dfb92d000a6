"""The scripted world: a model-free simulated user and agent over a catalog of verifiable
preferences, for testing the personalization machinery deterministically."""
