"""The data layer: EmpatheticDialogues and EPITOME parsing, download, and cached preparation.

Start from :func:`prepare_datasets`; the parsers and the downloader are usable on their own.
"""

from pipeline.data.download import (
    ED_SHA256,
    ED_URL,
    EPITOME_BASE_URL,
    EPITOME_SHA256,
    download_all,
    download_ed,
    download_epitome,
    fetch,
    sha256_file,
)
from pipeline.data.ed import (
    Conversation,
    EDExample,
    EDSplit,
    build_examples,
    format_context,
    parse_ed,
    parse_ed_split,
    read_conversations,
)
from pipeline.data.epitome import (
    EPITOME_FILES,
    EPITOME_SPLITS,
    Conflict,
    EpitomeData,
    EpitomePair,
    level_distribution,
    read_epitome,
    resolve_level,
    split_epitome,
)
from pipeline.data.errors import BadRow, DataError, DownloadError, ParseReport
from pipeline.data.prepare import PreparedData, prepare_datasets, resolve_sources

__all__ = [
    "ED_SHA256",
    "ED_URL",
    "EPITOME_BASE_URL",
    "EPITOME_FILES",
    "EPITOME_SHA256",
    "EPITOME_SPLITS",
    "BadRow",
    "Conflict",
    "Conversation",
    "DataError",
    "DownloadError",
    "EDExample",
    "EDSplit",
    "EpitomeData",
    "EpitomePair",
    "ParseReport",
    "PreparedData",
    "build_examples",
    "download_all",
    "download_ed",
    "download_epitome",
    "fetch",
    "format_context",
    "level_distribution",
    "parse_ed",
    "parse_ed_split",
    "prepare_datasets",
    "read_conversations",
    "read_epitome",
    "resolve_level",
    "resolve_sources",
    "sha256_file",
    "split_epitome",
]
