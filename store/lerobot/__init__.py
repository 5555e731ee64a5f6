"""LeRobot dataset format v3.0: export episodes of the store, import datasets into it.

    from store.lerobot import export_dataset, read_dataset, import_dataset
    export_dataset(store, "out/towels", episodes=[1, 2], repo_id="local/towels")
    ids = import_dataset(read_dataset("out/towels"), store)

Pure data code: PyAV for video, pyarrow for parquet; no torch.
"""

from store.lerobot.export import ExportResult, export_dataset
from store.lerobot.format import CODEBASE_VERSION, LeRobotFormatError
from store.lerobot.importer import LeRobotDatasetFiles, import_dataset, read_dataset

__all__ = ["export_dataset", "ExportResult", "read_dataset", "import_dataset",
           "LeRobotDatasetFiles", "LeRobotFormatError", "CODEBASE_VERSION"]
