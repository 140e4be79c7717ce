from pipeline.methods.jst import search  # noqa: F401  (registers "jst")
