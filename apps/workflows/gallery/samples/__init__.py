"""Sample files of the gallery's templates: documents a person downloads from the product and uploads on a
Run form to try a template whose input is a file (a saved sample of the Run form holds values, never a file).

A document field of an input schema names its samples in `x-sample-files`, a list of
`{"file": <a file name in this folder>, "label": <what the link says>}`; the Run page links those that exist
here. Only files of this folder, by their exact names, are ever served: a name is looked up in the folder's
listing, never joined into a path. The claims template's PDFs are made by tests/support/claim_samples.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.knowledge.parsing import SUPPORTED_FORMATS

SAMPLES_DIR = Path(__file__).parent
SAMPLE_FILES_KEY = "x-sample-files"
# Each format the Run form accepts, by file name ending: the content type a download is served with.
_CONTENT_TYPES = {
    extension: spec.content_types[0] for spec in SUPPORTED_FORMATS.values() for extension in spec.extensions
}


@dataclass(frozen=True)
class SampleFile:
    """A file of the samples folder, with the label a template gives it."""

    name: str
    label: str
    size: int
    content_type: str
    path: Path

    @property
    def kind(self) -> str:
        """The format for people, from the file name's ending: "PDF", "DOCX", "CSV"..."""
        return self.path.suffix.removeprefix(".").upper()


def sample_file_get(name: str, label: str = "") -> SampleFile | None:
    """The samples folder's file called exactly `name` (a document in a format the product reads), or None."""
    if not isinstance(name, str):
        return None
    for path in SAMPLES_DIR.iterdir():
        if path.name == name and path.is_file() and path.suffix.lower() in _CONTENT_TYPES:
            return SampleFile(
                name=path.name,
                label=label or path.name,
                size=path.stat().st_size,
                content_type=_CONTENT_TYPES[path.suffix.lower()],
                path=path,
            )
    return None


def sample_files_for_field(spec: Any) -> list[SampleFile]:
    """The sample files an input schema property lists in `x-sample-files` that exist in the folder, in its
    order (a name that is not there, or a malformed entry, is left out: an analyst may edit the schema)."""
    listed = spec.get(SAMPLE_FILES_KEY) if isinstance(spec, dict) else None
    if not isinstance(listed, list):
        return []
    found = []
    for entry in listed:
        if not isinstance(entry, dict):
            continue
        label = entry.get("label")
        sample = sample_file_get(entry.get("file", ""), label if isinstance(label, str) else "")
        if sample is not None:
            found.append(sample)
    return found
