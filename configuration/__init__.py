"""Configurations: one strict `PreTrainedConfig` per videoadapt model and patch."""
