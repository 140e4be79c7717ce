"""Joint search-and-training (JST); ``search`` registers the method "jst"."""
