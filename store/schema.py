"""The index schema (`DIR/index.db`) and its ordered migrations.

`schema_version` holds one row: the version the file is at. `MIGRATIONS[k]` takes a database from
version k to k + 1 inside one transaction (plain SQL: helpers that commit on their own would break
that), so a crash mid-migration leaves the old version intact.
A database at a version above `SCHEMA_VERSION` was written by a newer app and is refused, never
downgraded.

Tables
- sessions: one recording session (an app launch or a `record` command) on one rig.
- tasks: the language instructions, each text once.
- episodes: one demonstration: its task, rig, rates, times, per-camera frame counts and video file
  names (JSON), step count, success flag (NULL = not judged), operator notes, status (recording /
  complete / discarded / incomplete), tags (JSON list), folder (relative to the store).
- runs: fine-tunes and autonomous runs: kind, config (JSON), status, paths (JSON), created.
"""

from __future__ import annotations

import sqlite_utils

from store.errors import SchemaTooNew

STATUSES = ("recording", "complete", "discarded", "incomplete")
RUN_KINDS = ("finetune", "autonomy")


def _v1_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            started TEXT NOT NULL,
            rig TEXT,
            host TEXT,
            notes TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, instruction TEXT NOT NULL UNIQUE)")
    db.execute(
        f"""CREATE TABLE episodes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id INTEGER REFERENCES sessions(id),
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            rig TEXT NOT NULL,
            control_hz REAL NOT NULL,
            started TEXT NOT NULL,
            ended TEXT,
            duration_s REAL,
            frame_counts TEXT NOT NULL DEFAULT '{{}}',
            videos TEXT NOT NULL DEFAULT '{{}}',
            success INTEGER CHECK (success IN (0, 1)),
            notes TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'recording'
                CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
            tags TEXT NOT NULL DEFAULT '[]',
            folder TEXT NOT NULL UNIQUE
        )"""
    )
    db.execute(
        f"""CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in RUN_KINDS)})),
            config TEXT NOT NULL DEFAULT '{{}}',
            status TEXT NOT NULL,
            paths TEXT NOT NULL DEFAULT '{{}}',
            created TEXT NOT NULL
        )"""
    )


def _v2_step_counts(db: sqlite_utils.Database) -> None:
    """Episodes keep their step count in the index (readers check the arrays against it without
    opening them) and the listing by status and task is indexed."""
    db.execute("ALTER TABLE episodes ADD COLUMN steps INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX episodes_status_task ON episodes(status, task_id)")


MIGRATIONS = (_v1_initial, _v2_step_counts)
SCHEMA_VERSION = len(MIGRATIONS)


def version_of(db: sqlite_utils.Database) -> int:
    if "schema_version" not in db.table_names():
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the database up to `target`; returns the version it was at. Each step commits on its
    own with the version bump, so an interrupted upgrade resumes where it stopped."""
    found = version_of(db)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} was written by a newer XR0 Workstation (schema {found} > {SCHEMA_VERSION}): "
            f"update the app"
        )
    conn = db.conn
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if version_of(db) != version:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[version](db)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
