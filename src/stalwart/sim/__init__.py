"""The checkpoint-interval simulator: the engine, failure models and cluster scaling."""
