"""Experiment configs: each file's ``get_config()`` returns a ``train.config.TrainConfig``."""
