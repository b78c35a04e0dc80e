"""Dataset configs (`get_config(preset)`), shipped in the wheel as `jaxprune.configs`."""
