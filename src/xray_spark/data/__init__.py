"""Images in: list any Hadoop folder with its labels (class folders or a manifest), decode PNG, JPEG and DICOM
to normalised luminance (no Spark), ingest into the images table with quarantine rows, find exact and near
copies (also across sources), join patients and copies into groups, split by group, and fetch the public
dataset sources.

Floor 1 of DESIGN.md's floors: may import only the core (the root modules paths, errors, logs, config,
tasks, tracking, session and spark_io).
"""
