"""media-transcode and media-pipeline: Blu-ray rips in staging -> HEVC files in the library.

Standard library only: this package runs inside a Debian 12 container with Debian's
python3 and no pip (docs/adr/0003-media-pipeline.md).
"""

__version__ = "0.1.0"
