"""Config schemas, command-line override checks and OmegaConf resolvers."""
