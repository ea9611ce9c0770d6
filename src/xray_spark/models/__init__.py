"""Pieces fitted at training time that travel inside the saved PipelineModel beside the head: the file
properties of an image (header only) and the shift reference that says whether an image resembles the
training images.

Floor 3 (see DESIGN.md's floors): imports core modules, `data` and `features`; never `train`, `scoring`,
`serving` or the CLI, which import from here.
"""
