"""Backbone adapters: each module builds a model family and returns an object that satisfies
`vader.protocols.Backbone`. Add one by writing a builder here and a YAML under conf/backbone/."""
