"""scirepo-fs: fsspec URL schemes for the data areas of a scirepo host.

Installed in every notebook image; fsspec finds the schemes through the `fsspec.specs`
entry points, so nothing needs importing:

    import fsspec, pandas
    with fsspec.open("workspace://results/run1.csv", "w") as f: ...
    pandas.read_csv("sites://station-a/catalog.csv")

`sites://SITE/...`, `software://...`, `workspace://...` (yours), `scratch://...` (yours),
`upload://...`, `public://USER/...` and `group://NAME/...` map onto the site's areas, on
the local file system or in an S3-compatible bucket, as the hub's `SCIREPO_FS` says
(see `scirepo_fs.areas`).
"""

from scirepo_fs.areas import (
    SCHEMES,
    AreaError,
    AreaFileSystem,
    GroupFileSystem,
    PublicFileSystem,
    ScratchFileSystem,
    SitesFileSystem,
    SoftwareFileSystem,
    UploadFileSystem,
    WorkspaceFileSystem,
    load_mapping,
)

__version__ = "0.1.0"
__all__ = [
    "SCHEMES",
    "AreaError",
    "AreaFileSystem",
    "GroupFileSystem",
    "PublicFileSystem",
    "ScratchFileSystem",
    "SitesFileSystem",
    "SoftwareFileSystem",
    "UploadFileSystem",
    "WorkspaceFileSystem",
    "load_mapping",
]
